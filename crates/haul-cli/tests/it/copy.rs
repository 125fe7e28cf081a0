//! `haul copy` between real registries, checked with skopeo.

use crate::common::*;
use haul_testkit::fault_proxy::FaultProxy;
use haul_testkit::{sample_image, Registry, RegistryConfig};

#[test]
fn copy_of_an_index_keeps_every_platform_and_the_digest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let target = Registry::start(RegistryConfig::token()).unwrap();
    let user = target.credentials().unwrap();
    let login = haul_command(
        env.root.path(),
        &[
            "login",
            &target.host(),
            "-u",
            &user.username,
            "-p",
            &user.password,
        ],
    )
    .output()
    .unwrap();
    assert_ok(&login);

    let out = env.haul(&[
        "--progress",
        "plain",
        "copy",
        "--all-platforms",
        &format!("docker://{}", env.reference("library/multi:1")),
        &target.reference("copies/multi:1"),
    ]);
    assert_ok(&out);
    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&target, "copies/multi:1").unwrap();
    assert_eq!(raw, built.index_bytes, "the index arrives byte for byte");
    for image in &built.images {
        let manifest = haul_testkit::skopeo::skopeo_inspect_raw(
            &target,
            &format!("copies/multi@{}", image.manifest.digest),
        )
        .unwrap();
        assert_eq!(manifest, image.manifest_bytes);
    }
    assert!(
        stdout(&out).contains(&format!("1: digest: {}", built.index.digest)),
        "{}",
        stdout(&out)
    );
    assert!(
        !env.root.path().join("content").exists(),
        "copy wrote to the local store"
    );
    env.assert_store_invariants();
}

#[test]
fn copy_without_all_platforms_takes_the_requested_platform() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let out = env.haul(&[
        "--platform",
        "linux/arm64",
        "copy",
        &env.reference("library/multi:1"),
        &env.reference("library/arm:1"),
    ]);
    assert_ok(&out);
    let arm = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap();
    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&env.registry, "library/arm:1").unwrap();
    assert_eq!(raw, arm.manifest_bytes);
    env.assert_store_invariants();
}

#[test]
fn copy_within_one_registry_moves_no_blob_bytes() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/src:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let host = proxy.authority();
    let out = env.haul(&[
        "--progress",
        "plain",
        "copy",
        &format!("{host}/library/src:1"),
        &format!("{host}/other/dst:1"),
    ]);
    assert_ok(&out);
    for layer in &built.layers {
        assert!(
            stdout(&out).contains(&format!(
                "{}: Mounted from library/src",
                short(&layer.blob.digest)
            )),
            "{}",
            stdout(&out)
        );
    }
    let moved = proxy.request_bytes_matching("PUT", "/blobs/")
        + proxy.request_bytes_matching("PATCH", "/blobs/")
        + proxy.response_bytes_matching("GET", "/blobs/");
    assert_eq!(moved, 0, "a copy within one registry moves no blob bytes");
    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&env.registry, "other/dst:1").unwrap();
    assert_eq!(raw, built.manifest_bytes);
    env.assert_store_invariants();
}

#[test]
fn copy_between_registries_streams_every_blob_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/src:1");
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let out = env.haul(&[
        "copy",
        &format!("{}/library/src:1", proxy.authority()),
        &target.reference("library/dst:1"),
    ]);
    assert_ok(&out);
    let total: u64 = built.layers.iter().map(|l| l.blob.size).sum::<u64>() + built.config.size;
    assert_eq!(
        proxy.response_bytes_matching("GET", "/blobs/"),
        total,
        "each blob read once"
    );
    let inspected = haul_testkit::skopeo::skopeo_inspect(&target, "library/dst:1").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    env.assert_store_invariants();
}

#[test]
fn copy_to_and_from_oci_layouts_and_docker_archives() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/src:1");
    let layout = env.dir("copied-layout");
    let out = env.haul(&[
        "copy",
        &env.reference("library/src:1"),
        &format!("oci:{}:v1", layout.display()),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        !text.contains("Downloaded newer image"),
        "the copy is no pull into the store: {text}"
    );
    assert!(
        text.ends_with(&format!(
            "Wrote {} to oci:{}:v1\n",
            env.reference("library/src:1"),
            layout.display()
        )),
        "{text}"
    );
    let raw = haul_testkit::skopeo::run_skopeo([
        "inspect",
        "--raw",
        &format!("oci:{}:v1", layout.display()),
    ])
    .unwrap();
    assert_eq!(
        raw, built.manifest_bytes,
        "the OCI layout holds the same manifest"
    );

    // From the layout to a registry: the same digest arrives.
    let out = env.haul(&[
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &env.reference("library/from-oci:1"),
    ]);
    assert_ok(&out);
    let inspected =
        haul_testkit::skopeo::skopeo_inspect(&env.registry, "library/from-oci:1").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());

    // A docker-archive written by haul copy is read by skopeo, and copied
    // back to a registry with the same layers.
    let archive = env.dir("copied.tar");
    assert_ok(&env.haul(&[
        "copy",
        &env.reference("library/src:1"),
        &format!("docker-archive:{}", archive.display()),
    ]));
    let from_archive = haul_testkit::skopeo::run_skopeo([
        "inspect",
        &format!("docker-archive:{}", archive.display()),
    ])
    .unwrap();
    let from_archive: serde_json::Value = serde_json::from_slice(&from_archive).unwrap();
    let diff_ids: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let layers: Vec<&str> = from_archive["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        layers, diff_ids,
        "docker-archive layers are the uncompressed diffs"
    );
    assert_ok(&env.haul(&[
        "copy",
        &format!("docker-archive:{}", archive.display()),
        &env.reference("library/from-archive:1"),
    ]));
    let config =
        haul_testkit::skopeo::skopeo_inspect_config(&env.registry, "library/from-archive:1")
            .unwrap();
    assert_eq!(
        config, built.config_bytes,
        "the image config survives the round trip"
    );
    assert!(
        !env.root.path().join("content").exists(),
        "copy wrote to the local store"
    );
    env.assert_store_invariants();
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&haul_testkit::skopeo::run_skopeo(args).unwrap()).unwrap()
}

