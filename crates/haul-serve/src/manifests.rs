//! `GET` / `HEAD /v2/NAME/manifests/REFERENCE`: the exact stored bytes of
//! a manifest or index, by tag or by digest.
//!
//! By tag, the index is served when the store holds it whole (see
//! [`crate::store_view`]), unless the client's `Accept` names no index
//! type: it then gets the platform manifest, as distribution does for old
//! clients. By digest, any stored manifest or index.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use haul_oci::media_type;

use crate::api::{blocking, Shared};
use crate::blobs::{is_miss, parse_digest};
use crate::error::ApiError;
use crate::store_view::StoredManifest;

/// Answers a manifest request.
pub(crate) async fn get(
    state: &Shared,
    name: &str,
    reference: &str,
    ns: Option<&str>,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let by_digest = if reference.contains(':') {
        Some(parse_digest(reference)?)
    } else {
        None
    };
    let index_ok = accepts_index(headers);
    let local = {
        let (name, ns, reference) = (name.to_owned(), ns.map(str::to_owned), reference.to_owned());
        let by_digest = by_digest.clone();
        blocking(state, move |app| {
            let (full, _tags) = app.repository(&name, ns.as_deref())?;
            let found = match &by_digest {
                Some(digest) => app.view.manifest_by_digest(digest)?,
                None => app.view.manifest_for_tag(&full, &reference)?.map(|tag| {
                    if index_ok || !media_type::is_index(&tag.preferred.media_type) {
                        tag.preferred
                    } else {
                        tag.platform
                    }
                }),
            };
            found.ok_or_else(|| ApiError::unknown_manifest(&name, &reference))
        })
        .await
    };
    let manifest = match local {
        Ok(manifest) => {
            state.metrics.hit();
            manifest
        }
        Err(e) if is_miss(&e) && state.upstream_for(ns).is_some() => {
            from_upstream(state, name, reference, ns, by_digest).await?
        }
        Err(e) => return Err(e),
    };
    respond(state, manifest, head)
}

/// A manifest the store's references do not name: by digest from the
/// store when fetched before, else from upstream.
async fn from_upstream(
    state: &Shared,
    name: &str,
    reference: &str,
    ns: Option<&str>,
    by_digest: Option<haul_oci::Digest>,
) -> Result<StoredManifest, ApiError> {
    if let Some(digest) = by_digest {
        let stored = blocking(state, move |app| {
            Ok(app.view.manifest_by_digest(&digest)?)
        })
        .await?;
        if let Some(manifest) = stored {
            state.metrics.hit();
            return Ok(manifest);
        }
    }
    let Some((upstream, registry)) = state.upstream_for(ns) else {
        return Err(ApiError::unknown_manifest(name, reference));
    };
    upstream
        .manifest(
            state.view.store(),
            &state.metrics,
            &registry,
            name,
            reference,
        )
        .await
}

/// The response carrying `manifest`.
pub(crate) fn respond(
    state: &Shared,
    manifest: StoredManifest,
    head: bool,
) -> Result<Response, ApiError> {
    let length = manifest.bytes.len();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, length)
        .header("docker-content-digest", manifest.digest.as_str())
        .header(header::ETAG, format!("\"{}\"", manifest.digest));
    let body = if head {
        axum::body::Body::empty()
    } else {
        state.metrics.served(length as u64);
        axum::body::Body::from(manifest.bytes)
    };
    builder
        .body(body)
        .map_err(|e| ApiError::internal(format!("manifest {}: {e}", manifest.digest)))
}

/// Whether the request's `Accept` allows an index (no header, `*/*`, or an
/// index media type among the values).
fn accepts_index(headers: &HeaderMap) -> bool {
    let mut values = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .filter(|v| !v.is_empty())
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|v| v == "*/*" || media_type::is_index(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn index_is_accepted_unless_the_client_lists_only_manifests() {
        assert!(accepts_index(&accept(&[])));
        assert!(accepts_index(&accept(&["*/*"])));
        assert!(accepts_index(&accept(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.index.v1+json; q=0.5",
        ])));
        assert!(accepts_index(&accept(&[
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
        ])));
        assert!(!accepts_index(&accept(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        ])));
    }
}
