//! The client and its per-registry state: which scheme a registry speaks,
//! its TLS trust, its credentials, the challenge it last sent and the
//! tokens it issued; and the one place where requests are sent, with auth,
//! retries and error mapping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::OnceCell;
use url::Url;

use crate::auth::{parse_challenges, scope_key, Challenge, Credentials, TokenCache, TokenResponse};
use crate::config::{ClientConfig, RetryPolicy};
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::send::{is_retryable_status, send_with_retries, Attempt, SendPolicy};
use crate::tls;
use crate::transport::Failure;

/// Most bytes of an error or token body read into memory.
const SMALL_BODY_LIMIT: usize = 256 * 1024;

/// A registry client. Cheap to clone; clones share connections, tokens
/// and what was learnt about each registry.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

struct ClientInner {
    config: ClientConfig,
    static_credentials: Mutex<HashMap<String, Credentials>>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// One lock per referrers fallback tag (`registry/repo@subject`): its
    /// read-modify-write never runs twice at once in this process.
    fallback_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RegistryClient {
    /// A client with the given settings.
    pub fn new(config: ClientConfig) -> Result<Self> {
        for file in &config.extra_ca_files {
            if !file.is_file() {
                return Err(Error::Config(format!(
                    "CA certificate file {} does not exist",
                    file.display()
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(ClientInner {
                config,
                static_credentials: Mutex::new(HashMap::new()),
                hosts: Mutex::new(HashMap::new()),
                fallback_locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The lock serialising updates of one referrers fallback tag.
    pub(crate) fn fallback_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            lock(&self.inner.fallback_locks)
                .entry(key.to_string())
                .or_default(),
        )
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Uses these credentials for `registry` instead of any stored ones
    /// (for `login`, flags and tests). Takes effect for hosts not yet used.
    pub fn set_credentials(&self, registry: &str, credentials: Credentials) {
        lock(&self.inner.static_credentials).insert(registry.to_string(), credentials);
        lock(&self.inner.hosts).remove(registry);
    }

    /// A handle on one repository (`name` without the registry) of a
    /// registry (`host[:port]`, as in references; `docker.io` allowed).
    pub fn repository(&self, registry: &str, name: &str) -> Result<Repository> {
        let host = self.host(registry)?;
        let mirrors = self
            .inner
            .config
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| self.mirror_host(registry, m))
            .collect::<Result<Vec<_>>>()?;
        Ok(Repository::new(
            self.clone(),
            host,
            mirrors,
            name.to_string(),
        ))
    }

    /// A handle on the repository a reference names.
    pub fn repository_for(&self, reference: &haul_oci::Reference) -> Result<Repository> {
        self.repository(reference.registry(), reference.repository())
    }

    /// Checks that `registry` speaks the v2 API and that the client can
    /// authenticate to it (with its credentials, if it demands any).
    pub async fn ping(&self, registry: &str) -> Result<()> {
        let host = self.host(registry)?;
        host.authenticate_to_base().await
    }

    /// Verifies credentials against a registry, as `docker login` does.
    /// Does not store them; see [`crate::auth::CredentialStore::store`].
    pub async fn login(&self, registry: &str, credentials: &Credentials) -> Result<()> {
        let host = Arc::new(Host::new(
            &self.inner.config,
            registry,
            None,
            Some(credentials.clone()),
        )?);
        host.authenticate_to_base().await
    }

    /// The credentials used for `registry`: those set with
    /// [`RegistryClient::set_credentials`], else the stored ones.
    pub(crate) fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(c) = lock(&self.inner.static_credentials).get(registry) {
            return Ok(Some(c.clone()));
        }
        match &self.inner.config.credentials {
            Some(store) => store.get(registry),
            None => Ok(None),
        }
    }

    /// The base URL the v2 probe found for `registry`, if it was probed.
    pub(crate) fn known_base(&self, registry: &str) -> Option<Url> {
        let hosts = lock(&self.inner.hosts);
        hosts.get(registry)?.base.get().map(|e| e.url.clone())
    }

    pub(crate) fn host(&self, registry: &str) -> Result<Arc<Host>> {
        if let Some(host) = lock(&self.inner.hosts).get(registry) {
            return Ok(host.clone());
        }
        let credentials = match lock(&self.inner.static_credentials).get(registry) {
            Some(c) => Some(c.clone()),
            None => match &self.inner.config.credentials {
                Some(store) => store.get(registry)?,
                None => None,
            },
        };
        let host = Arc::new(Host::new(&self.inner.config, registry, None, credentials)?);
        Ok(lock(&self.inner.hosts)
            .entry(registry.to_string())
            .or_insert(host)
            .clone())
    }

    fn mirror_host(&self, registry: &str, mirror: &str) -> Result<Arc<Host>> {
        let key = format!("mirror:{registry}:{mirror}");
        if let Some(host) = lock(&self.inner.hosts).get(&key) {
            return Ok(host.clone());
        }
        let url = Url::parse(mirror)
            .map_err(|e| Error::Config(format!("mirror {mirror} of {registry}: {e}")))?;
        let authority = authority_of(&url)
            .ok_or_else(|| Error::Config(format!("mirror {mirror} of {registry} has no host")))?;
        let credentials = match &self.inner.config.credentials {
            Some(store) => store.get(&authority)?,
            None => None,
        };
        let mut host = Host::new(&self.inner.config, &authority, Some(url), credentials)?;
        host.namespace = Some(registry.to_string());
        let host = Arc::new(host);
        Ok(lock(&self.inner.hosts).entry(key).or_insert(host).clone())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `host[:port]` of a URL.
pub(crate) fn authority_of(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Whether `host[:port]` names this machine.
pub(crate) fn is_loopback(authority: &str) -> bool {
    if let Ok(ip) = authority.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a request is about, for error messages and status mapping.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    /// A manifest (tag or digest) of a repository.
    Manifest {
        repository: String,
        reference: String,
    },
    /// A blob of a repository.
    Blob { repository: String, digest: String },
    /// A repository as a whole (tags, uploads).
    Repository { repository: String },
    /// An upload session the registry opened (its URL), for one blob.
    UploadSession { repository: String, digest: String },
}

impl Subject {
    fn repository(&self) -> &str {
        match self {
            Subject::Manifest { repository, .. }
            | Subject::Blob { repository, .. }
            | Subject::Repository { repository }
            | Subject::UploadSession { repository, .. } => repository,
        }
    }
}

/// One request's context: what it is about, what it does, which token
/// scopes it needs, and whether the same request may be sent again.
pub(crate) struct Operation {
    pub subject: Subject,
    pub action: String,
    pub scopes: Vec<String>,
    pub resendable: bool,
    /// Whether a connection that broke during the request may be followed
    /// by the same request. Not for bodies sent on an upload session: a
    /// cut body leaves the session at an offset only the registry knows.
    pub resend_after_transport_error: bool,
}

/// Where a registry answers and whether it speaks the v2 API.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `https://host/` or `http://host/`.
    pub url: Url,
    /// Whether `GET /v2/` answered 200 or 401 (not 404).
    pub speaks_v2: bool,
}

/// How one probe failed: for good, or in a way the other scheme may fix
/// (with whether a TLS handshake met a plain-HTTP server).
enum Probe {
    Final(Error),
    TryOtherScheme(Error, bool),
}

/// One registry (or mirror) as the client knows it.
pub(crate) struct Host {
    /// `host[:port]` as references name it.
    pub name: String,
    http: reqwest::Client,
    base: OnceCell<Endpoint>,
    fixed_base: Option<Url>,
    /// For a mirror: the registry it stands in for, sent as containerd's
    /// `?ns=REGISTRY` on every request so pull-through mirrors serving
    /// several registries know which one is meant.
    namespace: Option<String>,
    /// The host we actually connect to (`registry-1.docker.io` for Docker Hub).
    api_authority: String,
    plain_http_allowed: bool,
    credentials: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: TokenCache,
    /// Held while a token is fetched, so concurrent requests needing one
    /// wait for the first fetch and use its token instead of each asking.
    token_fetch: tokio::sync::Mutex<()>,
    retry: RetryPolicy,
    rate_limit: crate::ratelimit::RateLimitPolicy,
    /// The quota the registry reported last (manifest answers).
    quota: Mutex<Option<crate::ratelimit::RateLimit>>,
    /// Held while pausing for quota: concurrent reads wait once.
    quota_pause: tokio::sync::Mutex<()>,
}

impl Host {
    fn new(
        config: &ClientConfig,
        name: &str,
        fixed_base: Option<Url>,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let api_authority = match &fixed_base {
            Some(url) => authority_of(url).unwrap_or_else(|| name.to_string()),
            None => haul_oci::reference::api_host(name).to_string(),
        };
        let insecure = config.insecure_registries.iter().any(|r| r == name);
        let http = tls::http_client(config, &api_authority, insecure)?;
        Ok(Self {
            name: name.to_string(),
            http,
            base: OnceCell::new(),
            fixed_base,
            namespace: None,
            plain_http_allowed: insecure || is_loopback(&api_authority),
            api_authority,
            credentials,
            challenge: Mutex::new(None),
            tokens: TokenCache::default(),
            token_fetch: tokio::sync::Mutex::new(()),
            retry: config.retry.clone(),
            rate_limit: config.rate_limit.clone(),
            quota: Mutex::new(None),
            quota_pause: tokio::sync::Mutex::new(()),
        })
    }

    /// Remembers the quota an answer reports, if it reports one.
    pub(crate) fn note_quota(&self, headers: &reqwest::header::HeaderMap) {
        if let Some(quota) = crate::ratelimit::parse(headers) {
            tracing::debug!(registry = %self.name, "quota: {} of {} left", quota.remaining, quota.limit);
            *lock(&self.quota) = Some(quota);
        }
    }

    /// The quota the registry reported last.
    pub(crate) fn quota(&self) -> Option<crate::ratelimit::RateLimit> {
        *lock(&self.quota)
    }

    /// Before a request that counts against the quota: when what is left
    /// is under the policy's floor, waits (telling the observer each tick)
    /// until the registry should have restored it.
    pub(crate) async fn await_quota(&self) {
        if self.rate_limit.floor == 0 {
            return;
        }
        let _one_pause = self.quota_pause.lock().await;
        let Some(quota) = self.quota() else { return };
        let Some(wait) = crate::ratelimit::pause_for(&quota, &self.rate_limit) else {
            return;
        };
        let seconds = wait.as_secs().max(1);
        let tell = |seconds_left| {
            if let Some(observer) = &self.rate_limit.observer {
                observer(&crate::ratelimit::RateLimitPause {
                    registry: self.name.clone(),
                    limit: quota.limit,
                    remaining: quota.remaining,
                    seconds_left,
                });
            }
        };
        tracing::info!(registry = %self.name, "{} of {} requests left: pausing {seconds} s", quota.remaining, quota.limit);
        for left in (1..=seconds).rev() {
            tell(left);
            tokio::time::sleep(self.rate_limit.tick).await;
        }
        tell(0);
        // Unknown until the next answer says.
        *lock(&self.quota) = None;
    }

    /// The base URL (`https://host/` or `http://host/`) of a registry that
    /// speaks the v2 API; see [`Host::endpoint`] for how it is found.
    pub(crate) async fn base(&self) -> Result<&Url> {
        let endpoint = self.endpoint().await?;
        if !endpoint.speaks_v2 {
            return Err(Error::Protocol {
                registry: self.name.clone(),
                message: "no /v2/ API (is this a registry?)".into(),
            });
        }
        Ok(&endpoint.url)
    }

    /// What `GET /v2/` told about the registry, asked once per host for
    /// the life of the client: the scheme that answered and whether the v2
    /// API is there (a 404 says it is not: a v1 registry, as Docker 1.10
    /// decided). Loopback registries are asked over plain HTTP first, then
    /// HTTPS; insecure ones over HTTPS, then plain HTTP; others over HTTPS
    /// only. Refused connections, unknown hosts and TLS failures are not
    /// retried (they do not heal); a 5xx is asked once more.
    pub(crate) async fn endpoint(&self) -> Result<&Endpoint> {
        self.base.get_or_try_init(|| self.discover()).await
    }

    async fn discover(&self) -> Result<Endpoint> {
        if let Some(url) = &self.fixed_base {
            let mut url = url.clone();
            url.set_path("/");
            return Ok(Endpoint {
                url,
                speaks_v2: true,
            });
        }
        let base = |scheme: &str| {
            Url::parse(&format!("{scheme}://{}/", self.api_authority))
                .map_err(|e| Error::Config(format!("registry {}: {e}", self.name)))
        };
        let order = if is_loopback(&self.api_authority) {
            vec![base("http")?, base("https")?]
        } else if self.plain_http_allowed {
            vec![base("https")?, base("http")?]
        } else {
            vec![base("https")?]
        };
        let mut https_error = None;
        let mut last_error = None;
        for url in &order {
            match self.probe(url).await {
                Ok(speaks_v2) => {
                    tracing::info!(
                        registry = %self.name,
                        "{} {} the v2 API over {}",
                        self.name,
                        if speaks_v2 { "speaks" } else { "does not speak" },
                        url.scheme()
                    );
                    return Ok(Endpoint {
                        url: url.clone(),
                        speaks_v2,
                    });
                }
                Err(Probe::Final(e)) => return Err(e),
                Err(Probe::TryOtherScheme(e, plain_http_answered)) => {
                    tracing::info!(registry = %self.name, "{} over {} failed: {e}", self.name, url.scheme());
                    if url.scheme() == "https" && !plain_http_answered {
                        https_error = Some(e);
                    } else {
                        last_error = Some(e);
                    }
                }
            }
        }
        // The HTTPS failure says more (a TLS registry answers plain HTTP
        // with a bare 400), unless it met a plain-HTTP server.
        Err(https_error
            .or(last_error)
            .unwrap_or_else(|| Error::Transport {
                registry: self.name.clone(),
                message: "no attempt was made".into(),
                retryable: false,
            }))
    }

    /// Asks `GET /v2/` at `base` (no credentials: they go only in answer
    /// to a challenge) and learns the auth challenge. `Ok(true)`: the v2
    /// API answered (200 or 401); `Ok(false)`: 404.
    async fn probe(&self, base: &Url) -> Result<bool, Probe> {
        let url = base
            .join("v2/")
            .map_err(|e| Probe::Final(Error::Config(e.to_string())))?;
        let attempts = self.retry.max_attempts.clamp(1, 2);
        let mut attempt = 1;
        loop {
            tracing::info!(registry = %self.name, "probing GET {url}");
            let status_error = |s: StatusCode| Error::Status {
                registry: self.name.clone(),
                operation: format!("GET {url}"),
                status: s.as_u16(),
                message: None,
            };
            // A 5xx is an answer: this scheme is right, the server unwell.
            let (failure, answered) = match self.http.get(url.clone()).send().await {
                Ok(resp) => {
                    self.learn_challenge(resp.headers());
                    match resp.status() {
                        s if s.is_success() || s == StatusCode::UNAUTHORIZED => return Ok(true),
                        StatusCode::NOT_FOUND => return Ok(false),
                        // A TLS server's answer to plain HTTP.
                        StatusCode::BAD_REQUEST if url.scheme() == "http" => {
                            return Err(Probe::TryOtherScheme(
                                status_error(StatusCode::BAD_REQUEST),
                                false,
                            ))
                        }
                        s if s.is_server_error() => (status_error(s), true),
                        s => return Err(Probe::Final(status_error(s))),
                    }
                }
                Err(e) => {
                    let err = transport_error(&self.name, &e);
                    match crate::transport::classify(&e) {
                        Failure::Refused | Failure::UnknownHost => return Err(Probe::Final(err)),
                        Failure::PlainHttpAnswer => return Err(Probe::TryOtherScheme(err, true)),
                        Failure::Certificate | Failure::Tls => {
                            return Err(Probe::TryOtherScheme(err, false))
                        }
                        Failure::Timeout | Failure::Other if url.scheme() == "http" => {
                            return Err(Probe::TryOtherScheme(err, false))
                        }
                        Failure::Timeout | Failure::Other => (err, false),
                    }
                }
            };
            if attempt >= attempts {
                return Err(if answered {
                    Probe::Final(failure)
                } else {
                    Probe::TryOtherScheme(failure, false)
                });
            }
            let delay = self.retry.delay(attempt, None);
            tracing::info!(registry = %self.name, "probe of {url} failed (attempt {attempt} of {attempts}): {failure}; retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn learn_challenge(&self, headers: &HeaderMap) {
        let values = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let challenges = parse_challenges(values);
        let best = challenges
            .iter()
            .find(|c| c.is_bearer())
            .or_else(|| challenges.iter().find(|c| c.is_basic()));
        if let Some(c) = best {
            *lock(&self.challenge) = Some(c.clone());
        }
    }

    /// Makes sure the registry accepts us: fetches a token (bearer) or sends
    /// Basic credentials to `/v2/`, as `docker login` does.
    async fn authenticate_to_base(&self) -> Result<()> {
        self.base().await?;
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(()),
            Some(c) if c.is_bearer() => self.fetch_token(&c, &[]).await.map(|_| ()),
            Some(_) => {
                let url = self.url("v2/").await?;
                let mut req = self.http.get(url);
                if let Some(h) = self
                    .credentials
                    .as_ref()
                    .and_then(Credentials::basic_header)
                {
                    req = req.header(AUTHORIZATION, h);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| transport_error(&self.name, &e))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(Error::Unauthorized {
                        registry: self.name.clone(),
                        scope: "the registry".into(),
                        message: error_body_message(resp).await,
                    })
                }
            }
        }
    }

    /// An absolute URL for a path under the registry's base (with
    /// `?ns=REGISTRY` for a mirror).
    pub(crate) async fn url(&self, path: &str) -> Result<Url> {
        let mut url = self
            .base()
            .await?
            .join(path)
            .map_err(|e| Error::Config(format!("bad path {path}: {e}")))?;
        if let Some(ns) = &self.namespace {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }

    /// Resolves a `Location` header value against the registry's base.
    pub(crate) async fn resolve(&self, location: &str) -> Result<Url> {
        self.base()
            .await?
            .join(location)
            .map_err(|e| Error::Protocol {
                registry: self.name.clone(),
                message: format!("unusable Location {location:?}: {e}"),
            })
    }

    /// Whether a URL points at this registry (so it may see our credentials).
    fn owns(&self, url: &Url) -> bool {
        authority_of(url).is_some_and(|a| a == self.api_authority)
    }

    /// The Authorization header for a request needing `scopes`, if the
    /// registry asked for auth.
    async fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(None),
            Some(c) if c.is_bearer() => {
                if let Some(t) = self.tokens.get(&scope_key(scopes)) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let _fetching = self.token_fetch.lock().await;
                if let Some(t) = self.tokens.get(&scope_key(scopes)) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self.fetch_token(&c, scopes).await?;
                Ok(Some(format!("Bearer {token}")))
            }
            Some(c) if c.is_basic() => Ok(self
                .credentials
                .as_ref()
                .and_then(Credentials::basic_header)),
            Some(_) => Ok(None),
        }
    }

    /// Gets a token for `scopes` from the realm of a Bearer challenge.
    async fn fetch_token(&self, challenge: &Challenge, scopes: &[String]) -> Result<String> {
        let realm = challenge.param("realm").ok_or_else(|| Error::Protocol {
            registry: self.name.clone(),
            message: "Bearer challenge without a realm".into(),
        })?;
        let mut url = Url::parse(realm).map_err(|e| Error::Protocol {
            registry: self.name.clone(),
            message: format!("unusable token realm {realm:?}: {e}"),
        })?;
        // Credentials go to the realm the registry named, but never in clear
        // text across the network.
        let realm_authority = authority_of(&url).unwrap_or_default();
        let may_send_secret =
            url.scheme() == "https" || is_loopback(&realm_authority) || self.plain_http_allowed;
        let credentials = self.credentials.as_ref().filter(|_| may_send_secret);
        let service = challenge.param("service");
        let resp = match credentials {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", refresh.clone()),
                    ("client_id", "haul".to_string()),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_string()));
                }
                if !scopes.is_empty() {
                    form.push(("scope", scopes.join(" ")));
                }
                self.http.post(url.clone()).form(&form).send().await
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                    q.append_pair("client_id", "haul");
                }
                let mut req = self.http.get(url.clone());
                if let Some(h) = other.and_then(Credentials::basic_header) {
                    req = req.header(AUTHORIZATION, h);
                }
                req.send().await
            }
        }
        .map_err(|e| transport_error(&realm_authority, &e))?;
        let scope_text = if scopes.is_empty() {
            "the registry".to_string()
        } else {
            scopes.join(" ")
        };
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Error::Unauthorized {
                    registry: self.name.clone(),
                    scope: scope_text,
                    message: error_body_message(resp).await,
                });
            }
            s => {
                return Err(Error::Status {
                    registry: realm_authority,
                    operation: "token request".into(),
                    status: s.as_u16(),
                    message: error_body_message(resp).await,
                });
            }
        }
        let body = read_small_body(resp, &self.name).await?;
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            registry: self.name.clone(),
            message: format!("token server answered unreadable JSON: {e}"),
        })?;
        let value = token.bearer().ok_or_else(|| Error::Protocol {
            registry: self.name.clone(),
            message: "token server answered without a token".into(),
        })?;
        self.tokens
            .put(scope_key(scopes), value.to_string(), token.lifetime());
        Ok(value.to_string())
    }

    /// Sends a request built by `build` (called again for every attempt),
    /// adding auth, re-authenticating once after a 401, and retrying
    /// connection failures, 5xx and 429 as the retry policy says. Answers
    /// other than those are returned as they are for the caller to judge.
    pub(crate) async fn send(
        &self,
        op: &Operation,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        self.send_with_attempts(op, build, self.retry.max_attempts)
            .await
    }

    /// Like [`Host::send`], but a failure is not retried: for callers that
    /// count attempts themselves (a layer download, whose attempts are the
    /// ones users see). Re-authenticating after a 401 is still done.
    pub(crate) async fn send_once(
        &self,
        op: &Operation,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        self.send_with_attempts(op, build, 1).await
    }

    async fn send_with_attempts(
        &self,
        op: &Operation,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
        max_attempts: u32,
    ) -> Result<Response> {
        self.base().await?;
        let reauthenticated = AtomicBool::new(false);
        let policy = SendPolicy {
            registry: &self.name,
            action: &op.action,
            retry: &self.retry,
            max_attempts,
            resendable: op.resendable,
        };
        send_with_retries(policy, || self.attempt(op, build, &reauthenticated)).await
    }

    /// One attempt of [`Host::send_with_attempts`]: with the scope's token
    /// (on this host only), and one fresh authentication after a 401.
    async fn attempt(
        &self,
        op: &Operation,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
        reauthenticated: &AtomicBool,
    ) -> Result<Attempt> {
        let auth = self.authorization(&op.scopes).await?;
        let mut request = build(&self.http)?
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        if let Some(value) = &auth {
            if self.owns(request.url()) {
                let value = value.parse().map_err(|_| Error::Protocol {
                    registry: self.name.clone(),
                    message: "unusable token".into(),
                })?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
        }
        tracing::debug!(registry = %self.name, "{}", crate::transport::describe_request(&request));
        let resp = match self.http.execute(request).await {
            Ok(resp) => resp,
            Err(e) => {
                let failure = transport_error(&self.name, &e);
                if !op.resend_after_transport_error {
                    return Err(failure);
                }
                return Ok(Attempt::Failed {
                    failure,
                    retry_after: None,
                });
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            self.learn_challenge(resp.headers());
            if let Some(value) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
                self.tokens.forget(&scope_key(&op.scopes), value);
            }
            let have_challenge = lock(&self.challenge).is_some();
            if have_challenge && op.resendable && !reauthenticated.swap(true, Ordering::Relaxed) {
                tracing::debug!(registry = %self.name, "{} answered 401; authenticating again", op.action);
                return Ok(Attempt::Resend);
            }
            return Err(self.status_error(op, resp).await);
        }
        if !is_retryable_status(status) {
            return Ok(Attempt::Answered(resp));
        }
        let retry_after = parse_retry_after(resp.headers());
        if retry_after.is_some_and(|d| d > self.retry.max_delay) {
            return Err(Error::RateLimited {
                registry: self.name.clone(),
                retry_after,
            });
        }
        Ok(Attempt::Failed {
            failure: self.status_error(op, resp).await,
            retry_after,
        })
    }

    /// Turns an unsuccessful answer into a typed error, reading the
    /// registry's JSON error body.
    pub(crate) async fn status_error(&self, op: &Operation, resp: Response) -> Error {
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers());
        let body = read_small_body(resp, &self.name).await.unwrap_or_default();
        let errors = parse_error_body(&body);
        let message = (!errors.is_empty()).then(|| {
            errors
                .iter()
                .map(|(code, msg)| {
                    if msg.is_empty() {
                        code.clone()
                    } else {
                        format!("{code}: {msg}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let has = |code: &str| errors.iter().any(|(c, _)| c == code);
        let repository = format!("{}/{}", self.name, op.subject.repository());
        let scope = op.scopes.join(" ");
        let session_lost = has("BLOB_UPLOAD_UNKNOWN") || has("BLOB_UPLOAD_INVALID");
        if session_lost
            || status == StatusCode::NOT_FOUND
                && matches!(op.subject, Subject::UploadSession { .. })
        {
            let digest = match &op.subject {
                Subject::UploadSession { digest, .. } | Subject::Blob { digest, .. } => {
                    digest.clone()
                }
                _ => String::new(),
            };
            return Error::UploadSessionLost {
                repository,
                digest,
                status: status.as_u16(),
                message,
            };
        }
        match status {
            StatusCode::NOT_FOUND => {
                if has("NAME_UNKNOWN") {
                    return Error::RepositoryNotFound {
                        repository,
                        message,
                    };
                }
                match &op.subject {
                    Subject::Manifest { reference, .. } => Error::ManifestNotFound {
                        repository,
                        reference: reference.clone(),
                        message,
                    },
                    Subject::Blob { digest, .. } => Error::BlobNotFound {
                        repository,
                        digest: digest.clone(),
                        message,
                    },
                    Subject::Repository { .. } | Subject::UploadSession { .. } => {
                        Error::RepositoryNotFound {
                            repository,
                            message,
                        }
                    }
                }
            }
            StatusCode::UNAUTHORIZED => Error::Unauthorized {
                registry: self.name.clone(),
                scope: if scope.is_empty() { repository } else { scope },
                message,
            },
            StatusCode::FORBIDDEN => Error::Denied {
                registry: self.name.clone(),
                scope: if scope.is_empty() { repository } else { scope },
                message,
            },
            StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
                registry: self.name.clone(),
                retry_after,
            },
            s => Error::Status {
                registry: self.name.clone(),
                operation: op.action.clone(),
                status: s.as_u16(),
                message,
            },
        }
    }
}

pub(crate) use crate::transport::transport_error;

/// Reads at most [`SMALL_BODY_LIMIT`] bytes of a body.
pub(crate) async fn read_small_body(resp: Response, registry: &str) -> Result<Vec<u8>> {
    read_limited(resp, SMALL_BODY_LIMIT, registry, "response").await
}

/// Reads a whole body into memory, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: Response,
    limit: usize,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge {
            what: what.to_string(),
            limit: limit as u64,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(registry, &e))?
    {
        if out.len() + chunk.len() > limit {
            return Err(Error::TooLarge {
                what: what.to_string(),
                limit: limit as u64,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn error_body_message(resp: Response) -> Option<String> {
    let body = read_small_body(resp, "").await.ok()?;
    let errors = parse_error_body(&body);
    if errors.is_empty() {
        let text = String::from_utf8_lossy(&body).trim().to_string();
        return (!text.is_empty() && text.len() < 200 && !text.contains('{')).then_some(text);
    }
    Some(
        errors
            .iter()
            .map(|(c, m)| format!("{c}: {m}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The `errors[].code` and `message` of a registry error body.
pub(crate) fn parse_error_body(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.errors.into_iter().map(|i| (i.code, i.message)).collect())
        .unwrap_or_default()
}

/// `Retry-After` as seconds or as an HTTP date.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection_covers_names_addresses_and_ports() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(yes), "{yes} is loopback");
        }
        for no in [
            "example.com",
            "10.0.0.1:5000",
            "registry-1.docker.io",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(no), "{no} is not loopback");
        }
    }

    #[test]
    fn registry_error_bodies_are_read() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            parse_error_body(body),
            vec![(
                "MANIFEST_UNKNOWN".to_string(),
                "manifest unknown".to_string()
            )]
        );
        assert!(parse_error_body(b"404 page not found").is_empty());
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }
}
