//! The legacy Docker registry v1 protocol (push and pull), as Docker 1.x
//! spoke it to the original Python registry and its look-alikes.
//!
//! The model: an *index* ([`V1Registry`], the `host[:port]` of the
//! reference) hands out a *session* ([`V1Session`]) for one repository
//! when asked with `X-Docker-Token: true`: a token and the list of
//! *endpoints* (`X-Docker-Endpoints`) that hold the images. Images (one
//! layer each, named by a 64-hex v1 ID, with a JSON config and a parent)
//! and tags are then read and written on an endpoint, every call carrying
//! `Authorization: Token ...` (or Basic credentials when no token was
//! given). Callers try each endpoint in turn.
//!
//! - Index calls send Basic credentials when the client has any for the
//!   index; endpoint calls send the token, and Basic credentials only to an
//!   endpoint on the index's own host.
//! - Connection errors, 5xx, 408 and 429 are retried per the client's
//!   [`crate::RetryPolicy`] for requests that can be sent again (all but
//!   the layer upload, whose body is a one-shot stream).
//! - Errors are the crate's [`Error`]s, with the registry's own message
//!   (`{"error": "..."}` or a short text body) carried: 404 of an image is
//!   [`Error::BlobNotFound`] (its "digest" is the v1 ID), of a tag
//!   [`Error::ManifestNotFound`], of a repository [`Error::RepositoryNotFound`];
//!   anything else unexpected is [`Error::Status`].
//!
//! Checksums ([`checksum`]): the payload checksum `sha256(JSON ‖ "\n" ‖
//! LAYER)` that both servers check, and tarsum v0 for registries that
//! want `X-Docker-Checksum`.

pub mod checksum;
mod images;
mod index;

use std::sync::Arc;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::OnceCell;

use crate::auth::Credentials;
use crate::client::{
    authority_of, is_loopback, parse_retry_after, read_small_body, transport_error,
};
use crate::config::RetryPolicy;
use crate::error::{Error, Result};
use crate::RegistryClient;

pub use bytes::Bytes;
pub use images::{ImageJson, PutOutcome};
pub use index::{IndexEntry, V1Session};
pub use url::Url;

/// Which registry API a registry speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The OCI distribution API (`/v2/`).
    V2,
    /// The legacy v1 protocol (`/v1/`).
    V1,
}

impl RegistryClient {
    /// A v1 handle on the index `registry` (`host[:port]`).
    pub fn v1(&self, registry: &str) -> Result<V1Registry> {
        let authority = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io",
            other => other,
        }
        .to_string();
        let config = self.config();
        let insecure = config.insecure_registries.iter().any(|r| r == registry);
        let http = crate::tls::http_client(config, &authority, insecure)?;
        Ok(V1Registry {
            inner: Arc::new(Inner {
                name: registry.to_string(),
                plain_http_allowed: insecure || is_loopback(&authority),
                authority,
                http,
                base: OnceCell::new(),
                credentials: self.credentials_for(registry)?,
                retry: config.retry.clone(),
            }),
        })
    }

    /// Which protocol `registry` speaks, as Docker 1.x decided: v2 when it
    /// answers `/v2/` (200 or 401), else v1 when it answers `/v1/_ping`.
    /// When neither answers, the v2 error is returned.
    pub async fn detect_protocol(&self, registry: &str) -> Result<Protocol> {
        // Asked in the order that is cheap for both kinds: a v1 registry
        // (gunicorn's sync workers) never answers a TLS handshake, which
        // would hold the v2 probe for its whole connect timeout.
        let v1 = self.v1(registry)?;
        if v1.ping().await.is_ok() {
            if v1.answers_v2().await {
                return Ok(Protocol::V2);
            }
            return Ok(Protocol::V1);
        }
        match self.ping(registry).await {
            Ok(()) => Ok(Protocol::V2),
            // Credentials refused: the registry does speak v2.
            Err(Error::Unauthorized { .. } | Error::Denied { .. }) => Ok(Protocol::V2),
            Err(e) => Err(e),
        }
    }
}

/// A v1 index (`host[:port]`). Cheap to clone.
#[derive(Clone)]
pub struct V1Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for V1Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Registry")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// `host[:port]` as the reference names it.
    name: String,
    /// `host[:port]` connected to.
    authority: String,
    plain_http_allowed: bool,
    http: reqwest::Client,
    /// `https://authority/` or `http://authority/`, learnt by the ping.
    base: OnceCell<Url>,
    credentials: Option<Credentials>,
    retry: RetryPolicy,
}

