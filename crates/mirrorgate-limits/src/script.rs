//! The shared-mode admission script and its inputs and outputs by name.
//!
//! Redis scripts take `KEYS` and `ARGV` by position and answer with a flat array. Both ends of that contract
//! are kept here and nowhere else: [`AdmitCall::invocation`] writes the positions the script reads (listed
//! above [`ADMIT_LUA`]), and [`AdmitReply::parse`] reads the positions it answers with, so the rest of shared
//! mode deals in [`SharedRequest`] and [`Verdict`].

use std::time::Duration;

use redis::{Script, ScriptInvocation};

use crate::decision::LimitScope;

/// GCRA for up to two rate keys, concurrency for up to two lease sets, and the daily quota, all or nothing.
/// An absent limit has max/interval 0 and its key is not touched.
///
/// KEYS: 1 first rate, 2 tenant rate, 3 first lease set, 4 tenant lease set, 5 quota.
/// ARGV: 1-3 first rate (interval µs, burst, scope), 4-6 tenant rate (same), 7-8 first lease set (max,
/// scope), 9-10 tenant lease set (max, scope), 11 quota limit, 12 bytes not yet flushed, 13 permit member,
/// 14 lease ms, 15 quota scope.
/// Reply: {verdict, scope, wait µs, limit, remaining}; verdicts 0 admitted, 1 rate, 2 concurrency, 3 quota.
pub(crate) const ADMIT_LUA: &str = r#"
local ADMITTED, RATE, CONCURRENCY, QUOTA = 0, 1, 2, 3
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local qmax = tonumber(ARGV[11])
if qmax > 0 then
  local used = tonumber(redis.call('GET', KEYS[5]) or '0') + tonumber(ARGV[12])
  if used >= qmax then return {QUOTA, tonumber(ARGV[15]), 0, qmax, 0} end
end
local tats = {}
local best = nil
for i = 1, 2 do
  local interval = tonumber(ARGV[3 * i - 2])
  if interval > 0 then
    local burst = tonumber(ARGV[3 * i - 1])
    local scope = tonumber(ARGV[3 * i])
    local tau = interval * (burst - 1)
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    if now < tat - tau then
      return {RATE, scope, math.ceil(tat - tau - now), burst, 0}
    end
    local remaining = math.floor((now + tau - tat) / interval)
    tats[i] = tat + interval
    if best == nil or remaining < best[2] then
      best = {burst, remaining, tats[i] - now, scope}
    end
  end
end
local member, lease = ARGV[13], tonumber(ARGV[14])
for i = 3, 4 do
  local max = tonumber(ARGV[2 * i + 1])
  if max > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[i]) >= max then
      return {CONCURRENCY, tonumber(ARGV[2 * i + 2]), 0, max, 0}
    end
  end
end
for i = 1, 2 do
  if tats[i] then
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  end
end
for i = 3, 4 do
  if tonumber(ARGV[2 * i + 1]) > 0 then
    redis.call('ZADD', KEYS[i], now_ms + lease, member)
    redis.call('PEXPIRE', KEYS[i], lease * 2)
  end
end
if best then return {ADMITTED, best[4], math.floor(best[3]), best[1], best[2]} end
return {ADMITTED, 0, 0, 0, 0}
"#;

/// One request-rate limit to check in Redis.
#[derive(Debug, Clone)]
pub(crate) struct RateArgs {
    /// Relative to the key prefix.
    pub(crate) key: String,
    pub(crate) interval: Duration,
    pub(crate) burst: u32,
    pub(crate) scope: LimitScope,
}

/// One concurrency cap (a lease set) to check in Redis.
#[derive(Debug, Clone)]
pub(crate) struct InflightArgs {
    /// Relative to the key prefix.
    pub(crate) key: String,
    pub(crate) max: u32,
    pub(crate) scope: LimitScope,
}

/// A tenant's daily byte quota as Redis must see it.
#[derive(Debug, Clone)]
pub(crate) struct QuotaArgs {
    /// Relative to the key prefix; names the UTC day.
    pub(crate) key: String,
    pub(crate) limit: u64,
    /// Bytes sent through this replica and not flushed to Redis yet.
    pub(crate) unflushed: u64,
    /// Retry time of a refusal.
    pub(crate) until_midnight: Duration,
}

/// Everything Redis must decide for one request.
#[derive(Debug, Default)]
pub(crate) struct SharedRequest {
    /// The per-user (or per-IP) rate.
    pub(crate) first_rate: Option<RateArgs>,
    pub(crate) tenant_rate: Option<RateArgs>,
    /// The per-user (or per-IP) concurrency cap.
    pub(crate) first_inflight: Option<InflightArgs>,
    pub(crate) tenant_inflight: Option<InflightArgs>,
    pub(crate) quota: Option<QuotaArgs>,
}

impl SharedRequest {
    pub(crate) fn is_empty(&self) -> bool {
        self.first_rate.is_none()
            && self.tenant_rate.is_none()
            && self.first_inflight.is_none()
            && self.tenant_inflight.is_none()
            && self.quota.is_none()
    }
}

