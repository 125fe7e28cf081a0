//! Unpacking a layer from its blob's file while the download writes it.
//!
//! The network never waits for the unpacker: the download appends to the
//! ingest's partial file and publishes how far it got ([`Written`]); the
//! unpacker reads that file behind it ([`FollowReader`], from the page
//! cache), and waits when it has caught up. So a layer is still inflated
//! and unpacked as its bytes arrive, but a slow unpack only falls behind,
//! and the download (and its network slot) ends when the last byte is on
//! disk. Unpacks run under their own limit ([`UnpackSlots`]).

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use haul_store::StagedLayer;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How many layers unpack at once; shared by every pull of a puller.
pub(crate) type UnpackSlots = Arc<Semaphore>;

/// Unpack slots for `limit` layers at once (0 = unlimited).
pub(crate) fn unpack_slots(limit: usize) -> UnpackSlots {
    let permits = if limit == 0 {
        Semaphore::MAX_PERMITS
    } else {
        limit
    };
    Arc::new(Semaphore::new(permits))
}

/// How far the download has written a blob's file, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Written {
    state: Mutex<WrittenState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct WrittenState {
    bytes: u64,
    /// `Some` once no more bytes will come: `Ok` when the blob is whole.
    end: Option<std::result::Result<(), String>>,
    cancelled: bool,
}

impl Written {
    /// A file already holding `bytes` bytes, more to come.
    pub(crate) fn growing(bytes: u64) -> Arc<Self> {
        let written = Written::default();
        written.lock().bytes = bytes;
        Arc::new(written)
    }

