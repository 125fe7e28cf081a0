//! `GET` / `HEAD /v2/NAME/blobs/DIGEST`: a stored blob streamed from disk,
//! whole or one byte range of it.
//!
//! The blob is opened under a store [`Lease`](haul_store::Lease), held
//! until the response body has been sent (or the client went away), so a
//! `haul gc` waits for the response instead of deleting the blob under it.
//! The file is read in 256 KiB chunks as the client takes them; no blob is
//! held in memory.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use haul_oci::Digest;
use haul_store::Lease;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::api::{blocking, Shared};
use crate::error::{ApiError, ErrorCode};
use crate::range::{parse_range, RangeRequest};

/// Bytes read from the blob file per chunk of the response.
const CHUNK: usize = 256 * 1024;

/// A stored blob opened under a lease.
struct Opened {
    lease: Lease,
    file: std::fs::File,
    size: u64,
}

/// Answers a blob request: from the store, else (pull-through) from the
/// upstream registry.
pub(crate) async fn get(
    state: &Shared,
    name: &str,
    digest: &str,
    ns: Option<&str>,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let opened = match open_local(state, Some((name, ns)), &digest).await {
        Ok(opened) => opened,
        Err(e) if is_miss(&e) && state.upstream_for(ns).is_some() => {
            // Fetched before through another repository, or not at all.
            match open_local(state, None, &digest).await {
                Ok(opened) => opened,
                Err(e) if e.code() == ErrorCode::BlobUnknown => {
                    return from_upstream(state, name, ns, &digest, head, headers).await
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    state.metrics.hit();
    let Opened { lease, file, size } = opened;
    let (status, start, length) = match byte_range(headers, size) {
        Ok(range) => range,
        Err(response) => return Ok(*response),
    };
    let body = if head {
        drop(lease);
        Body::empty()
    } else {
        let mut file = tokio::fs::File::from_std(file);
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal(format!("blob {digest}: {e}")))?;
        }
        let metrics = state.metrics.clone();
        let stream = ReaderStream::with_capacity(file.take(length), CHUNK).map(move |chunk| {
            // The lease lives as long as the body: until the last byte
            // went out or the client hung up.
            let _held = &lease;
            if let Ok(bytes) = &chunk {
                metrics.served(bytes.len() as u64);
            }
            chunk
        });
        Body::from_stream(stream)
    };
    respond(&digest, status, start, length, size, body)
}

/// Whether an error means "not in the store" (so that pull-through asks
/// upstream).
pub(crate) fn is_miss(e: &ApiError) -> bool {
    matches!(
        e.code(),
        ErrorCode::NameUnknown | ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown
    )
}

/// Opens the stored blob under a lease; with `repository`, only when the
/// store knows that repository.
async fn open_local(
    state: &Shared,
    repository: Option<(&str, Option<&str>)>,
    digest: &Digest,
) -> Result<Opened, ApiError> {
    let repository = repository.map(|(name, ns)| (name.to_owned(), ns.map(str::to_owned)));
    let wanted = digest.clone();
    blocking(state, move |app| {
        let lease = app.view.store().lease()?;
        if let Some((name, ns)) = &repository {
            app.repository(name, ns.as_deref())?;
        }
        let path = app.view.blob_path(&wanted);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::unknown_blob(wanted.as_str()))
            }
            Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
        };
        let size = file
            .metadata()
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?
            .len();
        Ok(Opened { lease, file, size })
    })
    .await
}

/// A blob the store lacks, fetched from upstream once for every client
/// asking at the same time, and streamed to each as it arrives.
async fn from_upstream(
    state: &Shared,
    name: &str,
    ns: Option<&str>,
    digest: &Digest,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some((upstream, registry)) = state.upstream_for(ns) else {
        return Err(ApiError::unknown_blob(digest.as_str()));
    };
    if head {
        let size = upstream.blob_size(&registry, name, digest).await?;
        state.metrics.miss();
        return respond(digest, StatusCode::OK, 0, size, size, Body::empty());
    }
    let store = state.view.store().clone();
    let mut fetch = upstream
        .fetch_blob(&store, &state.metrics, &registry, name, digest)
        .await?;
    let size = loop {
        if let Some(result) = fetch.watcher.transfer().result() {
            match result {
                Ok(size) => break size,
                Err(e) if e.to_string().contains("not found") => {
                    return Err(ApiError::unknown_blob(digest.as_str()))
                }
                Err(e) => {
                    return Err(ApiError::new(ErrorCode::Unknown, format!("upstream: {e}"))
                        .with_status(StatusCode::BAD_GATEWAY))
                }
            }
        }
        if let (_, Some(total)) = *fetch.seen.borrow() {
            break total;
        }
        let transfer = fetch.watcher.transfer().clone();
        tokio::select! {
            _ = fetch.seen.changed() => {}
            () = transfer.done() => {}
        }
    };
    let (status, start, length) = match byte_range(headers, size) {
        Ok(range) => range,
        Err(response) => return Ok(*response),
    };
    let lease = blocking(state, |app| Ok(app.view.store().lease()?)).await?;
    let (partial, blob) = upstream.follow_paths(&store, digest);
    let follow = crate::follow::Follow {
        fetch,
        partial,
        blob,
        digest: digest.clone(),
        pos: start,
        end: start + length,
        metrics: state.metrics.clone(),
        file: None,
        _lease: Some(lease),
    };
    let body = Body::from_stream(follow.into_stream());
    respond(digest, status, start, length, size, body)
}

/// The status, first byte and length a request's `Range` asks of a blob of
/// `size` bytes, or the `416` answer.
#[allow(clippy::result_large_err)]
fn byte_range(headers: &HeaderMap, size: u64) -> Result<(StatusCode, u64, u64), Box<Response>> {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match parse_range(range_header, size) {
        RangeRequest::Whole => Ok((StatusCode::OK, 0, size)),
        RangeRequest::Part { start, end } => {
            Ok((StatusCode::PARTIAL_CONTENT, start, end - start + 1))
        }
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                ErrorCode::RangeInvalid,
                format!("range {} is not satisfiable", range_header.unwrap_or("")),
            )
            .with_detail(serde_json::json!({ "size": size }))
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            Err(Box::new(response))
        }
    }
}

/// A blob response's headers around `body`.
fn respond(
    digest: &Digest,
    status: StatusCode,
    start: u64,
    length: u64,
    size: u64,
    body: Body,
) -> Result<Response, ApiError> {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", digest.as_str())
        .header(header::ETAG, format!("\"{digest}\""));
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + length - 1),
        );
    }
    response
        .body(body)
        .map_err(|e| ApiError::internal(format!("blob {digest}: {e}")))
}

/// A digest from a request path; `DIGEST_INVALID` when it is not one.
pub(crate) fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| {
        ApiError::new(ErrorCode::DigestInvalid, format!("invalid digest: {e}"))
            .with_detail(serde_json::json!({ "digest": text }))
    })
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
