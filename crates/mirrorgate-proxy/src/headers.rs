//! Header hygiene between client and upstream: hop-by-hop headers never cross, the client's credentials never
//! reach an upstream, and `X-Forwarded-*` tell the truth.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus proxy credentials.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Request headers as they go upstream: hop-by-hop, `Host` (the client library sets the upstream's),
/// `Authorization` (issued for us, never for the upstream) and cookies removed; `X-Forwarded-*` set.
pub fn upstream_request_headers(client: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> HeaderMap {
    let mut h = client.clone();
    remove_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h.remove(header::AUTHORIZATION);
    h.remove(header::COOKIE);
    let forwarded_for = match (
        trusted.iter().any(|n| n.contains(&peer)),
        client.get("x-forwarded-for"),
    ) {
        (true, Some(prev)) => prev.to_str().ok().map(|p| format!("{p}, {peer}")),
        _ => None,
    }
    .unwrap_or_else(|| peer.to_string());
    h.remove("forwarded");
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    h
}

/// The client address to believe: the left-most untrusted hop of `X-Forwarded-For` when the peer is a
/// trusted proxy, else the peer itself.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    // Pins "never forward the client's Authorization" and hop-by-hop removal, including Connection-named ones.
    #[test]
    fn credentials_and_hop_headers_never_go_upstream() {
        let client = map(&[
            ("authorization", "Basic dTpw"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("accept", "application/json"),
            ("host", "docker.test"),
        ]);
        let up = upstream_request_headers(&client, "192.0.2.1".parse().unwrap(), &[]);
        for gone in ["authorization", "connection", "x-secret", "te", "host"] {
            assert!(!up.contains_key(gone), "{gone} leaked");
        }
        assert_eq!(up["accept"], "application/json");
        assert_eq!(up["x-forwarded-for"], "192.0.2.1");
    }

    // Pins that X-Forwarded-For is believed only from trusted proxies.
    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let h = map(&[("x-forwarded-for", "203.0.113.9")]);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip("192.0.2.1".parse().unwrap(), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.1.2.3".parse().unwrap(), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let up = upstream_request_headers(&h, "192.0.2.1".parse().unwrap(), &trusted);
        assert_eq!(up["x-forwarded-for"], "192.0.2.1");
    }
}
