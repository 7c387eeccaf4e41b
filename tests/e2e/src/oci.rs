//! Test images written by hand as OCI image layouts, so no image builder is needed and the bytes (and so
//! the digests) are known to the test: a pulled digest can be compared with the one written.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use sha2::{Digest, Sha256};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed tar: no compression crate needed, and the layer digest equals the diff_id.
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A content descriptor as it appears in manifests and indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// `(os, architecture)` for entries of an index.
    pub platform: Option<(String, String)>,
}

impl Descriptor {
    fn to_json(&self) -> serde_json::Value {
        let mut v =
            json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size });
        if let Some((os, arch)) = &self.platform {
            v["platform"] = json!({ "os": os, "architecture": arch });
        }
        v
    }
}

/// One image (single-platform or multi-arch) written into an OCI layout folder.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// The layout folder (holds `oci-layout`, `index.json`, `blobs/`).
    pub layout: PathBuf,
    pub tag: String,
    /// The top-level object: an image manifest, or an image index for multi-arch images.
    pub top: Descriptor,
    /// Per-platform image manifests (one entry for a single-platform image: the same as `top`).
    pub manifests: Vec<Descriptor>,
    /// Layer digests, in the order of `manifests`.
    pub layers: Vec<Descriptor>,
}

impl OciImage {
    /// Writes a linux/amd64 image with one uncompressed tar layer holding `layer_bytes` deterministic
    /// pseudo-random bytes (seeded by `name` and `tag`, so different images share no blobs). The layer is
    /// streamed to disk and hashed while written: a 1 GiB layer costs 1 MiB of memory.
    pub fn write_layout(
        dir: &Path,
        name: &str,
        tag: &str,
        layer_bytes: usize,
    ) -> anyhow::Result<Self> {
        init_layout(dir)?;
        let (manifest, layer) = write_image(dir, name, tag, "amd64", layer_bytes)?;
        add_ref(dir, &manifest, tag)?;
        Ok(Self {
            layout: dir.to_path_buf(),
            tag: tag.into(),
            top: manifest.clone(),
            manifests: vec![manifest],
            layers: vec![layer],
        })
    }

    /// Writes a multi-arch image: an OCI index over linux/amd64 and linux/arm64 manifests, each with its own
    /// layer of `layer_bytes`.
    pub fn write_multi_arch(
        dir: &Path,
        name: &str,
        tag: &str,
        layer_bytes: usize,
    ) -> anyhow::Result<Self> {
        init_layout(dir)?;
        let mut manifests = Vec::new();
        let mut layers = Vec::new();
        for arch in ["amd64", "arm64"] {
            let (mut m, l) = write_image(dir, name, tag, arch, layer_bytes)?;
            m.platform = Some(("linux".into(), arch.into()));
            manifests.push(m);
            layers.push(l);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": manifests.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let top = write_blob(dir, MT_INDEX, &serde_json::to_vec(&index)?)?;
        add_ref(dir, &top, tag)?;
        Ok(Self {
            layout: dir.to_path_buf(),
            tag: tag.into(),
            top,
            manifests,
            layers,
        })
    }

    /// `oci:<layout>:<tag>`, the skopeo source reference.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// Digest of the (first) layer.
    pub fn layer_digest(&self) -> &str {
        self.layers.first().map(|d| d.digest.as_str()).unwrap_or("")
    }

    /// True for an image index.
    pub fn is_multi_arch(&self) -> bool {
        self.top.media_type == MT_INDEX
    }
}

fn init_layout(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .context("writing oci-layout")?;
    if !dir.join("index.json").exists() {
        let index = json!({ "schemaVersion": 2, "manifests": [] });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)
            .context("writing index.json")?;
    }
    Ok(())
}

/// Points `tag` at `desc` in the layout's index.json (replacing an older entry of the same tag).
fn add_ref(dir: &Path, desc: &Descriptor, tag: &str) -> anyhow::Result<()> {
    let path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path)?).context("parsing index.json")?;
    let mut entry = desc.to_json();
    entry["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    let list = index["manifests"]
        .as_array_mut()
        .context("index.json has no manifests array")?;
    list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    list.push(entry);
    std::fs::write(&path, serde_json::to_vec(&index)?).context("writing index.json")?;
    Ok(())
}

