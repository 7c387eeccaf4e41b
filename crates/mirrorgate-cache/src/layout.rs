//! Where each fact lives under `[cache] dir`. The filesystem itself is the index that survives restarts: every
//! fact is one file written whole and renamed into place, so a crash leaves the old fact or the new one.
//!
//! ```text
//! tmp/<n>                         fills and writes in progress; emptied at start
//! blobs/<algorithm>/<encoded>     content by digest (blobs and manifests); mtime = last use (LRU order)
//! blobs/<algorithm>/<encoded>.type  the Content-Type a manifest was served with
//! refs/<scope hash>/<algorithm>-<encoded>   empty: this scope (route + repository) references the digest
//! tags/<scope hash>/<tag>         "<digest>\n<fetch time, unix seconds>\n"
//! ```

use std::path::{Path, PathBuf};

use mirrorgate_registry::{Digest, Tag};

use crate::verify::sha256_of;

pub(crate) const TYPE_SUFFIX: &str = ".type";

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: PathBuf) -> Self {
        Layout { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir()
            .join(digest.algorithm())
            .join(digest.encoded())
    }

    pub(crate) fn media_type(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir()
            .join(digest.algorithm())
            .join(format!("{}{TYPE_SUFFIX}", digest.encoded()))
    }

    /// A scope (route + repository) becomes a fixed-length directory name: repository names hold `/` and may
    /// be long, and the hash keeps every scope one level deep.
    fn scope_dir(&self, kind: &str, scope: &str) -> PathBuf {
        let hash = sha256_of(scope.as_bytes());
        let hex = hash.split_once(':').map_or(hash.as_str(), |(_, h)| h);
        self.root.join(kind).join(hex)
    }

    pub(crate) fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    pub(crate) fn tags_dir(&self) -> PathBuf {
        self.root.join("tags")
    }

    pub(crate) fn scope_refs_dir(&self, scope: &str) -> PathBuf {
        self.scope_dir("refs", scope)
    }

    pub(crate) fn scope_tags_dir(&self, scope: &str) -> PathBuf {
        self.scope_dir("tags", scope)
    }

    /// The file name of a reference: `<algorithm>-<encoded>` (a `:` is awkward in file names).
    pub(crate) fn reference_name(digest: &Digest) -> String {
        format!("{}-{}", digest.algorithm(), digest.encoded())
    }

    pub(crate) fn reference(&self, scope: &str, digest: &Digest) -> PathBuf {
        self.scope_refs_dir(scope)
            .join(Self::reference_name(digest))
    }

    pub(crate) fn tag(&self, scope: &str, tag: &Tag) -> PathBuf {
        // Tags never start with `.` and hold only `[A-Za-z0-9_.-]`: safe as a file name.
        self.scope_tags_dir(scope).join(tag.as_str())
    }
}
