//! mirrorgate-registry
