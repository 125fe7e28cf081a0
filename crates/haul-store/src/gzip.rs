//! A gzip reader tuned for layer blobs: raw DEFLATE (zlib-rs through
//! flate2's [`Decompress`]) with the gzip framing parsed here.
//!
//! Why not [`flate2::read::MultiGzDecoder`]: it computes the CRC-32 of every
//! output byte (about a tenth of the inflate's time in a profile of a pull),
//! and reads through a small internal buffer. A layer's bytes are already
//! verified twice without it: the blob's sha256 covers every compressed
//! byte, and the diffID every inflated one. So this reader skips the
//! CRC-32, still checks each member's ISIZE (free, and it catches a stream
//! cut at a member boundary), reads its input in large chunks into one
//! buffer allocated once, and inflates straight into the caller's buffer.
//!
//! Framing follows RFC 1952: the header's optional FEXTRA, FNAME, FCOMMENT
//! and FHCRC fields are skipped (the header's CRC-16 is not checked either:
//! the blob's digest covers those bytes);
//! reserved flag bits or a method other than deflate are refused;
//! concatenated members are one stream, as `pigz` and `gzip` concatenation
//! write them. What follows the last member must be another member: any
//! other trailing bytes are refused, as `flate2` and Go's `compress/gzip`
//! refuse them. Errors are [`io::ErrorKind::InvalidData`] (corrupt input)
//! or [`io::ErrorKind::UnexpectedEof`] (truncated input), with the byte
//! offset in the compressed stream.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

/// Size of the input buffer: large reads, few syscalls.
const INPUT_BUFFER: usize = 1 << 20;

const FTEXT_FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first member's header.
    First,
    /// After a member's trailer: a header or the end follows.
    Between,
    Body,
    Done,
}

/// A streaming reader of the data inside a gzip stream (see the module
/// docs for what it checks and what it does not).
pub struct GzipReader<R> {
    inner: R,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// Compressed bytes consumed before `input[start]`.
    offset: u64,
    inflater: Decompress,
    state: State,
    /// Bytes the current member has produced (for its ISIZE).
    member_out: u64,
}

