//! The vocabulary of haul: image references, digests, media types,
//! manifests, image configs and platforms.
//!
//! Every other haul crate speaks in these types. The OCI data structures
//! themselves come from [`oci_spec`] (re-exported); this crate adds what
//! moving images needs on top: Docker's reference normalisation, validated
//! digests with streaming verification, media-type questions, manifest
//! decoding that keeps the exact bytes, and platform selection from an
//! index. It does no I/O of its own and never prints; failures are
//! [`Error`] values that name their subject.
//!
//! ```
//! use haul_oci::{Reference, Platform};
//!
//! let r: Reference = "alpine".parse()?;
//! assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
//! assert_eq!(r.familiar(), "alpine:latest");
//! assert_eq!(r.api_host(), "registry-1.docker.io");
//!
//! let p: Platform = "linux/aarch64".parse()?;
//! assert_eq!(p.to_string(), "linux/arm64/v8");
//! # Ok::<(), haul_oci::Error>(())
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod media_type;
pub mod platform;
pub mod reference;

pub use config::{chain_ids, parse_image_config, parse_image_config_with_limit, ImageConfig};
pub use digest::{Algorithm, Digest, Digester, Verifier, VerifyingReader};
pub use error::{DigestErrorKind, Error, ReferenceErrorKind, Result};
pub use manifest::{
    parse_manifest, parse_manifest_with_limit, Manifest, ParsedManifest, Schema1Manifest,
    DEFAULT_MANIFEST_LIMIT,
};
pub use media_type::Compression;
pub use platform::{select_manifest, Platform};
pub use reference::{api_host, Reference};

pub use oci_spec;
/// The OCI image-spec types this crate builds on.
pub use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
