//! The three grammars of the distribution spec — repository names, tags and digests — as validated types.
//!
//! Parse, don't validate: once a value has one of these types it is known to be safe to put into an upstream
//! URL path, so the proxy never builds a path from unchecked text. The checks are hand-written byte loops
//! rather than regexes: they are short, cannot panic and make every rejection reason explicit.

use std::fmt;

use crate::error::{ErrorCode, RegistryError};

/// Longest repository name the distribution spec allows.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag (`[\w][\w.-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;
/// Longest digest accepted. The spec sets no bound; 1 KiB is far above any real algorithm and keeps hostile
/// input from travelling further.
pub const MAX_DIGEST_LEN: usize = 1024;

/// A repository name: `/`-separated components, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, at most 255 bytes.
///
/// This excludes by construction `%`-encoding (so `%2f` cannot smuggle a `/`), `..`, empty components,
/// upper case and anything else an upstream might interpret differently from the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Checks `name` against the grammar. Fails with `NAME_INVALID` (the detail names the offending input).
    pub fn parse(name: &str) -> Result<Self, RegistryError> {
        match name_problem(name) {
            None => Ok(Self(name.to_owned())),
            Some(reason) => Err(RegistryError::new(
                ErrorCode::NameInvalid,
                format!("invalid repository name: {reason}"),
            )
            .with_detail(serde_json::json!({ "name": truncate(name, MAX_NAME_LEN + 1) }))),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of `/`-separated components.
    pub fn components(&self) -> usize {
        self.0.split('/').count()
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RepositoryName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for RepositoryName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RepositoryName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why `name` is not a repository name, or `None` if it is one.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Some("longer than 255 bytes");
    }
    for component in name.split('/') {
        if let Some(reason) = component_problem(component) {
            return Some(reason);
        }
    }
    None
}

/// One component: runs of `[a-z0-9]` separated by exactly `.`, `_`, `__` or one or more `-`.
fn component_problem(component: &str) -> Option<&'static str> {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return Some("empty path component");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Some("a component must start and end with [a-z0-9]");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Some(if separator.bytes().any(|b| b == b'%') {
                "percent-encoding is not allowed in names"
            } else {
                "a component may only hold [a-z0-9] joined by '.', '_', '__' or '-'"
            });
        }
    }
    None
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// Checks `tag`. A bad tag is answered `MANIFEST_INVALID`: the OCI spec has no tag code, and the reference
    /// names a manifest that cannot exist.
    pub fn parse(tag: &str) -> Result<Self, RegistryError> {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let bytes = tag.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LEN
            && word(bytes[0])
            && bytes[1..]
                .iter()
                .all(|&b| word(b) || b == b'.' || b == b'-');
        if ok {
            Ok(Self(tag.to_owned()))
        } else {
            Err(
                RegistryError::new(ErrorCode::ManifestInvalid, "invalid tag")
                    .with_detail(serde_json::json!({ "tag": truncate(tag, MAX_TAG_LEN + 1) })),
            )
        }
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest `algorithm:encoded`.
///
/// Grammar (OCI image spec): algorithm components `[a-z0-9]+` joined by one of `+._-`; encoded
/// `[a-zA-Z0-9=_-]+`. The registered algorithms are held to their exact form: `sha256` is 64 and `sha512`
/// 128 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Checks `digest`; fails with `DIGEST_INVALID`.
    pub fn parse(digest: &str) -> Result<Self, RegistryError> {
        match digest_problem(digest) {
            None => Ok(Self(digest.to_owned())),
            Some(reason) => Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("invalid digest: {reason}"),
            )
            .with_detail(serde_json::json!({ "digest": truncate(digest, MAX_DIGEST_LEN + 1) }))),
        }
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `:`.
    pub fn algorithm(&self) -> &str {
        self.0
            .split_once(':')
            .map_or("", |(algorithm, _)| algorithm)
    }

    /// The part after the `:`.
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, encoded)| encoded)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn digest_problem(digest: &str) -> Option<&'static str> {
    if digest.len() > MAX_DIGEST_LEN {
        return Some("too long");
    }
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Some("missing ':'");
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if !algorithm.split(['+', '.', '_', '-']).all(component_ok) {
        return Some("bad algorithm");
    }
    if encoded.is_empty()
        || !encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
    {
        return Some("bad encoded part");
    }
    let lower_hex = |len: usize| {
        encoded.len() == len
            && encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match algorithm {
        "sha256" if !lower_hex(64) => Some("sha256 needs 64 lower-case hex characters"),
        "sha512" if !lower_hex(128) => Some("sha512 needs 128 lower-case hex characters"),
        _ => None,
    }
}

