//! Config → the plain specs the auth and limits crates take. Kept here, in the one crate that knows both the
//! config types and those crates, so neither of them depends on the config schema.

use std::sync::Arc;

use mirrorgate_auth::{
    AuthSpec, LdapSpec, PasswordPolicy, TenantSpec, TokenSpec, DEFAULT_REFRESH_TTL,
    LDAP_CONNECTIONS, LDAP_TIMEOUT,
};
use mirrorgate_config::Config;
use mirrorgate_limits::{AnonymousLimits, LimitsSpec, SharedSpec, TenantLimits};

/// Whether the config asks for client authentication at all; without `[auth]` every route is open.
pub fn auth_enabled(config: &Config) -> bool {
    config.auth.htpasswd.is_some()
        || config.auth.api_tokens.is_some()
        || config.auth.token.is_some()
        || config.auth.ldap.is_some()
        || !config.tenants.is_empty()
}

pub fn tenant_specs(config: &Config) -> Vec<TenantSpec> {
    config
        .tenants
        .iter()
        .map(|t| TenantSpec {
            name: t.name.clone(),
            users: t.users.clone(),
            cidrs: t.cidrs.clone(),
            allow: t.allow.clone(),
            deny: t.deny.clone(),
            ldap_groups: t.ldap_groups.clone(),
        })
        .collect()
}

pub fn auth_spec(config: &Config) -> AuthSpec {
    AuthSpec {
        htpasswd: config.auth.htpasswd.clone(),
        api_tokens: config.auth.api_tokens.clone(),
        token: config.auth.token.as_ref().map(|t| TokenSpec {
            key_path: t.key.clone(),
            issuer: t.issuer.clone(),
            service: t.service.clone(),
            ttl: t.ttl,
            refresh_ttl: DEFAULT_REFRESH_TTL,
        }),
        tenants: tenant_specs(config),
        password: PasswordPolicy::default(),
        ldap: config.auth.ldap.as_ref().map(|l| LdapSpec {
            url: l.url.to_string(),
            starttls: l.starttls,
            ca: l.ca.clone(),
            bind_dn: l.bind_dn.clone(),
            bind_password: l.bind_password.expose().to_owned(),
            user_base: l.user_base.clone(),
            user_filter: l.user_filter.clone(),
            group_attribute: l.group_attribute.clone(),
            timeout: LDAP_TIMEOUT,
            max_connections: LDAP_CONNECTIONS,
        }),
    }
}

pub fn limits_spec(config: &Config) -> LimitsSpec {
    let tenants = config
        .tenants
        .iter()
        .map(|t| {
            let limits = TenantLimits {
                requests_per_second: t.requests_per_second,
                burst: t.burst,
                bytes_per_second: t.bytes_per_second,
                concurrent_requests: t.concurrent_requests,
                tenant_requests_per_second: t.tenant_requests_per_second,
                tenant_bytes_per_second: t.tenant_bytes_per_second,
                tenant_concurrent_requests: t.tenant_concurrent_requests,
                bytes_per_day: t.bytes_per_day,
            };
            (Arc::<str>::from(t.name.as_str()), limits)
        })
        .collect();
    let a = &config.limits.anonymous;
    LimitsSpec {
        tenants,
        anonymous: AnonymousLimits {
            requests_per_second: a.requests_per_second,
            burst: a.burst,
            bytes_per_second: a.bytes_per_second,
            concurrent_requests: a.concurrent_requests,
        },
        shared: config.limits.redis.as_ref().map(|url| {
            let mut s = SharedSpec::new(url.as_str());
            s.fail_open = config.limits.redis_fail_open;
            s
        }),
    }
}