    /// A complete file of `bytes` bytes.
    pub(crate) fn complete(bytes: u64) -> Arc<Self> {
        let written = Written::growing(bytes);
        written.finish(Ok(()));
        written
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WrittenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` more bytes are in the file.
    pub(crate) fn advance(&self, n: u64) {
        self.lock().bytes += n;
        self.changed.notify_all();
    }

    /// No more bytes will come: the blob is whole (`Ok`) or the download
    /// failed (`Err`, which the reader then returns).
    pub(crate) fn finish(&self, end: std::result::Result<(), String>) {
        self.lock().end.get_or_insert(end);
        self.changed.notify_all();
    }

    /// The unpack is no longer wanted: the reader fails at once.
    pub(crate) fn cancel(&self) {
        self.lock().cancelled = true;
        self.changed.notify_all();
    }
}

/// Reads a blob's file no further than [`Written`] says, waiting for more.
pub(crate) struct FollowReader {
    file: File,
    position: u64,
    written: Arc<Written>,
    read: Arc<AtomicU64>,
}

impl FollowReader {
    /// Reads `file` from its start; `read` tells how far it got.
    pub(crate) fn new(file: File, written: Arc<Written>, read: Arc<AtomicU64>) -> Self {
        Self {
            file,
            position: 0,
            written,
            read,
        }
    }
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = {
            let mut state = self.written.lock();
            loop {
                if state.cancelled {
                    return Err(cancelled());
                }
                if state.bytes > self.position {
                    break state.bytes - self.position;
                }
                match &state.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(message)) => return Err(io::Error::other(message.clone())),
                    None => {
                        state = self
                            .written
                            .changed
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        };
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob's file is shorter than what was written to it",
            ));
        }
        self.position += n as u64;
        self.read.store(self.position, Ordering::Relaxed);
        Ok(n)
    }
}

/// A blob's file as the download writes it, for the unpacker: read as a
/// stream ([`FollowReader`]) or by position ([`FollowAt`]).
pub(crate) struct FollowedBlob {
    file: File,
    written: Arc<Written>,
    read: Arc<AtomicU64>,
    size: u64,
}

impl FollowedBlob {
    /// The blob's complete size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The blob read by position (the parallel inflate), sharing the file
    /// with [`Self::into_reader`]'s stream (positional reads do not move
    /// its offset).
    pub(crate) fn positional(&self) -> io::Result<Arc<FollowAt>> {
        Ok(Arc::new(FollowAt {
            file: self.file.try_clone()?,
            written: Arc::clone(&self.written),
            read: Arc::clone(&self.read),
            size: self.size,
        }))
    }

    /// The blob read as a stream from its first byte.
    pub(crate) fn into_reader(self) -> FollowReader {
        FollowReader::new(self.file, self.written, self.read)
    }
}

/// Reads a blob's file by position no further than [`Written`] says: a
/// read waits until every byte it asks for is written (or the blob is
/// whole), and fails once the download failed or the unpack is cancelled.
pub(crate) struct FollowAt {
    file: File,
    written: Arc<Written>,
    read: Arc<AtomicU64>,
    size: u64,
}

impl FollowAt {
    /// Waits until the file holds `end` bytes (or no more will come).
    fn wait_for(&self, end: u64) -> io::Result<()> {
        let mut state = self.written.lock();
        loop {
            if state.cancelled {
                return Err(cancelled());
            }
            if state.bytes >= end {
                return Ok(());
            }
            match &state.end {
                Some(Ok(())) => return Ok(()),
                Some(Err(message)) => return Err(io::Error::other(message.clone())),
                None => {
                    state = self
                        .written
                        .changed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

fn cancelled() -> io::Error {
    io::Error::other("layer unpack cancelled")
}

impl haul_store::PositionalBlob for FollowAt {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        self.wait_for(end)?;
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..want], offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob's file is shorter than what was written to it",
            ));
        }
        self.read.fetch_max(offset + n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn stopped(&self) -> Option<io::Error> {
        let state = self.written.lock();
        if state.cancelled {
            return Some(cancelled());
        }
        match &state.end {
            Some(Err(message)) => Some(io::Error::other(message.clone())),
            _ => None,
        }
    }

    fn abandon(&self) {
        self.written.cancel();
    }
}

/// A layer being unpacked from its blob, handed from the download to the
/// registration; dropping it unregistered stops the unpack (its staging
/// directory is then removed).
#[derive(Debug)]
pub struct Unpacking {
    task: Option<JoinHandle<Result<StagedLayer>>>,
    written: Arc<Written>,
    read: Arc<AtomicU64>,
    size: u64,
}

impl Unpacking {
    /// Starts unpacking once an unpack slot is free; `unpack` does the
    /// work on a blocking thread with the blob's file as it grows. The
    /// staged layer is then made durable after the slot is given back.
    pub(crate) fn start(
        slots: &UnpackSlots,
        file: File,
        written: Arc<Written>,
        size: u64,
        unpack: impl FnOnce(FollowedBlob) -> Result<StagedLayer> + Send + 'static,
    ) -> Self {
        let read = Arc::new(AtomicU64::new(0));
        let reader = FollowedBlob {
            file,
            written: Arc::clone(&written),
            read: Arc::clone(&read),
            size,
        };
        let slots = Arc::clone(slots);
        let task = tokio::spawn(async move {
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|_| Error::Internal("the unpack slots were closed".into()))?;
            let mut staged = tokio::task::spawn_blocking(move || unpack(reader))
                .await
                .map_err(|e| Error::Internal(format!("an unpack thread failed: {e}")))??;
            // The next layer unpacks while this one's files go to disk.
            drop(slot);
            tokio::task::spawn_blocking(move || staged.make_durable().map(|()| staged))
                .await
                .map_err(|e| Error::Internal(format!("an unpack thread failed: {e}")))?
                .map_err(Error::from)
        });
        Self {
            task: Some(task),
            written,
            read,
            size,
        }
    }

    /// Bytes of the blob the unpacker has read so far, and the blob's size.
    pub fn progress(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.size)
    }

    /// Waits for the unpacked layer. Cancel-safe: dropping the future
    /// leaves the unpack to be stopped by dropping `self`.
    pub(crate) async fn finished(&mut self) -> Result<StagedLayer> {
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| Error::Internal("an unpack was awaited twice".into()))?;
        let result = task
            .await
            .map_err(|e| Error::Internal(format!("an unpack task failed: {e}")))?;
        self.task = None;
        result
    }
}

impl Drop for Unpacking {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            self.written.cancel();
            // A staged layer still to come is then dropped where it is
            // made (a blocking thread), not on the runtime.
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn follower(dir: &tempfile::TempDir) -> (File, FollowReader, Arc<Written>, Arc<AtomicU64>) {
        let path = dir.path().join("blob.partial");
        let writer = File::create(&path).unwrap();
        let written = Written::growing(0);
        let read = Arc::new(AtomicU64::new(0));
        let reader = FollowReader::new(
            File::open(&path).unwrap(),
            Arc::clone(&written),
            Arc::clone(&read),
        );
        (writer, reader, written, read)
    }

    #[test]
    fn the_reader_follows_the_writer_and_ends_with_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, mut reader, written, read) = follower(&dir);
        let writer = std::thread::spawn(move || {
            for i in 0..50u8 {
                file.write_all(&[i; 1000]).unwrap();
                written.advance(1000);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            written.finish(Ok(()));
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all.len(), 50_000);
        assert!(all
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
        assert_eq!(read.load(Ordering::Relaxed), 50_000);
    }

    #[test]
    fn positional_reads_wait_for_their_bytes_and_fail_on_cancel() {
        use haul_store::PositionalBlob;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.partial");
        let mut file = File::create(&path).unwrap();
        let written = Written::growing(0);
        let read = Arc::new(AtomicU64::new(0));
        let followed = FollowedBlob {
            file: File::open(&path).unwrap(),
            written: Arc::clone(&written),
            read: Arc::clone(&read),
            size: 20_000,
        };
        let at = followed.positional().unwrap();
        assert_eq!(at.len(), 20_000);
        let reader = {
            let at = Arc::clone(&at);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 5_000];
                let n = at.read_at(12_000, &mut buf).unwrap();
                (n, buf)
            })
        };
        for i in 0..20u8 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            file.write_all(&[i; 1000]).unwrap();
            written.advance(1000);
        }
        let (n, buf) = reader.join().unwrap();
        assert_eq!(n, 5_000, "the read waited for all of its bytes");
        assert!(buf[..1000].iter().all(|b| *b == 12) && buf[4999] == 16);
        assert_eq!(read.load(Ordering::Relaxed), 17_000);
        let mut tail = [0u8; 100];
        assert_eq!(
            at.read_at(19_950, &mut tail).unwrap(),
            50,
            "not past the end"
        );
        assert_eq!(at.read_at(20_000, &mut tail).unwrap(), 0);
        assert!(at.stopped().is_none());
        // The stream reader still starts at the first byte.
        let mut stream = followed.into_reader();
        let mut first = [9u8; 3];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(first, [0, 0, 0]);

        let growing = Written::growing(0);
        let at = FollowedBlob {
            file: File::open(&path).unwrap(),
            written: Arc::clone(&growing),
            read,
            size: 20_000,
        }
        .positional()
        .unwrap();
        let waiting = {
            let at = Arc::clone(&at);
            std::thread::spawn(move || at.read_at(0, &mut [0u8; 10]))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        at.abandon();
        let err = waiting.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "layer unpack cancelled");
        assert_eq!(at.stopped().unwrap().to_string(), "layer unpack cancelled");
    }

    #[test]
    fn a_failed_download_or_a_cancel_fails_the_waiting_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, mut reader, written, _) = follower(&dir);
        file.write_all(b"abc").unwrap();
        written.advance(3);
        let mut buf = [0u8; 10];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        let finisher = {
            let written = Arc::clone(&written);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                written.finish(Err("connection reset".into()));
            })
        };
        let err = reader.read(&mut buf).unwrap_err();
        finisher.join().unwrap();
        assert_eq!(err.to_string(), "connection reset");

        let dir = tempfile::tempdir().unwrap();
        let (_file, mut reader, written, _) = follower(&dir);
        written.cancel();
        assert!(reader.read(&mut buf).is_err());
    }
}
