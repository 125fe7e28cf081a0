//! A reference keeps the exact manifest it was pulled with: three manifests
//! of one config (OCI gzip, Docker schema 2, OCI zstd) pulled into one root
//! stay three images, and every command that reads a reference (inspect,
//! push, save, the store's own OCI layout) gives that reference's source
//! digest, never another manifest of the same image ID.

use std::ffi::OsString;

use crate::common::*;
use haul_testkit::image::Compression;
use haul_testkit::skopeo::{registry_flags, run_skopeo, skopeo_inspect_raw};
use haul_testkit::{sample_image, Registry, RegistryConfig};

/// skopeo copies `from` to `to` within `registry`, with `extra` flags (a
/// format conversion or a recompression).
fn convert(registry: &Registry, from: &str, to: &str, extra: &[&str]) {
    let mut args: Vec<OsString> = vec!["copy".into()];
    args.extend(extra.iter().map(OsString::from));
    args.extend(registry_flags(registry, "src-"));
    args.extend(registry_flags(registry, "dest-"));
    args.push(format!("docker://{}", registry.reference(from)).into());
    args.push(format!("docker://{}", registry.reference(to)).into());
    run_skopeo(args).unwrap();
}

/// A registry holding `small:latest` (the sample image, OCI) and
/// `docker2:latest` (the same image as Docker schema 2, by skopeo).
fn small_and_docker2() -> Option<Env> {
    let env = Env::start(RegistryConfig::no_auth())?;
    env.put_image(&sample_image(), "small:latest");
    convert(
        &env.registry,
        "small:latest",
        "docker2:latest",
        &["--format", "v2s2"],
    );
    Some(env)
}

fn sha256(bytes: &[u8]) -> String {
    haul_dist::oci::Digest::sha256_of(bytes).to_string()
}

#[test]
fn three_manifests_of_one_config_stay_three_images_for_every_command() {
    let Some(env) = small_and_docker2() else {
        return;
    };
    // The same layers zstd-compressed: the same diffIDs, so the same
    // config, under other layer blobs (skopeo 1.9 does not recompress).
    let mut zstd = sample_image();
    for layer in &mut zstd.layers {
        *layer = layer.clone().compressed(Compression::Zstd);
    }
    env.put_image(&zstd, "zstd:latest");
    let names = ["small", "docker2", "zstd"];
    let sources: Vec<String> = names
        .iter()
        .map(|n| sha256(&skopeo_inspect_raw(&env.registry, &format!("{n}:latest")).unwrap()))
        .collect();
    let mut distinct = sources.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three different manifests: {sources:?}");

    let references: Vec<String> = names
        .iter()
        .map(|n| env.reference(&format!("{n}:latest")))
        .collect();
    let mut ids = Vec::new();
    for reference in &references {
        assert_ok(&env.haul(&["pull", reference]));
    }
    let zstd_manifest: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&env.registry, "zstd:latest").unwrap()).unwrap();
    for layer in zstd_manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        assert!(
            env.root
                .path()
                .join("content/blobs/sha256")
                .join(&digest["sha256:".len()..])
                .is_file(),
            "the zstd pull found its layers present but must keep its own blob {digest}"
        );
    }

    let target = Registry::start(RegistryConfig::no_auth()).expect("second registry");
    for ((name, reference), source) in names.iter().zip(&references).zip(&sources) {
        // inspect: the reference's own manifest.
        let out = env.haul(&["inspect", reference]);
        assert_ok(&out);
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            inspected["manifestDigest"],
            source.as_str(),
            "inspect {name}"
        );
        ids.push(inspected["id"].as_str().unwrap().to_string());

        // The store's layout names the same manifest under the reference,
        // and skopeo reads those bytes from it (skopeo 1.9 skips entries of
        // Docker media types; newer skopeo reads them).
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.root.path().join("content/index.json")).unwrap(),
        )
        .unwrap();
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference.as_str())
            .unwrap_or_else(|| panic!("content/index.json names {reference}"));
        assert_eq!(
            entry["digest"],
            source.as_str(),
            "content/index.json for {name}"
        );
        if entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json" {
            let raw = run_skopeo([
                "inspect".to_string(),
                "--raw".to_string(),
                format!("oci:{}/content:{reference}", env.root.path().display()),
            ])
            .unwrap();
            assert_eq!(
                &sha256(&raw),
                source,
                "skopeo inspect oci:ROOT/content:{name}"
            );
        }

        // push to a fresh registry: the same digest there.
        let pushed = target.reference(&format!("{name}:latest"));
        assert_ok(&env.haul(&["tag", reference, &pushed]));
        assert_ok(&env.haul(&["push", &pushed]));
        let raw = skopeo_inspect_raw(&target, &format!("{name}:latest")).unwrap();
        assert_eq!(&sha256(&raw), source, "push of {name}");

        // save --format oci: the layout names the same manifest.
        let dir = env.dir(&format!("saved-{name}"));
        assert_ok(&env.haul(&[
            "save",
            "--format",
            "oci",
            "-o",
            dir.to_str().unwrap(),
            reference,
        ]));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"],
            source.as_str(),
            "save --format oci of {name}"
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one image ID (one config) for the three");

    // rmi of one leaves the others whole, also after gc.
    assert_ok(&env.haul(&["rmi", &references[1]]));
    assert_ok(&env.haul(&["gc"]));
    for (reference, source) in [(&references[0], &sources[0]), (&references[2], &sources[2])] {
        let out = env.haul(&["inspect", reference]);
        assert_ok(&out);
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["manifestDigest"], source.as_str());
    }
    assert!(!env.haul(&["inspect", &references[1]]).status.success());
    env.assert_store_invariants();
}

#[test]
fn a_docker_manifest_copied_to_an_oci_layout_is_readable_by_skopeo_as_skopeo_writes_it() {
    let Some(env) = small_and_docker2() else {
        return;
    };
    let layout = env.dir("copied");
    assert_ok(&env.haul(&[
        "copy",
        &env.reference("docker2:latest"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let raw = run_skopeo([
        "inspect".to_string(),
        "--raw".to_string(),
        format!("oci:{}:x", layout.display()),
    ])
    .expect("skopeo reads the layout");
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
}

#[test]
fn a_platform_of_an_index_a_tag_keeps_is_not_deleted_by_its_id() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let reference = env.reference("library/multi:1");
    assert_ok(&env.haul(&["pull", "--all-platforms", &reference]));
    let arm = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap();
    let out = env.haul(&["rmi", &arm.config.digest]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is a platform of an index a reference keeps"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("Deleted"), "{}", stdout(&out));
    // The DIGEST column shows what the tag's source served: the index.
    let listed = stdout(&env.haul(&["images", "--digests"]));
    assert!(listed.contains(&built.index.digest), "{listed}");
    env.assert_store_invariants();
}

#[test]
fn deleted_is_said_only_when_no_manifest_of_that_image_id_is_left() {
    let Some(env) = small_and_docker2() else {
        return;
    };
    let small = env.reference("small:latest");
    let docker2 = env.reference("docker2:latest");
    assert_ok(&env.haul(&["pull", &small]));
    assert_ok(&env.haul(&["pull", &docker2]));
    let out = env.haul(&["rmi", &small]);
    assert_ok(&out);
    assert!(
        !stdout(&out).contains("Deleted"),
        "docker2 still has that ID: {}",
        stdout(&out)
    );
    let out = env.haul(&["rmi", &docker2]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Deleted: sha256:"),
        "{}",
        stdout(&out)
    );
    env.assert_store_invariants();
}
