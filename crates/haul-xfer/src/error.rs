//! The crate's one error type.
//!
//! Errors are [`Clone`]: a transfer's outcome is shared by every watcher and
//! by every child transfer waiting on it (a layer whose parent failed reports
//! the parent's error value itself, so its text reaches the caller unchanged).
//! Causes from outside the crate (a registry client's or a store's errors)
//! are therefore kept behind an [`Arc`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A cause from outside the crate, shareable between watchers.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Which kind of transfer an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Pulling a layer.
    Download,
    /// Pushing a layer.
    Upload,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Download => "download",
            Operation::Upload => "upload",
        })
    }
}

/// Everything that can go wrong in a transfer, a download or an upload.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's cancellation token fired (the analogue of Go's
    /// `context.Canceled`). Transfers that other callers still watch go on.
    #[error("operation cancelled")]
    Cancelled,

    /// Every watcher left while the transfer waited between two attempts.
    #[error("{0} cancelled during retry delay")]
    CancelledDuringRetryDelay(Operation),

    /// Every watcher left while a downloaded layer waited for its parent or
    /// was being registered.
    #[error("layer registration cancelled")]
    RegistrationCancelled,

    /// The layer store refused a layer. The store's error text is part of
    /// this message (it is not also exposed as `source()`, so that a chain
    /// printer does not repeat it). Never retried.
    #[error("failed to register layer: {0}")]
    RegisterLayer(Box<Error>),

    /// The chain of downloaded layers ended before reaching the bottom of
    /// the image; a bug in the download manager or in the layer store.
    #[error("internal error: too few parent layers")]
    TooFewParentLayers,

    /// A transfer's task ended without producing a result: it panicked, or
    /// its runtime shut down.
    #[error("transfer task ended without a result (it panicked or its runtime shut down)")]
    Aborted,

    /// A failure that another attempt may cure (connection reset, 5xx...).
    /// Displays exactly as its cause.
    #[error(transparent)]
    Failed(SharedError),

    /// A failure that retrying cannot help (digest mismatch, access denied,
    /// unknown blob...). Displays exactly as its cause.
    #[error(transparent)]
    DoNotRetry(SharedError),
}

impl Error {
    /// Wraps a cause that another attempt may cure. A `&str` or `String`
    /// works as a cause too: `Error::failed("connection reset")`.
    pub fn failed(cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::Failed(Arc::from(cause.into()))
    }

    /// Wraps a cause that retrying cannot help; the retry loops give up at
    /// once on such an error.
    pub fn do_not_retry(cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::DoNotRetry(Arc::from(cause.into()))
    }

    /// Marks this error as one that retrying cannot help. Errors that are
    /// already not retried are returned as they are.
    pub fn into_do_not_retry(self) -> Self {
        match self {
            Error::Failed(cause) => Error::DoNotRetry(cause),
            other => other,
        }
    }

    /// Whether the retry loops may try again after this error. Only
    /// [`Error::Failed`] is retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Failed(_))
    }

    /// Whether this error reports a cancellation (by the caller, or of a
    /// transfer every watcher left).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            Error::Cancelled | Error::CancelledDuringRetryDelay(_) | Error::RegistrationCancelled
        )
    }
}

impl From<std::io::Error> for Error {
    /// An I/O error is taken as one another attempt may cure.
    fn from(err: std::io::Error) -> Self {
        Error::failed(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_displays_exactly_as_its_cause() {
        let err = Error::failed("simulating download attempt failure 5/5");
        assert_eq!(err.to_string(), "simulating download attempt failure 5/5");
        assert!(err.is_retryable());
    }

    #[test]
    fn marking_do_not_retry_keeps_the_text_and_stops_retries() {
        let err = Error::failed("digest mismatch").into_do_not_retry();
        assert_eq!(err.to_string(), "digest mismatch");
        assert!(!err.is_retryable());
        assert!(!Error::do_not_retry("denied").is_retryable());
    }

    #[test]
    fn registration_failure_names_the_store_error() {
        let err = Error::RegisterLayer(Box::new(Error::failed("disk full")));
        assert_eq!(err.to_string(), "failed to register layer: disk full");
    }

    #[test]
    fn retry_delay_cancellation_names_the_operation() {
        assert_eq!(
            Error::CancelledDuringRetryDelay(Operation::Download).to_string(),
            "download cancelled during retry delay"
        );
        assert_eq!(
            Error::CancelledDuringRetryDelay(Operation::Upload).to_string(),
            "upload cancelled during retry delay"
        );
    }
}
