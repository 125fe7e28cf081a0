//! Images built by the testkit are valid OCI, survive a round trip through
//! skopeo and every registry mode unchanged, and unpack with umoci.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use haul_testkit::image::{
    blob_path, sha256_digest, write_oci_index_layout, BuiltImage, ANNOTATION_REF_NAME,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
};
use haul_testkit::skopeo::{
    push_oci_layout_with_skopeo, skopeo_copy_to_oci, skopeo_inspect, skopeo_inspect_config,
    skopeo_inspect_raw,
};
use haul_testkit::umoci::umoci_unpack;
use haul_testkit::{
    require_peer, sample_image, sample_platform_images, Compression, Registry, RegistryConfig,
    Rootfs,
};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(blob_path(layout, digest)).unwrap()
}

fn layout_entry(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"][ANNOTATION_REF_NAME] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("tag {tag} not in {index}"))
}

#[test]
fn sample_layout_is_valid_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = sample_image().write_oci_layout(&layout, "v1").unwrap();

    assert!(layout.join("oci-layout").is_file());
    let entry = layout_entry(&layout, "v1");
    assert_eq!(entry["digest"], image.manifest.digest);
    assert_eq!(entry["mediaType"], MEDIA_TYPE_MANIFEST);

    let manifest_bytes = read_blob(&layout, &image.manifest.digest);
    assert_eq!(sha256_digest(&manifest_bytes), image.manifest.digest);
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).unwrap();
    let config_bytes = read_blob(&layout, manifest.config().digest().as_ref());
    assert_eq!(config_bytes.len() as u64, manifest.config().size());
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(manifest.layers().len(), 3);
    assert_eq!(config.rootfs().diff_ids().len(), 3);

    for ((descriptor, diff_id), spec) in manifest
        .layers()
        .iter()
        .zip(config.rootfs().diff_ids())
        .zip(&sample_image().layers)
    {
        let blob = read_blob(&layout, descriptor.digest().as_ref());
        assert_eq!(blob.len() as u64, descriptor.size());
        assert_eq!(&sha256_digest(&blob), descriptor.digest().as_ref());
        let tar = match spec.compression {
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&blob[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(&blob[..]).unwrap(),
            Compression::None => blob.clone(),
        };
        assert_eq!(&sha256_digest(&tar), diff_id);
        assert_eq!(tar, spec.tar_bytes());
    }

    // Same specs, same bytes.
    let again = sample_image()
        .write_oci_layout(&dir.path().join("again"), "v1")
        .unwrap();
    assert_eq!(again, image);
    assert_eq!(image.chain_ids()[0], image.layers[0].diff_id);
}

#[test]
fn index_layout_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let built = write_oci_index_layout(dir.path(), "multi", &sample_platform_images()).unwrap();
    let entry = layout_entry(dir.path(), "multi");
    assert_eq!(entry["mediaType"], MEDIA_TYPE_INDEX);
    assert_eq!(entry["digest"], built.index.digest);
    let index: ImageIndex =
        serde_json::from_slice(&read_blob(dir.path(), &built.index.digest)).unwrap();
    let platforms: Vec<String> = index
        .manifests()
        .iter()
        .map(|m| {
            let p = m.platform().as_ref().unwrap();
            format!("{}/{}", p.os(), p.architecture())
        })
        .collect();
    assert_eq!(platforms, vec!["linux/amd64", "linux/arm64"]);
    assert_ne!(built.images[0].manifest, built.images[1].manifest);
    // A second tag in the same layout keeps the first.
    sample_image()
        .write_oci_layout(dir.path(), "single")
        .unwrap();
    layout_entry(dir.path(), "multi");
}

/// Pushes the sample image to `registry` with skopeo and reads it back.
fn round_trip(registry: &Registry) -> BuiltImage {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("src");
    let image = sample_image().write_oci_layout(&layout, "v1").unwrap();
    push_oci_layout_with_skopeo(&layout, "v1", registry, "testkit/sample:v1").unwrap();

    let raw = skopeo_inspect_raw(registry, "testkit/sample:v1").unwrap();
    assert_eq!(
        raw, image.manifest_bytes,
        "registry serves our exact manifest"
    );
    let config = skopeo_inspect_config(registry, "testkit/sample:v1").unwrap();
    assert_eq!(config, image.config_bytes);
    let inspect = skopeo_inspect(registry, "testkit/sample:v1").unwrap();
    assert_eq!(inspect["Digest"], image.manifest.digest);
    let layers: Vec<String> = image.layers.iter().map(|l| l.blob.digest.clone()).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    let by_digest = format!("testkit/sample@{}", image.manifest.digest);
    assert_eq!(skopeo_inspect_raw(registry, &by_digest).unwrap(), raw);

    let back = dir.path().join("back");
    skopeo_copy_to_oci(registry, "testkit/sample:v1", &back, "copy").unwrap();
    assert_eq!(layout_entry(&back, "copy")["digest"], image.manifest.digest);
    for layer in &image.layers {
        let blob = read_blob(&back, &layer.blob.digest);
        assert_eq!(sha256_digest(&blob), layer.blob.digest);
    }
    image
}

#[test]
fn skopeo_round_trip_no_auth() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    round_trip(&registry);
}

