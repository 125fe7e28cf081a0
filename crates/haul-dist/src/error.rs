//! The one error type of the pull, push and copy flows.

/// What went wrong while moving an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry client failed.
    #[error(transparent)]
    Registry(#[from] haul_registry::Error),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] haul_store::Error),
    /// A manifest, config or reference did not parse.
    #[error(transparent)]
    Oci(#[from] haul_oci::Error),
    /// A layer transfer failed (its cause is in the message).
    #[error(transparent)]
    Transfer(#[from] haul_xfer::Error),
    /// A layer blob could not be decompressed.
    #[error("cannot decompress layer: {0}")]
    Decompress(String),
    /// The manifest is of a kind this flow cannot handle.
    #[error("{reference}: {message}")]
    Unsupported {
        /// The image reference.
        reference: String,
        /// What is not supported.
        message: String,
    },
    /// The image's layers do not match its config.
    #[error("{reference}: {message}")]
    Inconsistent {
        /// The image reference.
        reference: String,
        /// What does not match.
        message: String,
    },
    /// No local image has this reference.
    #[error("an image does not exist locally with the tag: {0}")]
    NoSuchImage(String),
    /// The operation was cancelled.
    #[error("operation cancelled")]
    Cancelled,
    /// A bug or a crashed worker.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Results of the flows.
pub type Result<T, E = Error> = std::result::Result<T, E>;