/// One call of [`ADMIT_LUA`].
pub(crate) struct AdmitCall<'a> {
    pub(crate) request: &'a SharedRequest,
    pub(crate) key_prefix: &'a str,
    /// The permit's member in the lease sets (unique per replica and request).
    pub(crate) member: &'a str,
    pub(crate) lease: Duration,
}

impl AdmitCall<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.key_prefix)
    }

    /// The lease sets a granted permit is in (full keys), to renew and release it.
    pub(crate) fn inflight_keys(&self) -> Vec<String> {
        [&self.request.first_inflight, &self.request.tenant_inflight]
            .into_iter()
            .flatten()
            .map(|c| self.key(&c.key))
            .collect()
    }

    /// `KEYS` and `ARGV` in the order the script reads them.
    pub(crate) fn invocation<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let r = self.request;
        let unused = self.key("none");
        let mut call = script.prepare_invoke();
        for key in [
            r.first_rate.as_ref().map(|x| &x.key),
            r.tenant_rate.as_ref().map(|x| &x.key),
            r.first_inflight.as_ref().map(|x| &x.key),
            r.tenant_inflight.as_ref().map(|x| &x.key),
            r.quota.as_ref().map(|x| &x.key),
        ] {
            call.key(key.map_or_else(|| unused.clone(), |k| self.key(k)));
        }
        for rate in [&r.first_rate, &r.tenant_rate] {
            match rate {
                Some(rate) => call
                    .arg(micros(rate.interval).max(1))
                    .arg(rate.burst)
                    .arg(scope_code(rate.scope)),
                None => call.arg(0).arg(0).arg(0),
            };
        }
        for inflight in [&r.first_inflight, &r.tenant_inflight] {
            match inflight {
                Some(c) => call.arg(c.max).arg(scope_code(c.scope)),
                None => call.arg(0).arg(0),
            };
        }
        let (limit, unflushed) = r.quota.as_ref().map_or((0, 0), |q| (q.limit, q.unflushed));
        call.arg(limit)
            .arg(unflushed)
            .arg(self.member)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(scope_code(LimitScope::Tenant));
        call
    }
}

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted,
    RateLimited,
    ConcurrencyLimited,
    QuotaUsed,
}

/// The script's answer by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmitReply {
    pub(crate) verdict: Verdict,
    /// Whose limit decided (on admission: the rate limit with the least room left).
    pub(crate) scope: LimitScope,
    /// Refused by rate: until a retry can pass; admitted: until the full burst is back.
    pub(crate) wait: Duration,
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
}

impl AdmitReply {
    /// `None` for a reply the script cannot have sent (wrong length or codes): better refused as
    /// "unreachable" than read as some other verdict.
    pub(crate) fn parse(reply: &[i64]) -> Option<Self> {
        let [verdict, scope, wait, limit, remaining] = *reply else {
            return None;
        };
        let verdict = match verdict {
            0 => Verdict::Admitted,
            1 => Verdict::RateLimited,
            2 => Verdict::ConcurrencyLimited,
            3 => Verdict::QuotaUsed,
            _ => return None,
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Some(Self {
            verdict,
            scope: scope_from(scope)?,
            wait: Duration::from_micros(count(wait)),
            limit: count(limit),
            remaining: count(remaining),
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn scope_code(scope: LimitScope) -> u8 {
    match scope {
        LimitScope::User => 0,
        LimitScope::Tenant => 1,
        LimitScope::Ip => 2,
    }
}

fn scope_from(code: i64) -> Option<LimitScope> {
    match code {
        0 => Some(LimitScope::User),
        1 => Some(LimitScope::Tenant),
        2 => Some(LimitScope::Ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the reply contract: each verdict and scope code reads back by name; anything else is no verdict.
    #[test]
    fn replies_read_by_name() {
        let reply = AdmitReply::parse(&[2, 2, 0, 5, 0]).unwrap();
        assert_eq!(
            (reply.verdict, reply.scope, reply.limit),
            (Verdict::ConcurrencyLimited, LimitScope::Ip, 5)
        );
        let reply = AdmitReply::parse(&[0, 1, 1500, 10, 9]).unwrap();
        assert_eq!(reply.verdict, Verdict::Admitted);
        assert_eq!(reply.wait, Duration::from_micros(1500));
        assert_eq!(
            AdmitReply::parse(&[1, 0, 7, 1, 0]).unwrap().verdict,
            Verdict::RateLimited
        );
        assert_eq!(
            AdmitReply::parse(&[3, 1, 0, 9, 0]).unwrap().verdict,
            Verdict::QuotaUsed
        );
        assert_eq!(AdmitReply::parse(&[4, 0, 0, 0, 0]), None);
        assert_eq!(AdmitReply::parse(&[0, 9, 0, 0, 0]), None);
        assert_eq!(AdmitReply::parse(&[0, 0, 0]), None);
    }

    // Pins that scope codes round-trip, so a refusal names the limit's own scope.
    #[test]
    fn scope_codes_round_trip() {
        for scope in [LimitScope::User, LimitScope::Tenant, LimitScope::Ip] {
            assert_eq!(scope_from(i64::from(scope_code(scope))), Some(scope));
        }
    }
}
