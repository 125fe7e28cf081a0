//! Parallel inflate of one big gzip layer, with the sequential reader as
//! the fallback.
//!
//! A gzip stream is one long chain of DEFLATE blocks, each free to refer
//! back 32 KiB into the output before it, so one stream inflates on one
//! core. The rapidgzip method (the `rapidgzip-core` crate, zlib-rs inside)
//! splits it anyway: workers find block starts at spaced offsets of the
//! compressed file, decode from there with placeholders for the unknown
//! back-references, and resolve them once the previous chunk's last
//! 32 KiB are known. It reads its input by position, so the blob is a
//! [`PositionalBlob`]: a file that may still be growing (the pull's
//! ingest file while the download writes it), whose reads wait for the
//! bytes they need.
//!
//! The output is the same bytes as [`crate::GzipReader`]'s, in order,
//! through [`ParallelGzipReader`]'s `Read`. The decoder is young, so it
//! runs behind a fallback: when it fails for any reason but the blob's own
//! end ([`PositionalBlob::stopped`]: a failed download, a cancelled
//! unpack), the reader switches to the sequential reader from the blob's
//! start, skips the bytes already handed out and goes on from there. The
//! bytes it skips are the ones the parallel decoder delivered (both are
//! deterministic decoders of one stream, and the diffID of the whole
//! output is checked after), so the consumer sees one seamless stream;
//! corrupt or truncated input is then reported by the sequential reader,
//! with its error kinds ([`std::io::ErrorKind::InvalidData`],
//! [`std::io::ErrorKind::UnexpectedEof`]) and messages.

use std::io::{self, Read};
use std::sync::Arc;

/// Compressed size from which a gzip layer is worth inflating in parallel:
/// below it, the threads' start-up and the first chunks' placeholder
/// resolution cost more than they save.
pub const PARALLEL_INFLATE_MIN_BYTES: u64 = 64 << 20;

/// Decoded bytes per chunk a worker produces: small enough that the
/// chunks in flight (threads + 2 of them) stay a few MiB, large enough
/// that handing them over costs little.
const DECODED_CHUNK: usize = 2 << 20;

/// A blob read by position, possibly still being written.
///
/// The parallel decoder calls [`read_at`](Self::read_at) from several of
/// its threads at once; an implementation waits there until the bytes
/// asked for have arrived, and fails once they never will. [`len`](Self::len)
/// is the blob's final size (known from the manifest before a byte arrives).
pub trait PositionalBlob: Send + Sync + 'static {
    /// The blob's complete size in bytes.
    fn len(&self) -> u64;

    /// Whether the blob is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads at most `buf.len()` bytes at `offset`, waiting for them while
    /// the blob grows; `Ok(0)` only at or past [`len`](Self::len).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// `Some` once the blob will never be whole: the download failed or
    /// the unpack was cancelled. The inflate then fails with this error
    /// (retrying sequentially would read the same missing bytes).
    fn stopped(&self) -> Option<io::Error> {
        None
    }

    /// The reader is gone: reads still waiting must fail at once (the
    /// decoder's threads are joined when it is dropped).
    fn abandon(&self) {}
}

/// Makes the sequential reader of the whole stream, from its first byte,
/// for [`ParallelGzipReader`]'s fallback.
pub type SequentialFallback = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// The blob as the decoder crate's positional input.
struct Source(Arc<dyn PositionalBlob>);

impl rapidgzip_core::ReadAt for Source {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len())
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(offset, buffer)
    }
}

enum Mode {
    Parallel(Box<rapidgzip_core::DecoderReader>, SequentialFallback),
    Sequential(Box<dyn Read + Send>),
    /// Between the two, or after the fallback itself failed to start.
    Broken,
}

/// The inflated bytes of a gzip blob, decoded by `threads` workers (see
/// the module docs for the method and the fallback).
pub struct ParallelGzipReader {
    blob: Arc<dyn PositionalBlob>,
    mode: Mode,
    /// Bytes handed to the caller so far.
    delivered: u64,
    /// Why the parallel decoder was given up, if it was.
    fell_back: Option<String>,
}

impl std::fmt::Debug for ParallelGzipReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzipReader")
            .field("delivered", &self.delivered)
            .field("fell_back", &self.fell_back)
            .finish_non_exhaustive()
    }
}

