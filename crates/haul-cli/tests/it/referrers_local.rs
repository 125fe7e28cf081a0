//! Referrers through the local store: `pull --referrers` keeps them beside
//! their image (never as images), gc follows their subject, `push
//! --referrers` sends them back out, `save --format oci --referrers` and
//! `load` carry them through an OCI layout; and the quota floor of `copy`
//! and `pull`. The real registry (distribution 2.8) exercises the tag
//! schema fallback, the testkit's MemoryRegistry the referrers API.

use std::collections::BTreeSet;
use std::path::Path;

use haul_dist::oci::Digest;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{sample_image, MemoryRegistry, MemoryRegistryConfig, Registry, RegistryConfig};

use crate::common::*;
use crate::referrers::{attach_all, fallback_index, manifest_bytes, referrers_of, Attached};

/// The digests the store records as referrers of `subject` (digest tags
/// included).
fn stored_referrers(root: &Path, subject: &Digest) -> BTreeSet<Digest> {
    let path = root.join(format!("referrers/sha256/{}.json", subject.hex()));
    let Ok(bytes) = std::fs::read(&path) else {
        return BTreeSet::new();
    };
    let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    record["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Digest::parse(r["digest"].as_str().unwrap()).unwrap())
        .collect()
}

fn set(digests: &[&Digest]) -> BTreeSet<Digest> {
    digests.iter().map(|d| (*d).clone()).collect()
}

fn strings(digests: &BTreeSet<Digest>) -> BTreeSet<String> {
    digests.iter().map(|d| d.to_string()).collect()
}

/// The referrers of the image proper (the API or fallback lists them).
fn image_referrers(attached: &Attached) -> BTreeSet<Digest> {
    set(&[&attached.signature, &attached.sbom, &attached.attestation])
}

/// Panics unless the store holds every referrer manifest (and the cosign
/// tag's) byte for byte, recorded under its subject.
#[track_caller]
fn assert_stored(root: &Path, attached: &Attached) {
    for (digest, bytes) in &attached.bytes {
        let stored = std::fs::read(root.join(format!("content/blobs/sha256/{}", digest.hex())))
            .unwrap_or_else(|e| panic!("{digest} is not in the store: {e}"));
        assert_eq!(&stored, bytes, "{digest} is stored byte for byte");
    }
    let mut expected = image_referrers(attached);
    expected.insert(attached.digest_tag.1.clone());
    assert_eq!(stored_referrers(root, &attached.image), expected);
    assert_eq!(
        stored_referrers(root, &attached.sbom),
        set(&[&attached.sbom_signature]),
        "the referrer of the referrer"
    );
}

/// The images `haul images` lists (their manifest digests).
fn listed_images(env: &Env) -> Vec<String> {
    let out = env.haul(&["images", "--format", "json-array"]);
    assert_ok(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn pull_with_referrers_keeps_them_beside_the_image_and_gc_follows_the_subject() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let reference = env.reference("app:1.0");
    let root = env.root.path();

    let out = env.haul(&[
        "--progress",
        "plain",
        "pull",
        "--referrers",
        "--digest-tags",
        &reference,
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("Pulled referrer {}", attached.sbom_signature)),
        "{text}"
    );
    assert_stored(root, &attached);
    // No referrer is an image, nor a reference in the layout.
    assert_eq!(listed_images(&env).len(), 1, "referrers listed as images");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("content/index.json")).unwrap()).unwrap();
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(
            entry["digest"],
            attached.image.to_string(),
            "index.json names only the image"
        );
    }
    env.assert_store_invariants();

    // Again: nothing moves, the image is up to date.
    let again = env.haul(&[
        "--progress",
        "plain",
        "pull",
        "--referrers",
        "--digest-tags",
        &reference,
    ]);
    assert_ok(&again);
    assert!(
        stdout(&again).contains("Status: Image is up to date"),
        "{}",
        stdout(&again)
    );
    assert!(
        !stdout(&again).contains("Downloading"),
        "{}",
        stdout(&again)
    );
    // Without --referrers after with: the image alone, the referrers kept.
    assert_ok(&env.haul(&["pull", &reference]));
    assert_stored(root, &attached);
    assert_ok(&env.haul(&["gc"]));
    assert_stored(root, &attached);

    // The subject goes: its referrers (every level) go with it.
    assert_ok(&env.haul(&["rmi", &reference]));
    assert_ok(&env.haul(&["gc"]));
    assert_eq!(count_entries(&root.join("referrers/sha256")), 0);
    assert_eq!(count_entries(&root.join("content/blobs/sha256")), 0);
    env.assert_store_invariants();
}

