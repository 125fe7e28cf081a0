//! Bearer tokens from a registry's token server, cached per scope set until
//! shortly before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long a token lives when the server does not say (the spec's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// A token this close to its expiry is not used for a new request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What a token server answers.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The bearer token, whichever field carried it.
    pub(crate) fn bearer(&self) -> Option<&str> {
        self.token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.access_token.as_deref().filter(|t| !t.is_empty()))
    }

    /// How long the token may be used.
    pub(crate) fn lifetime(&self) -> Duration {
        self.expires_in
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME)
    }
}

#[derive(Debug, Clone)]
struct CachedToken {
    value: String,
    usable_until: Instant,
}

/// Tokens of one registry, keyed by the set of scopes they were issued for.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, CachedToken>>,
}

/// Canonical cache key of a scope list: sorted, deduplicated, space-joined.
pub(crate) fn scope_key(scopes: &[String]) -> String {
    let mut s: Vec<&str> = scopes.iter().map(String::as_str).collect();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

impl TokenCache {
    /// A cached token for these scopes that is not about to expire.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(key)
            .filter(|t| Instant::now() < t.usable_until)
            .map(|t| t.value.clone())
    }

    /// Remembers a token for `lifetime`.
    pub(crate) fn put(&self, key: String, value: String, lifetime: Duration) {
        let usable_until =
            Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(
            key,
            CachedToken {
                value,
                usable_until,
            },
        );
    }

    /// Drops a token the registry refused (expired early or revoked).
    pub(crate) fn forget(&self, key: &str, value: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.get(key).is_some_and(|t| t.value == value) {
            tokens.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_key_ignores_order_and_duplicates() {
        let a = scope_key(&["repository:b:pull".into(), "repository:a:push,pull".into()]);
        let b = scope_key(&[
            "repository:a:push,pull".into(),
            "repository:b:pull".into(),
            "repository:b:pull".into(),
        ]);
        assert_eq!(a, b);
    }

    #[test]
    fn tokens_are_served_until_shortly_before_expiry() {
        let cache = TokenCache::default();
        cache.put("k".into(), "t1".into(), Duration::from_secs(300));
        assert_eq!(cache.get("k").as_deref(), Some("t1"));
        cache.put("short".into(), "t2".into(), Duration::from_millis(0));
        assert_eq!(cache.get("short"), None);
    }

    #[test]
    fn forgetting_only_drops_the_refused_token() {
        let cache = TokenCache::default();
        cache.put("k".into(), "new".into(), Duration::from_secs(300));
        cache.forget("k", "old");
        assert_eq!(cache.get("k").as_deref(), Some("new"));
        cache.forget("k", "new");
        assert_eq!(cache.get("k"), None);
    }

    #[test]
    fn response_prefers_token_then_access_token_and_defaults_lifetime() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(r.bearer(), Some("a"));
        assert_eq!(r.lifetime(), DEFAULT_LIFETIME);
        let r: TokenResponse =
            serde_json::from_str(r#"{"token":"t","access_token":"a","expires_in":3}"#).unwrap();
        assert_eq!(r.bearer(), Some("t"));
        assert_eq!(r.lifetime(), Duration::from_secs(3));
    }
}
