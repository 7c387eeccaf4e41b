//! Verifying our own bearer tokens.
//!
//! Only our key is trusted and the algorithm is pinned to ES256: the header's `alg` is never allowed to
//! pick the check (no `none`, no HS256 keyed with our public key, no RS256), and a header `x5c`/`jwk`
//! is ignored (trusting an embedded certificate would let anyone sign). A `kid` other than ours is
//! refused early. `exp`/`nbf` allow [`LEEWAY_SECS`] of clock skew; `iss` and `aud` must be ours.

use jsonwebtoken::{Algorithm, Validation};

use crate::error::AuthError;
use crate::key::TokenKey;
use crate::tenants::Action;
use crate::token::{Claims, TokenSpec, REFRESH_TYP};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Checks tokens issued by our [`crate::TokenIssuer`].
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    key: std::sync::Arc<TokenKey>,
    issuer: String,
    service: String,
}

impl TokenVerifier {
    /// A verifier for tokens signed by `key` under `spec`'s issuer.
    pub fn new(key: std::sync::Arc<TokenKey>, spec: &TokenSpec) -> Self {
        TokenVerifier {
            key,
            issuer: spec.issuer.clone(),
            service: spec.service.clone(),
        }
    }

    /// The service tokens must be for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Verifies an access token for `service` and checks that it grants `action` on `repo`.
    pub fn verify(
        &self,
        token: &str,
        service: &str,
        repo: &str,
        action: Action,
    ) -> Result<Claims, AuthError> {
        let claims = self.verify_any(token, service)?;
        if claims.access.iter().any(|a| a.covers(repo, action)) {
            Ok(claims)
        } else {
            Err(AuthError::InsufficientScope {
                repository: repo.to_owned(),
                action,
            })
        }
    }

    /// Verifies an access token without asking for a particular grant (the `/v2/` ping).
    pub fn verify_any(&self, token: &str, service: &str) -> Result<Claims, AuthError> {
        let claims = self.decode(token, service)?;
        if claims.typ.is_some() {
            return Err(AuthError::TokenRejected(
                "a refresh token is not an access token",
            ));
        }
        Ok(claims)
    }

