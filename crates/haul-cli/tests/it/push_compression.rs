//! A push compresses plain tar layers of an image whose manifest haul wrote
//! (loaded from a docker-archive), as Docker and skopeo do, reuses that
//! compressed blob on the next push, and keeps a pulled manifest's exact
//! digest unless `--compression` is asked for.

use crate::common::*;
use haul_testkit::skopeo::{run_skopeo, skopeo_inspect_raw};
use haul_testkit::{
    sample_image, Entry, ImageBuilder, LayerSpec, Registry, RegistryConfig, Rootfs,
};

/// An image of text, as most layers are: it compresses well.
fn text_image() -> ImageBuilder {
    let text = |seed: usize| -> String {
        (0..20_000)
            .map(|i| format!("line {i} of file {seed}\n"))
            .collect()
    };
    ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![
            Entry::dir("etc", 0o755),
            Entry::file("etc/a.txt", 0o644, text(1)),
        ]))
        .layer(LayerSpec::uncompressed(vec![Entry::file(
            "etc/b.txt",
            0o644,
            text(2),
        )]))
        .layer(LayerSpec::gzip(vec![Entry::file("c.txt", 0o600, text(3))]))
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// A fresh root holding [`text_image`] loaded from a docker-archive that skopeo
/// wrote (plain tar layers), tagged `reference`.
fn loaded_from_docker_archive(env: &Env, reference: &str) -> tempfile::TempDir {
    let built = env.scratch.path().join("sample-layout");
    text_image().write_oci_layout(&built, "t").unwrap();
    let archive = env.dir("sample.tar");
    run_skopeo([
        "copy".to_string(),
        format!("oci:{}:t", built.display()),
        format!("docker-archive:{}:{reference}", archive.display()),
    ])
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(
        root.path(),
        &["load", "-i", archive.to_str().unwrap()],
    ));
    root
}

fn layer_media_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

fn layers_size(manifest: &serde_json::Value) -> u64 {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_loaded_docker_archive_is_pushed_gzip_compressed_and_the_next_push_sends_nothing() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let reference = env.reference("loaded/sample:1");
    let root = loaded_from_docker_archive(&env, &reference);
    let local = json(&haul_in(root.path(), &["inspect", &reference]).stdout);
    let plain_size: u64 = local["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();

    let out = haul_in(root.path(), &["push", &reference]);
    assert_ok(&out);
    let pushed = json(&skopeo_inspect_raw(&env.registry, "loaded/sample:1").unwrap());
    assert_eq!(
        layer_media_types(&pushed),
        vec!["application/vnd.docker.image.rootfs.diff.tar.gzip"; 3],
        "{pushed}"
    );
    assert!(
        layers_size(&pushed) * 4 < plain_size,
        "compressed {} of {plain_size} plain bytes",
        layers_size(&pushed)
    );
    let text = stdout(&out);
    let digest = text
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("push names its digest: {text}"))
        .to_string();

    // The same image ID and content, pulled back by another root.
    let fresh = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(fresh.path(), &["pull", &reference]));
    let pulled = json(&haul_in(fresh.path(), &["inspect", &reference]).stdout);
    assert_eq!(pulled["id"], local["id"]);
    assert_eq!(pulled["manifestDigest"], digest.as_str());
    let exported = env.dir("export");
    assert_ok(&haul_in(
        fresh.path(),
        &["export", &reference, exported.to_str().unwrap()],
    ));
    let differences = text_image().expected_rootfs().diff(
        &Rootfs::read_dir(&exported).unwrap(),
        haul_dist::store::running_as_root(),
    );
    assert!(differences.is_empty(), "{differences:#?}");

    // A second push, also to another registry, makes the same manifest from
    // the blobs the first one recorded, and sends no layer again.
    let out = haul_in(root.path(), &["push", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(text.matches("Layer already exists").count(), 3, "{text}");
    assert!(text.contains(&digest), "{text}");
    let other = Registry::start(RegistryConfig::no_auth()).expect("second registry");
    let elsewhere = other.reference("loaded/sample:1");
    assert_ok(&haul_in(root.path(), &["tag", &reference, &elsewhere]));
    let out = haul_in(root.path(), &["push", &elsewhere]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&digest), "{}", stdout(&out));
    assert_store_invariants(root.path());
    assert_store_invariants(fresh.path());
}

