//! The one error type of the registry client.

use std::time::Duration;

/// What went wrong while talking to a registry.
///
/// Variants name their subject (registry, repository, digest) so that the
/// message reads as one sentence; credentials never appear in any of them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest (tag or digest) does not exist in the repository.
    #[error("manifest {reference} not found in {repository}{}", detail(.message))]
    ManifestNotFound {
        /// Repository, with its registry.
        repository: String,
        /// The tag or digest asked for.
        reference: String,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The blob does not exist in the repository.
    #[error("blob {digest} not found in {repository}{}", detail(.message))]
    BlobNotFound {
        /// Repository, with its registry.
        repository: String,
        /// Digest of the blob.
        digest: String,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The repository does not exist (or is not visible to us).
    #[error("repository {repository} not found{}", detail(.message))]
    RepositoryNotFound {
        /// Repository, with its registry.
        repository: String,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The registry no longer holds an upload session (it cancelled it
    /// after a broken request, or it expired): a fresh one must start.
    #[error("{repository} no longer holds the upload session{} (HTTP {status}){}", of_blob(.digest), detail(.message))]
    UploadSessionLost {
        /// Repository, with its registry.
        repository: String,
        /// The blob being uploaded.
        digest: String,
        /// The status the registry answered.
        status: u16,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The registry wants credentials we do not have or refused the ones we sent.
    #[error("{registry} refused access to {scope} (unauthorized){}; log in with `haul login {registry}`", detail(.message))]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// What was asked for (repository and actions, or the registry).
        scope: String,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The credentials were accepted but do not allow the operation.
    #[error("{registry} denied access to {scope}{}", detail(.message))]
    Denied {
        /// Registry host.
        registry: String,
        /// What was asked for.
        scope: String,
        /// The registry's own words, if it sent any.
        message: Option<String>,
    },
    /// The registry kept answering 429 Too Many Requests.
    #[error("{registry} is rate limiting requests{}", retry_hint(.retry_after))]
    RateLimited {
        /// Registry host.
        registry: String,
        /// How long the registry asked us to wait last time.
        retry_after: Option<Duration>,
    },
    /// Received content does not hash to the digest it was asked for by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was fetched (blob or manifest, with its repository).
        what: String,
        /// The digest that was asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Received content is not the size it was announced with.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// Announced size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The registry broke the protocol (a missing header, a wrong range...).
    #[error("{registry} broke the registry protocol: {message}")]
    Protocol {
        /// Registry host.
        registry: String,
        /// What was wrong.
        message: String,
    },
    /// Any other non-success HTTP answer, with the registry's error body.
    #[error("{registry} answered {status} to {operation}{}", detail(.message))]
    Status {
        /// Registry host.
        registry: String,
        /// What we were doing (e.g. `PUT manifest latest`).
        operation: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's `errors[].code: message` list, if any.
        message: Option<String>,
    },
    /// A connection could not be made, broke, or timed out.
    #[error("cannot reach {registry}: {message}")]
    Transport {
        /// Registry host.
        registry: String,
        /// What the transport reported (never contains credentials).
        message: String,
        /// Whether trying again might help.
        retryable: bool,
    },
    /// The content was larger than the limit for reading it into memory.
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge {
        /// What was fetched.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// Credentials could not be loaded or stored.
    #[error("credentials for {registry}: {message}")]
    Credentials {
        /// Registry host the credentials are for.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// A setting of the client is unusable (bad CA file, bad mirror URL...).
    #[error("invalid registry client configuration: {0}")]
    Config(String),
    /// Reading local data (for an upload, a CA, a config file) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or stream involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Parsing a manifest or a digest failed.
    #[error(transparent)]
    Oci(#[from] haul_oci::Error),
}

fn detail(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

fn of_blob(digest: &str) -> String {
    if digest.is_empty() {
        String::new()
    } else {
        format!(" of blob {digest}")
    }
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (asked to wait {} s)", d.as_secs()),
        None => String::new(),
    }
}

impl Error {
    /// Whether trying the same request again later might succeed.
    ///
    /// Connection failures, rate limits and server errors are retryable;
    /// "not found", auth refusals, digest mismatches and protocol breaks are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { retryable, .. } => *retryable,
            Error::RateLimited { .. } | Error::UploadSessionLost { .. } => true,
            Error::Status { status, .. } => *status == 408 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the error says the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::ManifestNotFound { .. }
                | Error::BlobNotFound { .. }
                | Error::RepositoryNotFound { .. }
        )
    }
}

/// Results of the registry client.
pub type Result<T, E = Error> = std::result::Result<T, E>;
