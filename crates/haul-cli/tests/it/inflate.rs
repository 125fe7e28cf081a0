//! Layers gzipped by every common compressor (gzip, pigz, igzip, Go's
//! gzip through skopeo, flate2 with every header field) pull and unpack to exactly
//! their tar (the pull checks each layer's diffID, the sha256 of the
//! inflated stream, against the image config: a pull that succeeds
//! produced byte-identical output), and a corrupt or truncated gzip layer
//! fails naming the layer, leaving nothing registered.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use haul_dist::oci::Digest;
use haul_testkit::{Entry, LayerSpec, RegistryConfig};

/// A layer tar of a few MB: text-like and random files, so that the
/// deflate streams have many blocks and the reader many refills.
fn layer_tar() -> Vec<u8> {
    let text: Vec<u8> = (0..1_500_000u32)
        .flat_map(|i| format!("line {} of a config file\n", i % 977).into_bytes())
        .take(2_000_000)
        .collect();
    LayerSpec::uncompressed(vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/big.conf", 0o644, text),
        Entry::random("usr/bin/tool", 0o755, 1_200_000, 14),
        Entry::file("empty", 0o600, Vec::new()),
    ])
    .tar_bytes()
}

/// Writes an OCI layout tagged `t` of one image whose only layer blob is
/// `blob` (a gzip labelled as such) with the diffID of `tar`.
fn layout_with_blob(dir: &Path, tar: &[u8], blob: &[u8]) -> Digest {
    layout_with_blobs(dir, tar, &[blob]).remove(0)
}

/// Writes an OCI layout tagged `t` of one image whose layer blobs are
/// `blobs` (gzips labelled as such), each with the diffID of `tar`.
fn layout_with_blobs(dir: &Path, tar: &[u8], blobs: &[&[u8]]) -> Vec<Digest> {
    layout_of(
        dir,
        tar,
        blobs,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )
}

/// [`layout_with_blobs`] with the layers' media type `media_type`.
fn layout_of(dir: &Path, tar: &[u8], blobs: &[&[u8]], media_type: &str) -> Vec<Digest> {
    let dir_blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&dir_blobs).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let digest = Digest::sha256_of(bytes);
        std::fs::write(dir_blobs.join(digest.hex()), bytes).unwrap();
        digest
    };
    let layer_digests: Vec<Digest> = blobs.iter().map(|b| put(b)).collect();
    let diff_id = Digest::sha256_of(tar).to_string();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![diff_id; blobs.len()]},
        "config": {},
    }))
    .unwrap();
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .zip(&layer_digests)
        .map(|(blob, digest)| {
            serde_json::json!({"mediaType": media_type,
                               "digest": digest.to_string(), "size": blob.len()})
        })
        .collect();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers,
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
    layer_digests
}

/// `program ARGS` with `input` on stdin; its stdout.
fn filter(program: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed",
        program.display()
    );
    out.stdout
}

fn with_header_fields(tar: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("made by a test")
        .extra(b"BC\x02\x00\x00\x00".to_vec())
        .write(Vec::new(), flate2::Compression::new(5));
    encoder.write_all(tar).unwrap();
    encoder.finish().unwrap()
}

fn push_layout(env: &Env, layout: &Path, name: &str) {
    haul_testkit::skopeo::push_oci_layout_with_skopeo(layout, "t", &env.registry, name).unwrap();
}