impl ParallelGzipReader {
    /// Starts inflating `blob` with `threads` decoder threads (at least 2
    /// make sense); `fallback` makes the sequential reader should the
    /// parallel decoder fail. Waits for the blob's first bytes (the gzip
    /// header is checked here); when the decoder cannot start on them (not
    /// gzip after all, say) the fallback is used from the start.
    pub fn new(
        blob: Arc<dyn PositionalBlob>,
        threads: usize,
        fallback: SequentialFallback,
    ) -> io::Result<Self> {
        let started = rapidgzip_core::Decoder::builder()
            .decoder_threads(threads.max(1))
            .decoded_chunk_size(DECODED_CHUNK)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|decoder| {
                decoder
                    .reader(Source(Arc::clone(&blob)))
                    .map_err(|e| e.to_string())
            });
        let mut reader = ParallelGzipReader {
            blob,
            mode: Mode::Broken,
            delivered: 0,
            fell_back: None,
        };
        match started {
            Ok(decoder) => reader.mode = Mode::Parallel(Box::new(decoder), fallback),
            Err(why) => {
                if let Some(stopped) = reader.blob.stopped() {
                    return Err(stopped);
                }
                reader.fell_back = Some(why);
                reader.mode = Mode::Sequential(fallback()?);
            }
        }
        Ok(reader)
    }

    /// Why the parallel decoder was given up for the sequential reader,
    /// if it was.
    pub fn fell_back(&self) -> Option<&str> {
        self.fell_back.as_deref()
    }

    /// Switches to the sequential reader after the parallel decoder failed
    /// with `error`, skipping the bytes already delivered.
    fn fall_back(&mut self, error: io::Error) -> io::Result<()> {
        let Mode::Parallel(decoder, fallback) = std::mem::replace(&mut self.mode, Mode::Broken)
        else {
            return Err(error);
        };
        // Its threads are joined here, before the sequential reader runs.
        drop(decoder);
        self.fell_back = Some(error.to_string());
        let mut sequential = fallback()?;
        let mut skip = self.delivered;
        let mut scratch = vec![0u8; 256 * 1024];
        while skip > 0 {
            let want = scratch
                .len()
                .min(usize::try_from(skip).unwrap_or(usize::MAX));
            match sequential.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the sequential gzip reader ended after {} bytes, \
                             but the parallel one had produced {}",
                            self.delivered - skip,
                            self.delivered
                        ),
                    ))
                }
                Ok(n) => skip -= n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.mode = Mode::Sequential(sequential);
        Ok(())
    }
}

impl Read for ParallelGzipReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = match &mut self.mode {
                Mode::Parallel(decoder, _) => decoder.read(buf),
                Mode::Sequential(reader) => {
                    let n = reader.read(buf)?;
                    self.delivered += n as u64;
                    return Ok(n);
                }
                Mode::Broken => {
                    return Err(io::Error::other("the gzip reader failed before"));
                }
            };
            match result {
                Ok(n) => {
                    self.delivered += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(stopped) = self.blob.stopped() {
                        self.mode = Mode::Broken;
                        return Err(stopped);
                    }
                    self.fall_back(e)?;
                }
            }
        }
    }
}

