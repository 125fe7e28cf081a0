//! The crate's single error type.
//!
//! Every variant carries its subject (the input that failed to parse, the
//! digest that did not match, the sizes that were compared) so that a caller
//! can print one sentence that says what went wrong without adding context.

use std::fmt;
use std::io;

use crate::digest::Digest;
use crate::platform::Platform;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `haul-oci`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid image reference.
    #[error("invalid reference {input:?}: {kind}")]
    InvalidReference {
        /// The text that was parsed.
        input: String,
        /// What is wrong with it.
        kind: ReferenceErrorKind,
    },

    /// A string is not a valid digest.
    #[error("invalid digest {input:?}: {kind}")]
    InvalidDigest {
        /// The text that was parsed.
        input: String,
        /// What is wrong with it.
        kind: DigestErrorKind,
    },

    /// Content hashed to a different digest than the one expected.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was supposed to have.
        expected: Digest,
        /// The digest of the bytes actually seen.
        actual: Digest,
    },

    /// Content has a different length than the one expected.
    ///
    /// `actual` is the number of bytes seen when the mismatch was detected:
    /// a stream that runs past the expected size is stopped at once, so for
    /// an over-long stream it is a lower bound.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The digest of the content being verified.
        digest: Digest,
        /// The expected size in bytes.
        expected: u64,
        /// The number of bytes seen.
        actual: u64,
    },

    /// A document is larger than the limit for reading it into memory.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was being read ("manifest", "image config").
        what: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// A JSON document could not be decoded.
    #[error("invalid {what} JSON: {source}")]
    Json {
        /// What was being decoded ("image manifest", "image index", ...).
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// A manifest was declared (or found) with a media type this crate does
    /// not handle as a manifest.
    #[error("unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
    },

    /// The declared content type disagrees with the `mediaType` field of the
    /// document.
    #[error(
        "manifest media type mismatch: declared {declared:?}, but the document says {found:?}"
    )]
    MediaTypeMismatch {
        /// The media type the server (or caller) declared.
        declared: String,
        /// The media type written in the document.
        found: String,
    },

    /// A manifest or config is well-formed JSON but breaks a rule of its
    /// format (wrong schema version, mismatched lengths, ...).
    #[error("invalid {what}: {reason}")]
    InvalidDocument {
        /// What was being checked ("image manifest", "schema 1 manifest", ...).
        what: &'static str,
        /// The broken rule.
        reason: String,
    },

    /// A string is not a valid platform specifier.
    #[error("invalid platform {input:?}: {reason}")]
    InvalidPlatform {
        /// The text that was parsed.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No entry of an image index suits the requested platform.
    #[error(
        "no image for {wanted} in the index; it offers {}",
        offered_list(offered)
    )]
    NoMatchingPlatform {
        /// The platform that was asked for (boxed to keep `Error` small).
        wanted: Box<Platform>,
        /// The platforms the index offers, as the index declares them
        /// (attestation entries left out).
        offered: Vec<Platform>,
    },
}

fn offered_list(offered: &[Platform]) -> String {
    if offered.is_empty() {
        return "no platforms".to_owned();
    }
    offered
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The crate error inside an `io::Error`, if there is one.
    ///
    /// [`crate::digest::VerifyingReader`] reports a digest or size mismatch as
    /// an `io::Error` wrapping an [`Error`]; this recovers it.
    pub fn from_io(err: &io::Error) -> Option<&Error> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
    }

    /// Whether this is a [`Error::DigestMismatch`] or [`Error::SizeMismatch`]:
    /// content arrived but is not the content that was asked for.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. }
        )
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Why a reference string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceErrorKind {
    /// The input is empty.
    Empty,
    /// Nothing stands before the `:tag` or `@digest` part.
    MissingName,
    /// The input is 64 hex characters: an image ID, not a name.
    AmbiguousIdentifier,
    /// The repository path contains upper-case letters.
    Uppercase,
    /// A path component is empty (`a//b`, `a/`, `/a`).
    EmptyComponent,
    /// A path component holds a character outside `[a-z0-9._-]`.
    InvalidCharacter {
        /// The offending component.
        component: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// A path component starts or ends with a separator, or uses a separator
    /// sequence other than `.`, `_`, `__` or a run of `-`.
    BadSeparator {
        /// The offending component.
        component: String,
    },
    /// The registry part is not a host name, IPv4 or bracketed IPv6 address
    /// with an optional numeric port.
    InvalidDomain {
        /// The offending registry part.
        domain: String,
    },
    /// The full name (registry and repository) is longer than 255 characters.
    NameTooLong {
        /// Its length.
        length: usize,
    },
    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    InvalidTag {
        /// The offending tag.
        tag: String,
    },
    /// The digest part is invalid.
    InvalidDigest(DigestErrorKind),
}

impl fmt::Display for ReferenceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("reference is empty"),
            Self::MissingName => f.write_str("no repository name before the tag or digest"),
            Self::AmbiguousIdentifier => f.write_str(
                "a 64-character hexadecimal string is an image ID, not a repository name",
            ),
            Self::Uppercase => f.write_str("repository name must be lowercase"),
            Self::EmptyComponent => f.write_str("repository name has an empty path component"),
            Self::InvalidCharacter {
                component,
                character,
            } => write!(
                f,
                "path component {component:?} contains {character:?}; only lowercase letters, digits and separators are allowed"
            ),
            Self::BadSeparator { component } => write!(
                f,
                "path component {component:?} must start and end with a letter or digit and use only '.', '_', '__' or '-' between them"
            ),
            Self::InvalidDomain { domain } => write!(f, "registry {domain:?} is not a valid host[:port]"),
            Self::NameTooLong { length } => {
                write!(f, "repository name is {length} characters, over the limit of 255")
            }
            Self::InvalidTag { tag } => write!(
                f,
                "tag {tag:?} must be 1 to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
            ),
            Self::InvalidDigest(kind) => write!(f, "digest: {kind}"),
        }
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestErrorKind {
    /// No `algorithm:` prefix.
    MissingAlgorithm,
    /// An algorithm other than sha256 or sha512.
    UnsupportedAlgorithm {
        /// The algorithm named.
        algorithm: String,
    },
    /// The hex part has the wrong length for the algorithm.
    InvalidLength {
        /// The length the algorithm requires.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The hex part holds a character outside `[0-9a-f]`.
    InvalidHex,
}

impl fmt::Display for DigestErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAlgorithm => f.write_str("expected ALGORITHM:HEX"),
            Self::UnsupportedAlgorithm { algorithm } => {
                write!(
                    f,
                    "unsupported algorithm {algorithm:?} (expected sha256 or sha512)"
                )
            }
            Self::InvalidLength { expected, actual } => {
                write!(f, "expected {expected} hex characters, got {actual}")
            }
            Self::InvalidHex => f.write_str("only lowercase hexadecimal characters are allowed"),
        }
    }
}