/// What a request is about, for error mapping.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    /// The index or a repository as a whole.
    Repository(String),
    /// An image (v1 ID) of a repository.
    Image { repository: String, id: String },
    /// A tag of a repository.
    Tag { repository: String, tag: String },
    /// The registry itself (ping).
    Registry,
}

/// One request's context.
pub(crate) struct Op {
    pub subject: Subject,
    pub action: String,
    pub resendable: bool,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// Basic credentials, if any (index calls).
    Basic,
    /// The session's token, else Basic when the URL is on the index host.
    Token(Option<&'a str>),
}

impl V1Registry {
    /// The index as the reference names it (`host[:port]`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Checks that the registry answers `GET /v1/_ping` (HTTPS first; plain
    /// HTTP too for loopback and insecure registries) and remembers the
    /// scheme that worked.
    pub async fn ping(&self) -> Result<()> {
        self.base().await.map(|_| ())
    }

    async fn base(&self) -> Result<&Url> {
        let inner = &self.inner;
        inner
            .base
            .get_or_try_init(|| async {
                let https = parse_base("https", &inner.authority, &inner.name)?;
                match self.probe(&https, inner.plain_http_allowed).await {
                    Ok(()) => Ok(https),
                    Err(err) if inner.plain_http_allowed => {
                        let http = parse_base("http", &inner.authority, &inner.name)?;
                        tracing::debug!(registry = %inner.name, "v1 ping over HTTPS failed ({err}); trying plain HTTP");
                        self.probe(&http, false).await.map(|()| http).map_err(|_| err)
                    }
                    Err(err) => Err(err),
                }
            })
            .await
    }

    /// Asks `/v1/_ping`; `quick`: within a few seconds (an HTTPS attempt
    /// on a plain HTTP server may otherwise wait for the connect timeout).
    async fn probe(&self, base: &Url, quick: bool) -> Result<()> {
        let url = join(base, "v1/_ping", &self.inner.name)?;
        let op = Op {
            subject: Subject::Registry,
            action: "GET /v1/_ping".into(),
            resendable: true,
        };
        let resp = self
            .send_once_or_retry(
                &op,
                Auth::Basic,
                &|http| {
                    let req = http.get(url.clone());
                    Ok(if quick {
                        req.timeout(std::time::Duration::from_secs(3))
                    } else {
                        req
                    })
                },
                !quick,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(&op, resp).await)
        }
    }

    /// Whether the registry also answers `GET /v2/` (200 or 401).
    async fn answers_v2(&self) -> bool {
        let Ok(base) = self.base().await else {
            return false;
        };
        let Ok(url) = join(base, "v2/", &self.inner.name) else {
            return false;
        };
        match self.inner.http.get(url).send().await {
            Ok(resp) => resp.status().is_success() || resp.status() == StatusCode::UNAUTHORIZED,
            Err(_) => false,
        }
    }

    /// The scheme of the index, for turning endpoints into URLs.
    async fn scheme(&self) -> Result<String> {
        Ok(self.base().await?.scheme().to_string())
    }

    /// `{scheme}://{index}/v1/{path}`.
    async fn index_url(&self, path: &str) -> Result<Url> {
        let base = self.base().await?;
        join(base, &format!("v1/{path}"), &self.inner.name)
    }

    /// Sends a request with retries (see the module docs).
    pub(crate) async fn send(
        &self,
        op: &Op,
        auth: Auth<'_>,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        self.base().await?;
        self.send_once_or_retry(op, auth, build, true).await
    }

