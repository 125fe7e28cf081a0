//! A response body that follows a blob's partial file while an upstream
//! transfer writes it: it reads what the transfer's progress says is on
//! disk, waits when it has caught up, and ends at the blob's last byte.
//!
//! The partial file is opened by path; once the transfer commits, the
//! file is the committed blob (a rename keeps the open file), or, for a
//! follower that opens late, the blob is opened from `content/blobs/`. A
//! partial reset to 0 (an upstream that ignored `Range`) is read again as
//! it regrows: the bytes are the same. A transfer that fails ends the body
//! with an error, which the client sees as a broken response.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use haul_oci::Digest;
use std::path::PathBuf;

use haul_store::Lease;

use crate::metrics::Metrics;
use crate::upstream::BlobFetch;

/// Bytes read per chunk of the response.
const CHUNK: u64 = 256 * 1024;

/// The state of one following body.
pub(crate) struct Follow {
    pub(crate) fetch: BlobFetch,
    /// The file the transfer writes.
    pub(crate) partial: PathBuf,
    /// Where the blob is once committed (`None` when nothing is kept).
    pub(crate) blob: Option<PathBuf>,
    pub(crate) digest: Digest,
    /// Next byte to send.
    pub(crate) pos: u64,
    /// One past the last byte to send.
    pub(crate) end: u64,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) file: Option<Arc<File>>,
    /// Keeps gc away from the blob until the body ends.
    pub(crate) _lease: Option<Lease>,
}

impl Follow {
    /// The body as a stream of chunks.
    pub(crate) fn into_stream(self) -> impl futures::Stream<Item = io::Result<Bytes>> + Send {
        futures::stream::unfold(self, |mut follow| async move {
            match follow.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), follow)),
                Ok(None) => None,
                Err(e) => {
                    // End the body after the error.
                    follow.pos = follow.end;
                    Some((Err(e), follow))
                }
            }
        })
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            let result = self.fetch.watcher.transfer().result();
            let available = match &result {
                Some(Ok(_)) => self.end,
                Some(Err(e)) => {
                    return Err(io::Error::other(format!(
                        "upstream transfer of {} failed: {e}",
                        self.digest
                    )))
                }
                None => self.fetch.seen.borrow().0.min(self.end),
            };
            if self.pos < available {
                if self.file.is_none() {
                    self.file = self.open(result.is_some()).await?;
                }
                if let Some(file) = &self.file {
                    let (file, pos) = (Arc::clone(file), self.pos);
                    let want = (available - pos).min(CHUNK) as usize;
                    let bytes = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; want];
                        let n = file.read_at(&mut buf, pos)?;
                        buf.truncate(n);
                        Ok::<_, io::Error>(buf)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    if !bytes.is_empty() {
                        self.pos += bytes.len() as u64;
                        self.metrics.served(bytes.len() as u64);
                        return Ok(Some(Bytes::from(bytes)));
                    }
                    if result.is_some() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("blob {} ended at byte {}", self.digest, self.pos),
                        ));
                    }
                    // The partial was reset and is regrowing: wait.
                }
            }
            let transfer = self.fetch.watcher.transfer().clone();
            tokio::select! {
                changed = self.fetch.seen.changed() => {
                    if changed.is_err() {
                        transfer.done().await;
                    }
                }
                () = transfer.done() => {}
            }
        }
    }

    /// Opens the partial file, or the committed blob; `None` when neither
    /// exists yet (the transfer has not created its partial).
    async fn open(&self, done: bool) -> io::Result<Option<Arc<File>>> {
        let (partial, blob) = (self.partial.clone(), self.blob.clone());
        tokio::task::spawn_blocking(move || {
            let paths: Vec<PathBuf> = if done {
                blob.into_iter().collect()
            } else {
                std::iter::once(partial).chain(blob).collect()
            };
            for path in paths {
                match File::open(&path) {
                    Ok(file) => return Ok(Some(Arc::new(file))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            if done {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the blob is not in the store after its transfer",
                ))
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(io::Error::other)?
    }
}
