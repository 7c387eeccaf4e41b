//! Reading the `Authorization` header. Errors say what shape was wrong and never echo its bytes.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::HeaderValue;

use crate::error::{AuthError, HeaderError};

/// Standard alphabet, padding optional: some clients drop the `=`.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials from an `Authorization` header. Debug output hides the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name.
        user: String,
        /// The password (secret).
        password: String,
    },
    /// `Bearer <token>` (secret).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// Splits `Scheme rest` with a case-insensitive scheme.
fn split_scheme(value: &HeaderValue) -> Result<(&str, &str), AuthError> {
    let s = value
        .to_str()
        .map_err(|_| AuthError::MalformedHeader(HeaderError::NotAscii))?;
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    Ok((scheme, rest.trim()))
}

/// Reads a `Basic` header into (user, password): base64 (standard alphabet, padding optional), UTF-8,
/// split at the first `:` (passwords may contain `:`; user names may not, per RFC 7617).
pub fn parse_basic(authorization: &HeaderValue) -> Result<(String, String), AuthError> {
    let (scheme, rest) = split_scheme(authorization)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::MalformedHeader(HeaderError::UnknownScheme));
    }
    decode_basic(rest)
}

fn decode_basic(encoded: &str) -> Result<(String, String), AuthError> {
    if encoded.is_empty() {
        return Err(AuthError::MalformedHeader(HeaderError::Empty));
    }
    let bytes = BASIC_B64
        .decode(encoded)
        .map_err(|_| AuthError::MalformedHeader(HeaderError::Base64))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| AuthError::MalformedHeader(HeaderError::Utf8(e)))?;
    let (user, password) = text
        .split_once(':')
        .ok_or(AuthError::MalformedHeader(HeaderError::NoColon))?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Reads a `Basic` or `Bearer` header.
pub fn parse_authorization(authorization: &HeaderValue) -> Result<Credentials, AuthError> {
    let (scheme, rest) = split_scheme(authorization)?;
    if scheme.eq_ignore_ascii_case("basic") {
        let (user, password) = decode_basic(rest)?;
        Ok(Credentials::Basic { user, password })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthError::MalformedHeader(HeaderError::Empty));
        }
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(AuthError::MalformedHeader(HeaderError::UnknownScheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    // Rule: standard Basic decodes, with or without padding, and splits at the first colon.
    #[test]
    fn basic_decodes_padding_tolerant() {
        // "alice:pa:ss" → YWxpY2U6cGE6c3M=
        assert_eq!(
            parse_basic(&hv("Basic YWxpY2U6cGE6c3M=")).unwrap(),
            ("alice".into(), "pa:ss".into())
        );
        assert_eq!(
            parse_basic(&hv("basic YWxpY2U6cGE6c3M")).unwrap(),
            ("alice".into(), "pa:ss".into())
        );
        // "u:" → empty password is still a well-formed header.
        assert_eq!(
            parse_basic(&hv("Basic dTo=")).unwrap(),
            ("u".into(), String::new())
        );
    }

    // Rule: malformed headers give a typed error that does not echo the credential.
    #[test]
    fn malformed_is_typed() {
        let cases = [
            ("Basic", "empty"),
            ("Basic !!!!", "base64"),
            ("Basic bm9jb2xvbg==", "colon"), // "nocolon"
            ("Basic //79", "utf8"),          // 0xff 0xfe 0xfd
            ("Digest abc", "scheme"),
        ];
        for (h, want) in cases {
            let e = parse_basic(&hv(h)).unwrap_err();
            let AuthError::MalformedHeader(inner) = &e else {
                panic!("{h}: {e:?}")
            };
            let ok = matches!(
                (want, inner),
                ("empty", HeaderError::Empty)
                    | ("base64", HeaderError::Base64)
                    | ("colon", HeaderError::NoColon)
                    | ("utf8", HeaderError::Utf8(_))
                    | ("scheme", HeaderError::UnknownScheme)
            );
            assert!(ok, "{h}: {inner:?}");
            assert!(!format!("{e} {e:?}").contains("!!!!"));
        }
    }

    // Rule: Bearer tokens are recognised and never shown by Debug.
    #[test]
    fn bearer_and_debug_redaction() {
        let c = parse_authorization(&hv("Bearer abc.def.ghi")).unwrap();
        assert_eq!(c, Credentials::Bearer("abc.def.ghi".into()));
        assert!(!format!("{c:?}").contains("abc"));
        let c = parse_authorization(&hv("Basic YWxpY2U6c2VjcmV0")).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }
}
