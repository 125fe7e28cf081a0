//! Settings of the registry client: TLS trust, insecure registries,
//! mirrors, timeouts, credentials and the retry policy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::CredentialStore;

/// How the client reaches registries. `Default` gives what Docker users
/// expect: system roots plus `/etc/docker/certs.d`, credentials from the
/// Docker config, loopback registries over plain HTTP when they do not speak
/// TLS, 30 s connect and read timeouts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Root of the `HOST[:PORT]/*.crt` CA convention (`/etc/docker/certs.d`).
    pub certs_dir: PathBuf,
    /// A second such root that needs no root to write
    /// (`$XDG_CONFIG_HOME/haul/certs.d`, else `~/.config/haul/certs.d`).
    pub user_certs_dir: Option<PathBuf>,
    /// Extra CA certificates (PEM files) trusted for every registry
    /// (`--ca-file`).
    pub extra_ca_files: Vec<PathBuf>,
    /// CA certificates (PEM files) trusted for one registry (`host[:port]`).
    pub registry_ca_files: HashMap<String, Vec<PathBuf>>,
    /// The client certificate and key (PEM files) shown to one registry.
    pub client_certificates: HashMap<String, (PathBuf, PathBuf)>,
    /// Registries (`host[:port]`) reached over plain HTTP or with
    /// unverified TLS. Loopback registries are always allowed plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Mirrors per registry host, tried in order for reads before the
    /// registry itself (e.g. `docker.io` -> `https://mirror.example`).
    pub mirrors: HashMap<String, Vec<String>>,
    /// Where credentials come from; `None` means anonymous only.
    pub credentials: Option<CredentialStore>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Longest silence allowed while reading a response, so a stalled
    /// transfer fails (and can be retried) instead of hanging.
    pub read_timeout: Duration,
    /// Retries of single requests.
    pub retry: RetryPolicy,
    /// The User-Agent header.
    pub user_agent: String,
    /// When to pause for a registry's pull quota.
    pub rate_limit: crate::ratelimit::RateLimitPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            certs_dir: PathBuf::from("/etc/docker/certs.d"),
            user_certs_dir: user_config_dir().map(|d| d.join("haul/certs.d")),
            extra_ca_files: Vec::new(),
            registry_ca_files: HashMap::new(),
            client_certificates: HashMap::new(),
            insecure_registries: Vec::new(),
            mirrors: HashMap::new(),
            credentials: Some(CredentialStore::from_environment()),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            user_agent: format!("haul/{}", env!("CARGO_PKG_VERSION")),
            rate_limit: crate::ratelimit::RateLimitPolicy::default(),
        }
    }
}

impl ClientConfig {
    /// The certs.d roots, system first.
    pub fn certs_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.certs_dir).chain(self.user_certs_dir.as_ref())
    }
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn user_config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
}

/// How single requests are retried: connection errors and 5xx with growing
/// delays, 429/503 after the `Retry-After` the registry asks for.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub base_delay: Duration,
    /// Upper bound of any delay, including a `Retry-After`. A registry that
    /// asks for longer gets a rate-limit error instead of a hung client.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based), unless the
    /// registry asked for a specific one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(200));
        assert_eq!(p.delay(3, None), Duration::from_millis(350));
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(9))),
            Duration::from_millis(350)
        );
    }
}
