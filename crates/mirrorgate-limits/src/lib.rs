//! mirrorgate-limits
