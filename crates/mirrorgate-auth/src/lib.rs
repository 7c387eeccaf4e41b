//! mirrorgate-auth