fn layer_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("layers/sha256"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn layers_from_gzip_pigz_igzip_and_concatenated_members_unpack_byte_identically() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(gzip) = haul_testkit::peers::require_binary("gzip", "gzip") else {
        return;
    };
    let Some(pigz) = haul_testkit::peers::require_binary("pigz", "pigz") else {
        return;
    };
    let Some(igzip) = haul_testkit::peers::require_binary("igzip", "isal") else {
        return;
    };
    let tar = layer_tar();
    let half = tar.len() / 2;
    let mut members = filter(&gzip, &["-1", "-c"], &tar[..half]);
    members.extend(filter(&gzip, &["-9", "-c"], b""));
    members.extend(filter(&pigz, &["-6", "-c"], &tar[half..]));
    let blobs: Vec<(&str, Vec<u8>)> = vec![
        ("gzip-1", filter(&gzip, &["-1", "-c"], &tar)),
        ("gzip-6", filter(&gzip, &["-6", "-c"], &tar)),
        ("gzip-9", filter(&gzip, &["-9", "-c"], &tar)),
        // A file name, a comment and an extra field in the header (FNAME,
        // FCOMMENT, FEXTRA), as `gzip FILE` and BGZF writers put there.
        ("named", with_header_fields(&tar)),
        ("pigz-1", filter(&pigz, &["-1", "-c"], &tar)),
        ("pigz-9", filter(&pigz, &["-9", "-c"], &tar)),
        // pigz --independent: blocks restart the dictionary, stored
        // blocks flushed in between.
        (
            "pigz-indep",
            filter(&pigz, &["-i", "-b", "128", "-c"], &tar),
        ),
        ("igzip-1", filter(&igzip, &["-1", "-c"], &tar)),
        ("stored", filter(&igzip, &["-0", "-c"], &tar)),
        ("members", members),
    ];
    // One image whose layers are the same tar, each gzipped differently:
    // one push, one pull, and each layer is unpacked (their chain IDs
    // differ) and checked against the tar's diffID.
    let layout = env.dir("layout");
    let only: Vec<&[u8]> = blobs.iter().map(|(_, b)| &b[..]).collect();
    let digests = layout_with_blobs(&layout, &tar, &only);
    let distinct: std::collections::HashSet<&Digest> = digests.iter().collect();
    assert_eq!(
        distinct.len(),
        blobs.len(),
        "every compressor wrote other bytes"
    );
    push_layout(&env, &layout, "gz/all:1");
    let reference = env.reference("gz/all:1");
    assert_ok(&env.haul(&["pull", &reference]));
    assert_eq!(
        layer_dirs(env.root.path()).len(),
        blobs.len(),
        "every layer unpacked"
    );
    env.assert_store_invariants();

    // The unpacked files are the tar's files.
    let export = env.dir("export");
    assert_ok(&env.haul(&["export", &reference, export.to_str().unwrap()]));
    let conf = std::fs::read(export.join("etc/big.conf")).unwrap();
    assert_eq!(conf.len(), 2_000_000);
    assert!(conf.starts_with(b"line 0 of a config file\nline 1 "));
    assert_eq!(
        std::fs::metadata(export.join("usr/bin/tool"))
            .unwrap()
            .len(),
        1_200_000
    );
}

/// skopeo compresses an uncompressed layer with Go's gzip (klauspost's
/// pgzip, as crane and Docker's Go code do) when asked to on a copy.
#[test]
fn a_layer_gzipped_by_skopeo_unpacks_byte_identically() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let tar = layer_tar();
    let layout = env.dir("plain");
    layout_of(
        &layout,
        &tar,
        &[&tar],
        "application/vnd.oci.image.layer.v1.tar",
    );
    let mut args: Vec<std::ffi::OsString> = vec![
        "copy".into(),
        "--dest-compress".into(),
        "--dest-compress-format".into(),
        "gzip".into(),
    ];
    args.extend(haul_testkit::skopeo::registry_flags(&env.registry, "dest-"));
    args.push(format!("oci:{}:t", layout.display()).into());
    args.push(format!("docker://{}", env.reference("gz/go:1")).into());
    haul_testkit::skopeo::run_skopeo(args).unwrap();

    let reference = env.reference("gz/go:1");
    assert_ok(&env.haul(&["pull", &reference]));
    let inspect = env.haul(&["inspect", &reference]);
    assert_ok(&inspect);
    let text = stdout(&inspect);
    assert!(
        text.contains("tar+gzip") || text.contains("tar.gzip"),
        "gzipped by skopeo: {text}"
    );
    assert!(
        text.contains(&Digest::sha256_of(&tar).to_string()),
        "diffID: {text}"
    );
    assert_eq!(layer_dirs(env.root.path()).len(), 1);
    env.assert_store_invariants();
}