#[test]
fn copy_takes_skopeo_transports_exactly() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let first = env.put_image(&sample_image(), "library/one:1");
    let second = env.put_image(&sample_image().label("n", "2"), "library/two:2");
    let one = env.reference("library/one:1");
    let two = env.reference("library/two:2");
    assert_ok(&env.haul(&["pull", &one, &two]));

    // The store's own layout, by the full reference its README shows.
    let content = env.root.path().join("content");
    let out = env.haul(&[
        "copy",
        &format!("oci:{}:{one}", content.display()),
        &format!("docker://{}", env.reference("copies/one:from-store")),
    ]);
    assert_ok(&out);
    let inspected = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}", env.reference("copies/one:from-store")),
    ]);
    assert_eq!(inspected["Digest"], first.manifest.digest.as_str());

    // A docker-archive of two images: pick by name and by index.
    let archive = env.dir("two.tar");
    assert_ok(&env.haul(&["save", &one, &two, "-o", archive.to_str().unwrap()]));
    let by_index = env.dir("by-index");
    assert_ok(&env.haul(&[
        "copy",
        &format!("docker-archive:{}:@1", archive.display()),
        &format!("oci:{}:picked", by_index.display()),
    ]));
    let inspected = skopeo_json(&["inspect", &format!("oci:{}:picked", by_index.display())]);
    assert_eq!(
        inspected["Labels"]["n"], "2",
        "@1 is the second image saved"
    );
    let by_name = env.dir("by-name");
    assert_ok(&env.haul(&[
        "copy",
        &format!("docker-archive:{}:{one}", archive.display()),
        &format!("oci:{}:picked", by_name.display()),
    ]));
    // A docker-archive keeps the image (its config), not the manifest.
    let raw = skopeo_json(&[
        "inspect",
        "--raw",
        &format!("oci:{}:picked", by_name.display()),
    ]);
    assert_eq!(raw["config"]["digest"], first.config.digest.as_str());
    let out = env.haul(&[
        "copy",
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:x", env.dir("ambiguous").display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds 2 images: name one with :REF or :@N"),
        "{}",
        stderr(&out)
    );

    // oci-archive: and a named docker-archive: as destinations.
    let oci_tar = env.dir("out.oci");
    assert_ok(&env.haul(&[
        "copy",
        &two,
        &format!("oci-archive:{}:v2", oci_tar.display()),
    ]));
    let inspected = skopeo_json(&["inspect", &format!("oci-archive:{}:v2", oci_tar.display())]);
    assert_eq!(inspected["Digest"], second.manifest.digest.as_str());
    let named = env.dir("named.tar");
    assert_ok(&env.haul(&[
        "copy",
        &two,
        &format!("docker-archive:{}:renamed/app:7", named.display()),
    ]));
    let manifest: serde_json::Value = {
        let mut archive = tar::Archive::new(std::fs::File::open(&named).unwrap());
        let mut entry = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_str() == Some("manifest.json"))
            .expect("manifest.json");
        serde_json::from_reader(&mut entry).unwrap()
    };
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["renamed/app:7"])
    );

    // Transports haul lacks are refused by name, not looked up anywhere.
    for source in ["dir:/tmp/x", "containers-storage:alpine:latest"] {
        let out = env.haul(&["copy", source, &two]);
        assert_eq!(out.status.code(), Some(1), "{source}");
        assert!(
            stderr(&out).contains("haul does not support the"),
            "{}",
            stderr(&out)
        );
    }
    env.assert_store_invariants();
}

#[test]
fn copies_that_cannot_finish_are_refused_before_anything_moves() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_index("library/multi:1");
    let source = format!("docker://{}", env.reference("library/multi:1"));
    let layout = env.dir("layout");
    let out = env.haul(&[
        "copy",
        "--all-platforms",
        &source,
        &format!("oci:{}:x", layout.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--all-platforms copies between registries only"),
        "{}",
        stderr(&out)
    );
    let out = env.haul(&[
        "--progress",
        "plain",
        "copy",
        &source,
        &format!("oci:{}:{}", layout.display(), env.reference("x/y:1")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("named by a tag"), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("Pulling from"),
        "refused only after pulling: {}",
        stdout(&out)
    );
    assert!(!layout.exists(), "nothing written");
}
