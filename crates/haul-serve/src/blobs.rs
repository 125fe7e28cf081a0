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
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::api::{blocking, Shared};
use crate::error::{ApiError, ErrorCode};
use crate::range::{parse_range, RangeRequest};

/// Bytes read from the blob file per chunk of the response.
const CHUNK: usize = 256 * 1024;

/// Answers a blob request.
pub(crate) async fn get(
    state: &Shared,
    name: &str,
    digest: &str,
    ns: Option<&str>,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let (name, ns) = (name.to_owned(), ns.map(str::to_owned));
    let wanted = digest.clone();
    let opened = blocking(state, move |app| {
        let lease = app.view.store().lease()?;
        app.repository(&name, ns.as_deref())?;
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
        Ok((lease, file, size))
    })
    .await?;
    let (lease, file, size) = opened;
    state.metrics.hit();

    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, length) = match parse_range(range_header, size) {
        RangeRequest::Whole => (StatusCode::OK, 0, size),
        RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
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
            return Ok(response);
        }
    };

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
