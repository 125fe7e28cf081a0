//! Manifests: OCI image manifest and index, Docker schema 2 manifest and
//! manifest list, Docker schema 1.
//!
//! [`parse_manifest`] decides the kind from the declared `Content-Type`, or,
//! when that says nothing (absent, `application/json`,
//! `application/octet-stream`, `text/plain`), from the document itself. It
//! keeps the exact bytes and their digest, because a manifest's identity is
//! the hash of those bytes, not of any re-serialisation.

mod schema1;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::media_type::{self as mt, essence, is_generic, same};

pub use schema1::{signed_payload, FsLayer, Schema1Manifest, V1History};

/// The largest manifest (and image config) read into memory by default:
/// 4 MiB, as the distribution registry and containerd use.
pub const DEFAULT_MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

/// A decoded manifest of any supported kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A single image: OCI image manifest or Docker schema 2 manifest
    /// (boxed: oci-spec's manifest type is large).
    Image(Box<ImageManifest>),
    /// A multi-platform index: OCI image index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// A legacy Docker schema 1 manifest.
    Schema1(Schema1Manifest),
}

impl Manifest {
    /// The config descriptor of a single image.
    pub fn config(&self) -> Option<&Descriptor> {
        match self {
            Manifest::Image(m) => Some(m.config()),
            _ => None,
        }
    }

    /// The layer descriptors of a single image, base first.
    pub fn layers(&self) -> Option<&[Descriptor]> {
        match self {
            Manifest::Image(m) => Some(m.layers()),
            _ => None,
        }
    }

    /// The entries of an index.
    pub fn manifests(&self) -> Option<&[Descriptor]> {
        match self {
            Manifest::Index(i) => Some(i.manifests()),
            _ => None,
        }
    }

    /// The image manifest, if this is one.
    pub fn as_image(&self) -> Option<&ImageManifest> {
        match self {
            Manifest::Image(m) => Some(m),
            _ => None,
        }
    }

    /// The index, if this is one.
    pub fn as_index(&self) -> Option<&ImageIndex> {
        match self {
            Manifest::Index(i) => Some(i),
            _ => None,
        }
    }

    /// The schema 1 manifest, if this is one.
    pub fn as_schema1(&self) -> Option<&Schema1Manifest> {
        match self {
            Manifest::Schema1(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is a multi-platform index.
    pub fn is_index(&self) -> bool {
        matches!(self, Manifest::Index(_))
    }
}

/// A manifest together with the exact bytes it was decoded from, their
/// SHA-256 digest and its effective media type.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    bytes: Vec<u8>,
    digest: Digest,
    media_type: String,
    manifest: Manifest,
}

impl ParsedManifest {
    /// The exact bytes, as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The SHA-256 digest of [`ParsedManifest::bytes`].
    ///
    /// For a signed schema 1 manifest, registries address the payload
    /// without its signatures instead; this is the digest of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Size of the bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The media type: the declared one when it was specific, otherwise the
    /// document's `mediaType` field, otherwise the one inferred from its
    /// shape. Always one of the constants in [`crate::media_type`].
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Takes the decoded manifest, dropping the bytes.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }

    /// Takes the bytes, dropping the decoded manifest.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Checks the bytes hash to `expected` (under `expected`'s algorithm),
    /// as a client must when it fetched the manifest by digest.
    pub fn verify(&self, expected: &Digest) -> Result<()> {
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => self.digest.clone(),
            other => Digest::of(other, &self.bytes),
        };
        if &actual == expected {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            })
        }
    }
}

/// Parses a manifest with the default size limit ([`DEFAULT_MANIFEST_LIMIT`]).
///
/// `content_type` is the `Content-Type` the registry sent (or the media type
/// of the descriptor that pointed here), if any.
pub fn parse_manifest(
    bytes: impl Into<Vec<u8>>,
    content_type: Option<&str>,
) -> Result<ParsedManifest> {
    parse_manifest_with_limit(bytes, content_type, DEFAULT_MANIFEST_LIMIT)
}

/// Parses a manifest, refusing documents over `limit` bytes.
pub fn parse_manifest_with_limit(
    bytes: impl Into<Vec<u8>>,
    content_type: Option<&str>,
    limit: usize,
) -> Result<ParsedManifest> {
    let bytes = bytes.into();
    check_size("manifest", bytes.len(), limit)?;
    let probe: Probe = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: "manifest",
        source,
    })?;

    let media_type = match content_type.filter(|ct| !is_generic(ct)) {
        Some(declared) => {
            let canonical =
                canonical_manifest_type(declared).ok_or_else(|| Error::UnsupportedMediaType {
                    media_type: essence(declared).to_owned(),
                })?;
            if let Some(found) = &probe.media_type {
                if !same(found, declared) {
                    return Err(Error::MediaTypeMismatch {
                        declared: essence(declared).to_owned(),
                        found: found.clone(),
                    });
                }
            }
            canonical
        }
        None => sniff(&probe)?,
    };

    let manifest = decode(&bytes, media_type)?;
    let digest = match &manifest {
        // A signed schema 1 manifest is known by the digest of its payload
        // without the signatures, as registries compute it.
        Manifest::Schema1(m) if m.is_signed() => {
            Digest::sha256_of(&schema1::signed_payload(&bytes)?)
        }
        _ => Digest::sha256_of(&bytes),
    };
    Ok(ParsedManifest {
        digest,
        bytes,
        media_type: media_type.to_owned(),
        manifest,
    })
}

