//! Walking an error's cause chain, in one place for every crate: [`Report`] displays the whole chain on one line
//! (`error: cause: cause`) for log lines and command-line messages, and [`find_source`] finds a typed cause
//! anywhere in it (a refusal buried under hyper's "client error (Connect)", say).
//!
//! Why a crate of its own: the cache, the usage ledger, the proxy and the binary all log errors with sources,
//! and none of them is a natural dependency of the others.

#![forbid(unsafe_code)]

use std::error::Error;
use std::fmt;

/// Displays an error with its whole source chain, `error: cause: cause` (a top-level error alone often says
/// little: hyper's "client error (Connect)").
pub struct Report<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(c) = cur {
            write!(f, ": {c}")?;
            cur = c.source();
        }
        Ok(())
    }
}

/// The first error of type `T` in `error`'s chain, `error` itself included.
pub fn find_source<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("leaf")
        }
    }
    impl Error for Leaf {}

    #[derive(Debug)]
    struct Wrap(Leaf);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrap")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    // Pins the one-line chain and the typed search through it.
    #[test]
    fn chain_is_displayed_and_searched() {
        let e = Wrap(Leaf);
        assert_eq!(Report(&e).to_string(), "wrap: leaf");
        assert!(find_source::<Leaf>(&e).is_some());
        assert!(find_source::<Wrap>(&e).is_some());
        assert!(find_source::<std::io::Error>(&e).is_none());
    }
}