#[test]
fn pull_reads_the_referrers_api_and_push_lists_them_by_oci_subject_or_the_fallback_index() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let api = MemoryRegistry::start(MemoryRegistryConfig::default()).unwrap();
    assert_ok(&env.haul(&[
        "copy",
        "--referrers",
        "--digest-tags",
        &env.reference("app:1.0"),
        &api.reference("app:1.0"),
    ]));

    let fallback_reads = api.count(
        "GET",
        &format!("/manifests/sha256-{}", attached.image.hex()),
    );
    let out = env.haul(&[
        "pull",
        "--referrers",
        "--digest-tags",
        &api.reference("app:1.0"),
    ]);
    assert_ok(&out);
    assert!(api.count("GET", "/referrers/") >= 2, "the API was asked");
    assert_eq!(
        api.count(
            "GET",
            &format!("/manifests/sha256-{}", attached.image.hex())
        ),
        fallback_reads,
        "the fallback tag was read although the API answers"
    );
    assert_stored(env.root.path(), &attached);
    // Again: no blob and no referrer manifest is read a second time.
    let blob_gets = api.count("GET", "/blobs/");
    let referrer_gets = api.count("GET", "/manifests/sha256:");
    assert_ok(&env.haul(&[
        "pull",
        "--referrers",
        "--digest-tags",
        &api.reference("app:1.0"),
    ]));
    assert_eq!(api.count("GET", "/blobs/"), blob_gets, "blob GETs");
    assert_eq!(
        api.count("GET", "/manifests/sha256:"),
        referrer_gets,
        "manifest GETs by digest"
    );

    // To the real registry: the fallback index lists exactly them.
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let pushed = target.reference("mirror/app:1.0");
    assert_ok(&env.haul(&["tag", &api.reference("app:1.0"), &pushed]));
    let out = env.haul(&[
        "--progress",
        "plain",
        "push",
        "--referrers",
        "--digest-tags",
        &pushed,
    ]);
    assert_ok(&out);
    let host = target.host();
    assert_eq!(
        fallback_index(&host, "mirror/app", &attached.image),
        strings(&image_referrers(&attached))
    );
    assert_eq!(
        fallback_index(&host, "mirror/app", &attached.sbom),
        strings(&set(&[&attached.sbom_signature]))
    );
    for (digest, bytes) in &attached.bytes {
        assert_eq!(
            &manifest_bytes(&host, "mirror/app", digest.as_str()),
            bytes,
            "{digest} arrives byte for byte"
        );
    }
    let (tag, digest) = &attached.digest_tag;
    assert_eq!(
        &Digest::sha256_of(&manifest_bytes(&host, "mirror/app", tag)),
        digest,
        "{tag} comes along"
    );

    // To a registry with the API: OCI-Subject, no fallback index, and
    // only what was asked for (no digest tags).
    let api_target = MemoryRegistry::start(MemoryRegistryConfig::default()).unwrap();
    let pushed = api_target.reference("app:1.0");
    assert_ok(&env.haul(&["tag", &api.reference("app:1.0"), &pushed]));
    assert_ok(&env.haul(&["push", "--referrers", &pushed]));
    assert_eq!(
        referrers_of(&api_target.host(), "app", &attached.image),
        image_referrers(&attached)
    );
    assert_eq!(
        referrers_of(&api_target.host(), "app", &attached.sbom),
        set(&[&attached.sbom_signature])
    );
    assert_eq!(api_target.count("PUT", "/manifests/sha256-"), 0);
    env.assert_store_invariants();
}