pub(crate) fn check_size(what: &'static str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        Err(Error::TooLarge {
            what,
            size: size as u64,
            limit: limit as u64,
        })
    } else {
        Ok(())
    }
}

/// The fields that tell manifest kinds apart; everything else is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u64>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    fs_layers: Option<IgnoredAny>,
    signatures: Option<IgnoredAny>,
}

const MANIFEST_TYPES: [&str; 6] = [
    mt::OCI_MANIFEST,
    mt::DOCKER_MANIFEST,
    mt::OCI_INDEX,
    mt::DOCKER_MANIFEST_LIST,
    mt::DOCKER_MANIFEST_V1,
    mt::DOCKER_MANIFEST_V1_SIGNED,
];

/// The constant spelling of a manifest media type, if it is one.
fn canonical_manifest_type(media_type: &str) -> Option<&'static str> {
    MANIFEST_TYPES.into_iter().find(|m| same(m, media_type))
}

/// Infers the media type from the document when no useful one was declared.
fn sniff(probe: &Probe) -> Result<&'static str> {
    if probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Ok(if probe.signatures.is_some() {
            mt::DOCKER_MANIFEST_V1_SIGNED
        } else {
            mt::DOCKER_MANIFEST_V1
        });
    }
    if let Some(found) = &probe.media_type {
        return canonical_manifest_type(found).ok_or_else(|| Error::UnsupportedMediaType {
            media_type: found.clone(),
        });
    }
    if probe.manifests.is_some() {
        Ok(mt::OCI_INDEX)
    } else if probe.config.is_some() || probe.layers.is_some() {
        Ok(mt::OCI_MANIFEST)
    } else {
        Err(Error::InvalidDocument {
            what: "manifest",
            reason: "cannot tell its kind: no mediaType, manifests, layers or fsLayers field"
                .to_owned(),
        })
    }
}

fn decode(bytes: &[u8], media_type: &str) -> Result<Manifest> {
    if mt::is_index(media_type) {
        let mut index: ImageIndex = from_json("image index", bytes)?;
        check_schema_version("image index", index.schema_version())?;
        restore_os_fields(&mut index, bytes)?;
        Ok(Manifest::Index(Box::new(index)))
    } else if mt::is_schema1(media_type) {
        let manifest: Schema1Manifest = from_json("schema 1 manifest", bytes)?;
        manifest.validate()?;
        Ok(Manifest::Schema1(manifest))
    } else {
        let manifest: ImageManifest = from_json("image manifest", bytes)?;
        check_schema_version("image manifest", manifest.schema_version())?;
        Ok(Manifest::Image(Box::new(manifest)))
    }
}

/// oci-spec 0.8 reads a platform's `os.version` and `os.features` under the
/// wrong keys (`os_version`, `os_features`) and so drops them; Windows
/// images need them to pick the right build. Read them again from the bytes
/// and put them back on the descriptors.
fn restore_os_fields(index: &mut ImageIndex, bytes: &[u8]) -> Result<()> {
    #[derive(Deserialize)]
    struct Entries {
        manifests: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        platform: Option<OsFields>,
    }
    #[derive(Deserialize)]
    struct OsFields {
        #[serde(rename = "os.version")]
        os_version: Option<String>,
        #[serde(rename = "os.features")]
        os_features: Option<Vec<String>>,
    }

    let extras: Entries = from_json("image index", bytes)?;
    let mut manifests = index.manifests().clone();
    for (descriptor, extra) in manifests.iter_mut().zip(extras.manifests) {
        let (Some(mut platform), Some(fields)) = (descriptor.platform().clone(), extra.platform)
        else {
            continue;
        };
        if fields.os_version.is_some() {
            platform.set_os_version(fields.os_version);
        }
        if fields.os_features.is_some() {
            platform.set_os_features(fields.os_features);
        }
        descriptor.set_platform(Some(platform));
    }
    index.set_manifests(manifests);
    Ok(())
}

fn from_json<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json { what, source })
}

fn check_schema_version(what: &'static str, version: u32) -> Result<()> {
    if version == 2 {
        Ok(())
    } else {
        Err(Error::InvalidDocument {
            what,
            reason: format!("schemaVersion is {version}, expected 2"),
        })
    }
}
