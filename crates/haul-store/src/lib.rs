//! The local store of haul: content (an OCI image layout), unpacked layers
//! keyed by chain ID, images, references and distribution metadata, all under
//! one root directory. It depends on nothing of haul but `haul-oci`: no
//! HTTP, no progress output; every method is blocking file I/O (call it from
//! `spawn_blocking` in async code) and failures are [`Error`] values naming
//! their subject.
//!
//! # The model, in one story
//!
//! - **A blob is present** when `content/blobs/ALG/HEX` exists: complete and
//!   verified, never partial.
//! - **An image** is one image manifest (OCI or Docker schema 2) with its
//!   config; its record, keyed by the manifest digest, pairs each layer
//!   blob with its diffID and chain ID. The image ID is the config digest,
//!   as Docker shows it: several images (manifests) may share one. **An
//!   image is present** when its manifest, config and every layer blob are
//!   present; it is **unpacked** when every layer of its chain is too.
//!   Pulls keep every blob of their manifest, also for a layer found
//!   already unpacked from another blob.
//! - **A reference** (tag or digest) points at a [`RefTarget`]: exactly the
//!   manifest it resolved to, and the index it came through, if any. It is
//!   never re-pointed by another image of the same config; every command
//!   reading a reference reads that manifest's bytes.
//! - **A platform** selects among the images of a reference's index: the
//!   target's manifest is the platform chosen when it was pulled; the
//!   index's other platforms that are stored are alive while the reference
//!   is, and local commands pick among them.
//! - **`content/`** is a valid OCI layout at every moment: `index.json`
//!   names each reference whose image (or whole index) is present, and
//!   nothing else.
//! - **A referrer** (a signature, an SBOM) is a manifest whose `subject`
//!   is a stored manifest: recorded per subject with the blobs it needs
//!   ([`Store::add_referrer`]), never an image, never named by a
//!   reference. It lives while its subject does.
//! - **Garbage** is whatever no reference keeps: gc removes it, and after
//!   every reference is removed, gc leaves no blob and no layer.
//!
//! # On disk
//!
//! ```text
//! ROOT/
//!   content/                    a valid OCI image layout (skopeo, umoci read it)
//!     oci-layout                {"imageLayoutVersion":"1.0.0"}
//!     index.json                one descriptor per reference (derived, see below)
//!     blobs/sha256/HEX          complete, verified blobs only
//!   ingest/
//!     sha256-HEX.partial        a download in progress or interrupted
//!     sha256-HEX.lock           its writer's flock
//!   layers/
//!     sha256/CHAINHEX/
//!       diff/                   the layer's uncompressed diff, unpacked
//!       layer.json              diffID, chainID, parent, size, created, entries, seal
//!       diff.seal               every directory of diff/ with its inode and ctime
//!     tmp-XXXXXX/               a registration in progress
//!   images/sha256/HEX.json      image records, one per image manifest (by its digest)
//!   refs.json                   references -> exact manifest (and index) digests
//!   referrers/sha256/HEX.json   subject -> its referrers (signatures, SBOMs), see below
//!   store-version               the layout version (2), see the `migrate` module
//!   distribution/
//!     diffid/sha256/HEX.json    diffID -> [(blob digest, registry/repository)]
//!     blob/sha256/HEX.json      blob digest -> diffID
//!   tmp/                        temporary files of atomic metadata writes
//!   trash/                      entries being removed (unreachable)
//!   uploads/HEX.json            upload sessions a push left open
//!   store.lock, gc.lock         see the `lock` module
//! ```
//!
//! # Guarantees
//!
//! - **Ingest, then commit.** Every blob enters through [`Store::ingest`]:
//!   bytes go to a partial file under `ingest/`, hashed as they are
//!   written; [`Ingest::commit`] checks size and digest, fsyncs and renames
//!   the file into `content/blobs/`. A partial survives the process and the
//!   next [`Store::ingest`] of that digest resumes it. So `blobs/` only ever
//!   holds complete, verified files, whatever moment a process is killed at.
//! - **Layers appear whole, and go whole.** [`Store::register_layer`]
//!   unpacks into `layers/tmp-*`, writes `layer.json` (with the diff's
//!   entry count, checked on every read) and renames the directory into
//!   place; removal renames it into `trash/` first, and the next command
//!   deletes what a killed one left there.
//! - **Metadata is replaced atomically** (write to `tmp/`, fsync, rename),
//!   under the store lock; readers never lock.
//! - **Two processes on one root are safe**: see [`Lease`] and the locking
//!   notes on [`Store::ingest`].
//!
//! # References in `content/index.json`
//!
//! Each reference (tag or digest, full normalised form, e.g.
//! `docker.io/library/alpine:latest`) is one entry of `index.json` whose
//! `org.opencontainers.image.ref.name` annotation is that string. skopeo
//! 1.9 and umoci 0.4 split `oci:DIR:REF` at the first `:`, so
//! `skopeo inspect oci:ROOT/content:docker.io/library/alpine:latest` works
//! (the root path must contain no `:`). The entry points at the exact
//! manifest the reference names, or at its index when every platform of
//! the index is present.
//!
//! ```
//! use haul_store::{IngestOutcome, Store};
//! use haul_oci::Digest;
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//! let data = b"hello";
//! let digest = Digest::sha256_of(data);
//! match store.ingest(&digest)? {
//!     IngestOutcome::Present { .. } => unreachable!("new store"),
//!     IngestOutcome::Writer(mut w) => {
//!         w.write_all(data)?;
//!         w.commit(data.len() as u64, &digest)?;
//!     }
//! }
//! assert!(store.has_blob(&digest));
//! assert!(matches!(store.ingest(&digest)?, IngestOutcome::Present { size: 5 }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod content;
mod decompress;
mod distribution;
mod error;
mod export;
mod fsutil;
mod gc;
mod group_sync;
mod gzip;
mod gzip_parallel;
mod images;
mod ingest;
mod layers;
mod layout;
mod lock;
mod migrate;
mod partial;
mod referrers;
mod refs;
mod seal;
pub mod unpack;
mod uploads;
mod v1meta;
mod writeback;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use decompress::{decompressing_reader, detect_compression, read_ahead, ReadAhead};
pub use distribution::DistributionSource;
pub use error::{Error, Result};
pub use export::{ExportOptions, ExportReport};
pub use gc::{GcOptions, GcReport};
pub use gzip::GzipReader;
pub use gzip_parallel::{
    ParallelGzipReader, PositionalBlob, SequentialFallback, PARALLEL_INFLATE_MIN_BYTES,
};
pub use images::{ImageLayer, ImageRecord};
pub use ingest::{Ingest, IngestOutcome, ParkedBlob};
pub use layers::{chain_id, LayerInfo, StagedLayer};
pub use layout::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
pub use lock::Lease;
pub use referrers::StoredReferrer;
pub use refs::{IdMatch, RefTarget, RemovedImage, ResolvedImage};
pub use seal::DiffSeal;
pub use unpack::{ExpansionLimit, UnpackOptions, UnpackReport};
pub use uploads::UploadRecord;
pub use v1meta::V1Layer;