#[test]
fn skopeo_round_trip_htpasswd() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::htpasswd()).unwrap();
    round_trip(&registry);
    assert!(registry.log().contains("testuser"));
}

#[test]
fn skopeo_round_trip_token() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::token()).unwrap();
    round_trip(&registry);
    let server = registry.token_server().unwrap();
    assert!(
        server.issued_count() >= 2,
        "push and pull each need a token"
    );
    let scopes: BTreeSet<String> = server
        .issued_tokens()
        .into_iter()
        .flat_map(|t| t.requested_scopes)
        .collect();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("testkit/sample") && s.contains("push")),
        "{scopes:?}"
    );
}

#[test]
fn skopeo_round_trip_tls_with_token() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::token().with_tls()).unwrap();
    round_trip(&registry);
}

#[test]
fn skopeo_round_trip_tls_no_auth() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::no_auth().with_tls()).unwrap();
    round_trip(&registry);
}

#[test]
fn skopeo_push_with_wrong_password_fails() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let config = RegistryConfig::htpasswd();
    let registry = Registry::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sample_image().write_oci_layout(dir.path(), "v1").unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["copy".into(), "--dest-tls-verify=false".into()];
    args.push("--dest-creds".into());
    args.push("testuser:wrong".into());
    let mut src = std::ffi::OsString::from("oci:");
    src.push(dir.path());
    src.push(":v1");
    args.push(src);
    args.push(format!("docker://{}", registry.reference("x:v1")).into());
    let err = haul_testkit::skopeo::run_skopeo(args).unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
}

#[test]
fn multi_platform_index_keeps_digest_and_platforms() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    let registry = Registry::start(RegistryConfig::htpasswd()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("src");
    let built = write_oci_index_layout(&layout, "multi", &sample_platform_images()).unwrap();
    push_oci_layout_with_skopeo(&layout, "multi", &registry, "testkit/multi:latest").unwrap();

    let raw = skopeo_inspect_raw(&registry, "testkit/multi:latest").unwrap();
    assert_eq!(raw, built.index_bytes);
    let index: ImageIndex = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index.manifests().len(), 2);
    for (descriptor, image) in index.manifests().iter().zip(&built.images) {
        assert_eq!(descriptor.digest().as_ref(), image.manifest.digest);
        let platform = descriptor.platform().as_ref().unwrap();
        assert_eq!(
            platform.architecture().to_string(),
            image.platform.architecture
        );
        let per_platform = format!("testkit/multi@{}", image.manifest.digest);
        assert_eq!(
            skopeo_inspect_raw(&registry, &per_platform).unwrap(),
            image.manifest_bytes
        );
    }

    let back = dir.path().join("back");
    skopeo_copy_to_oci(&registry, "testkit/multi:latest", &back, "multi").unwrap();
    assert_eq!(layout_entry(&back, "multi")["digest"], built.index.digest);
    for image in &built.images {
        assert!(blob_path(&back, &image.manifest.digest).is_file());
    }
}

#[test]
fn umoci_unpacks_the_sample_with_whiteouts_applied() {
    require_peer!("umoci");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let builder = sample_image();
    builder.write_oci_layout(&layout, "v1").unwrap();
    let rootfs = umoci_unpack(&layout, "v1", &dir.path().join("bundle"), true).unwrap();

    assert!(!rootfs.join("data/to-delete").exists());
    assert!(!rootfs.join("gone").exists());
    assert!(!rootfs.join("opq/old1").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("opq/new")).unwrap(),
        "fresh\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "haul-upper\n"
    );
    let actual = Rootfs::read_dir(&rootfs).unwrap();
    let diff = builder.expected_rootfs().diff(&actual, false);
    assert!(diff.is_empty(), "rootfs differs:\n{}", diff.join("\n"));
}

#[test]
fn umoci_unpacks_what_skopeo_pulled_back() {
    require_peer!("docker-registry");
    require_peer!("skopeo");
    require_peer!("umoci");
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    let image = round_trip(&registry);
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back");
    skopeo_copy_to_oci(&registry, "testkit/sample:v1", &back, "v1").unwrap();
    assert_eq!(layout_entry(&back, "v1")["digest"], image.manifest.digest);
    let rootfs = umoci_unpack(&back, "v1", &dir.path().join("bundle"), true).unwrap();
    let diff = sample_image()
        .expected_rootfs()
        .diff(&Rootfs::read_dir(&rootfs).unwrap(), false);
    assert!(diff.is_empty(), "rootfs differs:\n{}", diff.join("\n"));
}

#[test]
fn umoci_unpack_as_root_keeps_owners() {
    require_peer!("umoci");
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&probe).unwrap()) != 0 {
        eprintln!("not root: a non-rootless umoci unpack is not possible here; nothing to check");
        return;
    }
    let layout = dir.path().join("layout");
    let builder = sample_image();
    builder.write_oci_layout(&layout, "v1").unwrap();
    let rootfs = umoci_unpack(&layout, "v1", &dir.path().join("bundle"), false).unwrap();
    let diff = builder
        .expected_rootfs()
        .diff(&Rootfs::read_dir(&rootfs).unwrap(), true);
    assert!(diff.is_empty(), "rootfs differs:\n{}", diff.join("\n"));
}