impl Drop for ParallelGzipReader {
    fn drop(&mut self) {
        // Wake the decoder's threads waiting for bytes, so that dropping it
        // (which joins them) does not wait for the download.
        if matches!(self.mode, Mode::Parallel(..)) {
            self.blob.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex};

    /// Several MiB of data that compresses to about half: enough
    /// compressed bytes for the decoder's 1 MiB grid to split it.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let words: [&[u8]; 6] = [b"layer ", b"blob ", b"usr/lib/", b"\n", b"0x", b"tar "];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                out.extend_from_slice(words[(x >> 8) as usize % words.len()]);
            } else {
                out.extend((0..4).map(|i| (x >> (16 + 8 * i)) as u8 & 0x3f));
            }
        }
        out.truncate(len);
        out
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn sequential(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        crate::GzipReader::new(gz).read_to_end(&mut out)?;
        Ok(out)
    }

    /// An in-memory blob that arrives `step` bytes at a time from a writer
    /// thread, can fail or be cancelled, and can be told to fail one read.
    #[derive(Default)]
    struct Growing {
        bytes: Vec<u8>,
        state: Mutex<(usize, Option<String>)>,
        changed: Condvar,
        /// A read covering this offset fails once, as a decoder bug would.
        fail_at: Option<u64>,
        failed_once: AtomicBool,
        abandoned: AtomicBool,
        waits: AtomicU64,
    }

    impl Growing {
        fn complete(bytes: Vec<u8>) -> Arc<Self> {
            let len = bytes.len();
            Arc::new(Growing {
                bytes,
                state: Mutex::new((len, None)),
                ..Growing::default()
            })
        }

        fn empty(bytes: Vec<u8>) -> Arc<Self> {
            Arc::new(Growing {
                bytes,
                ..Growing::default()
            })
        }

        fn advance(&self, n: usize) {
            let mut state = self.state.lock().unwrap();
            state.0 = (state.0 + n).min(self.bytes.len());
            self.changed.notify_all();
        }

        fn stop(&self, why: &str) {
            self.state.lock().unwrap().1 = Some(why.into());
            self.changed.notify_all();
        }
    }

    impl PositionalBlob for Growing {
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let offset = offset as usize;
            if let Some(at) = self.fail_at {
                let at = at as usize;
                if (offset..offset + buf.len()).contains(&at)
                    && !self.failed_once.swap(true, Ordering::SeqCst)
                {
                    return Err(io::Error::other("injected read failure"));
                }
            }
            let end = (offset + buf.len()).min(self.bytes.len());
            let mut state = self.state.lock().unwrap();
            while state.0 < end {
                if let Some(why) = &state.1 {
                    return Err(io::Error::other(why.clone()));
                }
                if self.abandoned.load(Ordering::SeqCst) {
                    return Err(io::Error::other("abandoned"));
                }
                self.waits.fetch_add(1, Ordering::Relaxed);
                state = self.changed.wait(state).unwrap();
            }
            drop(state);
            if offset >= end {
                return Ok(0);
            }
            buf[..end - offset].copy_from_slice(&self.bytes[offset..end]);
            Ok(end - offset)
        }

        fn stopped(&self) -> Option<io::Error> {
            let state = self.state.lock().unwrap();
            state.1.as_ref().map(|why| io::Error::other(why.clone()))
        }

        fn abandon(&self) {
            self.abandoned.store(true, Ordering::SeqCst);
            let _guard = self.state.lock().unwrap();
            self.changed.notify_all();
        }
    }

    fn fallback_over(gz: Vec<u8>) -> SequentialFallback {
        Box::new(move || {
            Ok(Box::new(crate::GzipReader::new(io::Cursor::new(gz))) as Box<dyn Read + Send>)
        })
    }

    fn parallel(blob: Arc<Growing>, threads: usize) -> (io::Result<Vec<u8>>, Option<String>) {
        let gz = blob.bytes.clone();
        let mut reader = match ParallelGzipReader::new(blob, threads, fallback_over(gz)) {
            Ok(reader) => reader,
            Err(e) => return (Err(e), None),
        };
        let mut out = Vec::new();
        let result = reader.read_to_end(&mut out).map(|_| out);
        (result, reader.fell_back().map(str::to_string))
    }

    #[test]
    fn matches_the_sequential_reader_at_every_level_and_thread_count() {
        let data = sample(12 << 20);
        for level in [1, 6, 9] {
            let gz = gzip(&data, level);
            assert!(gz.len() > 4 << 20, "level {level}: {} bytes", gz.len());
            for threads in [2, 3] {
                let (out, fell_back) = parallel(Growing::complete(gz.clone()), threads);
                assert!(
                    out.as_ref().unwrap() == &data,
                    "level {level}, {threads} threads"
                );
                assert_eq!(fell_back, None, "level {level}: decoded in parallel");
            }
        }
    }

    #[test]
    fn reads_a_blob_while_it_is_written_waiting_for_its_bytes() {
        let data = sample(10 << 20);
        let gz = gzip(&data, 6);
        let blob = Growing::empty(gz.clone());
        let writer = {
            let blob = Arc::clone(&blob);
            std::thread::spawn(move || {
                // Nothing arrives until a read waits for it (bounded, so
                // that a reader that never waits fails the test).
                let since = std::time::Instant::now();
                while blob.waits.load(Ordering::Relaxed) == 0
                    && since.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                for _ in 0..gz.len().div_ceil(256 * 1024) {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    blob.advance(256 * 1024);
                }
            })
        };
        let (out, fell_back) = parallel(Arc::clone(&blob), 2);
        writer.join().unwrap();
        assert!(out.unwrap() == data, "same bytes as the input");
        assert_eq!(fell_back, None);
        assert!(
            blob.waits.load(Ordering::Relaxed) > 0,
            "the reads waited for the writer"
        );
    }

    #[test]
    fn a_failing_decoder_falls_back_to_the_sequential_reader_seamlessly() {
        let data = sample(12 << 20);
        let gz = gzip(&data, 6);
        // Early (before any output) and late (after output was delivered).
        for fail_at in [20, gz.len() as u64 * 3 / 4] {
            let blob = Arc::new(Growing {
                fail_at: Some(fail_at),
                ..Arc::try_unwrap(Growing::complete(gz.clone())).ok().unwrap()
            });
            let (out, fell_back) = parallel(blob, 2);
            assert!(out.unwrap() == data, "fail at {fail_at}: identical output");
            let why = fell_back.expect("the decoder's failure was noticed");
            assert!(why.contains("injected"), "fail at {fail_at}: {why}");
        }
    }

    #[test]
    fn a_failed_download_or_a_cancel_fails_without_falling_back() {
        let data = sample(10 << 20);
        let gz = gzip(&data, 6);
        for why in ["connection reset", "layer unpack cancelled"] {
            let blob = Growing::empty(gz.clone());
            blob.advance(gz.len() / 3);
            let stopper = {
                let blob = Arc::clone(&blob);
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    blob.stop(why);
                })
            };
            let (out, fell_back) = parallel(blob, 2);
            stopper.join().unwrap();
            let err = out.unwrap_err();
            assert_eq!(err.to_string(), why);
            assert_eq!(fell_back, None, "{why}: no sequential retry");
        }
    }

    #[test]
    fn dropping_the_reader_early_does_not_wait_for_the_download() {
        // Over 8 MiB compressed: the decoder looks at that much before its
        // first output (for dense multi-member streams).
        let data = sample(24 << 20);
        let gz = gzip(&data, 6);
        let blob = Growing::empty(gz.clone());
        // All but the last byte: the decoder's threads wait for it.
        blob.advance(gz.len() - 1);
        let mut reader = ParallelGzipReader::new(
            Arc::clone(&blob) as Arc<dyn PositionalBlob>,
            2,
            fallback_over(gz),
        )
        .unwrap();
        let mut first = vec![0u8; 1 << 20];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(first, data[..1 << 20]);
        let dropped = std::time::Instant::now();
        drop(reader);
        assert!(blob.abandoned.load(Ordering::SeqCst));
        // Without the wake-up the drop would hang forever (no writer).
        assert!(dropped.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn corrupt_and_truncated_input_fail_as_the_sequential_reader_fails() {
        let data = sample(10 << 20);
        let gz = gzip(&data, 6);
        let mut corrupt = gz.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle..middle + 64].fill(0xff);
        let mut bad_length = gz.clone();
        let n = bad_length.len();
        bad_length[n - 1] ^= 1;
        let mut trailing = gz.clone();
        trailing.extend(b"junk after the end");
        let mut bad_header = gz.clone();
        bad_header[3] = 0x20;
        for (name, blob) in [
            ("corrupt", corrupt),
            ("truncated", gz[..gz.len() * 2 / 3].to_vec()),
            ("cut in the trailer", gz[..gz.len() - 3].to_vec()),
            ("bad length", bad_length),
            ("trailing junk", trailing),
            ("reserved flags", bad_header),
        ] {
            let expected = sequential(&blob).unwrap_err();
            let (out, _) = parallel(Growing::complete(blob), 2);
            let err = out.unwrap_err();
            assert_eq!(err.kind(), expected.kind(), "{name}: {err}");
            assert_eq!(err.to_string(), expected.to_string(), "{name}");
        }
    }

    #[test]
    fn multi_member_empty_member_and_stored_blocks_match() {
        let data = sample(9 << 20);
        let mut members = gzip(&data[..3 << 20], 1);
        members.extend(gzip(b"", 6));
        members.extend(gzip(&data[3 << 20..], 9));
        let stored = gzip(&data, 0);
        for (name, gz, expected) in [
            ("members", members, &data[..]),
            ("stored", stored, &data[..]),
            ("empty", gzip(b"", 6), &b""[..]),
        ] {
            let (out, _) = parallel(Growing::complete(gz), 2);
            assert!(out.unwrap() == expected, "{name}");
        }
    }
}
