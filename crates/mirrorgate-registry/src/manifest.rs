//! The manifest `Accept` header sent upstream.
//!
//! A registry answers a manifest request with the best type the `Accept` header allows, and converts or
//! refuses when the stored type is not listed. A client that asks by digest must get exactly the bytes of that
//! digest, so the gateway always offers every manifest type, plus whatever the client itself listed, and
//! returns the upstream `Content-Type` untouched.

use http::HeaderValue;

/// Every manifest media type a registry may store, most specific first.
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// At most this many client media ranges are carried over; a longer list is hostile or broken.
const MAX_CLIENT_TYPES: usize = 32;

/// The `Accept` value for an upstream manifest request: the client's media ranges first, in their order and
/// with their parameters (q-values) as sent, then every type of [`MANIFEST_ACCEPT`] the client did not list.
/// Duplicates (same media type, compared case-insensitively without parameters) are kept once, first wins.
pub fn manifest_accept<'a>(client_values: impl Iterator<Item = &'a HeaderValue>) -> HeaderValue {
    let mut entries: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut push = |entry: &str| {
        let media_type = entry
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media_type.is_empty() || seen.contains(&media_type) {
            return;
        }
        seen.push(media_type);
        entries.push(entry.to_owned());
    };
    let mut taken = 0;
    for value in client_values {
        // Header values may hold obs-text; anything not UTF-8 is skipped rather than mangled.
        let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
            continue;
        };
        for entry in split_list(text) {
            if taken >= MAX_CLIENT_TYPES {
                break;
            }
            taken += 1;
            push(entry);
        }
    }
    for media_type in MANIFEST_ACCEPT {
        push(media_type);
    }
    let joined = entries.join(", ");
    HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_ACCEPT))
}

/// [`MANIFEST_ACCEPT`] joined, for when there are no client values to merge.
const DEFAULT_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

/// Splits a comma-separated header list, ignoring commas inside quoted parameter values; trims elements and
/// drops empty ones.
fn split_list(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(value: &HeaderValue) -> Vec<String> {
        value
            .to_str()
            .unwrap()
            .split(", ")
            .map(str::to_owned)
            .collect()
    }

    // Rule: without client values, the full list is sent, and it matches the documented constant.
    #[test]
    fn full_list_by_default() {
        let value = manifest_accept(std::iter::empty());
        assert_eq!(entries(&value), MANIFEST_ACCEPT);
        assert_eq!(value, DEFAULT_ACCEPT);
    }

    // Rule: client types come first with their q-values; ours follow without duplicates.
    #[test]
    fn merges_client_types() {
        let client = [
            HeaderValue::from_static(
                "application/vnd.docker.distribution.manifest.v2+json; q=0.9, */*;q=0.1",
            ),
            HeaderValue::from_static("APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON"),
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        ];
        let got = entries(&manifest_accept(client.iter()));
        assert_eq!(
            got[0],
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9"
        );
        assert_eq!(got[1], "*/*;q=0.1");
        assert_eq!(got[2], "APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON");
        // `*/*` is the only entry not in our list; the two listed types are not repeated.
        assert_eq!(got.len(), 1 + MANIFEST_ACCEPT.len());
        for media_type in MANIFEST_ACCEPT {
            let n = got
                .iter()
                .filter(|e| e.to_ascii_lowercase().starts_with(media_type))
                .count();
            assert_eq!(n, 1, "{media_type}");
        }
    }

    // Rule: commas inside quoted parameters do not split an entry; empty elements vanish.
    #[test]
    fn quoted_commas_and_empties() {
        let client = [HeaderValue::from_static(
            r#"application/x;p="a,b", , application/y"#,
        )];
        let got = entries(&manifest_accept(client.iter()));
        assert_eq!(&got[..2], [r#"application/x;p="a,b""#, "application/y"]);
    }

    // Rule: a flood of client values is capped, and our full list is still there.
    #[test]
    fn client_list_is_capped() {
        let long: String = (0..200)
            .map(|i| format!("application/t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let client = [HeaderValue::from_str(&long).unwrap()];
        let got = entries(&manifest_accept(client.iter()));
        assert_eq!(got.len(), MAX_CLIENT_TYPES + MANIFEST_ACCEPT.len());
    }
}
