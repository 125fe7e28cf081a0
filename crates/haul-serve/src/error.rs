//! The crate's error type, and the OCI error bodies requests are answered
//! with.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What can stop the server or a request from being served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] haul_store::Error),

    /// The TLS certificate or key could not be loaded.
    #[error("TLS identity {path}: {reason}")]
    Tls {
        /// The file involved.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// The client credentials file could not be used.
    #[error("client credentials {path}: {reason}")]
    Auth {
        /// The file involved.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error codes of the OCI distribution spec that this server answers
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The blob is not known to the registry.
    BlobUnknown,
    /// The manifest (tag or digest) is not known.
    ManifestUnknown,
    /// The repository is not known.
    NameUnknown,
    /// The repository name is not valid.
    NameInvalid,
    /// The digest is not valid.
    DigestInvalid,
    /// The operation is not supported (every write).
    Unsupported,
    /// A `Range` that the blob cannot satisfy.
    RangeInvalid,
    /// A query parameter (`n`, `last`) is not valid.
    PaginationNumberInvalid,
    /// The client did not authenticate.
    Unauthorized,
    /// Anything else: the store could not be read.
    Unknown,
}

impl ErrorCode {
    /// The code as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::NameInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A request's failure, answered as an OCI error body
/// (`{"errors":[{"code":..,"message":..,"detail":..}]}`).
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    detail: serde_json::Value,
    status: StatusCode,
}

impl ApiError {
    /// An error with `code`'s usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            status: code.status(),
        }
    }

    /// The same error with a `detail` object.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The same error sent with another HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The code of this error.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn unknown_name(name: &str) -> Self {
        ApiError::new(
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }

    pub(crate) fn unknown_manifest(name: &str, reference: &str) -> Self {
        ApiError::new(ErrorCode::ManifestUnknown, "manifest unknown")
            .with_detail(serde_json::json!({ "name": name, "reference": reference }))
    }

    pub(crate) fn unknown_blob(digest: &str) -> Self {
        ApiError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
            .with_detail(serde_json::json!({ "digest": digest }))
    }

    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {err}");
        ApiError::new(ErrorCode::Unknown, err.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError::internal(err)
    }
}

impl From<haul_store::Error> for ApiError {
    fn from(err: haul_store::Error) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
        });
        if !self.detail.is_null() {
            error["detail"] = self.detail;
        }
        let body = serde_json::json!({ "errors": [error] }).to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
