//! Content digests: `sha256:<64 hex>` and `sha512:<128 hex>`.
//!
//! [`Digest`] is the validated value; [`Digester`] computes one from a stream
//! of bytes; [`Verifier`] and [`VerifyingReader`] check a stream against an
//! expected digest (and optionally a size) as it passes.

mod verify;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{DigestErrorKind, Error, Result};

pub use verify::{Verifier, VerifyingReader};

/// Number of hex characters in a short image ID (Docker's `TruncateID`).
pub const SHORT_ID_LEN: usize = 12;

/// A digest algorithm this crate can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm of nearly every image in existence.
    Sha256,
    /// SHA-512, allowed by the OCI spec.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings (`sha256`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated content digest such as `sha256:e3b0c442...`.
///
/// Ordering and equality are those of the string form. Serialises as that
/// string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The full `algorithm:hex` string; validated on construction.
    value: String,
    algorithm: Algorithm,
}

impl Digest {
    /// Parses `algorithm:hex`, checking the algorithm is known and the hex
    /// part is lowercase and of the right length.
    pub fn parse(input: &str) -> Result<Self> {
        let fail = |kind| Error::InvalidDigest {
            input: input.to_owned(),
            kind,
        };
        let (name, hex) = input
            .split_once(':')
            .ok_or_else(|| fail(DigestErrorKind::MissingAlgorithm))?;
        if name.is_empty() {
            return Err(fail(DigestErrorKind::MissingAlgorithm));
        }
        let algorithm = Algorithm::from_name(name).ok_or_else(|| {
            fail(DigestErrorKind::UnsupportedAlgorithm {
                algorithm: name.to_owned(),
            })
        })?;
        Self::from_parts(algorithm, hex).map_err(fail)
    }

    /// Builds a digest from an algorithm and its hex encoding.
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Self> {
        Self::from_parts(algorithm, hex).map_err(|kind| Error::InvalidDigest {
            input: format!("{algorithm}:{hex}"),
            kind,
        })
    }

