//! Manifests, indexes and image configs: any bytes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = haul_oci::parse_manifest(bytes.to_vec(), None);
    let _ = haul_oci::parse_manifest(
        bytes.to_vec(),
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    );
    let _ = haul_oci::parse_image_config(bytes.to_vec());
});
