//! One layer blob, fetched in one pass: the bytes from the registry go at
//! once to the store's ingest (which hashes and keeps them, resumable) and,
//! unless the pull keeps blobs only, through a decompressor into a staged
//! layer (which hashes the diff and unpacks it). No blob is held in memory:
//! chunks flow through small bounded channels to two blocking threads.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use haul_oci::{Compression, Digest};
use haul_registry::Repository;
use haul_store::{IngestOutcome, StagedLayer, Store, UnpackOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

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
    /// The unpacked layer, when unpacking was asked for.
    pub staged: Option<StagedLayer>,
    /// Bytes that crossed the network in this call.
    pub transferred: u64,
}

/// Reads chunks from a channel as a byte stream, for blocking consumers.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Fetches `blob` into the store and, with `unpack`, stages its layer,
/// checking the diffID against `expected_diff_id` when known. `progress`
/// hears the bytes of the blob present so far (resumed bytes included).
pub(crate) async fn fetch_layer(
    repo: &Repository,
    store: &Store,
    blob: &LayerBlobInfo,
    expected_diff_id: Option<&Digest>,
    unpack: Option<UnpackOptions>,
    cancel: &CancellationToken,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched> {
    let outcome = open_ingest(store, &blob.digest, cancel).await?;
    let mut ingest = match outcome {
        IngestOutcome::Present { .. } => {
            progress(blob.size);
            let staged = match unpack {
                Some(options) => {
                    Some(stage_from_store(store, blob, expected_diff_id, options).await?)
                }
                None => None,
            };
            return Ok(Fetched {
                staged,
                transferred: 0,
            });
        }
        IngestOutcome::Writer(ingest) => ingest,
    };
    let offset = ingest.offset();
    let unpack = unpack.map(|o| o.for_compressed_size(blob.size));

    // The unpacker reads the bytes a previous attempt left on disk first,
    // then the new ones as they arrive.
    let (unpack_tx, unpack_task) = match unpack {
        Some(options) => {
            let prefix = ingest.prefix_reader()?;
            let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
            let reader = prefix.chain(ChannelReader {
                receiver: rx,
                current: Bytes::new(),
            });
            let store = store.clone();
            let compression = blob.compression;
            let expected = expected_diff_id.cloned();
            let task = tokio::task::spawn_blocking(move || -> Result<StagedLayer> {
                let reader = haul_store::decompressing_reader(
                    reader,
                    compression.unwrap_or(Compression::Uncompressed),
                )
                .map_err(|e| Error::Decompress(e.to_string()))?;
                Ok(store.stage_layer(
                    haul_store::read_ahead(reader),
                    expected.as_ref(),
                    &options,
                )?)
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };

    let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let writer_task = tokio::task::spawn_blocking(move || -> Result<haul_store::Ingest> {
        while let Some(chunk) = write_rx.blocking_recv() {
            ingest.write_all(&chunk)?;
        }
        Ok(ingest)
    });

    let mut present = offset;
    let mut transferred = 0u64;
    let mut unpack_tx = unpack_tx;
    let download: Result<()> = async {
        if present >= blob.size {
            return Ok(()); // a previous attempt got every byte
        }
        let mut stream = repo.blob_stream_unverified(&blob.digest, Some(blob.size), offset);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                next = stream.next() => next,
            };
            let Some(chunk) = next else { return Ok(()) };
            let chunk = chunk?;
            present += chunk.len() as u64;
            transferred += chunk.len() as u64;
            if let Some(tx) = &unpack_tx {
                if tx.send(chunk.clone()).await.is_err() {
                    // The unpacker stopped early. The download goes on: if
                    // the blob turns out corrupt, that is the error to
                    // report; otherwise the unpacker's error is.
                    unpack_tx = None;
                }
            }
            if write_tx.send(chunk).await.is_err() {
                return Ok(()); // the writer failed; its error says why
            }
            progress(present);
        }
    }
    .await;
    drop(write_tx);
    drop(unpack_tx);

    let ingest = writer_task.await.map_err(join_error)?;
    let staged = match unpack_task {
        Some(task) => Some(task.await.map_err(join_error).and_then(|r| r)),
        None => None,
    };
    // A download error comes first: the unpacker then only saw a short tar.
    download?;
    let ingest = ingest?;
    if present == blob.size {
        // Commit verifies size and digest of everything written (also the
        // part a previous attempt left); a mismatch leaves nothing behind.
        let digest = blob.digest.clone();
        let size = blob.size;
        blocking(move || ingest.commit(size, &digest).map_err(Error::from)).await?;
    }
    let staged = staged.transpose()?;
    if present != blob.size {
        return Err(Error::Internal(format!(
            "layer {} stopped at byte {present} of {}",
            blob.digest, blob.size
        )));
    }
    Ok(Fetched {
        staged,
        transferred,
    })
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
        Ok(store.stage_layer(haul_store::read_ahead(reader), expected.as_ref(), &options)?)
    })
    .await
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("a worker thread failed: {e}"))
}
