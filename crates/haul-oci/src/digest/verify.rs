//! Checking streamed content against an expected digest and size.

use std::io::{self, Read};

use super::{Digest, Digester};
use crate::error::{Error, Result};

/// Checks bytes against an expected digest (and optionally an expected size)
/// as they pass, without owning the stream: feed it with
/// [`Verifier::update`], then call [`Verifier::verify`]. Suits async code,
/// where the bytes arrive in chunks from a body stream.
#[derive(Debug, Clone)]
pub struct Verifier {
    expected: Digest,
    expected_size: Option<u64>,
    digester: Digester,
}

impl Verifier {
    /// A verifier for content that must hash to `expected`.
    pub fn new(expected: Digest) -> Self {
        let digester = Digester::new(expected.algorithm());
        Verifier {
            expected,
            expected_size: None,
            digester,
        }
    }

    /// Also require the content to be exactly `size` bytes long.
    pub fn with_size(mut self, size: u64) -> Self {
        self.expected_size = Some(size);
        self
    }

    /// The digest the content must have.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// The size the content must have, if one was given.
    pub fn expected_size(&self) -> Option<u64> {
        self.expected_size
    }

    /// How many bytes have been fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.digester.bytes()
    }

    /// Feeds more bytes. Fails with [`Error::SizeMismatch`] as soon as the
    /// content is longer than the expected size, so an over-long stream can be
    /// abandoned early.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        self.feed(data).map_err(Error::from)
    }

    /// Checks everything fed so far is the complete expected content.
    /// Returns the digest on success; fails with [`Error::SizeMismatch`] if
    /// the length is wrong, otherwise [`Error::DigestMismatch`] if the hash
    /// is.
    ///
    /// Takes `&self` so it can be called at each end-of-stream; the hash
    /// state is cloned, which is cheap.
    pub fn verify(&self) -> Result<Digest> {
        self.check().map_err(Error::from)
    }

    fn feed(&mut self, data: &[u8]) -> std::result::Result<(), Mismatch> {
        self.digester.update(data);
        match self.expected_size {
            Some(expected) if self.digester.bytes() > expected => Err(self.size_mismatch(expected)),
            _ => Ok(()),
        }
    }

    fn check(&self) -> std::result::Result<Digest, Mismatch> {
        if let Some(expected) = self.expected_size {
            if self.digester.bytes() != expected {
                return Err(self.size_mismatch(expected));
            }
        }
        let actual = self.digester.clone().finish();
        if actual == self.expected {
            Ok(actual)
        } else {
            Err(Mismatch::Digest {
                expected: self.expected.clone(),
                actual,
            })
        }
    }

    fn size_mismatch(&self, expected: u64) -> Mismatch {
        Mismatch::Size {
            digest: self.expected.clone(),
            expected,
            actual: self.digester.bytes(),
        }
    }
}

/// The two ways content can fail verification; kept separately from
/// [`Error`] because it is cheap to clone.
#[derive(Debug, Clone)]
enum Mismatch {
    Digest {
        expected: Digest,
        actual: Digest,
    },
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

impl From<Mismatch> for Error {
    fn from(m: Mismatch) -> Self {
        match m {
            Mismatch::Digest { expected, actual } => Error::DigestMismatch { expected, actual },
            Mismatch::Size {
                digest,
                expected,
                actual,
            } => Error::SizeMismatch {
                digest,
                expected,
                actual,
            },
        }
    }
}

impl From<Mismatch> for io::Error {
    fn from(m: Mismatch) -> Self {
        Error::from(m).into()
    }
}

/// A [`Read`] wrapper that hashes bytes as they are read and, at end of
/// stream, fails unless they match the expected digest (and size).
///
/// The failure is an `io::Error` of kind `InvalidData` wrapping the crate's
/// [`Error::DigestMismatch`] or [`Error::SizeMismatch`]; recover it with
/// [`Error::from_io`]. Once the check has failed, every later read fails the
/// same way, so a caller cannot mistake the stream for a good one.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    verifier: Verifier,
    outcome: Option<Outcome>,
}

#[derive(Debug)]
enum Outcome {
    Verified(Digest),
    Failed(Mismatch),
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, whose content must hash to `expected`.
    pub fn new(inner: R, expected: Digest) -> Self {
        Self::from_verifier(inner, Verifier::new(expected))
    }

    /// Wraps `inner`, checking with a prepared [`Verifier`] (for example one
    /// with an expected size).
    pub fn from_verifier(inner: R, verifier: Verifier) -> Self {
        VerifyingReader {
            inner,
            verifier,
            outcome: None,
        }
    }

    /// Bytes read through this wrapper so far.
    pub fn bytes_read(&self) -> u64 {
        self.verifier.bytes_seen()
    }