#[test]
fn save_and_load_carry_referrers_through_an_oci_layout_to_a_fresh_registry() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let reference = env.reference("app:1.0");
    let root = env.root.path();
    assert_ok(&env.haul(&["pull", "--referrers", "--digest-tags", &reference]));

    let layout = env.dir("layout");
    std::fs::remove_dir(&layout).ok();
    assert_ok(&env.haul(&[
        "save",
        "--format",
        "oci",
        "--referrers",
        "-o",
        layout.to_str().unwrap(),
        &reference,
    ]));
    // As oras writes them: referrers in index.json without ref.name.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let unnamed: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["annotations"]["org.opencontainers.image.ref.name"].is_null())
        .map(|e| e["digest"].as_str().unwrap().to_string())
        .collect();
    let mut every_level = image_referrers(&attached);
    every_level.insert(attached.sbom_signature.clone());
    assert_eq!(unnamed, strings(&every_level));
    // skopeo still reads the image out of it.
    let scratch = env.dir("skopeo-out");
    std::fs::remove_dir(&scratch).ok();
    haul_testkit::skopeo::run_skopeo([
        "copy".to_string(),
        "--quiet".to_string(),
        format!("oci:{}:1.0", layout.display()),
        format!("dir:{}", scratch.display()),
    ])
    .expect("skopeo reads the saved layout");
    // And umoci unpacks the image from it, and from the store's own layout.
    if haul_testkit::peers::require_umoci().is_some() {
        let rootless = !haul_dist::store::running_as_root();
        for (dir, name, bundle) in [
            (layout.clone(), "1.0".to_string(), "bundle-layout"),
            (root.join("content"), reference.clone(), "bundle-store"),
        ] {
            let rootfs = haul_testkit::umoci::umoci_unpack(&dir, &name, &env.dir(bundle), rootless)
                .unwrap_or_else(|e| panic!("umoci unpacks {}: {e}", dir.display()));
            let unpacked = haul_testkit::Rootfs::read_dir(&rootfs).unwrap();
            let differences = sample_image().expected_rootfs().diff(&unpacked, !rootless);
            assert!(differences.is_empty(), "{differences:#?}");
        }
    }

    assert_ok(&env.haul(&["rmi", &reference]));
    assert_ok(&env.haul(&["gc"]));
    assert_eq!(count_entries(&root.join("content/blobs/sha256")), 0);

    assert_ok(&env.haul(&["load", "-i", layout.to_str().unwrap()]));
    assert_stored(root, &attached);
    assert_eq!(listed_images(&env).len(), 1, "referrers loaded as images");
    env.assert_store_invariants();

    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let pushed = target.reference("again/app:1.0");
    assert_ok(&env.haul(&["tag", &reference, &pushed]));
    assert_ok(&env.haul(&["push", "--referrers", "--digest-tags", &pushed]));
    let host = target.host();
    for subject in [&attached.image, &attached.sbom] {
        assert_eq!(
            fallback_index(&host, "again/app", subject),
            fallback_index(&env.registry.host(), "app", subject),
            "the target lists what the source lists for {subject}"
        );
    }
    let (tag, digest) = &attached.digest_tag;
    assert_eq!(
        &Digest::sha256_of(&manifest_bytes(&host, "again/app", tag)),
        digest
    );
}

#[test]
fn a_referrer_whose_blob_is_missing_fails_naming_it_and_records_nothing_of_it() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let sbom_layer = Digest::sha256_of(b"sbom");
    proxy.add_rule(Rule::new(
        Match::path_ends_with(sbom_layer.as_str()).method("GET"),
        Fault::status(404),
    ));
    let reference = format!("{}/app:1.0", proxy.authority());

    let out = env.haul(&["pull", "--referrers", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("referrer {}", attached.sbom)) && err.contains(sbom_layer.as_str()),
        "names the referrer and its blob: {err}"
    );
    let root = env.root.path();
    let recorded = stored_referrers(root, &attached.image);
    assert!(!recorded.contains(&attached.sbom), "{recorded:?}");
    assert!(stored_referrers(root, &attached.sbom).is_empty());
    env.assert_store_invariants();

    // Once the blob is served, the same pull completes.
    proxy.clear_rules();
    assert_ok(&env.haul(&["pull", "--referrers", "--digest-tags", &reference]));
    assert_stored(root, &attached);
}