#[test]
fn a_corrupt_or_truncated_gzip_layer_fails_naming_the_layer_and_leaves_nothing() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let tar = layer_tar();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&tar).unwrap();
    let good = encoder.finish().unwrap();

    let mut corrupt = good.clone();
    // Garbage over the first deflate block's header: an invalid block.
    corrupt[10..16].copy_from_slice(&[0xff; 6]);
    let truncated = good[..good.len() * 2 / 3].to_vec();
    let mut wrong_length = good.clone();
    let n = wrong_length.len();
    wrong_length[n - 2] ^= 0x40;

    for (name, blob, says) in [
        ("corrupt", corrupt, "corrupt gzip stream"),
        ("truncated", truncated, "gzip stream truncated"),
        ("length", wrong_length, "trailer says"),
    ] {
        let layout = env.dir(name);
        let digest = layout_with_blob(&layout, &tar, &blob);
        push_layout(&env, &layout, &format!("bad/{name}:1"));
        let out = env.haul(&["pull", &env.reference(&format!("bad/{name}:1"))]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{name}: {err}");
        assert!(
            err.contains(digest.as_ref()),
            "{name}: the error names the layer {digest}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name}: one sentence: {err}");
        assert!(
            layer_dirs(env.root.path()).is_empty(),
            "{name}: no layer registered"
        );
        env.assert_store_invariants();
        // Nothing half-present: the image is not listed.
        let images = env.haul(&["images"]);
        assert_ok(&images);
        assert!(
            !stdout(&images).contains(&format!("bad/{name}")),
            "{}",
            stdout(&images)
        );
    }
}

/// A tar holding one file of `len` bytes of 6-bit noise: it compresses to
/// about three quarters (Huffman-coded blocks, not stored ones), so a tar
/// of 96 MiB makes a gzip layer over the parallel inflate's 64 MiB.
fn big_layer_tar(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = Vec::with_capacity(len);
    while noise.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend((0..8).map(|i| (x >> (8 * i)) as u8 & 0x3f));
    }
    noise.truncate(len);
    LayerSpec::uncompressed(vec![
        Entry::dir("data", 0o755),
        Entry::file("data/noise.bin", 0o644, noise),
        Entry::file("data/after", 0o600, b"the last file".to_vec()),
    ])
    .tar_bytes()
}

/// Every file under `dir` (relative path, then its sha256 or its link).
fn tree_listing(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
                out.push((name, "dir".into()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((name, Digest::sha256_of(&bytes).to_string()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_big_gzip_layer_inflated_with_two_threads_exports_like_one_thread() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(pigz) = haul_testkit::peers::require_binary("pigz", "pigz") else {
        return;
    };
    let tar = big_layer_tar(96 << 20);
    let blob = filter(&pigz, &["-1", "-c"], &tar);
    assert!(
        blob.len() as u64 > 64 << 20,
        "the layer is big enough for the parallel inflate: {} bytes",
        blob.len()
    );
    let layout = env.dir("layout");
    layout_with_blob(&layout, &tar, &blob);
    drop(blob);
    push_layout(&env, &layout, "gz/big:1");
    let reference = env.reference("gz/big:1");

    let mut exports = Vec::new();
    for threads in ["2", "1"] {
        let root = env.dir(&format!("root-{threads}"));
        let out = haul_in(
            &root,
            &["-vv", "pull", "--inflate-threads", threads, &reference],
        );
        assert_ok(&out);
        let log = stderr(&out);
        let parallel = log.contains("with 2 threads");
        assert_eq!(
            parallel,
            threads == "2",
            "--inflate-threads {threads}: parallel inflate logged: {log}"
        );
        assert_store_invariants(&root);
        let export = env.dir(&format!("export-{threads}"));
        assert_ok(&haul_in(
            &root,
            &["export", &reference, export.to_str().unwrap()],
        ));
        exports.push(tree_listing(&export));
    }
    assert_eq!(exports[0], exports[1], "both pulls export the same tree");
    let noise = exports[0]
        .iter()
        .find(|(name, _)| name == "data/noise.bin")
        .expect("the big file is exported");
    assert_ne!(noise.1, "dir");
    assert!(exports[0].iter().any(|(name, _)| name == "data/after"));
}