    /// The digest, once the end of the stream was reached and it matched.
    pub fn verified_digest(&self) -> Option<&Digest> {
        match &self.outcome {
            Some(Outcome::Verified(d)) => Some(d),
            _ => None,
        }
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps, returning the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, mismatch: Mismatch) -> io::Error {
        self.outcome = Some(Outcome::Failed(mismatch.clone()));
        mismatch.into()
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.outcome {
            Some(Outcome::Verified(_)) => return Ok(0),
            Some(Outcome::Failed(mismatch)) => return Err(mismatch.clone().into()),
            None => {}
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(0);
            }
            return match self.verifier.check() {
                Ok(digest) => {
                    self.outcome = Some(Outcome::Verified(digest));
                    Ok(0)
                }
                Err(err) => Err(self.fail(err)),
            };
        }
        if let Err(mismatch) = self.verifier.feed(&buf[..n]) {
            return Err(self.fail(mismatch));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A reader that hands out at most `chunk` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn reader_passes_matching_content() {
        let data = b"hello, layer".repeat(1000);
        let expected = Digest::sha256_of(&data);
        let mut r = VerifyingReader::new(
            Trickle {
                data: &data,
                chunk: 7,
            },
            expected.clone(),
        );
        assert_eq!(read_all(&mut r).unwrap(), data);
        assert_eq!(r.bytes_read(), data.len() as u64);
        assert_eq!(r.verified_digest(), Some(&expected));
        // Reading past the end keeps answering EOF.
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn reader_detects_mismatch_as_downcastable_error() {
        let expected = Digest::sha256_of(b"good");
        let mut r = VerifyingReader::new(&b"evil"[..], expected.clone());
        let err = read_all(&mut r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        match Error::from_io(&err) {
            Some(Error::DigestMismatch {
                expected: e,
                actual,
            }) => {
                assert_eq!(e, &expected);
                assert_eq!(actual, &Digest::sha256_of(b"evil"));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(Error::from_io(&err).unwrap().is_integrity_failure());
        // A second read fails again rather than reporting a clean EOF.
        let again = r.read(&mut [0u8; 4]).unwrap_err();
        assert!(matches!(
            Error::from_io(&again),
            Some(Error::DigestMismatch { .. })
        ));
        assert!(r.verified_digest().is_none());
    }

    #[test]
    fn reader_sha512() {
        let data = b"sha512 content";
        let expected = Digest::of(crate::digest::Algorithm::Sha512, data);
        let mut r = VerifyingReader::new(&data[..], expected.clone());
        read_all(&mut r).unwrap();
        assert_eq!(r.verified_digest(), Some(&expected));
        let wrong = Digest::of(crate::digest::Algorithm::Sha512, b"other");
        let mut r = VerifyingReader::new(&data[..], wrong);
        assert!(read_all(&mut r).is_err());
    }

    #[test]
    fn reader_checks_short_size() {
        let data = b"abc";
        let v = Verifier::new(Digest::sha256_of(data)).with_size(5);
        let mut r = VerifyingReader::from_verifier(&data[..], v);
        let err = read_all(&mut r).unwrap_err();
        match Error::from_io(&err) {
            Some(Error::SizeMismatch {
                expected, actual, ..
            }) => {
                assert_eq!((*expected, *actual), (5, 3));
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn reader_stops_early_when_too_long() {
        let data = vec![7u8; 10_000];
        let v = Verifier::new(Digest::sha256_of(&data[..100])).with_size(100);
        let mut r = VerifyingReader::from_verifier(
            Trickle {
                data: &data,
                chunk: 64,
            },
            v,
        );
        let err = read_all(&mut r).unwrap_err();
        match Error::from_io(&err) {
            Some(Error::SizeMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(*expected, 100);
                assert_eq!(*actual, 128, "stopped at the first chunk past the limit");
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn empty_buffer_read_is_not_eof() {
        let data = b"abc";
        let mut r = VerifyingReader::new(&data[..], Digest::sha256_of(b"zzz"));
        assert_eq!(r.read(&mut []).unwrap(), 0);
        assert!(r.verified_digest().is_none());
        assert!(read_all(&mut r).is_err());
    }

    #[test]
    fn verifier_for_async_use() {
        let data = b"chunked body";
        let mut v = Verifier::new(Digest::sha256_of(data)).with_size(data.len() as u64);
        for chunk in data.chunks(5) {
            v.update(chunk).unwrap();
        }
        assert_eq!(v.bytes_seen(), data.len() as u64);
        assert_eq!(v.expected_size(), Some(data.len() as u64));
        assert_eq!(v.verify().unwrap(), Digest::sha256_of(data));
    }

    #[test]
    fn verifier_reports_mismatch_and_overflow() {
        let mut v = Verifier::new(Digest::sha256_of(b"abc"));
        v.update(b"abd").unwrap();
        let err = v.verify().unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }));
        assert!(err
            .to_string()
            .starts_with("digest mismatch: expected sha256:ba7816bf"));

        let mut v = Verifier::new(Digest::sha256_of(b"abc")).with_size(3);
        v.update(b"ab").unwrap();
        let err = v.update(b"cd").unwrap_err();
        assert!(matches!(
            err,
            Error::SizeMismatch {
                expected: 3,
                actual: 4,
                ..
            }
        ));
    }
}
