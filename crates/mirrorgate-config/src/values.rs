//! Parsers for the value shapes the contract uses: durations, sizes, socket addresses, URLs.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use url::Url;

use crate::raw::RawSize;

/// `"90s"`, `"5m"`, `"1h30m"` (humantime); zero is refused because every duration here is a timeout or TTL.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. \"90s\" or \"5m\""))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// The one rule for every limit (counts and sizes): zero is refused, and no limit is written by leaving the
/// key out. A zero that meant "unlimited" in one place and "nothing allowed" (a stalled body) in another was
/// a trap; now neither reading exists.
pub(crate) const ZERO_LIMIT: &str = "must be greater than zero; omit the key for no limit";

/// A count limit (requests per second, burst, concurrent requests); see [`ZERO_LIMIT`].
pub(crate) fn count(n: u32) -> Result<NonZeroU32, String> {
    NonZeroU32::new(n).ok_or_else(|| ZERO_LIMIT.to_owned())
}

/// `"50MiB"`, `"5 MB"` or an integer number of bytes, for byte limits; see [`ZERO_LIMIT`].
pub(crate) fn size(raw: &RawSize) -> Result<NonZeroU64, String> {
    let n = match raw {
        RawSize::Bytes(n) => *n,
        RawSize::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|e| {
                format!("`{s}` is not a size ({e}); write e.g. \"50MiB\" or a number of bytes")
            })?
            .as_u64(),
    };
    NonZeroU64::new(n).ok_or_else(|| ZERO_LIMIT.to_owned())
}

/// `127.0.0.1:8443`, `[::]:443`.
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not an address:port (e.g. \"0.0.0.0:443\" or \"[::]:443\")"))
}

/// An http(s) URL with a host and no path, query or credentials: an upstream registry or endpoint base.
pub(crate) fn base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{s}`: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{s}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{s}` carries credentials in the URL; use upstream_username/upstream_password(_env/_file)"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{s}` must be a base URL without path or query (registries serve /v2/ at the root)"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the duration format of the contract.
    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert!(duration("0s").is_err());
        assert!(duration("ninety").is_err());
    }

    // Pins the size format: binary units are binary, bare integers are bytes.
    #[test]
    fn sizes() {
        let bytes = |n: u64| NonZeroU64::new(n).ok_or_else(String::new);
        assert_eq!(
            size(&RawSize::Text("50MiB".into())),
            bytes(50 * 1024 * 1024)
        );
        assert_eq!(size(&RawSize::Text("1GiB".into())), bytes(1 << 30));
        assert_eq!(size(&RawSize::Bytes(1000)), bytes(1000));
        assert!(size(&RawSize::Text("lots".into())).is_err());
        assert_eq!(size(&RawSize::Bytes(0)), Err(ZERO_LIMIT.to_owned()));
        assert_eq!(
            size(&RawSize::Text("0 MiB".into())),
            Err(ZERO_LIMIT.to_owned())
        );
        assert_eq!(count(0), Err(ZERO_LIMIT.to_owned()));
        assert_eq!(count(3).map(NonZeroU32::get), Ok(3));
    }

    // Pins that upstream URLs are bases: no path, no userinfo.
    #[test]
    fn base_urls() {
        assert!(base_url("https://registry-1.docker.io").is_ok());
        assert!(base_url("http://127.0.0.1:5000/").is_ok());
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("https://u:p@x").is_err());
        assert!(base_url("https://x/v2").is_err());
        assert!(base_url("not a url").is_err());
    }
}