impl<R> std::fmt::Debug for GzipReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipReader")
            .field("offset", &self.offset)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> GzipReader<R> {
    /// A reader of the gzip stream `inner`.
    pub fn new(inner: R) -> Self {
        Self::with_prefix(inner, &[])
    }

    /// A reader of the gzip stream whose first bytes, `prefix`, were
    /// already read from `inner` (e.g. to sniff the magic).
    pub fn with_prefix(inner: R, prefix: &[u8]) -> Self {
        let mut input = vec![0u8; INPUT_BUFFER.max(prefix.len())].into_boxed_slice();
        input[..prefix.len()].copy_from_slice(prefix);
        GzipReader {
            inner,
            input,
            start: 0,
            end: prefix.len(),
            eof: false,
            offset: 0,
            inflater: Decompress::new(false),
            state: State::First,
            member_out: 0,
        }
    }

    fn available(&self) -> &[u8] {
        &self.input[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// Reads more input, keeping what is not consumed yet. Returns false
    /// at the end of `inner`.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes at least `n` (a small number) bytes available; false when the
    /// stream ends first.
    fn need(&mut self, n: usize) -> io::Result<bool> {
        while self.end - self.start < n {
            if self.start > 0 && self.input.len() - self.start < n {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn truncated(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "gzip stream truncated in {what} at byte {}",
                self.offset + (self.end - self.start) as u64
            ),
        )
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt gzip stream at byte {}: {what}", self.offset),
        )
    }

    /// Skips a zero-terminated header field.
    fn skip_zero_terminated(&mut self, what: &str) -> io::Result<()> {
        loop {
            if let Some(at) = self.available().iter().position(|b| *b == 0) {
                self.consume(at + 1);
                return Ok(());
            }
            let n = self.end - self.start;
            self.consume(n);
            if !self.fill()? {
                return Err(self.truncated(what));
            }
        }
    }

    /// Parses a member header. Returns false when the stream ended cleanly
    /// instead (only allowed between members).
    fn header(&mut self) -> io::Result<bool> {
        if !self.need(1)? {
            return match self.state {
                State::Between => Ok(false),
                _ => Err(self.truncated("the gzip header")),
            };
        }
        if !self.need(10)? {
            return Err(self.truncated("the gzip header"));
        }
        let head: [u8; 10] = self.available()[..10].try_into().expect("10 bytes");
        if head[0] != 0x1f || head[1] != 0x8b {
            return Err(match self.state {
                State::First => self.corrupt("not a gzip header"),
                _ => self.corrupt("trailing bytes after the last gzip member"),
            });
        }
        if head[2] != 8 {
            return Err(self.corrupt(format_args!(
                "compression method {} is not deflate",
                head[2]
            )));
        }
        let flags = head[3];
        if flags & RESERVED != 0 {
            return Err(self.corrupt("reserved gzip header flags are set"));
        }
        self.consume(10);
        if flags & FEXTRA != 0 {
            if !self.need(2)? {
                return Err(self.truncated("the gzip extra field"));
            }
            let avail = self.available();
            let mut left = usize::from(u16::from_le_bytes([avail[0], avail[1]]));
            self.consume(2);
            while left > 0 {
                if self.start == self.end && !self.fill()? {
                    return Err(self.truncated("the gzip extra field"));
                }
                let n = left.min(self.end - self.start);
                self.consume(n);
                left -= n;
            }
        }
        if flags & FNAME != 0 {
            self.skip_zero_terminated("the gzip file name")?;
        }
        if flags & FCOMMENT != 0 {
            self.skip_zero_terminated("the gzip comment")?;
        }
        if flags & FTEXT_FHCRC != 0 {
            if !self.need(2)? {
                return Err(self.truncated("the gzip header CRC"));
            }
            self.consume(2);
        }
        self.inflater.reset(false);
        self.member_out = 0;
        self.state = State::Body;
        Ok(true)
    }

    /// Reads and checks a member's trailer (its CRC-32 is not checked).
    fn trailer(&mut self) -> io::Result<()> {
        if !self.need(8)? {
            return Err(self.truncated("the gzip trailer"));
        }
        let avail = self.available();
        let isize = u32::from_le_bytes([avail[4], avail[5], avail[6], avail[7]]);
        if u64::from(isize) != self.member_out & 0xffff_ffff {
            return Err(self.corrupt(format_args!(
                "the member's length is {} but its trailer says {isize} (mod 2^32)",
                self.member_out
            )));
        }
        self.consume(8);
        self.state = State::Between;
        Ok(())
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::First | State::Between => {
                    if !self.header()? {
                        self.state = State::Done;
                        return Ok(0);
                    }
                }
                State::Body => {
                    if self.start == self.end && !self.fill()? {
                        return Err(self.truncated("the deflate data"));
                    }
                    let in_before = self.inflater.total_in();
                    let out_before = self.inflater.total_out();
                    let status = self
                        .inflater
                        .decompress(
                            &self.input[self.start..self.end],
                            buf,
                            FlushDecompress::None,
                        )
                        .map_err(|e| self.corrupt(e))?;
                    let consumed = (self.inflater.total_in() - in_before) as usize;
                    let produced = (self.inflater.total_out() - out_before) as usize;
                    self.consume(consumed);
                    self.member_out += produced as u64;
                    if status == Status::StreamEnd {
                        self.trailer()?;
                    }
                    if produced > 0 {
                        return Ok(produced);
                    }
                    if consumed == 0 && status != Status::StreamEnd {
                        // No progress with input and room for output: it
                        // needs more input than is buffered.
                        if !self.fill()? {
                            return Err(self.truncated("the deflate data"));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like with some noise.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 == 0 {
                    (x % 256) as u8
                } else {
                    b"the quick brown fox jumps over the lazy dog "[i % 44]
                }
            })
            .collect()
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn flate2_inflate(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz).read_to_end(&mut out)?;
        Ok(out)
    }

    fn ours(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(gz).read_to_end(&mut out)?;
        Ok(out)
    }

    /// A reader handing out `step` bytes at a time: exercises every
    /// boundary of the framing code.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn matches_flate2_for_every_level_and_any_read_size() {
        let data = sample(3 << 20);
        for level in [0, 1, 6, 9] {
            let gz = gzip(&data, level);
            assert_eq!(ours(&gz).unwrap(), data, "level {level}");
            assert_eq!(flate2_inflate(&gz).unwrap(), data);
        }
        let gz = gzip(&data[..200_000], 6);
        for step in [1, 2, 9, 4096] {
            let mut out = Vec::new();
            GzipReader::new(Trickle(&gz, step))
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data[..200_000], "step {step}");
        }
        // And tiny output buffers.
        let mut reader = GzipReader::new(&gz[..]);
        let mut out = Vec::new();
        let mut byte = [0u8; 3];
        loop {
            let n = reader.read(&mut byte).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&byte[..n]);
        }
        assert_eq!(out, data[..200_000]);
    }

    #[test]
    fn reads_concatenated_members_including_empty_ones() {
        let data = sample(500_000);
        let mut gz = gzip(&data[..100_000], 1);
        gz.extend(gzip(b"", 6));
        gz.extend(gzip(&data[100_000..], 9));
        assert_eq!(ours(&gz).unwrap(), data);
        assert_eq!(flate2_inflate(&gz).unwrap(), data);
        assert_eq!(ours(&gzip(b"", 6)).unwrap(), b"");
    }

    #[test]
    fn skips_every_optional_header_field() {
        let data = sample(70_000);
        let gz = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("made by a test")
            .extra(vec![7u8; 300])
            .write(Vec::new(), flate2::Compression::default());
        let mut gz = gz;
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(ours(&gz).unwrap(), data);
        // FHCRC: flate2 does not write one; set the flag and insert the
        // header's CRC-16 after its fixed fields.
        let plain = gzip(&data, 6);
        let mut with_hcrc = plain[..10].to_vec();
        with_hcrc[3] |= FTEXT_FHCRC;
        let mut crc = flate2::Crc::new();
        crc.update(&with_hcrc);
        with_hcrc.extend((crc.sum() as u16).to_le_bytes());
        with_hcrc.extend(&plain[10..]);
        assert_eq!(ours(&with_hcrc).unwrap(), data);
        assert_eq!(flate2_inflate(&with_hcrc).unwrap(), data);
        for step in [1, 3] {
            let mut out = Vec::new();
            GzipReader::new(Trickle(&gz, step))
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn a_truncated_stream_fails_wherever_it_is_cut() {
        let data = sample(300_000);
        let mut gz = flate2::GzBuilder::new()
            .filename("x")
            .write(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        for cut in [
            1,
            5,
            10,
            11,
            12,
            100,
            gz.len() / 2,
            gz.len() - 8,
            gz.len() - 1,
        ] {
            let err = ours(&gz[..cut]).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
            assert!(
                flate2_inflate(&gz[..cut]).is_err(),
                "flate2 also fails at {cut}"
            );
        }
    }

    #[test]
    fn corrupt_input_fails_with_invalid_data() {
        let data = sample(300_000);
        let gz = gzip(&data, 6);

        let mut bad_magic = gz.clone();
        bad_magic[1] = 0x8c;
        let err = ours(&bad_magic).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not a gzip header"), "{err}");

        let mut bad_method = gz.clone();
        bad_method[2] = 7;
        assert!(ours(&bad_method)
            .unwrap_err()
            .to_string()
            .contains("method 7"));

        let mut reserved = gz.clone();
        reserved[3] = 0x20;
        assert!(ours(&reserved)
            .unwrap_err()
            .to_string()
            .contains("reserved"));

        let mut bad_isize = gz.clone();
        let n = bad_isize.len();
        bad_isize[n - 1] ^= 1;
        let err = ours(&bad_isize).unwrap_err();
        assert!(err.to_string().contains("trailer says"), "{err}");

        // Garbage in the deflate data: an invalid block type.
        let mut garbage = gz.clone();
        garbage[10] = 0xff;
        garbage[11] = 0xff;
        let err = ours(&garbage).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

        let mut trailing = gz.clone();
        trailing.extend(b"junk after the end");
        let err = ours(&trailing).unwrap_err();
        assert!(err.to_string().contains("trailing bytes"), "{err}");
        assert!(flate2_inflate(&trailing).is_err());
    }

    #[test]
    fn the_prefix_is_read_first() {
        let data = sample(10_000);
        let gz = gzip(&data, 6);
        let mut out = Vec::new();
        GzipReader::with_prefix(&gz[4..], &gz[..4])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