    /// Verifies a refresh token (signature, time, issuer, audience, `typ: refresh`).
    pub(crate) fn verify_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.decode(token, &self.service)?;
        if claims.typ.as_deref() != Some(REFRESH_TYP)
            || claims.sub.is_empty()
            || claims.pwh.is_none()
        {
            return Err(AuthError::TokenRejected("not a refresh token"));
        }
        Ok(claims)
    }

    fn decode(&self, token: &str, service: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::InvalidToken)?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::TokenRejected("algorithm is not ES256"));
        }
        if header
            .kid
            .as_deref()
            .is_some_and(|kid| kid != self.key.key_id())
        {
            return Err(AuthError::TokenRejected("signed by another key"));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[service]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, self.key.decoding_key(), &v).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::ExpiredToken(e),
                _ => AuthError::InvalidToken(e),
            },
        )?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::token::tests::issuer_in;
    use crate::token::{unix_now, AccessEntry, TokenIssuer};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn pull(name: &str) -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    fn setup() -> (tempfile::TempDir, TokenIssuer, TokenVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer_in(dir.path());
        let ver = TokenVerifier::new(iss.key().clone(), iss.spec());
        (dir, iss, ver)
    }

    fn claims_json(iss: &TokenIssuer) -> serde_json::Value {
        let now = unix_now();
        serde_json::json!({
            "iss": iss.spec().issuer, "sub": "alice", "aud": iss.spec().service,
            "exp": now + 300, "nbf": now, "iat": now, "jti": "x",
            "access": [{"type": "repository", "name": "a", "actions": ["pull", "push"]}],
        })
    }

    // Rule: a token we issued verifies for the repository and action it grants.
    #[test]
    fn accepts_own_token() {
        let (_d, iss, ver) = setup();
        let t = iss.issue("alice", pull("a")).unwrap();
        let c = ver
            .verify(&t.token, "mirrorgate", "a", Action::Pull)
            .unwrap();
        assert_eq!(c.sub, "alice");
        ver.verify_any(&t.token, "mirrorgate").unwrap();
    }

    // Rule: a token for repository A is refused on repository B, and pull-only is refused for push.
    #[test]
    fn scope_is_enforced() {
        let (_d, iss, ver) = setup();
        let t = iss.issue("alice", pull("a")).unwrap();
        assert!(matches!(
            ver.verify(&t.token, "mirrorgate", "b", Action::Pull),
            Err(AuthError::InsufficientScope { .. })
        ));
        assert!(matches!(
            ver.verify(&t.token, "mirrorgate", "a", Action::Push),
            Err(AuthError::InsufficientScope { .. })
        ));
        assert!(matches!(
            ver.verify(&t.token, "mirrorgate", "a/b", Action::Pull),
            Err(AuthError::InsufficientScope { .. })
        ));
    }

    // Rule: `alg: none` is refused.
    #[test]
    fn rejects_alg_none() {
        let (_d, iss, ver) = setup();
        let token = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims_json(&iss).to_string().as_bytes())
        );
        assert!(ver.verify(&token, "mirrorgate", "a", Action::Pull).is_err());
    }

    // Rule: HS256 keyed with our public key (the classic confusion attack) is refused.
    #[test]
    fn rejects_hs256_with_public_key() {
        let (_d, iss, ver) = setup();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(iss.key().key_id().to_owned());
        for secret in [
            iss.key().certificate_pem().as_bytes(),
            iss.key().certificate_der(),
        ] {
            let token = jsonwebtoken::encode(
                &header,
                &claims_json(&iss),
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            assert!(matches!(
                ver.verify(&token, "mirrorgate", "a", Action::Pull),
                Err(AuthError::TokenRejected(_))
            ));
        }
    }

    // Rule: RS256 (any non-ES256 algorithm) is refused before any signature check.
    #[test]
    fn rejects_rs256() {
        let (_d, iss, ver) = setup();
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims_json(&iss).to_string().as_bytes()),
            b64(&[7u8; 256])
        );
        assert!(matches!(
            ver.verify(&token, "mirrorgate", "a", Action::Pull),
            Err(AuthError::TokenRejected(_))
        ));
    }

    // Rule: a token signed by another ES256 key is refused, even with a matching kid and its own x5c.
    #[test]
    fn rejects_foreign_key_even_with_our_kid() {
        let (_d, iss, ver) = setup();
        let other_dir = tempfile::tempdir().unwrap();
        let other = issuer_in(other_dir.path());
        let t = other.issue("alice", pull("a")).unwrap();
        assert!(matches!(
            ver.verify(&t.token, "mirrorgate", "a", Action::Pull),
            Err(AuthError::TokenRejected(_))
        ));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(iss.key().key_id().to_owned());
        let forged =
            jsonwebtoken::encode(&header, &claims_json(&iss), other.key().encoding_key()).unwrap();
        assert!(matches!(
            ver.verify(&forged, "mirrorgate", "a", Action::Pull),
            Err(AuthError::InvalidToken(_))
        ));
    }

    // Rule: a tampered payload breaks the signature.
    #[test]
    fn rejects_tampered_claims() {
        let (_d, iss, ver) = setup();
        let t = iss.issue("alice", pull("a")).unwrap();
        let parts: Vec<&str> = t.token.split('.').collect();
        let mut c = claims_json(&iss);
        c["access"][0]["name"] = "b".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        assert!(matches!(
            ver.verify(&forged, "mirrorgate", "b", Action::Pull),
            Err(AuthError::InvalidToken(_))
        ));
    }

    // Rule: expired and not-yet-valid tokens are refused beyond the leeway, accepted within it; an expired
    // one is told apart (the `expired_token` metric reason), a not-yet-valid one is just invalid.
    #[test]
    fn time_checks_with_leeway() {
        let (_d, iss, ver) = setup();
        let now = unix_now();
        let expired = iss
            .issue_at(now - 300 - LEEWAY_SECS - 5, "alice", pull("a"), None)
            .unwrap();
        assert!(matches!(
            ver.verify(&expired.token, "mirrorgate", "a", Action::Pull),
            Err(AuthError::ExpiredToken(_))
        ));
        let just_expired = iss
            .issue_at(now - 300 - 5, "alice", pull("a"), None)
            .unwrap();
        ver.verify(&just_expired.token, "mirrorgate", "a", Action::Pull)
            .unwrap();
        let future = iss
            .issue_at(now + LEEWAY_SECS + 60, "alice", pull("a"), None)
            .unwrap();
        assert!(matches!(
            ver.verify(&future.token, "mirrorgate", "a", Action::Pull),
            Err(AuthError::InvalidToken(_))
        ));
    }

    // Rule: issuer and audience must be ours.
    #[test]
    fn issuer_and_audience() {
        let (d, iss, ver) = setup();
        let t = iss.issue("alice", pull("a")).unwrap();
        assert!(matches!(
            ver.verify(&t.token, "other-service", "a", Action::Pull),
            Err(AuthError::InvalidToken(_))
        ));
        let mut spec = iss.spec().clone();
        spec.issuer = "someone-else".into();
        let other_iss = TokenIssuer::new(
            Arc::new(TokenKey::load_or_generate(&d.path().join("token-key.pem")).unwrap()),
            spec,
        );
        let t = other_iss.issue("alice", pull("a")).unwrap();
        assert!(matches!(
            ver.verify(&t.token, "mirrorgate", "a", Action::Pull),
            Err(AuthError::InvalidToken(_))
        ));
    }

    // Rule: refresh tokens are not access tokens, and access tokens are not refresh tokens.
    #[test]
    fn refresh_and_access_are_distinct() {
        let (_d, iss, ver) = setup();
        let r = iss.issue_refresh("alice", "$2y$05$hash").unwrap();
        assert!(matches!(
            ver.verify_any(&r.token, "mirrorgate"),
            Err(AuthError::TokenRejected(_))
        ));
        let c = ver.verify_refresh(&r.token).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.exp - c.iat, iss.spec().refresh_ttl.as_secs());
        let a = iss.issue("alice", pull("a")).unwrap();
        assert!(matches!(
            ver.verify_refresh(&a.token),
            Err(AuthError::TokenRejected(_))
        ));
    }

    // Rule: garbage is an invalid token, not a panic, and the error does not echo it.
    #[test]
    fn garbage_tokens() {
        let (_d, _iss, ver) = setup();
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c",
            "....",
            "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        ] {
            let e = ver.verify(t, "mirrorgate", "a", Action::Pull).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Unauthorized, "{t}");
        }
    }
}
