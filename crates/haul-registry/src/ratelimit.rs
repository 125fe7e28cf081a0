//! Pull quotas: the `RateLimit-Limit` / `RateLimit-Remaining` headers
//! registries such as Docker Hub send with manifest answers (`100;w=21600`:
//! 100 manifest `GET`s per 6 hours; `HEAD`s are free), and the pause
//! before a manifest `GET` when the quota left falls under a floor, so a
//! long mirror run waits instead of failing halfway.
//!
//! The wait is the `RateLimit-Reset` the registry sent (seconds), else the
//! time the window frees the missing requests (`w / limit` per request),
//! at most [`RateLimitPolicy::max_pause`]. The observer hears the countdown
//! once per tick, the last call with `seconds_left == 0`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;

/// What a registry said of its quota in its last manifest answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests left.
    pub remaining: u64,
    /// The window (`;w=SECONDS`), when given.
    pub window: Option<Duration>,
    /// When the quota is restored (`RateLimit-Reset`), when given.
    pub reset: Option<Duration>,
}

/// One tick of a pause for quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPause {
    /// The registry (`host[:port]`).
    pub registry: String,
    /// Its quota as last reported.
    pub limit: u64,
    /// What was left of it.
    pub remaining: u64,
    /// Seconds still to wait (0: the wait is over).
    pub seconds_left: u64,
}

/// Told of every tick of a pause (from the task that waits).
pub type RateLimitObserver = Arc<dyn Fn(&RateLimitPause) + Send + Sync>;

/// When to pause for quota.
#[derive(Clone)]
pub struct RateLimitPolicy {
    /// Pause before a manifest `GET` when fewer requests than this are
    /// left (0: never pause).
    pub floor: u64,
    /// The longest single pause.
    pub max_pause: Duration,
    /// One second of the countdown (shorter in tests).
    pub tick: Duration,
    /// Hears the countdown.
    pub observer: Option<RateLimitObserver>,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        Self {
            floor: 0,
            max_pause: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(1),
            observer: None,
        }
    }
}

impl std::fmt::Debug for RateLimitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitPolicy")
            .field("floor", &self.floor)
            .field("max_pause", &self.max_pause)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

/// `N` or `N;w=SECONDS` (and other `;` parameters, ignored).
fn parse_value(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    Some((count, window))
}

/// The quota headers of an answer, if it has them.
pub fn parse(headers: &HeaderMap) -> Option<RateLimit> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (limit, window) = parse_value(get("ratelimit-limit")?)?;
    let (remaining, remaining_window) = parse_value(get("ratelimit-remaining")?)?;
    let reset = get("ratelimit-reset")
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs);
    Some(RateLimit {
        limit,
        remaining,
        window: window.or(remaining_window),
        reset,
    })
}

/// How long to wait for `floor` requests to be available again.
pub(crate) fn pause_for(quota: &RateLimit, policy: &RateLimitPolicy) -> Option<Duration> {
    if policy.floor == 0 || quota.remaining >= policy.floor {
        return None;
    }
    let missing = policy.floor - quota.remaining;
    let wait = quota.reset.unwrap_or_else(|| match quota.window {
        Some(w) if quota.limit > 0 => w / quota.limit as u32 * missing as u32,
        _ => Duration::from_secs(60),
    });
    Some(wait.min(policy.max_pause))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn docker_hub_headers_are_read() {
        let q = parse(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            RateLimit {
                limit: 100,
                remaining: 76,
                window: Some(Duration::from_secs(21600)),
                reset: None
            }
        );
        assert_eq!(parse(&headers(&[("ratelimit-limit", "100")])), None);
        assert_eq!(
            parse(&headers(&[
                ("ratelimit-limit", "x"),
                ("ratelimit-remaining", "1")
            ])),
            None
        );
    }

    #[test]
    fn pauses_only_under_the_floor_for_the_window_share_or_the_reset() {
        let policy = RateLimitPolicy {
            floor: 5,
            ..RateLimitPolicy::default()
        };
        let mut q = RateLimit {
            limit: 100,
            remaining: 5,
            window: Some(Duration::from_secs(21600)),
            reset: None,
        };
        assert_eq!(pause_for(&q, &policy), None);
        q.remaining = 3;
        // 216 s frees one request; two are missing; capped at 15 min.
        assert_eq!(pause_for(&q, &policy), Some(Duration::from_secs(432)));
        q.reset = Some(Duration::from_secs(7));
        assert_eq!(pause_for(&q, &policy), Some(Duration::from_secs(7)));
        q.reset = Some(Duration::from_secs(7200));
        assert_eq!(pause_for(&q, &policy), Some(Duration::from_secs(900)));
        let off = RateLimitPolicy::default();
        q.remaining = 0;
        assert_eq!(pause_for(&q, &off), None);
    }
}
