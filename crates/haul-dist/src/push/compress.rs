//! Compressing uncompressed layers for a push, as Docker and skopeo do: an
//! image loaded from a docker-archive carries plain tar layers under a
//! manifest haul wrote, and sending those as they are costs several times
//! the bytes. Each such layer gets a compressed blob in the store (reused
//! from an earlier push or pull of the same diffID when one is there, so a
//! second push makes the same manifest and sends nothing new), and the
//! image a manifest naming those blobs, stored as an image of its own.

use std::io::{self, Read, Write};

use haul_oci::{media_type, Compression, Digest};
use haul_store::{detect_compression, ImageRecord, Store};
use serde_json::Value;

use crate::error::{Error, Result};

/// How a push compresses the uncompressed layers it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushCompression {
    /// gzip, as Docker pushes every layer.
    #[default]
    Gzip,
    /// zstd.
    Zstd,
}

impl PushCompression {
    fn compression(self) -> Compression {
        match self {
            PushCompression::Gzip => Compression::Gzip,
            PushCompression::Zstd => Compression::Zstd,
        }
    }

    fn layer_media_type(self, docker: bool) -> &'static str {
        match (self, docker) {
            (PushCompression::Gzip, true) => media_type::DOCKER_LAYER_GZIP,
            (PushCompression::Gzip, false) => media_type::OCI_LAYER_GZIP,
            (PushCompression::Zstd, true) => media_type::DOCKER_LAYER_ZSTD,
            (PushCompression::Zstd, false) => media_type::OCI_LAYER_ZSTD,
        }
    }
}

/// Whether a push of `image` compresses its uncompressed layers: when asked
/// to, or when haul wrote its manifest (no registry serves that manifest,
/// so there is no digest to keep).
pub(crate) fn compresses(image: &ImageRecord, asked: Option<PushCompression>) -> bool {
    let plain = image
        .layers
        .iter()
        .any(|l| media_type::layer_compression(&l.media_type) == Some(Compression::Uncompressed));
    plain && (asked.is_some() || image.manifest_made_locally)
}

/// The image to push in place of `image`: the same config, its
/// uncompressed layers replaced by compressed blobs, under a new manifest
/// stored with its record. `repository` is recorded as where those blobs
/// go. Blocking.
pub(crate) fn compressed_image(
    store: &Store,
    image: &ImageRecord,
    compression: PushCompression,
    repository: &str,
) -> Result<ImageRecord> {
    let manifest_bytes =
        store.read_blob_limited(&image.manifest_digest, haul_store::MANIFEST_LIMIT)?;
    let mut manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| Error::Inconsistent {
            reference: image.manifest_digest.to_string(),
            message: format!("the stored manifest is not JSON: {e}"),
        })?;
    let mut docker = media_type::same(&image.manifest_media_type, media_type::DOCKER_MANIFEST);
    let mut manifest_type = image.manifest_media_type.clone();
    if docker && compression == PushCompression::Zstd {
        // Docker schema 2 has no zstd layer type others read (skopeo and
        // go-containerregistry refuse it): the manifest becomes OCI, as
        // skopeo makes it for zstd.
        crate::oci_types::to_oci_media_types(&mut manifest);
        manifest_type = media_type::OCI_MANIFEST.to_string();
        docker = false;
    }
    let descriptors = manifest
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::Inconsistent {
            reference: image.manifest_digest.to_string(),
            message: "the stored manifest has no layers".into(),
        })?;
    for (descriptor, layer) in descriptors.iter_mut().zip(&image.layers) {
        if media_type::layer_compression(&layer.media_type) != Some(Compression::Uncompressed) {
            continue;
        }
        let (digest, size) = compressed_blob(store, layer, compression)?;
        store.add_distribution_source(&layer.diff_id, &digest, repository)?;
        descriptor["mediaType"] = compression.layer_media_type(docker).into();
        descriptor["digest"] = digest.to_string().into();
        descriptor["size"] = size.into();
    }
    let bytes = serde_json::to_vec(&manifest).expect("JSON values serialise");
    let digest = Digest::sha256_of(&bytes);
    store.put_blob_bytes(&bytes, &digest)?;
    let parsed = haul_oci::parse_manifest(bytes, Some(&manifest_type))?;
    let config_bytes = store.read_blob_limited(&image.id, crate::pull::CONFIG_LIMIT)?;
    let config = haul_oci::parse_image_config(config_bytes)?;
    // The registry serves these bytes once pushed: their digest is kept.
    let record = ImageRecord::from_parts(&parsed, &config)?;
    store.put_image(&record)?;
    Ok(record)
}

/// A stored blob of `layer`'s diff compressed as asked: one known for its
/// diffID, else made now from its uncompressed blob.
fn compressed_blob(
    store: &Store,
    layer: &haul_store::ImageLayer,
    compression: PushCompression,
) -> Result<(Digest, u64)> {
    for source in store.distribution_sources(&layer.diff_id)? {
        if let Some(size) = blob_compressed_as(store, &source.digest, compression.compression())? {
            return Ok((source.digest, size));
        }
    }
    let mut plain = store.open_blob(&layer.digest)?;
    let (digest, size) = store.add_blob_from(|out| compress(&mut plain, out, compression))?;
    Ok((digest, size))
}

/// The size of the stored blob `digest` when it is compressed that way.
fn blob_compressed_as(
    store: &Store,
    digest: &Digest,
    compression: Compression,
) -> Result<Option<u64>> {
    if !store.has_blob(digest) {
        return Ok(None);
    }
    let mut head = [0u8; 8];
    let mut file = store.open_blob(digest)?;
    let n = file.read(&mut head).map_err(|e| Error::Io {
        path: store.blob_path(digest),
        source: e,
    })?;
    if detect_compression(&head[..n]) != Some(compression) {
        return Ok(None);
    }
    Ok(Some(store.blob_size(digest)?))
}

/// Streams `input` compressed into `out`.
fn compress(
    input: &mut dyn Read,
    out: &mut dyn Write,
    compression: PushCompression,
) -> io::Result<()> {
    match compression {
        PushCompression::Gzip => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::default());
            io::copy(input, &mut gz)?;
            gz.finish()?;
        }
        PushCompression::Zstd => {
            let mut zst = zstd::stream::Encoder::new(out, 3)?;
            io::copy(input, &mut zst)?;
            zst.finish()?;
        }
    }
    Ok(())
}
