//! `[auth.ldap]` and `[[tenant]] ldap_groups`.

use std::collections::HashMap;

use url::Url;

use super::{Validator, S};
use crate::model::{LdapConfig, Secret};
use crate::raw::RawLdap;

/// The filter used when `user_filter` is left out.
const DEFAULT_USER_FILTER: &str = "(uid={user})";
/// The attribute used when `group_attribute` is left out (the `memberof` overlay, Active Directory).
const DEFAULT_GROUP_ATTRIBUTE: &str = "memberOf";

/// `ldap://` (plain, or with `starttls`) or `ldaps://`; no path, no credentials in the URL.
fn ldap_url(s: &str, starttls: bool) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match url.scheme() {
        "ldap" => {}
        "ldaps" if starttls => {
            return Err(format!(
                "`{s}`: ldaps:// is TLS from the start; starttls = true is for ldap:// URLs"
            ))
        }
        "ldaps" => {}
        other => {
            return Err(format!(
                "`{s}`: the scheme is `{other}`; write ldap:// (with starttls = true) or ldaps://"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{s}` names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{s}`: put the service account in bind_dn and bind_password, not in the URL"
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(format!("`{s}`: an LDAP server URL has no path or query"));
    }
    Ok(url)
}

/// The filter must hold `{user}` once it is written as a parenthesised LDAP filter: without the placeholder
/// every user name would find the same entry.
fn user_filter(s: &str) -> Result<String, String> {
    if !s.contains("{user}") {
        return Err(format!("`{s}` has no `{{user}}` placeholder"));
    }
    if !(s.starts_with('(') && s.ends_with(')')) {
        return Err(format!("`{s}` is not a parenthesised LDAP filter"));
    }
    Ok(s.to_string())
}

fn non_empty(s: &str, what: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(format!("{what} is empty"))
    } else {
        Ok(s.to_string())
    }
}

pub(super) fn ldap(v: &mut Validator<'_>, raw: &S<RawLdap>) -> Option<LdapConfig> {
    let r = raw.get_ref();
    let starttls = r.starttls.as_ref().is_some_and(|b| *b.get_ref());
    let url = v.check(&r.url, "auth.ldap.url", |s| ldap_url(s, starttls));
    let ca =
        r.ca.as_ref()
            .and_then(|p| v.readable_file(p, "auth.ldap.ca"));
    let bind_dn = v.check(&r.bind_dn, "auth.ldap.bind_dn", |s| {
        non_empty(s, "the service DN")
    });
    let password = v.secret(
        "auth.ldap.bind_password",
        &r.bind_password,
        &r.bind_password_env,
        &r.bind_password_file,
    );
    let given = [
        &r.bind_password,
        &r.bind_password_env,
        &r.bind_password_file,
    ]
    .iter()
    .any(|o| o.is_some());
    if !given {
        v.err(
            raw,
            "auth.ldap.bind_password",
            "the service bind needs a password (bind_password, bind_password_env or bind_password_file); \
             an empty simple bind is anonymous",
        );
    }
    let user_base = v.check(&r.user_base, "auth.ldap.user_base", |s| {
        non_empty(s, "the search base")
    });
    let filter = match &r.user_filter {
        Some(f) => v.check(f, "auth.ldap.user_filter", |s| user_filter(s)),
        None => Some(DEFAULT_USER_FILTER.to_string()),
    };
    let group_attribute = match &r.group_attribute {
        Some(a) => v.check(a, "auth.ldap.group_attribute", |s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                Ok(s.clone())
            } else {
                Err(format!("`{s}` is not an attribute name"))
            }
        }),
        None => Some(DEFAULT_GROUP_ATTRIBUTE.to_string()),
    };
    Some(LdapConfig {
        url: url?,
        starttls,
        ca,
        bind_dn: bind_dn?,
        bind_password: Secret::new(password?),
        user_base: user_base?,
        user_filter: filter?,
        group_attribute: group_attribute?,
    })
}

/// A tenant's group DNs. DNs compare case-insensitively and without spaces after commas (as directories
/// return them), so they are normalised the same way the auth crate normalises what the directory says; a
/// group names one tenant.
pub(super) fn groups(
    v: &mut Validator<'_>,
    raw: &[S<String>],
    key: &str,
    seen: &mut HashMap<String, String>,
    tenant: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for g in raw {
        let dn = g.get_ref();
        if !dn.contains('=') {
            v.err(
                g,
                key,
                format!("`{dn}` is not a DN (like cn=dev,ou=groups,dc=corp)"),
            );
            continue;
        }
        let norm = normalise_dn(dn);
        if let Some(other) = seen.insert(norm, tenant.to_string()) {
            v.err(
                g,
                key,
                format!("group `{dn}` already maps to tenant `{other}`; a group names one tenant"),
            );
            continue;
        }
        out.push(dn.clone());
    }
    out
}

/// Lower case, no spaces around `,` and `=`: enough to compare the DNs people write with those directories
/// return.
fn normalise_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("=")
                .to_lowercase()
        })
        .collect::<Vec<_>>()
        .join(",")
}