use crate::error::IoContext;
use crate::fsutil::create_dirs;
use crate::lock::{FileLock, LockKind};

/// A store rooted at one directory. Cheap to clone; every clone (and every
/// other process opening the same root) sees the same store. `Send + Sync`:
/// layers of different chains may be registered from several threads at
/// once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// How long a lock is waited for when the caller names no limit.
    lock_timeout: Option<Duration>,
    /// The syncs of the store's filesystem, shared by its clones.
    group_sync: std::sync::Arc<group_sync::GroupSync>,
}

/// Largest manifest or index the store reads into memory (the OCI
/// recommendation, as the registry client).
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// How long [`Store`] waits for a lock by default before failing with
/// [`Error::LockTimeout`], which names the processes holding it.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        create_dirs(&root)?;
        let group_sync = std::sync::Arc::new(group_sync::GroupSync::open(&root)?);
        let store = Store {
            root,
            lock_timeout: Some(DEFAULT_LOCK_TIMEOUT),
            group_sync,
        };
        for dir in [
            store.blobs_dir("sha256"),
            store.ingest_dir(),
            store.layers_dir().join("sha256"),
            store.images_dir(),
            store.distribution_dir(),
            store.tmp_dir(),
            store.trash_dir(),
        ] {
            create_dirs(&dir)?;
        }
        // What removals killed midway left: unreachable already.
        fsutil::empty_trash(&store.trash_dir());
        store.upgrade_layout()?;
        let marker = store.content_dir().join("oci-layout");
        let index = store.index_json_path();
        if !marker.is_file() || !index.is_file() || store.index_is_stale() {
            let _lock = store.lock_metadata()?;
            if !marker.is_file() {
                fsutil::write_atomic(
                    &store.tmp_dir(),
                    &marker,
                    br#"{"imageLayoutVersion":"1.0.0"}"#,
                )?;
            }
            if !index.is_file() || store.index_is_stale() {
                let refs = store.load_refs()?;
                store.write_index_json(&refs)?;
            }
        }
        Ok(store)
    }

    /// Whether `refs.json` changed after `index.json` was last written (a
    /// process died between the two writes).
    fn index_is_stale(&self) -> bool {
        let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        match (modified(self.refs_path()), modified(self.index_json_path())) {
            (Some(refs), Some(index)) => refs > index,
            _ => false,
        }
    }

    /// The same store, waiting at most `timeout` (forever when `None`) for
    /// a lock when a call names no limit of its own.
    pub fn with_lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The directory everything of this store lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes a [`Lease`], waiting while garbage collection runs.
    pub fn lease(&self) -> Result<Lease> {
        self.lease_with_timeout(self.lock_timeout)
    }

    /// Takes a [`Lease`], waiting at most `timeout` (forever when `None`)
    /// while garbage collection runs.
    pub fn lease_with_timeout(&self, timeout: Option<Duration>) -> Result<Lease> {
        Lease::acquire(&self.gc_lock_path(), timeout)
    }

    /// The store-wide lock for metadata updates.
    pub(crate) fn lock_metadata(&self) -> Result<FileLock> {
        FileLock::acquire(
            &self.store_lock_path(),
            LockKind::Exclusive,
            self.lock_timeout,
        )
    }
}

/// Whether this process runs with an effective user ID of 0 (it may then
/// chown, create devices and set any mode).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Reads a directory's entry names, sorted (for deterministic walks).
pub(crate) fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        names.push(entry.at(dir)?.file_name());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<Store>();
        sync::<Store>();
        send::<Ingest>();
        send::<Lease>();
        send::<Error>();
        sync::<Error>();
    }

    #[test]
    fn open_lays_out_an_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("r")).unwrap();
        let layout = std::fs::read(store.content_dir().join("oci-layout")).unwrap();
        assert_eq!(layout, br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.index_json_path()).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));
        assert!(store.root().join("content/blobs/sha256").is_dir());
    }
}