    fn from_parts(algorithm: Algorithm, hex: &str) -> std::result::Result<Self, DigestErrorKind> {
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestErrorKind::InvalidHex);
        }
        if hex.len() != algorithm.hex_len() {
            return Err(DigestErrorKind::InvalidLength {
                expected: algorithm.hex_len(),
                actual: hex.len(),
            });
        }
        Ok(Digest {
            value: format!("{algorithm}:{hex}"),
            algorithm,
        })
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, data)
    }

    /// The digest of `data` under `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut digester = Digester::new(algorithm);
        digester.update(data);
        digester.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the `algorithm:` prefix.
    pub fn hex(&self) -> &str {
        &self.value[self.algorithm.as_str().len() + 1..]
    }

    /// The full `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The first 12 hex characters, as Docker shows image and layer IDs.
    pub fn short_id(&self) -> &str {
        &self.hex()[..SHORT_ID_LEN]
    }

    /// Converts to oci-spec's digest type, for building descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        oci_spec::image::Digest::from_str(&self.value)
            .expect("a validated sha256/sha512 digest is always a valid oci-spec digest")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.value)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = Error;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self> {
        Self::parse(d.as_ref())
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        d.to_oci()
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Incremental digest computation: feed bytes with [`Digester::update`],
/// then [`Digester::finish`].
///
/// Also an [`std::io::Write`], so `std::io::copy` can feed it.
#[derive(Clone)]
pub struct Digester {
    state: State,
    bytes: u64,
}

impl Digester {
    /// A digester for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        };
        Digester { state, bytes: 0 }
    }

    /// A SHA-256 digester.
    pub fn sha256() -> Self {
        Self::new(Algorithm::Sha256)
    }

    /// The algorithm being computed.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
        self.bytes += data.len() as u64;
    }

    /// How many bytes have been fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self.state {
            State::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            State::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            value: format!("{algorithm}:{hex}"),
            algorithm,
        }
    }
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digester")
            .field("algorithm", &self.algorithm())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl std::io::Write for Digester {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA256: &str =
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SHA512: &str = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    fn kind(err: Error) -> DigestErrorKind {
        match err {
            Error::InvalidDigest { kind, .. } => kind,
            other => panic!("expected InvalidDigest, got {other:?}"),
        }
    }

    #[test]
    fn known_vectors() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b"abc").as_str(), ABC_SHA256);
        assert_eq!(Digest::of(Algorithm::Sha512, b"abc").as_str(), ABC_SHA512);
        // The OCI empty JSON blob `{}`.
        assert_eq!(
            Digest::sha256_of(b"{}").as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn parse_round_trip_and_accessors() {
        let d = Digest::parse(ABC_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string(), ABC_SHA256);
        assert_eq!(d.short_id(), "ba7816bf8f01");
        let d512: Digest = ABC_SHA512.parse().unwrap();
        assert_eq!(d512.algorithm(), Algorithm::Sha512);
        assert_eq!(d512.hex().len(), 128);
        assert_eq!(d512.short_id(), "ddaf35a19361");
    }

    #[test]
    fn new_from_parts() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let d = Digest::new(Algorithm::Sha256, hex).unwrap();
        assert_eq!(d.as_str(), ABC_SHA256);
        assert_eq!(
            kind(Digest::new(Algorithm::Sha512, hex).unwrap_err()),
            DigestErrorKind::InvalidLength {
                expected: 128,
                actual: 64
            }
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            kind(Digest::parse("").unwrap_err()),
            DigestErrorKind::MissingAlgorithm
        );
        assert_eq!(
            kind(Digest::parse("ba7816bf").unwrap_err()),
            DigestErrorKind::MissingAlgorithm
        );
        assert_eq!(
            kind(Digest::parse(":ba7816bf").unwrap_err()),
            DigestErrorKind::MissingAlgorithm
        );
        assert_eq!(
            kind(Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e").unwrap_err()),
            DigestErrorKind::UnsupportedAlgorithm {
                algorithm: "md5".into()
            }
        );
        assert_eq!(
            kind(
                Digest::parse(
                    "SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                )
                .unwrap_err()
            ),
            DigestErrorKind::UnsupportedAlgorithm {
                algorithm: "SHA256".into()
            }
        );
        assert_eq!(
            kind(Digest::parse("sha256:ffffffffffffffffffffffffffffffffff").unwrap_err()),
            DigestErrorKind::InvalidLength {
                expected: 64,
                actual: 34
            }
        );
        assert_eq!(
            kind(
                Digest::parse(
                    "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
                )
                .unwrap_err()
            ),
            DigestErrorKind::InvalidHex
        );
        assert_eq!(
            kind(
                Digest::parse(
                    "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                )
                .unwrap_err()
            ),
            DigestErrorKind::InvalidHex
        );
        assert_eq!(
            kind(Digest::parse("sha256:").unwrap_err()),
            DigestErrorKind::InvalidLength {
                expected: 64,
                actual: 0
            }
        );
    }

    #[test]
    fn error_names_input() {
        let err = Digest::parse("sha256:abc").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sha256:abc"), "{msg}");
        assert!(msg.contains("expected 64 hex characters, got 3"), "{msg}");
    }

    #[test]
    fn serde_as_string() {
        let d = Digest::sha256_of(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{ABC_SHA256}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        let bad: std::result::Result<Digest, _> = serde_json::from_str("\"sha256:nope\"");
        assert!(bad.is_err());
    }

    #[test]
    fn streaming_digester_matches_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut d = Digester::new(algorithm);
            for chunk in data.chunks(333) {
                d.update(chunk);
            }
            assert_eq!(d.bytes(), 10_000);
            assert_eq!(d.algorithm(), algorithm);
            assert_eq!(d.finish(), Digest::of(algorithm, &data));
        }
    }

    #[test]
    fn digester_as_writer() {
        let mut d = Digester::sha256();
        std::io::copy(&mut &b"abc"[..], &mut d).unwrap();
        assert_eq!(d.finish().as_str(), ABC_SHA256);
    }

    #[test]
    fn oci_spec_conversion() {
        let d = Digest::sha256_of(b"abc");
        let oci = d.to_oci();
        assert_eq!(oci.to_string(), ABC_SHA256);
        assert_eq!(Digest::try_from(&oci).unwrap(), d);
        let other: oci_spec::image::Digest =
            "sha384:38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
                .parse()
                .unwrap();
        assert!(matches!(
            Digest::try_from(&other),
            Err(Error::InvalidDigest {
                kind: DigestErrorKind::UnsupportedAlgorithm { .. },
                ..
            })
        ));
    }
}
