//! `[audit]`: where the audit trail goes and how it rotates.

use super::{Validator, S};
use crate::model::{AuditConfig, AuditTarget};
use crate::raw::RawAudit;

/// 100 MiB: a few hundred thousand lines, a day or more of a busy gateway, before the first rotation.
const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
const DEFAULT_KEEP: u32 = 10;

pub(super) fn audit(v: &mut Validator<'_>, raw: &S<RawAudit>) -> AuditConfig {
    let r = raw.get_ref();
    let target = match r.file.get_ref().as_str() {
        "-" => AuditTarget::Stdout,
        "" => {
            v.err(
                &r.file,
                "audit.file",
                "empty: name a file, or \"-\" for standard output",
            );
            AuditTarget::Stdout
        }
        path => AuditTarget::File(v.path(path)),
    };
    let max_size = v
        .size(&r.max_size, "audit.max_size")
        .map_or(DEFAULT_MAX_SIZE, |n| n.get());
    if let (AuditTarget::Stdout, Some(at)) = (&target, &r.max_size) {
        v.err(
            at,
            "audit.max_size",
            "standard output is not rotated; leave max_size out with file = \"-\"",
        );
    }
    let keep = r.keep.as_ref().map_or(DEFAULT_KEEP, |k| *k.get_ref());
    AuditConfig {
        target,
        max_size,
        keep,
    }
}