/// Layer, config and manifest for one platform; returns (manifest, layer) descriptors.
fn write_image(
    dir: &Path,
    name: &str,
    tag: &str,
    arch: &str,
    layer_bytes: usize,
) -> anyhow::Result<(Descriptor, Descriptor)> {
    let layer = write_layer(dir, &format!("{name}:{tag}:{arch}"), layer_bytes)?;
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Labels": { "org.example.mirrorgate-e2e": format!("{name}:{tag}") } },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        "history": [ { "created": "2024-01-01T00:00:00Z", "created_by": "mirrorgate-e2e" } ],
    });
    let config = write_blob(dir, MT_CONFIG, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config.to_json(),
        "layers": [ layer.to_json() ],
    });
    let manifest = write_blob(dir, MT_MANIFEST, &serde_json::to_vec(&manifest)?)?;
    Ok((manifest, layer))
}

fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> anyhow::Result<Descriptor> {
    let digest = format!("sha256:{:x}", Sha256::digest(bytes));
    let path = blob_path(dir, &digest);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: bytes.len() as u64,
        platform: None,
    })
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A one-file ustar archive, written 1 MiB at a time to a temp file, then renamed to its digest.
fn write_layer(dir: &Path, seed: &str, size: usize) -> anyhow::Result<Descriptor> {
    let tmp = dir
        .join("blobs/sha256")
        .join(format!(".tmp-{:x}", Sha256::digest(seed.as_bytes())));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        len: 0,
    };
    out.write_all(&tar_header("payload.bin", size as u64))?;
    let mut rng = XorShift::new(seed);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill(&mut chunk[..n]);
        out.write_all(&chunk[..n])?;
        left -= n;
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; pad + 1024])?; // pad to a block, then the two zero end blocks
    out.flush()?;
    let digest = format!("sha256:{:x}", out.hash.finalize_reset());
    let len = out.len;
    drop(out);
    std::fs::rename(&tmp, blob_path(dir, &digest)).context("renaming the layer blob")?;
    Ok(Descriptor {
        media_type: MT_LAYER.into(),
        digest,
        size: len,
        platform: None,
    })
}

/// A POSIX ustar header for one regular file.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"14707340400\0"); // 2024-01-01T00:00:00Z
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// xorshift64*: fast, deterministic, incompressible enough that no layer of the transport shrinks it.
struct XorShift(u64);

impl XorShift {
    fn new(seed: &str) -> Self {
        let d = Sha256::digest(seed.as_bytes());
        let mut s = [0u8; 8];
        s.copy_from_slice(&d[..8]);
        Self(u64::from_le_bytes(s) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(p: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    // Every blob is stored under its own sha256, and the manifest references the layer and the config.
    #[test]
    fn layout_blobs_match_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let img = OciImage::write_layout(dir.path(), "hello", "latest", 3000).unwrap();
        for entry in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            assert_eq!(
                format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap())),
                name
            );
        }
        let m = read_json(&blob_path(dir.path(), &img.top.digest));
        assert_eq!(m["layers"][0]["digest"], img.layer_digest());
        let cfg = read_json(&blob_path(
            dir.path(),
            m["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(cfg["rootfs"]["diff_ids"][0], img.layer_digest());
        // tar: header + 3000 bytes padded to 3072 + 1024 end blocks
        assert_eq!(img.layers[0].size, 512 + 3072 + 1024);
        let index = read_json(&dir.path().join("index.json"));
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
    }

    // The same name and tag give the same bytes; another name gives other bytes.
    #[test]
    fn layers_are_deterministic_and_distinct() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let x = OciImage::write_layout(a.path(), "hello", "latest", 10_000).unwrap();
        let y = OciImage::write_layout(b.path(), "hello", "latest", 10_000).unwrap();
        let z = OciImage::write_layout(b.path(), "other", "latest", 10_000).unwrap();
        assert_eq!(x.top.digest, y.top.digest);
        assert_ne!(x.layer_digest(), z.layer_digest());
    }

    // A multi-arch image is an index over two platform manifests, and tar(1) can read a layer.
    #[test]
    fn multi_arch_index_and_readable_tar() {
        let dir = tempfile::tempdir().unwrap();
        let img = OciImage::write_multi_arch(dir.path(), "multi", "v1", 1000).unwrap();
        assert!(img.is_multi_arch());
        let idx = read_json(&blob_path(dir.path(), &img.top.digest));
        let archs: Vec<_> = idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].clone())
            .collect();
        assert_eq!(archs, vec!["amd64", "arm64"]);
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(blob_path(dir.path(), img.layer_digest()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1000"));
    }
}
