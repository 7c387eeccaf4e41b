//! LDAP users and groups against Debian's slapd (issue 20, config.md second round `[auth.ldap]`, README
//! "Corporate egress"): a directory user pulls with skopeo in the tenant of its group; wrong passwords, empty
//! passwords and filter injection are refused; a user in no mapped group has no tenant's rules; the directory
//! going down is 503 for LDAP users only; StartTLS with the test CA.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::slapd::{group_dn, LdapUser, BASE, SERVICE_DN, SERVICE_PASSWORD};
use mirrorgate_e2e::{push, route, OciImage, Registry, Slapd, Stage};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const USERS: &[LdapUser<'static>] = &[
    LdapUser {
        uid: "alice",
        password: "alice-pw",
        groups: &["dev"],
    },
    LdapUser {
        uid: "bob",
        password: "bob-pw",
        groups: &["dev"],
    },
    LdapUser {
        uid: "carol",
        password: "carol-pw",
        groups: &["sales"],
    },
];

/// One image at `library/app:v1` upstream.
fn upstream(s: &Stage) -> Registry {
    let registry = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "app", "latest", 4 * 1024).unwrap();
    push(&image, &registry, "library/app:v1", None).unwrap();
    Htpasswd::create(&s.t.path().join("htpasswd"), &[("olga", "olga-pw", 4)]).unwrap();
    registry
}

/// htpasswd user olga in tenant ops, LDAP group dev as tenant dev, the token server, and a private route.
fn config(upstream: &Registry, ldap_lines: &str) -> String {
    format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n[auth.token]\n\n[auth.ldap]\n{ldap_lines}\n\
         bind_dn = {SERVICE_DN:?}\nbind_password = {SERVICE_PASSWORD:?}\nuser_base = \"ou=people,{BASE}\"\n\
         user_filter = \"(uid={{user}})\"\ngroup_attribute = \"memberOf\"\n\n\
         [[tenant]]\nname = \"dev\"\nldap_groups = [{:?}]\nallow = [\"docker.test/library/*\"]\n\n\
         [[tenant]]\nname = \"ops\"\nusers = [\"olga\"]\nallow = [\"docker.test/library/*\"]\n\n{}",
        group_dn("dev"),
        route("docker.test", &upstream.url(), "").replace("anonymous = true\n", "")
    )
}

/// GET the manifest of library/app:v1 as `user`/`password`: (status, body).
fn manifest(s: &Stage, user: &str, password: &str) -> (u16, String) {
    let resp = s.send(
        &s.get("docker.test", "/v2/library/app/manifests/v1")
            .with_header("accept", MT_MANIFEST)
            .with_header("authorization", &basic_auth(user, password)),
    );
    (resp.status, resp.text())
}

/// Simple binds slapd logged for `uid` so far (its stats log names each BIND's DN and then its mechanism).
fn binds(slapd: &Slapd, uid: &str) -> usize {
    slapd
        .log()
        .matches(&format!(
            "BIND dn=\"uid={uid},ou=people,{BASE}\" mech=SIMPLE"
        ))
        .count()
}

// Pins issue 20 (LDAP): an LDAP user in a mapped group pulls with skopeo (token dance included) in that group's
// tenant; a wrong password is 401; a user whose groups map to no tenant gets no tenant's rules (403); `*` and
// `)(uid=*` in the name match nothing (401); an empty password is 401 without any bind reaching slapd; with slapd
// stopped an LDAP user gets 503 UNAVAILABLE while the htpasswd user still pulls.
#[test]
fn ldap_users_groups_and_directory_down() {
    let s = Stage::new("ldap");
    let registry = upstream(&s);
    let mut slapd = Slapd::start(s.t.path(), &s.ca, USERS).unwrap();
    let gw = s.gateway(&config(&registry, &format!("url = {:?}", slapd.url())));

    // the group's tenant: skopeo pulls, through the token endpoint and a bearer token
    let image = s.via("docker.test", "library/app:v1");
    s.skopeo()
        .creds("alice", "alice-pw")
        .pull(&image, &s.t.sub("alice").unwrap())
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.log()));
    assert_eq!(manifest(&s, "alice", "alice-pw").0, 200);

    // wrong password
    let (status, text) = manifest(&s, "alice", "wrong");
    assert_eq!(status, 401, "{text}");
    // a user whose groups name no tenant: verified, but no rules
    let (status, text) = manifest(&s, "carol", "carol-pw");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("DENIED"), "{text}");
    // filter injection: the name is escaped, so these find no entry even with a real password
    for user in ["*", "alice)(uid=*", "*)(|(uid=*"] {
        let (status, text) = manifest(&s, user, "alice-pw");
        assert_eq!(status, 401, "{user}: {text}");
    }
    // empty password: refused before any bind (an empty simple bind would be an anonymous success)
    let before = binds(&slapd, "bob");
    let (status, text) = manifest(&s, "bob", "");
    assert_eq!(status, 401, "{text}");
    assert_eq!(binds(&slapd, "bob"), before, "{}", slapd.log());

    // the directory goes down: LDAP users 503, htpasswd users unaffected
    slapd.stop();
    let (status, text) = manifest(&s, "bob", "bob-pw");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("UNAVAILABLE"), "{text}");
    s.skopeo()
        .creds("olga", "olga-pw")
        .pull(&image, &s.t.sub("olga").unwrap())
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.log()));
}

// Pins StartTLS with `ca`: the connection is upgraded before any bind (slapd logs the StartTLS operation), and
// without the CA the directory's certificate is not trusted, so LDAP users get 503, never a plain-text bind.
#[test]
fn ldap_starttls_with_the_test_ca() {
    let s = Stage::new("ldap-tls");
    let registry = upstream(&s);
    let slapd = Slapd::start(s.t.path(), &s.ca, USERS).unwrap();
    let ca = s.ca.ca_path().display().to_string();
    let _gw = s.gateway(&config(
        &registry,
        &format!("url = {:?}\nstarttls = true\nca = {ca:?}", slapd.url()),
    ));
    let (status, text) = manifest(&s, "alice", "alice-pw");
    assert_eq!(status, 200, "{text}");
    assert!(
        slapd.log().contains("oid=1.3.6.1.4.1.1466.20037"),
        "StartTLS: {}",
        slapd.log()
    );
    drop(_gw);

    let s2 = Stage::new("ldap-tls-untrusted");
    let registry2 = upstream(&s2);
    let _gw2 = s2.gateway(&config(
        &registry2,
        &format!("url = {:?}\nstarttls = true", slapd.url()),
    ));
    let (status, text) = manifest(&s2, "alice", "alice-pw");
    assert_eq!(status, 503, "{text}");
    assert_eq!(binds(&slapd, "alice"), 1, "{}", slapd.log());
}
