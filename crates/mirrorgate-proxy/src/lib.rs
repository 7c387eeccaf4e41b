//! mirrorgate-proxy
