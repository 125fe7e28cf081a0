//! The routes of the distribution API and how each request is answered.
//!
//! Only `GET` and `HEAD` read; every other method on `/v2/...` is answered
//! `405` with an `UNSUPPORTED` error. Paths under `/v2/NAME/` are split at
//! their last `/manifests/`, `/blobs/`, `/referrers/` or `/tags/list`, so a
//! repository name may have any number of components.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::blobs;
use crate::error::{ApiError, ErrorCode};
use crate::listing;
use crate::manifests;
use crate::metrics::Metrics;
use crate::names;
use crate::store_view::StoreView;

/// `Docker-Distribution-API-Version`, which docker-style clients look for.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The store, seen through its serving view.
    pub(crate) view: StoreView,
    /// The server's counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Registries whose repositories win when a name is in several.
    pub(crate) preferred_registries: Vec<String>,
    /// Where misses are fetched from, in pull-through mode.
    pub(crate) upstream: Option<crate::upstream::Upstream>,
    /// The credentials clients must present, if any.
    pub(crate) auth: Option<crate::auth::Authenticator>,
}

impl AppState {
    /// The upstream registry a request's miss goes to, if any.
    pub(crate) fn upstream_for(
        &self,
        ns: Option<&str>,
    ) -> Option<(&crate::upstream::Upstream, String)> {
        let upstream = self.upstream.as_ref()?;
        let registry = upstream.registry_for(ns)?.to_owned();
        Some((upstream, registry))
    }
}

pub(crate) type Shared = Arc<AppState>;

/// The router of the whole API, with request logging and counting.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/_catalog", any(catalog))
        .route("/v2/{*rest}", any(dispatch))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_auth,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), log_and_count))
        .with_state(state)
}

/// Runs `work` (store lookups) on the blocking pool.
pub(crate) async fn blocking<T, F>(state: &Shared, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(ApiError::internal)?
}

impl AppState {
    /// The stored repository (full name) that a request's `name` means,
    /// with its tags; `NAME_UNKNOWN` when none.
    pub(crate) fn repository(
        &self,
        name: &str,
        ns: Option<&str>,
    ) -> Result<(String, BTreeSet<String>), ApiError> {
        let mut repositories = self.view.repositories()?;
        let full = names::find_repository(name, ns, &self.preferred_registries, &repositories)
            .ok_or_else(|| ApiError::unknown_name(name))?;
        let tags = repositories.remove(&full).unwrap_or_default();
        Ok((full, tags))
    }
}

/// The reads a path under `/v2/` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Uploads { name: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

fn parse_target(rest: &str) -> Option<Target<'_>> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Target::Tags { name });
    }
    if let Some((name, _)) = rest.rsplit_once("/blobs/uploads") {
        return Some(Target::Uploads { name });
    }
    let split = |marker: &str| {
        rest.rsplit_once(marker)
            .filter(|(name, last)| !name.is_empty() && !last.is_empty() && !last.contains('/'))
    };
    if let Some((name, reference)) = split("/manifests/") {
        return Some(Target::Manifest { name, reference });
    }
    if let Some((name, digest)) = split("/blobs/") {
        return Some(Target::Blob { name, digest });
    }
    if let Some((name, digest)) = split("/referrers/") {
        return Some(Target::Referrers { name, digest });
    }
    None
}

async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return unsupported().into_response();
    }
    let mut response = (StatusCode::OK, "{}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn catalog(
    State(state): State<Shared>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(unsupported());
    }
    listing::catalog(&state, &query).await
}

async fn dispatch(
    State(state): State<Shared>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let target = parse_target(&rest);
    if method != Method::GET && method != Method::HEAD {
        return Err(unsupported());
    }
    let head = method == Method::HEAD;
    let ns = query.get("ns").map(String::as_str);
    let check = |name: &str| {
        if names::is_valid_name(name) {
            Ok(())
        } else {
            Err(
                ApiError::new(ErrorCode::NameInvalid, "invalid repository name")
                    .with_detail(serde_json::json!({ "name": name })),
            )
        }
    };
    match target {
        Some(Target::Manifest { name, reference }) => {
            check(name)?;
            manifests::get(&state, name, reference, ns, head, &headers).await
        }
        Some(Target::Blob { name, digest }) => {
            check(name)?;
            blobs::get(&state, name, digest, ns, head, &headers).await
        }
        Some(Target::Tags { name }) => {
            check(name)?;
            listing::tags(&state, name, &query).await
        }
        Some(Target::Referrers { name, digest }) => {
            check(name)?;
            listing::referrers(&state, name, digest, &query).await
        }
        Some(Target::Uploads { .. }) => Err(unsupported()),
        None => Ok(not_found().await),
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn not_found() -> Response {
    let body = r#"{"errors":[{"code":"NOT_FOUND","message":"no such API endpoint"}]}"#;
    let mut response = (StatusCode::NOT_FOUND, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn unsupported() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "haul serve is read-only: the operation is unsupported",
    )
}

/// Adds the API version header, counts the response by status and logs
/// one line per request (at `info`, shown by `haul -v serve`).
async fn log_and_count(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    let status = response.status();
    state.metrics.request(status.as_u16());
    response
        .headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        "{method} {uri} {} {length} {:.1}ms",
        status.as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_their_last_marker() {
        assert_eq!(
            parse_target("team/app/manifests/1.0"),
            Some(Target::Manifest {
                name: "team/app",
                reference: "1.0"
            })
        );
        assert_eq!(
            parse_target("a/manifests/b/manifests/latest"),
            Some(Target::Manifest {
                name: "a/manifests/b",
                reference: "latest"
            })
        );
        assert_eq!(
            parse_target("app/blobs/sha256:00"),
            Some(Target::Blob {
                name: "app",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse_target("app/blobs/uploads/"),
            Some(Target::Uploads { name: "app" })
        );
        assert_eq!(
            parse_target("x/y/tags/list"),
            Some(Target::Tags { name: "x/y" })
        );
        assert_eq!(
            parse_target("x/referrers/sha256:ab"),
            Some(Target::Referrers {
                name: "x",
                digest: "sha256:ab"
            })
        );
        assert_eq!(parse_target("x/manifests/"), None);
        assert_eq!(parse_target("nothing"), None);
    }
}
