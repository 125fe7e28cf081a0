//! Giving a Docker schema 2 manifest OCI media types (manifest, config,
//! layers), its blobs unchanged: what skopeo does for an OCI layout or for
//! zstd layers, which Docker schema 2 has no type for that others read.

use haul_oci::media_type;
use serde_json::Value;

/// Rewrites every media type of `manifest` to its OCI equivalent.
pub(crate) fn to_oci_media_types(manifest: &mut Value) {
    let convert = |v: &mut Value| {
        if let Some(Value::String(mt)) = v.get_mut("mediaType") {
            *mt = media_type::oci_equivalent(mt).to_owned();
        }
    };
    convert(manifest);
    if let Some(config) = manifest.get_mut("config") {
        convert(config);
    }
    if let Some(Value::Array(layers)) = manifest.get_mut("layers") {
        layers.iter_mut().for_each(convert);
    }
}
