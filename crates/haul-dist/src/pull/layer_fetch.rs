//! One layer blob, fetched in one pass: the bytes from the registry go at
//! once to the store's ingest (which hashes and keeps them, resumable) and,
//! unless the pull keeps blobs only, an unpacker follows them through the
//! ingest's file (decompressing, hashing the diff, unpacking) without ever
//! making the download wait (see [`crate::pull::unpack_follow`]). No blob is held
//! in memory: chunks flow through a small bounded channel to the writer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use haul_oci::{Compression, Digest};
use haul_registry::Repository;
use haul_store::{IngestOutcome, StagedLayer, Store, UnpackOptions};

use crate::pull::inflate_threads::InflateBudget;
use crate::pull::unpack_follow::{FollowedBlob, UnpackSlots, Unpacking, Written};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::task::{blocking, join_error};

/// Chunks in flight between the network and each blocking consumer.
const CHANNEL_DEPTH: usize = 32;

/// Longest single wait for the ingest lock another writer (maybe another
/// process) holds, before the cancellation is looked at again.
const LOCK_WAIT_SLICE: Duration = Duration::from_millis(250);

/// What a layer fetch needs to know about the blob.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub compression: Option<Compression>,
}

/// What a fetch produced.
pub(crate) struct Fetched {
    /// The layer being unpacked from the blob, when unpacking was asked
    /// for; it may still be going on (the download does not wait for it).
    pub unpacking: Option<Unpacking>,
    /// Bytes that crossed the network in this call.
    pub transferred: u64,
}

/// How a fetch unpacks its layer, and under which limits.
#[derive(Clone)]
pub(crate) struct UnpackPlan {
    pub options: UnpackOptions,
    pub slots: UnpackSlots,
    /// Threads for inflating a big gzip layer.
    pub inflate: Arc<InflateBudget>,
}

/// Starts unpacking the blob whose file is `file` (written as far as
/// `written` says), checking the diffID when known.
fn start_unpack(
    store: &Store,
    blob: &LayerBlobInfo,
    expected_diff_id: Option<&Digest>,
    plan: UnpackPlan,
    file: std::fs::File,
    written: Arc<Written>,
) -> Unpacking {
    let store = store.clone();
    let compression = blob.compression;
    let expected = expected_diff_id.cloned();
    // The expansion limit (decompression bombs) scales with the blob.
    let options = plan.options.for_compressed_size(blob.size);
    let digest = blob.digest.clone();
    let inflate = plan.inflate;
    Unpacking::start(&plan.slots, file, written, blob.size, move |followed| {
        // Counted as inflating until the layer is staged.
        let turn = inflate.begin();
        let reader = layer_reader(followed, compression, turn.threads(), &digest)?;
        let staged = store
            .stage_layer(haul_store::read_ahead(reader), expected.as_ref(), &options)
            .map_err(|e| naming_blob(&digest, e));
        drop(turn);
        staged
    })
}

/// The uncompressed tar of a layer blob followed as the download writes
/// it: a big gzip blob, given more than one thread, is inflated in
/// parallel by position (with the sequential reader as the fallback);
/// anything else is read as a stream by the sequential decoders.
fn layer_reader(
    followed: FollowedBlob,
    compression: Option<Compression>,
    threads: usize,
    digest: &Digest,
) -> Result<Box<dyn std::io::Read + Send>> {
    let declared = compression.unwrap_or(Compression::Uncompressed);
    let sequential = move |followed: FollowedBlob| {
        haul_store::decompressing_reader(
            std::io::BufReader::with_capacity(256 * 1024, followed.into_reader()),
            declared,
        )
    };
    let parallel = declared == Compression::Gzip
        && threads > 1
        && followed.size() >= haul_store::PARALLEL_INFLATE_MIN_BYTES;
    let reader = if parallel {
        tracing::debug!("inflating layer {digest} with {threads} threads");
        let positional = followed
            .positional()
            .map_err(|e| Error::Decompress(e.to_string()))?;
        let fallback: haul_store::SequentialFallback = Box::new(move || sequential(followed));
        haul_store::ParallelGzipReader::new(positional, threads, fallback)
            .map(|reader| Box::new(reader) as Box<dyn std::io::Read + Send>)
    } else {
        sequential(followed)
    };
    reader.map_err(|e| Error::Decompress(e.to_string()))
}