#[test]
fn push_with_referrers_of_an_image_that_has_none_pushes_the_image() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "plain:1");
    let digest = Digest::parse(&built.manifest.digest).unwrap();
    assert_ok(&env.haul(&["pull", "--referrers", &env.reference("plain:1")]));
    assert!(!env.root.path().join("referrers/sha256").exists());
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let pushed = target.reference("plain:1");
    assert_ok(&env.haul(&["tag", &env.reference("plain:1"), &pushed]));
    assert_ok(&env.haul(&["push", "--referrers", "--digest-tags", &pushed]));
    assert_eq!(
        Digest::sha256_of(&manifest_bytes(&target.host(), "plain", "1")),
        digest
    );
    assert!(referrers_of(&target.host(), "plain", &digest).is_empty());
}

#[test]
fn copy_and_pull_pause_for_quota_under_the_floor() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let quota = MemoryRegistry::start(MemoryRegistryConfig {
        rate_limit: Some(10),
        rate_limit_reset: Some(2),
        ..MemoryRegistryConfig::default()
    })
    .unwrap();
    env.put_index("multi:1");
    assert_ok(&env.haul(&[
        "copy",
        "--all-platforms",
        &env.reference("multi:1"),
        &quota.reference("multi:1"),
    ]));
    let countdown = |text: &str| {
        for wanted in ["pulls left, waiting 2 s", "Rate limit: going on"] {
            assert!(text.contains(wanted), "no {wanted:?} in:\n{text}");
        }
    };

    // Reading the index, then a platform's manifest: a pause between.
    let out = env.haul(&[
        "--progress",
        "plain",
        "pull",
        "--rate-limit-floor",
        "11",
        &quota.reference("multi:1"),
    ]);
    assert_ok(&out);
    countdown(&stdout(&out));

    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "--progress",
        "plain",
        "copy",
        "--all-platforms",
        "--rate-limit-floor",
        "11",
        &quota.reference("multi:1"),
        &target.reference("multi:1"),
    ]);
    assert_ok(&out);
    countdown(&stdout(&out));
    assert_eq!(
        manifest_bytes(&target.host(), "multi", "1"),
        quota.manifest("multi", "1").unwrap()
    );

    // Without a floor nothing waits.
    let out = env.haul(&["--progress", "plain", "pull", &quota.reference("multi:1")]);
    assert_ok(&out);
    assert!(!stdout(&out).contains("Rate limit"), "{}", stdout(&out));
}

#[test]
fn load_reads_a_layout_whose_referrers_are_listed_by_fallback_indexes() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let reference = env.reference("app:1.0");
    let root = env.root.path();
    assert_ok(&env.haul(&["pull", "--referrers", &reference]));
    let layout = env.dir("fallback-layout");
    assert_ok(&env.haul(&[
        "save",
        "--format",
        "oci",
        "--referrers",
        "-o",
        layout.to_str().unwrap(),
        &reference,
    ]));
    // The same layout as a tool that keeps the tag schema writes it: the
    // referrers named by `sha256-HEX` indexes instead of by `subject`.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut entries: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["annotations"]["org.opencontainers.image.ref.name"].is_null())
        .cloned()
        .collect();
    for subject in [&attached.image, &attached.sbom] {
        let tag = format!("sha256-{}", subject.hex());
        let bytes = manifest_bytes(&env.registry.host(), "app", &tag);
        let digest = Digest::sha256_of(&bytes);
        std::fs::write(
            layout.join(format!("blobs/sha256/{}", digest.hex())),
            &bytes,
        )
        .unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    index["manifests"] = serde_json::json!(entries);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    assert_ok(&env.haul(&["rmi", &reference]));
    assert_ok(&env.haul(&["gc"]));
    assert_ok(&env.haul(&["load", "-i", layout.to_str().unwrap()]));
    assert_eq!(
        stored_referrers(root, &attached.image),
        image_referrers(&attached)
    );
    assert_eq!(
        stored_referrers(root, &attached.sbom),
        set(&[&attached.sbom_signature])
    );
    assert_eq!(listed_images(&env).len(), 1);
    env.assert_store_invariants();
}
