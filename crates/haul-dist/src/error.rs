//! The one error type of the pull, push, copy, save and load flows.

use std::path::PathBuf;

use haul_oci::Digest;

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
    /// A layer blob's stream broke while it was unpacked (a corrupt or
    /// truncated gzip, a cut tar, an entry that failed or is unsafe): the
    /// sentence names the blob.
    #[error("layer {digest}: {source}")]
    LayerStream {
        /// The layer blob's digest.
        digest: Digest,
        /// The store's error (its source is the stream's).
        #[source]
        source: haul_store::Error,
    },
    /// A referrer (signature, SBOM) of a manifest could not be brought
    /// along; nothing of it is recorded.
    #[error("referrer {referrer} of {subject}: {source}")]
    Referrer {
        /// The referrer manifest's digest.
        referrer: Digest,
        /// The manifest it refers to.
        subject: Digest,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
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
    #[error("no such image: {0}")]
    NoSuchImage(String),

    /// A local reference has no stored image of the platform asked for.
    #[error("{reference} has no {wanted} image in the store (stored: {stored})")]
    NoLocalPlatform {
        /// The reference, as typed.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms stored for it.
        stored: String,
    },

    /// A reference to one image (no index) whose platform is not the one
    /// asked for, as Docker 20.10 refuses it.
    #[error(
        "image with reference {reference} was found but does not match the specified \
         platform: wanted {wanted}, actual: {actual}"
    )]
    PlatformMismatch {
        /// The reference pulled.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The image's own platform.
        actual: String,
    },
    /// A push names an image that is not in the local store.
    #[error("an image does not exist locally with the tag: {0}")]
    NotLocal(String),
    /// The operation was cancelled.
    #[error("operation cancelled")]
    Cancelled,

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The input is not an archive this module reads.
    #[error("{}: {reason}", path.display())]
    NotAnArchive {
        /// The input.
        path: PathBuf,
        /// Why it is not one.
        reason: String,
    },

    /// A member the archive's metadata names is not in the archive.
    #[error("the archive has no {member:?}")]
    MissingMember {
        /// The member's path inside the archive.
        member: String,
    },

    /// A path inside the archive is unsafe (absolute, or escapes it).
    #[error("archive path {member:?} {reason}")]
    UnsafePath {
        /// The path as written in the archive.
        member: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A metadata document of the archive is not what its format says.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document (`manifest.json`, `index.json`, ...).
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// Something in the archive is of a kind this module does not handle.
    #[error("{0}")]
    UnsupportedArchive(String),

    /// An archive member does not hash to the digest it is known by.
    #[error("{member}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// The member.
        member: String,
        /// Its expected digest.
        expected: Digest,
        /// What it hashed to.
        actual: Digest,
    },

    /// An archive member does not have the size its descriptor says.
    #[error("{member}: {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The member.
        member: String,
        /// The size its descriptor says.
        expected: u64,
        /// The size it has.
        actual: u64,
    },

    /// A layer's tar does not hash to the diffID of the image config.
    #[error("layer {member}: its tar hashes to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The layer (archive member, or stored blob when saving).
        member: String,
        /// The diffID from the config.
        expected: Digest,
        /// What the tar hashed to.
        actual: Digest,
    },

    /// A layer blob of an image being saved is not in the store.
    #[error("{reference}: layer {diff_id} has no blob in the store (blob {blob})")]
    MissingLayerBlob {
        /// The image.
        reference: String,
        /// The layer's diffID.
        diff_id: Digest,
        /// The blob its manifest names.
        blob: Digest,
    },

    /// The output exists and cannot be replaced.
    #[error("{} exists and is not an empty directory", path.display())]
    OutputExists {
        /// The output.
        path: PathBuf,
    },

    /// An error about one member of the archive.
    #[error("{member}: {source}")]
    Member {
        /// The member's path inside the archive.
        member: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A registry answered something its protocol does not allow.
    #[error("{registry}: {message}")]
    Protocol {
        /// The registry (host, or v1 endpoint).
        registry: String,
        /// What it did wrong.
        message: String,
    },

    /// A layer blob's answer ended before the blob did.
    #[error("layer {digest}: the download stopped at byte {at} of {size}")]
    Truncated {
        /// The blob.
        digest: Digest,
        /// Bytes received.
        at: u64,
        /// Bytes it has.
        size: u64,
    },

    /// One layer of a pull failed: which, at which attempt, and why (the
    /// cause is kept typed).
    #[error("layer {digest}: {source} (attempt {attempt} of {attempts})")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// The attempt that failed last (1-based).
        attempt: u32,
        /// Attempts allowed.
        attempts: u32,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A bug or a crashed worker (never retried; never used for network,
    /// disk or input problems).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Results of the flows.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sorts a pull error into "try again" and "give up".
pub(crate) fn into_transfer_error(err: Error) -> haul_xfer::Error {
    if is_retryable(&err) {
        haul_xfer::Error::failed(err)
    } else {
        haul_xfer::Error::do_not_retry(err)
    }
}

/// Whether another attempt may cure `err` (network trouble, a corrupted
/// download); never for bugs, bad input or a full disk.
///
/// A connection the registry refuses is final for the first request to a
/// host (nothing listens there), but not in the middle of a layer: that
/// registry answered a moment ago and is being restarted, so the layer
/// waits and tries again, as Docker does.
pub(crate) fn is_retryable(err: &Error) -> bool {
    match err {
        Error::Registry(e) => {
            e.is_retryable()
                || matches!(
                    e,
                    haul_registry::Error::DigestMismatch { .. }
                        | haul_registry::Error::Transport { .. }
                )
        }
        Error::Store(e) => matches!(
            e,
            haul_store::Error::DigestMismatch { .. } | haul_store::Error::SizeMismatch { .. }
        ),
        Error::Truncated { .. } => true,
        Error::Io { source, .. } => source.kind() != std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_in_the_middle_of_a_layer_is_tried_again() {
        let refused = Error::Registry(haul_registry::Error::Transport {
            registry: "127.0.0.1:5000".into(),
            message: "connection refused".into(),
            retryable: false,
        });
        assert!(into_transfer_error(refused).is_retryable());
        let not_found = Error::Registry(haul_registry::Error::BlobNotFound {
            repository: "127.0.0.1:5000/app".into(),
            digest: haul_oci::Digest::sha256_of(b"x").to_string(),
            message: None,
        });
        assert!(!into_transfer_error(not_found).is_retryable());
    }
}