/// Fetches `blob` into the store and, with `unpack`, starts unpacking its
/// layer from the blob's file as the bytes land there (checking the
/// diffID against `expected_diff_id` when known). Returns once the blob is
/// whole and committed; the unpack goes on under its own limit. `progress`
/// hears the bytes of the blob present so far (resumed bytes included).
pub(crate) async fn fetch_layer(
    repo: &Repository,
    store: &Store,
    blob: &LayerBlobInfo,
    expected_diff_id: Option<&Digest>,
    unpack: Option<UnpackPlan>,
    cancel: &CancellationToken,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched> {
    let outcome = open_ingest(store, &blob.digest, cancel).await?;
    let mut ingest = match outcome {
        IngestOutcome::Present { .. } => {
            progress(blob.size);
            let unpacking = match unpack {
                Some(plan) => {
                    let file = store.open_blob(&blob.digest)?;
                    let written = Written::complete(blob.size);
                    Some(start_unpack(
                        store,
                        blob,
                        expected_diff_id,
                        plan,
                        file,
                        written,
                    ))
                }
                None => None,
            };
            return Ok(Fetched {
                unpacking,
                transferred: 0,
            });
        }
        IngestOutcome::Writer(ingest) => ingest,
    };
    let offset = ingest.offset();

    // The unpacker reads the partial file from its start (the bytes a
    // previous attempt left, then the new ones as they are written).
    let follow = match unpack {
        Some(plan) => {
            let file = ingest.prefix_reader()?.into_inner();
            let written = Written::growing(offset);
            let unpacking = start_unpack(
                store,
                blob,
                expected_diff_id,
                plan,
                file,
                Arc::clone(&written),
            );
            Some((written, unpacking))
        }
        None => None,
    };
    let written = follow.as_ref().map(|(w, _)| Arc::clone(w));

    let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let writer_written = written.clone();
    let writer_task = tokio::task::spawn_blocking(move || -> Result<haul_store::Ingest> {
        while let Some(chunk) = write_rx.blocking_recv() {
            ingest.write_all(&chunk)?;
            if let Some(written) = &writer_written {
                ingest.flush()?;
                written.advance(chunk.len() as u64);
            }
        }
        Ok(ingest)
    });

    let mut present = offset;
    let mut transferred = 0u64;
    let download: Result<()> = async {
        if present >= blob.size {
            return Ok(()); // a previous attempt got every byte
        }
        let mut stream = repo.blob_stream_attempt(&blob.digest, Some(blob.size), offset);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                next = stream.next() => next,
            };
            let Some(chunk) = next else { return Ok(()) };
            let chunk = chunk?;
            present += chunk.len() as u64;
            transferred += chunk.len() as u64;
            if write_tx.send(chunk).await.is_err() {
                return Ok(()); // the writer failed; its error says why
            }
            progress(present);
        }
    }
    .await;
    drop(write_tx);

    let committed: Result<()> = async {
        let ingest = writer_task.await.map_err(join_error)?;
        download?;
        let ingest = ingest?;
        if present == blob.size {
            // Commit verifies size and digest of everything written (also
            // the part a previous attempt left); a mismatch leaves nothing
            // behind. The unpacker's open file survives the rename.
            let digest = blob.digest.clone();
            let size = blob.size;
            blocking(move || ingest.commit(size, &digest).map_err(Error::from)).await?;
        }
        if present != blob.size {
            return Err(Error::Truncated {
                digest: blob.digest.clone(),
                at: present,
                size: blob.size,
            });
        }
        Ok(())
    }
    .await;
    match committed {
        Ok(()) => {
            if let Some(written) = &written {
                written.finish(Ok(()));
            }
            Ok(Fetched {
                unpacking: follow.map(|(_, unpacking)| unpacking),
                transferred,
            })
        }
        Err(err) => {
            // Dropping the unpack stops it; its staging directory goes.
            if let Some(written) = &written {
                written.finish(Err(err.to_string()));
            }
            Err(err)
        }
    }
}

/// Opens the ingest of `digest`, waiting while another writer holds it,
/// but never past a cancellation: the wait is a blocking `flock` that the
/// runtime cannot interrupt (and would wait for at shutdown), so it goes
/// in slices with the token checked in between.
async fn open_ingest(
    store: &Store,
    digest: &Digest,
    cancel: &CancellationToken,
) -> Result<IngestOutcome> {
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let store = store.clone();
        let digest = digest.clone();
        let opened = blocking(move || {
            store
                .ingest_with_timeout(&digest, Some(LOCK_WAIT_SLICE))
                .map_err(Error::from)
        })
        .await;
        match opened {
            Err(Error::Store(haul_store::Error::LockTimeout { .. })) => continue,
            other => return other,
        }
    }
}

/// Stages the layer of a blob that is already in the store.
pub(crate) async fn stage_from_store(
    store: &Store,
    blob: &LayerBlobInfo,
    expected_diff_id: Option<&Digest>,
    options: UnpackOptions,
) -> Result<StagedLayer> {
    let store = store.clone();
    let blob = blob.clone();
    let expected = expected_diff_id.cloned();
    let options = options.for_compressed_size(blob.size);
    blocking(move || {
        let file = store.open_blob(&blob.digest)?;
        let reader = haul_store::decompressing_reader(
            std::io::BufReader::with_capacity(256 * 1024, file),
            blob.compression.unwrap_or(Compression::Uncompressed),
        )
        .map_err(|e| Error::Decompress(e.to_string()))?;
        let mut staged = store
            .stage_layer(haul_store::read_ahead(reader), expected.as_ref(), &options)
            .map_err(|e| naming_blob(&blob.digest, e))?;
        // Here, in parallel with the other layers, not at registration.
        staged.make_durable()?;
        Ok(staged)
    })
    .await
}

/// A failure to read a layer's stream or one of its entries, with the
/// blob's digest in its sentence; other store errors as they are.
fn naming_blob(digest: &Digest, error: haul_store::Error) -> Error {
    match error {
        error @ (haul_store::Error::Tar { .. }
        | haul_store::Error::Entry { .. }
        | haul_store::Error::UnsafeEntry { .. }) => Error::LayerStream {
            digest: digest.clone(),
            source: error,
        },
        other => Error::Store(other),
    }
}

/// The diffID of a layer blob that is in the store: the digest of its
/// uncompressed content, read and hashed as a stream.
pub(crate) async fn diff_id_of_stored_blob(store: &Store, blob: &LayerBlobInfo) -> Result<Digest> {
    let store = store.clone();
    let blob = blob.clone();
    blocking(move || {
        let file = store.open_blob(&blob.digest)?;
        let mut reader = haul_store::decompressing_reader(
            std::io::BufReader::with_capacity(256 * 1024, file),
            blob.compression.unwrap_or(Compression::Uncompressed),
        )
        .map_err(|e| Error::Decompress(e.to_string()))?;
        let mut digester = haul_oci::Digester::sha256();
        std::io::copy(&mut reader, &mut digester)
            .map_err(|e| Error::Decompress(format!("layer {}: {e}", blob.digest)))?;
        Ok(digester.finish())
    })
    .await
}
