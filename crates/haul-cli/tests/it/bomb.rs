//! A decompression bomb (1 GiB of zeros in about 1 MB of gzip) is refused
//! within seconds with a clear sentence, and leaves nothing behind.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use haul_dist::oci::{Digest, Digester};
use haul_testkit::RegistryConfig;

/// Writes an OCI layout tagged `t` holding one image whose only layer is
/// a gzipped tar of one file of `zeros` zero bytes, streamed (never whole
/// in memory). Returns the layer blob's size.
fn bomb_layout(dir: &Path, zeros: u64) -> u64 {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    // tar -> (diffID hasher, gzip -> memory): the gzip is ~1 MB.
    struct Tee {
        diff: Digester,
        gz: flate2::write::GzEncoder<Vec<u8>>,
    }
    impl Write for Tee {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.diff.update(buf);
            self.gz.write_all(buf)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.gz.flush()
        }
    }
    let tee = Tee {
        diff: Digester::sha256(),
        gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best()),
    };
    let mut builder = tar::Builder::new(tee);
    let mut header = tar::Header::new_gnu();
    header.set_size(zeros);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "zeros", std::io::repeat(0).take(zeros))
        .unwrap();
    let tee = builder.into_inner().unwrap();
    let diff_id = tee.diff.finish();
    let layer = tee.gz.finish().unwrap();

    let put = |bytes: &[u8]| -> Digest {
        let digest = Digest::sha256_of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        digest
    };
    let layer_digest = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "config": {},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest.to_string(), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "t"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    layer.len() as u64
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_decompression_bomb_is_refused_within_seconds_leaving_nothing() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let layout = env.dir("bomb");
    let compressed = bomb_layout(&layout, 1 << 30);
    assert!(compressed < 2_000_000, "the bomb is small: {compressed}");
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &env.registry, "evil/bomb:1")
        .unwrap();

    let started = Instant::now();
    let out = haul_command(env.root.path(), &["pull", &env.reference("evil/bomb:1")])
        .env("HAUL_RETRY_TICK_MS", "1")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("decompression bomb") && err.contains("--max-layer-expansion"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let root = env.root.path();
    let layers: Vec<String> = entries(&root.join("layers/sha256"));
    assert!(layers.is_empty(), "layers left: {layers:?}");
    let staging: Vec<String> = entries(&root.join("layers"))
        .into_iter()
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    let images = entries(&root.join("images/sha256"));
    assert!(images.is_empty(), "image records left: {images:?}");
}

#[test]
fn the_expansion_limit_is_configurable() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    // 100 MiB of zeros: past the 64 MiB allowed to any ~100 KB blob at the
    // default ratio of 100, within a ratio of 2000.
    let layout = env.dir("zeros");
    bomb_layout(&layout, 100 << 20);
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &env.registry, "big/zeros:1")
        .unwrap();
    let reference = env.reference("big/zeros:1");
    let out = env.haul(&["pull", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("decompression bomb"),
        "{}",
        stderr(&out)
    );
    assert_ok(&env.haul(&["--max-layer-expansion", "2000", "pull", &reference]));
}
