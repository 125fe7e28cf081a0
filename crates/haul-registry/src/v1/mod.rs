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
use crate::send::{is_retryable_status, send_with_retries, Attempt, SendPolicy};
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
                base: OnceCell::new_with(self.known_base(registry)),
                credentials: self.credentials_for(registry)?,
                retry: config.retry.clone(),
            }),
        })
    }

    /// Which protocol `registry` speaks, as Docker 1.10 decided: v2
    /// unless `GET /v2/` answers 404 (then v1, if `/v1/_ping` answers).
    /// A v2 registry gets no `/v1/` request; a registry with mirrors is
    /// taken as v2 (mirrors speak only v2) without asking it anything.
    /// The answer is learnt once per host for the life of the client.
    pub async fn detect_protocol(&self, registry: &str) -> Result<Protocol> {
        if self
            .config()
            .mirrors
            .get(registry)
            .is_some_and(|m| !m.is_empty())
        {
            return Ok(Protocol::V2);
        }
        if self.host(registry)?.endpoint().await?.speaks_v2 {
            return Ok(Protocol::V2);
        }
        match self.v1(registry)?.ping().await {
            Ok(()) => Ok(Protocol::V1),
            Err(e) => Err(Error::Protocol {
                registry: registry.to_string(),
                message: format!(
                    "it answers 404 to /v2/ and /v1/_ping fails ({e}); is it a registry?"
                ),
            }),
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
    /// No credentials (the ping).
    None,
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

    /// The index's base URL: the scheme the v2 probe found, else the one
    /// `/v1/_ping` answers on (plain HTTP first for loopback registries,
    /// HTTPS first for other insecure ones, HTTPS only otherwise).
    async fn base(&self) -> Result<&Url> {
        let inner = &self.inner;
        inner
            .base
            .get_or_try_init(|| async {
                let mut order = vec![parse_base("https", &inner.authority, &inner.name)?];
                if is_loopback(&inner.authority) {
                    order.insert(0, parse_base("http", &inner.authority, &inner.name)?);
                } else if inner.plain_http_allowed {
                    order.push(parse_base("http", &inner.authority, &inner.name)?);
                }
                let mut first_error = None;
                for url in order {
                    match self.probe(&url).await {
                        Ok(()) => return Ok(url),
                        Err(err) => {
                            tracing::info!(registry = %inner.name, "v1 ping over {} failed: {err}", url.scheme());
                            if crate::transport::is_unreachable(&err) {
                                return Err(err);
                            }
                            first_error.get_or_insert(err);
                        }
                    }
                }
                Err(first_error.expect("at least one scheme is tried"))
            })
            .await
    }

    /// Asks `/v1/_ping`, without credentials and without retrying a
    /// connection that cannot be made.
    async fn probe(&self, base: &Url) -> Result<()> {
        let url = join(base, "v1/_ping", &self.inner.name)?;
        tracing::info!(registry = %self.inner.name, "probing GET {url}");
        let op = Op {
            subject: Subject::Registry,
            action: "GET /v1/_ping".into(),
            resendable: true,
        };
        let resp = self
            .send_once_or_retry(
                &op,
                Auth::None,
                &|http| {
                    Ok(http
                        .get(url.clone())
                        .timeout(std::time::Duration::from_secs(10)))
                },
                false,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(&op, resp).await)
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
        let policy = SendPolicy {
            registry: &inner.name,
            action: &op.action,
            retry: &inner.retry,
            max_attempts: inner.retry.max_attempts,
            resendable: op.resendable,
        };
        send_with_retries(policy, || self.attempt(op, auth, build, retry_connect)).await
    }

    /// One attempt of [`V1Registry::send_once_or_retry`].
    async fn attempt(
        &self,
        op: &Op,
        auth: Auth<'_>,
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder> + Sync),
        retry_connect: bool,
    ) -> Result<Attempt> {
        let inner = &self.inner;
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
        tracing::debug!(registry = %inner.name, "{}", crate::transport::describe_request(&request));
        match inner.http.execute(request).await {
            Ok(resp) if !is_retryable_status(resp.status()) => Ok(Attempt::Answered(resp)),
            Ok(resp) => {
                let retry_after = parse_retry_after(resp.headers());
                Ok(Attempt::Failed {
                    failure: self.status_error(op, resp).await,
                    retry_after,
                })
            }
            Err(e) => {
                let failure = transport_error(&inner.name, &e);
                if !retry_connect && (e.is_connect() || e.is_timeout() || !failure.is_retryable()) {
                    return Err(failure);
                }
                Ok(Attempt::Failed {
                    failure,
                    retry_after: None,
                })
            }
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
            Auth::None | Auth::Basic | Auth::Token(None) => None,
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