/// What follows `/manifests/`: a tag, or a digest (anything holding a `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference with a `:` is a digest (`DIGEST_INVALID` if bad), otherwise a tag (`MANIFEST_INVALID`).
    pub fn parse(reference: &str) -> Result<Self, RegistryError> {
        if reference.contains(':') {
            Digest::parse(reference).map(Reference::Digest)
        } else {
            Tag::parse(reference).map(Reference::Tag)
        }
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(tag) => tag.as_str(),
            Reference::Digest(digest) => digest.as_str(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// At most `max` bytes of `s`, cut on a character boundary: error details echo input, but not unbounded input.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    // Rule: names following the component grammar are accepted, including every separator form.
    #[test]
    fn valid_names() {
        for name in [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo-bar",
            "foo---bar",
            "0/9",
            "k8s.gcr.io-mirror/pause",
        ] {
            assert_eq!(RepositoryName::parse(name).unwrap().as_str(), name);
        }
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(RepositoryName::parse(&longest).is_ok());
    }

    // Rule: anything outside the grammar is NAME_INVALID: `..`, `%`-encoding, empty components, case, length.
    #[test]
    fn invalid_names() {
        for name in [
            "",
            "Alpine",
            "..",
            "foo/../bar",
            "foo/./bar",
            "foo%2fbar",
            "foo%2Fbar",
            "%2e%2e",
            "foo//bar",
            "/foo",
            "foo/",
            "foo..bar",
            "foo___bar",
            "foo._bar",
            "-foo",
            "foo-",
            "_foo",
            "foo bar",
            "foo:5000/bar",
            "fö",
            "foo\0",
        ] {
            let err = RepositoryName::parse(name).unwrap_err();
            assert_eq!(err.code(), ErrorCode::NameInvalid, "{name:?}");
        }
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            RepositoryName::parse(&too_long).unwrap_err().code(),
            ErrorCode::NameInvalid
        );
    }

    // Rule: tags follow `[\w][\w.-]{0,127}`; bad tags are MANIFEST_INVALID.
    #[test]
    fn tags() {
        for tag in ["latest", "1.2.3", "_x", "v1-rc.2", "A_b"] {
            assert_eq!(Tag::parse(tag).unwrap().as_str(), tag);
        }
        assert!(Tag::parse(&"a".repeat(MAX_TAG_LEN)).is_ok());
        for tag in ["", ".x", "-x", "a/b", "a%20", "a b", "ä"] {
            assert_eq!(
                Tag::parse(tag).unwrap_err().code(),
                ErrorCode::ManifestInvalid,
                "{tag:?}"
            );
        }
        assert!(Tag::parse(&"a".repeat(MAX_TAG_LEN + 1)).is_err());
    }

    // Rule: sha256/sha512 must be exact lower-case hex; other algorithms follow the generic OCI grammar.
    #[test]
    fn digests() {
        let d = Digest::parse(SHA256).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.encoded().len(), 64);
        assert!(Digest::parse(&format!("sha512:{}", "ab".repeat(64))).is_ok());
        assert!(
            Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
                .is_ok()
        );
        assert!(Digest::parse("blake3:abc=").is_ok());
        for bad in [
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            &SHA256.to_uppercase(),
            &format!("{SHA256}0"),
            "sha512:abcd",
            "SHA256:abc",
            "sha256+:abc",
            "sha256:ab%2f",
            "sha256:../x",
        ] {
            assert_eq!(
                Digest::parse(bad).unwrap_err().code(),
                ErrorCode::DigestInvalid,
                "{bad:?}"
            );
        }
        assert!(Digest::parse(&format!("x:{}", "a".repeat(MAX_DIGEST_LEN))).is_err());
    }

    // Rule: a reference with ':' is a digest, otherwise a tag.
    #[test]
    fn references() {
        assert!(matches!(
            Reference::parse(SHA256).unwrap(),
            Reference::Digest(_)
        ));
        assert!(matches!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(_)
        ));
        assert_eq!(
            Reference::parse("sha256:xyz").unwrap_err().code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            Reference::parse("la test").unwrap_err().code(),
            ErrorCode::ManifestInvalid
        );
    }

    // Rule: error details echo the input but bounded, and never split a UTF-8 character.
    #[test]
    fn details_are_truncated() {
        let long = "é".repeat(400);
        let err = RepositoryName::parse(&long).unwrap_err();
        let echoed = err.detail().unwrap()["name"].as_str().unwrap().to_owned();
        assert!(echoed.len() <= MAX_NAME_LEN + 1);
        assert!(long.starts_with(&echoed));
    }
}
