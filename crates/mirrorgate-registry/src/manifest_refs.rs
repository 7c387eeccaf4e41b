//! What a manifest references: the digests a client pulling it will ask for next (config, layers, an index's
//! child manifests, a subject). The cache uses this to learn which digests a repository may be served.

use crate::reference::Digest;

/// The digests `manifest` (image manifest or index, Docker or OCI) references; invalid JSON or digests yield
/// nothing rather than an error (the manifest is still served, only not used as evidence).
pub fn manifest_references(manifest: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |d: Option<&serde_json::Value>| {
        if let Some(d) = d.and_then(|d| d.get("digest")).and_then(|d| d.as_str()) {
            if let Ok(d) = Digest::parse(d) {
                out.push(d);
            }
        }
    };
    push(v.get("config"));
    push(v.get("subject"));
    for list in ["layers", "manifests", "blobs"] {
        if let Some(items) = v.get(list).and_then(|l| l.as_array()) {
            for item in items {
                push(Some(item));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins that config, layers and index children are all learned, and that junk yields nothing.
    #[test]
    fn references_of_manifest_and_index() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"bad"}}]}}"#
        );
        let got: Vec<String> = manifest_references(m.as_bytes())
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(got, vec![a.clone(), b]);
        let idx = format!(r#"{{"manifests":[{{"digest":"{a}"}}]}}"#);
        assert_eq!(manifest_references(idx.as_bytes()).len(), 1);
        assert!(manifest_references(b"not json").is_empty());
    }
}