    async fn send_once_or_retry(
        &self,
        op: &Op,
        auth: Auth<'_>,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
        retry_connect: bool,
    ) -> Result<Response> {
        let inner = &self.inner;
        let mut attempt = 1;
        loop {
            let mut request = build(&inner.http)?
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            if let Some(value) = self.authorization(auth, request.url()) {
                let value = value.parse().map_err(|_| Error::Protocol {
                    registry: inner.name.clone(),
                    message: "unusable token".into(),
                })?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            let (failure, retry_after) = match inner.http.execute(request).await {
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error();
                    if !retryable {
                        return Ok(resp);
                    }
                    let retry_after = parse_retry_after(resp.headers());
                    (self.status_error(op, resp).await, retry_after)
                }
                Err(e) => {
                    let err = transport_error(&inner.name, &e);
                    if !retry_connect && (e.is_connect() || e.is_timeout()) {
                        return Err(err);
                    }
                    (err, None)
                }
            };
            if !failure.is_retryable() || !op.resendable || attempt >= inner.retry.max_attempts {
                return Err(failure);
            }
            let delay = inner.retry.delay(attempt, retry_after);
            tracing::debug!(
                registry = %inner.name,
                "{} failed (attempt {attempt} of {}): {failure}; retrying in {delay:?}",
                op.action,
                inner.retry.max_attempts
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn authorization(&self, auth: Auth<'_>, url: &Url) -> Option<String> {
        let on_index = authority_of(url).is_some_and(|a| a == self.inner.authority);
        let basic = || {
            self.inner
                .credentials
                .as_ref()
                .and_then(Credentials::basic_header)
        };
        match auth {
            Auth::Token(Some(token)) => Some(format!("Token {token}")),
            Auth::Basic | Auth::Token(None) if on_index => basic(),
            _ => None,
        }
    }

    /// Turns an unexpected answer into a typed error carrying the
    /// registry's message.
    pub(crate) async fn status_error(&self, op: &Op, resp: Response) -> Error {
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers());
        let body = read_small_body(resp, &self.inner.name)
            .await
            .unwrap_or_default();
        let message = error_message(&body);
        let registry = self.inner.name.clone();
        let repository = |r: &str| format!("{registry}/{r}");
        match (status, &op.subject) {
            (StatusCode::NOT_FOUND, Subject::Image { repository: r, id }) => Error::BlobNotFound {
                repository: repository(r),
                digest: format!("v1 image {id}"),
                message,
            },
            (StatusCode::NOT_FOUND, Subject::Tag { repository: r, tag }) => {
                Error::ManifestNotFound {
                    repository: repository(r),
                    reference: tag.clone(),
                    message,
                }
            }
            (StatusCode::NOT_FOUND, Subject::Repository(r)) => Error::RepositoryNotFound {
                repository: repository(r),
                message,
            },
            (StatusCode::UNAUTHORIZED, subject) => Error::Unauthorized {
                registry: registry.clone(),
                scope: subject_text(&registry, subject),
                message,
            },
            (StatusCode::FORBIDDEN, subject) => Error::Denied {
                registry: registry.clone(),
                scope: subject_text(&registry, subject),
                message,
            },
            (StatusCode::TOO_MANY_REQUESTS, _) => Error::RateLimited {
                registry,
                retry_after,
            },
            (s, _) => Error::Status {
                registry,
                operation: op.action.clone(),
                status: s.as_u16(),
                message,
            },
        }
    }
}

fn subject_text(registry: &str, subject: &Subject) -> String {
    match subject {
        Subject::Repository(r)
        | Subject::Image { repository: r, .. }
        | Subject::Tag { repository: r, .. } => {
            format!("{registry}/{r}")
        }
        Subject::Registry => "the registry".into(),
    }
}

fn parse_base(scheme: &str, authority: &str, name: &str) -> Result<Url> {
    Url::parse(&format!("{scheme}://{authority}/"))
        .map_err(|e| Error::Config(format!("registry {name}: {e}")))
}

fn join(base: &Url, path: &str, name: &str) -> Result<Url> {
    base.join(path)
        .map_err(|e| Error::Config(format!("registry {name}: bad path {path}: {e}")))
}

/// The message of a v1 error body: `{"error": "..."}` (both servers), the
/// v2 `errors` list, or a short text.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(text) = value.get("error").and_then(|e| e.as_str()) {
            return Some(text.to_string());
        }
        if let Some(text) = value.as_str() {
            return Some(text.to_string());
        }
    }
    let v2 = crate::client::parse_error_body(body);
    if !v2.is_empty() {
        return Some(
            v2.iter()
                .map(|(c, m)| format!("{c}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    (!text.is_empty() && text.len() < 300 && !text.contains('<')).then_some(text)
}

/// The first value of a header, trimmed.
pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::repository::header_str(headers, name)
}

/// Which v1 repository name a reference's repository maps to: both
/// servers (and Docker) put one-component names under `library/`.
pub fn remote_name(repository: &str) -> String {
    if repository.contains('/') {
        repository.to_string()
    } else {
        format!("library/{repository}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_error_bodies_carry_the_servers_words() {
        assert_eq!(
            error_message(br#"{"error": "Image already exists"}"#).as_deref(),
            Some("Image already exists")
        );
        assert_eq!(
            error_message(br#"{"error":"checksum mismatch","status":400}"#).as_deref(),
            Some("checksum mismatch")
        );
        assert_eq!(
            error_message(b"Invalid data").as_deref(),
            Some("Invalid data")
        );
        assert_eq!(error_message(b"<html>oops</html>"), None);
        assert_eq!(error_message(b""), None);
    }

    #[test]
    fn one_component_names_go_under_library() {
        assert_eq!(remote_name("busybox"), "library/busybox");
        assert_eq!(remote_name("team/app"), "team/app");
    }
}
