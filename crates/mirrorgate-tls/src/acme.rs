//! ACME (placeholder while being written).
pub struct AcmeManager;
pub struct AcmeSpec;
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}
#[derive(Clone, Default)]
pub struct Http01Tokens;
