//! Image configs (OCI and Docker, which share one JSON shape) and the layer
//! identities derived from them: diff IDs and chain IDs.

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{check_size, DEFAULT_MANIFEST_LIMIT};
use crate::platform::Platform;

/// The largest image config read into memory by default (same as manifests).
pub const DEFAULT_CONFIG_LIMIT: usize = DEFAULT_MANIFEST_LIMIT;

/// An image config with the exact bytes it was decoded from, their digest
/// (the image ID) and its validated diff IDs.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    bytes: Vec<u8>,
    digest: Digest,
    config: ImageConfiguration,
    diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// The exact bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The SHA-256 digest of the bytes: the image ID.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The decoded config.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// Takes the decoded config.
    pub fn into_config(self) -> ImageConfiguration {
        self.config
    }

    /// Digests of the uncompressed layers, base first.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.diff_ids
    }

    /// Chain IDs of the layers, base first (see [`chain_ids`]).
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.diff_ids)
    }

    /// The platform the image is built for.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.config.os().to_string(),
            architecture: self.config.architecture().to_string(),
            variant: self.config.variant().clone(),
            os_version: self.config.os_version().clone(),
            os_features: self.config.os_features().clone().unwrap_or_default(),
        }
    }
}

/// Parses an image config with the default size limit.
pub fn parse_image_config(bytes: impl Into<Vec<u8>>) -> Result<ImageConfig> {
    parse_image_config_with_limit(bytes, DEFAULT_CONFIG_LIMIT)
}

/// Parses an image config, refusing documents over `limit` bytes. Checks
/// that `rootfs.type` is `layers` and every diff ID is a valid digest.
pub fn parse_image_config_with_limit(
    bytes: impl Into<Vec<u8>>,
    limit: usize,
) -> Result<ImageConfig> {
    let bytes = bytes.into();
    check_size("image config", bytes.len(), limit)?;
    let config: ImageConfiguration =
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: "image config",
            source,
        })?;
    let invalid = |reason: String| Error::InvalidDocument {
        what: "image config",
        reason,
    };
    let rootfs = config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(invalid(format!(
            "rootfs.type is {:?}, expected \"layers\"",
            rootfs.typ()
        )));
    }
    let diff_ids = rootfs
        .diff_ids()
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Digest::parse(id).map_err(|err| invalid(format!("rootfs.diff_ids[{i}]: {err}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageConfig {
        digest: Digest::sha256_of(&bytes),
        bytes,
        config,
        diff_ids,
    })
}

/// Chain IDs for a stack of layers given their diff IDs, base first:
/// `chain(1) = diff(1)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
///
/// A chain ID names a layer together with everything beneath it, which is
/// what an unpacked filesystem snapshot depends on.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}
