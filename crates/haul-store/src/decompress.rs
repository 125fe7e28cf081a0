//! Turning a layer blob into its uncompressed tar stream.

use std::io::{self, Read};

use haul_oci::Compression;

use crate::gzip::GzipReader;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression the first bytes of a stream show: gzip (`1f 8b`), zstd
/// (`28 b5 2f fd`), otherwise uncompressed. `None` when fewer bytes than
/// needed to tell are given.
pub fn detect_compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&GZIP_MAGIC) {
        return Some(Compression::Gzip);
    }
    if head.starts_with(&ZSTD_MAGIC) {
        return Some(Compression::Zstd);
    }
    if head.len() < ZSTD_MAGIC.len()
        && (GZIP_MAGIC.starts_with(head) || ZSTD_MAGIC.starts_with(head))
    {
        return None;
    }
    Some(Compression::Uncompressed)
}

/// A reader of the uncompressed tar inside a layer blob.
///
/// `declared` is the compression the media type announces; the stream's
/// magic bytes take precedence when they say otherwise (registries do serve
/// plain tars labelled gzip, and the reverse), and `declared` decides only
/// for a stream too short to tell. gzip is read with [`GzipReader`]
/// (zlib-rs raw inflate; concatenated members are one stream, as `pigz`
/// writes them), zstd with the reference decoder.
/// Streams: nothing is held in memory beyond the decoders' buffers.
pub fn decompressing_reader<'a, R>(
    mut reader: R,
    declared: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>>
where
    R: Read + Send + 'a,
{
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = detect_compression(&head[..filled]).unwrap_or(declared);
    let whole = |reader| io::Cursor::new(head).take(filled as u64).chain(reader);
    Ok(match compression {
        Compression::Uncompressed => Box::new(whole(reader)),
        Compression::Gzip => Box::new(GzipReader::with_prefix(reader, &head[..filled])),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole(reader))?),
    })
}

/// Chunks a [`read_ahead`] reader keeps ready.
const READ_AHEAD_CHUNKS: usize = 8;
/// Size of one read-ahead chunk.
const READ_AHEAD_CHUNK: usize = 256 * 1024;

/// Runs `reader` on a thread of its own, a few chunks ahead of whoever
/// reads the result. Unpacking a layer is then two pipelined stages, the
/// decompressor on one core and the diffID hash plus file writes on
/// another, instead of one core doing both. The chunks go back to the
/// reading thread once consumed, so no buffer is allocated (or zeroed)
/// after the first few. Errors arrive in order; the thread stops when the
/// result is dropped.
pub fn read_ahead<R: Read + Send + 'static>(reader: R) -> ReadAhead {
    let (sender, receiver) = std::sync::mpsc::sync_channel(READ_AHEAD_CHUNKS);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut chunk = recycled
                .try_recv()
                .unwrap_or_else(|_| vec![0u8; READ_AHEAD_CHUNK]);
            let result = loop {
                match reader.read(&mut chunk) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let done = !matches!(result, Ok(n) if n > 0);
            let message = result.map(|n| (chunk, n));
            if sender.send(message).is_err() || done {
                return;
            }
        }
    });
    ReadAhead {
        receiver,
        recycle,
        current: Vec::new(),
        len: 0,
        position: 0,
        finished: false,
    }
}

/// The reading end of [`read_ahead`].
#[derive(Debug)]
pub struct ReadAhead {
    receiver: std::sync::mpsc::Receiver<io::Result<(Vec<u8>, usize)>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    /// Bytes of `current` that hold data.
    len: usize,
    position: usize,
    finished: bool,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.len {
            if self.finished {
                return Ok(0);
            }
            match self.receiver.recv() {
                Ok(Ok((_, 0))) => self.finished = true,
                Ok(Ok((chunk, len))) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    if !used.is_empty() {
                        // The reading thread may be gone; then it is dropped.
                        let _ = self.recycle.send(used);
                    }
                    self.len = len;
                    self.position = 0;
                }
                Ok(Err(e)) => {
                    self.finished = true;
                    return Err(e);
                }
                Err(_) => {
                    self.finished = true;
                    return Err(io::Error::other("the read-ahead thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.len - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(r: Box<dyn Read + Send + '_>) -> Vec<u8> {
        let mut out = Vec::new();
        { r }.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(
            detect_compression(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(Compression::Zstd)
        );
        assert_eq!(detect_compression(b"etc/"), Some(Compression::Uncompressed));
        assert_eq!(detect_compression(&[0x1f]), None);
        assert_eq!(detect_compression(b""), None);
    }

    #[test]
    fn inflates_gzip_zstd_and_plain_whatever_was_declared() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let gz = gzip(&data);
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        for declared in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            assert_eq!(
                read_all(decompressing_reader(&gz[..], declared).unwrap()),
                data
            );
            assert_eq!(
                read_all(decompressing_reader(&zst[..], declared).unwrap()),
                data
            );
            assert_eq!(
                read_all(decompressing_reader(&data[..], declared).unwrap()),
                data
            );
        }
    }

    #[test]
    fn reads_concatenated_gzip_members() {
        let mut two = gzip(b"hello ");
        two.extend(gzip(b"world"));
        let out = read_all(decompressing_reader(&two[..], Compression::Gzip).unwrap());
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn empty_stream_is_empty() {
        let out = read_all(decompressing_reader(&b""[..], Compression::Uncompressed).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn read_ahead_delivers_every_byte_in_order_and_then_errors() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        read_ahead(io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("broken"));
                }
                let n = self.0.min(buf.len());
                self.0 -= n;
                buf[..n].fill(7);
                Ok(n)
            }
        }
        let mut out = Vec::new();
        let err = read_ahead(Failing(600_000))
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.to_string(), "broken");
        assert_eq!(out.len(), 600_000);
    }
}
