//! Upstream `Location` and `Link` headers: `rewrite_location` / `rewrite_link` must never panic, and a
//! location mapped onto the gateway must stay on the gateway's origin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::{rewrite_link, rewrite_location, LocationRewrite, RewriteContext};
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A first byte below 8 picks the context (upstream with a base path, path prefix, name map).
    let (selector, header) = match text.as_bytes().first() {
        Some(&b) if b < 8 => (b, &text[1..]),
        _ => (0, text),
    };
    let base = Url::parse(if selector & 1 == 0 {
        "https://registry.test"
    } else {
        "http://127.0.0.1:5000/base"
    })
    .expect("static URL");
    let gateway = Url::parse("https://docker.test:8443").expect("static URL");
    let request_url = base
        .join("v2/library/alpine/blobs/uploads/")
        .expect("static URL");
    let ctx = RewriteContext {
        upstream_base: &base,
        gateway: &gateway,
        path_prefix: (selector & 2 != 0).then_some("gcr.test"),
        name_map: (selector & 4 != 0).then_some(("library/alpine", "alpine")),
    };
    if let Ok(LocationRewrite::Local(local)) = rewrite_location(header, &request_url, &ctx) {
        assert!(local.starts_with("https://docker.test:8443/v2/"), "{local}");
        let parsed = Url::parse(&local).expect("a local rewrite is a URL");
        assert_eq!(parsed.origin(), gateway.origin(), "{local}");
    }
    let _ = rewrite_link(header, &request_url, &ctx);
});
