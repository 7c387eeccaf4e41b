//! The file-descriptor limit: raised to its hard limit at start, because every client connection and every
//! upstream connection is one, and distributions still default the soft limit to 1024.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and logs both values. Returns the soft limit in force
/// afterwards (`None`: unlimited), which the connection caps keep headroom below.
pub fn raise_nofile_limit() -> Option<u64> {
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        tracing::info!(
            soft = ?before.current,
            hard = ?before.maximum,
            "file-descriptor limit already at its hard limit"
        );
        return before.current;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            let after = getrlimit(Resource::Nofile);
            tracing::info!(
                old = ?before.current,
                new = ?after.current,
                "raised the file-descriptor limit (RLIMIT_NOFILE) to its hard limit"
            );
            after.current
        }
        Err(error) => {
            tracing::warn!(
                %error,
                soft = ?before.current,
                hard = ?before.maximum,
                "cannot raise the file-descriptor limit; connection caps stay below the soft limit"
            );
            before.current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins that after the call the soft limit is the hard limit (raising to the hard limit needs no privilege).
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let soft = raise_nofile_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(soft, now.current);
    }
}