#[test]
fn a_pulled_manifest_keeps_its_digest_unless_compression_is_asked_for() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    // The sample's top layer is a plain tar in the registry already.
    env.put_image(&sample_image(), "src/sample:1");
    let source = env.reference("src/sample:1");
    let source_digest = haul_dist::oci::Digest::sha256_of(
        &skopeo_inspect_raw(&env.registry, "src/sample:1").unwrap(),
    )
    .to_string();
    assert_ok(&env.haul(&["pull", &source]));

    let kept = env.reference("kept/sample:1");
    assert_ok(&env.haul(&["tag", &source, &kept]));
    assert_ok(&env.haul(&["push", &kept]));
    let raw = skopeo_inspect_raw(&env.registry, "kept/sample:1").unwrap();
    assert_eq!(
        haul_dist::oci::Digest::sha256_of(&raw).to_string(),
        source_digest
    );

    let zstd = env.reference("zstd/sample:1");
    assert_ok(&env.haul(&["tag", &source, &zstd]));
    assert_ok(&env.haul(&["push", "--compression", "zstd", &zstd]));
    let pushed = json(&skopeo_inspect_raw(&env.registry, "zstd/sample:1").unwrap());
    let types = layer_media_types(&pushed);
    assert_eq!(
        types.last().map(String::as_str),
        Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{pushed}"
    );
    assert_eq!(
        types[..2],
        ["application/vnd.oci.image.layer.v1.tar+gzip"; 2],
        "compressed layers stay as they are"
    );
    let fresh = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(fresh.path(), &["pull", &zstd]));
    env.assert_store_invariants();
    assert_store_invariants(fresh.path());
}

#[test]
fn a_pushed_tag_names_what_the_registry_serves_and_rmi_of_it_frees_everything() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let reference = env.reference("loaded/sample:1");
    let root = loaded_from_docker_archive(&env, &reference);
    let out = haul_in(root.path(), &["push", &reference]);
    assert_ok(&out);
    let served = haul_dist::oci::Digest::sha256_of(
        &skopeo_inspect_raw(&env.registry, "loaded/sample:1").unwrap(),
    )
    .to_string();
    let inspected = json(&haul_in(root.path(), &["inspect", &reference]).stdout);
    assert_eq!(inspected["manifestDigest"], served.as_str());
    // Loading the same archive again leaves the tag on what it names.
    let archive = env.dir("sample.tar");
    assert_ok(&haul_in(
        root.path(),
        &["load", "-i", archive.to_str().unwrap()],
    ));
    let inspected = json(&haul_in(root.path(), &["inspect", &reference]).stdout);
    assert_eq!(
        inspected["manifestDigest"],
        served.as_str(),
        "load re-pointed the tag"
    );

    let out = haul_in(root.path(), &["rmi", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("@{served}")),
        "the digest reference goes too: {text}"
    );
    assert_ok(&haul_in(root.path(), &["gc"]));
    let left = std::fs::read_dir(root.path().join("content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "rmi of the only tag, then gc, leaves no blob");
    assert_store_invariants(root.path());
}

#[test]
fn zstd_for_a_docker_manifest_makes_an_oci_manifest_skopeo_reads() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let reference = env.reference("loaded/zstd:1");
    let root = loaded_from_docker_archive(&env, &reference);
    assert_ok(&haul_in(
        root.path(),
        &["push", "--compression", "zstd", &reference],
    ));
    let pushed = json(&skopeo_inspect_raw(&env.registry, "loaded/zstd:1").unwrap());
    assert_eq!(
        pushed["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        pushed["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert!(layer_media_types(&pushed)
        .iter()
        .all(|t| t.starts_with("application/vnd.oci.image.layer.v1.tar+")));
    let layout = env.dir("from-zstd");
    haul_testkit::skopeo::skopeo_copy_to_oci(&env.registry, "loaded/zstd:1", &layout, "t")
        .expect("skopeo pulls the zstd image");
    assert_store_invariants(root.path());
}
