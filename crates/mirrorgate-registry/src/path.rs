//! Request paths: what a `/v2/...` path asks for, parsed before any routing decision or upstream URL is made.
//!
//! Input is the raw path as received (`uri.path()`, still percent-encoded). Nothing is decoded: the grammars
//! exclude `%`, so an encoded `/` or `.` is rejected rather than interpreted differently here and upstream.

use crate::error::{ErrorCode, RegistryError};
use crate::reference::{Digest, Reference, RepositoryName};

/// One distribution API endpoint with its validated parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryPath {
    /// `/v2/` (and `/v2`): the version check clients use to learn the auth challenge.
    Ping,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags { name: RepositoryName },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        name: RepositoryName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        name: RepositoryName,
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/` (also accepted without the trailing `/`; rebuilt with it).
    UploadStart { name: RepositoryName },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload session. The id is opaque; only `[A-Za-z0-9._~=+-]` up to
    /// 512 bytes is accepted (no `%`, not `.`/`..`), enough for the UUIDs and base64 ids registries hand out.
    Upload { name: RepositoryName, id: String },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        name: RepositoryName,
        digest: Digest,
    },
}

/// The endpoint family, for metric labels and per-kind policy (cache, limits). The one definition: metrics
/// and the proxy use this type (metrics folds it into its coarser `kind` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `/token`: the gateway's own token endpoint (Docker token authentication). Not a `/v2/` path, so
    /// [`RegistryPath::kind`] never returns it; the request path sets it for requests to that endpoint.
    Token,
    Ping,
    Manifest,
    Blob,
    Tags,
    Catalog,
    /// Both the upload start and the upload session requests.
    Upload,
    Referrers,
}

impl RequestKind {
    /// A fixed, low-cardinality label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Token => "token",
            RequestKind::Ping => "ping",
            RequestKind::Manifest => "manifest",
            RequestKind::Blob => "blob",
            RequestKind::Tags => "tags",
            RequestKind::Catalog => "catalog",
            RequestKind::Upload => "upload",
            RequestKind::Referrers => "referrers",
        }
    }
}

const MAX_UPLOAD_ID_LEN: usize = 512;

impl RegistryPath {
    /// Parses a raw request path.
    ///
    /// Errors: a bad name is `NAME_INVALID`, a bad digest `DIGEST_INVALID`, a bad tag `MANIFEST_INVALID`, a bad
    /// upload id `BLOB_UPLOAD_UNKNOWN`, and any path that is not one of the endpoints `NOT_FOUND`.
    ///
    /// The endpoint is recognised from the *end* of the path (the reference/digest never holds a `/`), so names
    /// whose components are `manifests`, `blobs` or `tags` still work, as they do in distribution.
    pub fn parse(path: &str) -> Result<RegistryPath, RegistryError> {
        if path == "/v2" || path == "/v2/" {
            return Ok(RegistryPath::Ping);
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Err(not_found());
        };
        if rest == "_catalog" {
            return Ok(RegistryPath::Catalog);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let n = segments.len();
        // Name from the first `count` segments: re-joined from `rest`, so no allocation of the pieces.
        let name_of = |count: usize| -> Result<RepositoryName, RegistryError> {
            let len =
                segments[..count].iter().map(|s| s.len()).sum::<usize>() + count.saturating_sub(1);
            RepositoryName::parse(&rest[..len])
        };

        if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
            return Ok(RegistryPath::Tags {
                name: name_of(n - 2)?,
            });
        }
        if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
            let name = name_of(n - 3)?;
            let id = segments[n - 1];
            if id.is_empty() {
                return Ok(RegistryPath::UploadStart { name });
            }
            return Ok(RegistryPath::Upload {
                name,
                id: upload_id(id)?,
            });
        }
        if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
            return Ok(RegistryPath::UploadStart {
                name: name_of(n - 2)?,
            });
        }
        if n >= 3 {
            let last = segments[n - 1];
            match segments[n - 2] {
                "manifests" => {
                    let name = name_of(n - 2)?;
                    return Ok(RegistryPath::Manifest {
                        name,
                        reference: Reference::parse(last)?,
                    });
                }
                "blobs" => {
                    let name = name_of(n - 2)?;
                    return Ok(RegistryPath::Blob {
                        name,
                        digest: Digest::parse(last)?,
                    });
                }
                "referrers" => {
                    let name = name_of(n - 2)?;
                    return Ok(RegistryPath::Referrers {
                        name,
                        digest: Digest::parse(last)?,
                    });
                }
                _ => {}
            }
        }
        Err(not_found())
    }

    /// The repository the request is about (`None` for ping and catalog).
    pub fn name(&self) -> Option<&RepositoryName> {
        match self {
            RegistryPath::Ping | RegistryPath::Catalog => None,
            RegistryPath::Tags { name }
            | RegistryPath::Manifest { name, .. }
            | RegistryPath::Blob { name, .. }
            | RegistryPath::UploadStart { name }
            | RegistryPath::Upload { name, .. }
            | RegistryPath::Referrers { name, .. } => Some(name),
        }
    }

    /// The endpoint family.
    pub fn kind(&self) -> RequestKind {
        match self {
            RegistryPath::Ping => RequestKind::Ping,
            RegistryPath::Catalog => RequestKind::Catalog,
            RegistryPath::Tags { .. } => RequestKind::Tags,
            RegistryPath::Manifest { .. } => RequestKind::Manifest,
            RegistryPath::Blob { .. } => RequestKind::Blob,
            RegistryPath::UploadStart { .. } | RegistryPath::Upload { .. } => RequestKind::Upload,
            RegistryPath::Referrers { .. } => RequestKind::Referrers,
        }
    }

    /// The same request about another repository (after `library/` or regex rewrites). Ping and catalog are
    /// returned unchanged.
    #[must_use]
    pub fn with_name(&self, new_name: RepositoryName) -> RegistryPath {
        let mut path = self.clone();
        match &mut path {
            RegistryPath::Ping | RegistryPath::Catalog => {}
            RegistryPath::Tags { name }
            | RegistryPath::Manifest { name, .. }
            | RegistryPath::Blob { name, .. }
            | RegistryPath::UploadStart { name }
            | RegistryPath::Upload { name, .. }
            | RegistryPath::Referrers { name, .. } => *name = new_name,
        }
        path
    }

    /// The path to send upstream (no query; the caller appends the client's query if it forwards one).
    pub fn to_path(&self) -> String {
        match self {
            RegistryPath::Ping => "/v2/".to_owned(),
            RegistryPath::Catalog => "/v2/_catalog".to_owned(),
            RegistryPath::Tags { name } => format!("/v2/{name}/tags/list"),
            RegistryPath::Manifest { name, reference } => {
                format!("/v2/{name}/manifests/{reference}")
            }
            RegistryPath::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            RegistryPath::UploadStart { name } => format!("/v2/{name}/blobs/uploads/"),
            RegistryPath::Upload { name, id } => format!("/v2/{name}/blobs/uploads/{id}"),
            RegistryPath::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
        }
    }
}

/// Path-prefix routing: `/v2/<key>/<rest>` where `<key>` (typically an upstream host such as `gcr.test`) is
/// accepted by `is_known`.
///
/// - `Ok(None)`: the first component is not a known key; route the path the ordinary way.
/// - `Ok(Some((key, path)))`: `path` is `/v2/<rest>` parsed (`/v2/gcr.test/` and `/v2/gcr.test` are a ping).
/// - `Err(_)`: the key is known but the rest is not a valid request. Returned rather than folded into `None`
///   so a malformed prefixed request is refused instead of being reinterpreted with the key as a name.
pub fn split_prefix(
    path: &str,
    is_known: impl Fn(&str) -> bool,
) -> Result<Option<(&str, RegistryPath)>, RegistryError> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(None);
    };
    let (key, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if key.is_empty() || !is_known(key) {
        return Ok(None);
    }
    let inner = format!("/v2{tail}");
    RegistryPath::parse(&inner).map(|parsed| Some((key, parsed)))
}

fn upload_id(id: &str) -> Result<String, RegistryError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_UPLOAD_ID_LEN
        && id != "."
        && id != ".."
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'=' | b'+' | b'-')
        });
    if ok {
        Ok(id.to_owned())
    } else {
        Err(RegistryError::new(
            ErrorCode::BlobUploadUnknown,
            "invalid upload id",
        ))
    }
}

fn not_found() -> RegistryError {
    RegistryError::new(ErrorCode::NotFound, "not a registry API endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    // Rule: every endpoint shape is recognised, with its parts and its kind.
    #[test]
    fn parses_every_endpoint() {
        assert_eq!(RegistryPath::parse("/v2/").unwrap(), RegistryPath::Ping);
        assert_eq!(RegistryPath::parse("/v2").unwrap(), RegistryPath::Ping);
        assert_eq!(
            RegistryPath::parse("/v2/_catalog").unwrap(),
            RegistryPath::Catalog
        );
        assert_eq!(
            RegistryPath::parse("/v2/library/alpine/tags/list").unwrap(),
            RegistryPath::Tags {
                name: name("library/alpine")
            }
        );
        let manifest = RegistryPath::parse("/v2/library/alpine/manifests/3.19").unwrap();
        assert_eq!(manifest.name().unwrap().as_str(), "library/alpine");
        assert!(
            matches!(&manifest, RegistryPath::Manifest { reference: Reference::Tag(t), .. } if t.as_str() == "3.19")
        );
        let by_digest = RegistryPath::parse(&format!("/v2/a/manifests/{SHA}")).unwrap();
        assert!(matches!(
            by_digest,
            RegistryPath::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            RegistryPath::parse(&format!("/v2/a/b/blobs/{SHA}")).unwrap(),
            RegistryPath::Blob { .. }
        ));
        assert_eq!(
            RegistryPath::parse("/v2/a/b/blobs/uploads/").unwrap(),
            RegistryPath::UploadStart { name: name("a/b") }
        );
        assert_eq!(
            RegistryPath::parse("/v2/a/b/blobs/uploads").unwrap(),
            RegistryPath::UploadStart { name: name("a/b") }
        );
        assert_eq!(
            RegistryPath::parse("/v2/a/blobs/uploads/5f0a-11ee_b=").unwrap(),
            RegistryPath::Upload {
                name: name("a"),
                id: "5f0a-11ee_b=".into()
            }
        );
        assert!(matches!(
            RegistryPath::parse(&format!("/v2/a/referrers/{SHA}")).unwrap(),
            RegistryPath::Referrers { .. }
        ));
    }

    // Rule: kinds map to fixed metric labels; upload start and session share `upload`.
    #[test]
    fn kinds_and_labels() {
        let cases = [
            ("/v2/", "ping"),
            ("/v2/_catalog", "catalog"),
            ("/v2/a/tags/list", "tags"),
            ("/v2/a/manifests/latest", "manifest"),
            (&format!("/v2/a/blobs/{SHA}"), "blob"),
            ("/v2/a/blobs/uploads/", "upload"),
            ("/v2/a/blobs/uploads/x", "upload"),
            (&format!("/v2/a/referrers/{SHA}"), "referrers"),
        ];
        for (path, label) in cases {
            assert_eq!(
                RegistryPath::parse(path).unwrap().kind().as_str(),
                label,
                "{path}"
            );
        }
    }

    // Rule: names may contain components spelled like endpoint words; the endpoint is read from the end.
    #[test]
    fn endpoint_words_inside_names() {
        let p = RegistryPath::parse("/v2/manifests/blobs/tags/manifests/latest").unwrap();
        assert_eq!(p.name().unwrap().as_str(), "manifests/blobs/tags");
        let p = RegistryPath::parse("/v2/blobs/uploads/tags/list").unwrap();
        assert_eq!(
            p,
            RegistryPath::Tags {
                name: name("blobs/uploads")
            }
        );
    }

    // Rule: bad names, digests, tags and upload ids get their own codes; `%2f`, `..`, `//` never pass.
    #[test]
    fn rejections_carry_the_right_code() {
        let cases = [
            ("/v2/foo%2fbar/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/foo/../bar/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/../manifests/latest", ErrorCode::NameInvalid),
            ("/v2//foo/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/Foo/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/foo/blobs/sha256:abc", ErrorCode::DigestInvalid),
            ("/v2/foo/blobs/latest", ErrorCode::DigestInvalid),
            ("/v2/foo/referrers/nodigest", ErrorCode::DigestInvalid),
            ("/v2/foo/manifests/sha256:xyz", ErrorCode::DigestInvalid),
            ("/v2/foo/manifests/.bad", ErrorCode::ManifestInvalid),
            ("/v2/foo/manifests/", ErrorCode::ManifestInvalid),
            ("/v2/foo/manifests/a%2f", ErrorCode::ManifestInvalid),
            ("/v2/foo/blobs/uploads/..", ErrorCode::BlobUploadUnknown),
            ("/v2/foo/blobs/uploads/a%2f..", ErrorCode::BlobUploadUnknown),
            ("/v3/foo/manifests/latest", ErrorCode::NotFound),
            ("/v2/foo", ErrorCode::NotFound),
            ("/v2/foo/manifests", ErrorCode::NotFound),
            ("/v2/foo/tags/list/", ErrorCode::NotFound),
            ("/v2/foo/other/x", ErrorCode::NotFound),
            ("/v2/_catalog/", ErrorCode::NotFound),
            ("", ErrorCode::NotFound),
            ("/", ErrorCode::NotFound),
            ("/V2/", ErrorCode::NotFound),
        ];
        for (path, code) in cases {
            assert_eq!(
                RegistryPath::parse(path).unwrap_err().code(),
                code,
                "{path}"
            );
        }
    }

    // Rule: to_path rebuilds exactly the parsed path (canonical forms), and with_name swaps only the name.
    #[test]
    fn rebuild_and_rename() {
        for path in [
            "/v2/",
            "/v2/_catalog",
            "/v2/a/b/tags/list",
            "/v2/a/manifests/latest",
            &format!("/v2/a/blobs/{SHA}"),
            "/v2/a/blobs/uploads/",
            "/v2/a/blobs/uploads/id-1",
            &format!("/v2/a/referrers/{SHA}"),
        ] {
            assert_eq!(RegistryPath::parse(path).unwrap().to_path(), path);
        }
        let p = RegistryPath::parse("/v2/hello/manifests/latest").unwrap();
        let renamed = p.with_name(name("library/hello"));
        assert_eq!(renamed.to_path(), "/v2/library/hello/manifests/latest");
        assert_eq!(RegistryPath::Ping.with_name(name("x")), RegistryPath::Ping);
    }

    // Rule: a known first component routes by prefix; unknown ones fall through; a bad rest is an error.
    #[test]
    fn prefix_routing() {
        let known = |k: &str| k == "gcr.test" || k == "localhost:5000";
        let (key, p) = split_prefix("/v2/gcr.test/foo/bar/manifests/latest", known)
            .unwrap()
            .unwrap();
        assert_eq!(key, "gcr.test");
        assert_eq!(p.name().unwrap().as_str(), "foo/bar");
        assert_eq!(p.to_path(), "/v2/foo/bar/manifests/latest");
        let (key, p) = split_prefix("/v2/localhost:5000/x/tags/list", known)
            .unwrap()
            .unwrap();
        assert_eq!((key, p.kind()), ("localhost:5000", RequestKind::Tags));
        assert_eq!(
            split_prefix("/v2/gcr.test/", known).unwrap().unwrap().1,
            RegistryPath::Ping
        );
        assert_eq!(
            split_prefix("/v2/gcr.test", known).unwrap().unwrap().1,
            RegistryPath::Ping
        );
        assert_eq!(
            split_prefix("/v2/gcr.test/_catalog", known)
                .unwrap()
                .unwrap()
                .1,
            RegistryPath::Catalog
        );
        assert!(split_prefix("/v2/other.test/foo/manifests/latest", known)
            .unwrap()
            .is_none());
        assert!(split_prefix("/v2/", known).unwrap().is_none());
        assert!(split_prefix("/healthz", known).unwrap().is_none());
        let err = split_prefix("/v2/gcr.test/Foo/manifests/latest", known).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NameInvalid);
    }

    // Rule: hostile paths never panic (multi-byte characters, many slashes, long inputs).
    #[test]
    fn hostile_paths_do_not_panic() {
        let long = format!("/v2/{}/manifests/latest", "a/".repeat(300));
        let inputs = [
            "/v2/é/manifests/x",
            "/v2/a/manifests/é",
            "/v2/////",
            "/v2/%",
            "/v2/\u{0}/tags/list",
            "/v2/a/blobs/uploads/é",
            long.as_str(),
        ];
        for input in inputs {
            let _ = RegistryPath::parse(input);
            let _ = split_prefix(input, |_| true);
        }
        assert_eq!(
            RegistryPath::parse(&long).unwrap_err().code(),
            ErrorCode::NameInvalid
        );
    }
}
