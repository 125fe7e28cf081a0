//! The one error type of the store.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haul_oci::Digest;

/// Everything that can go wrong in the local store. Each variant names its
/// subject: the file, digest, layer, image or tar entry involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the store failed.
    #[error("store I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A store metadata file (JSON) could not be decoded or encoded.
    #[error("store metadata {path} is not valid: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// The blob is not in the content store.
    #[error("blob {digest} is not in the store")]
    BlobNotFound {
        /// The missing blob.
        digest: Digest,
    },

    /// Content did not have the expected length.
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The length it should have.
        expected: u64,
        /// The length it had.
        actual: u64,
    },

    /// Content did not hash to the expected digest.
    #[error("blob {expected}: content hashes to {actual}")]
    DigestMismatch {
        /// The digest the content should have.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },

    /// A blob is larger than the caller allows to read into memory.
    #[error("blob {digest} is {size} bytes, over the limit of {limit}")]
    BlobTooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// An ingest was committed under a digest other than the one it was
    /// opened for.
    #[error("ingest of {ingest} cannot be committed as {commit}")]
    IngestKeyMismatch {
        /// The digest the ingest was opened for.
        ingest: Digest,
        /// The digest passed to commit.
        commit: Digest,
    },

    /// An earlier write of this ingest failed; drop it and open it again to
    /// resume from what reached the disk.
    #[error("ingest of {digest} is unusable after a failed write; reopen it")]
    IngestBroken {
        /// The blob being ingested.
        digest: Digest,
    },

    /// Waiting for a lock took longer than the caller allowed.
    #[error("timed out after {} s waiting for the lock {} held by {holders}", waited.as_secs(), path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Who holds it, e.g. `pid 4242 (haul load -i a.tar)`, or
        /// "another process" when that cannot be told.
        holders: String,
    },

    /// A layer unpacked to more bytes than allowed (a decompression bomb,
    /// or a limit set too low); nothing of it was kept.
    #[error("layer expands to more than {limit} bytes, the limit for its compressed size (a decompression bomb?); raise --max-layer-expansion if it is genuine")]
    LayerTooLarge {
        /// The limit in bytes of uncompressed tar.
        limit: u64,
    },

    /// The layer tar stream could not be read.
    #[error("reading layer tar: {source}")]
    Tar {
        /// The underlying error (truncated or corrupt stream).
        #[source]
        source: io::Error,
    },

    /// A layer entry would write outside its directory or is otherwise
    /// unsafe; the message says why, e.g.
    /// `layer entry "../../etc/passwd" escapes the layer directory`.
    #[error("layer entry {entry:?} {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the tar.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Writing one layer entry failed.
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        /// The entry's path as written in the tar.
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The unpacked layer does not have the diff ID the image says.
    #[error("layer diff ID is {actual}, expected {expected}")]
    DiffIdMismatch {
        /// The diff ID from the image config.
        expected: Digest,
        /// The digest of the tar that was unpacked.
        actual: Digest,
    },

    /// The layer (by chain ID) is not in the store.
    #[error("layer {chain_id} is not in the store")]
    LayerNotFound {
        /// Its chain ID.
        chain_id: Digest,
    },

    /// The image (by ID, its config digest) is not in the store.
    #[error("image {id} is not in the store")]
    ImageNotFound {
        /// The image ID.
        id: Digest,
    },

    /// No image record holds this manifest.
    #[error("no image with manifest {digest} is in the store")]
    ManifestNotFound {
        /// The manifest digest.
        digest: Digest,
    },

    /// No image is stored under this reference.
    #[error("no image is tagged {reference}")]
    ReferenceNotFound {
        /// The reference, in full form.
        reference: String,
    },

    /// An image record is inconsistent (for example, its manifest and
    /// config disagree on the number of layers).
    #[error("image {id}: {reason}")]
    InvalidImage {
        /// The image ID.
        id: Digest,
        /// What is wrong.
        reason: String,
    },

    /// The export target exists and is not an empty directory.
    #[error("export target {path} exists and is not an empty directory")]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },

    /// Writing the export target failed (the store itself is fine).
    #[error("cannot write the export target {path}: {source}")]
    Target {
        /// The path under the target that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`Error::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|errno| Error::Io {
            path: path.to_path_buf(),
            source: errno.into(),
        })
    }
}
