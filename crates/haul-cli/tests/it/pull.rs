//! `haul pull` end to end against the real registry, with images put in by
//! skopeo and checked against umoci.

use crate::common::*;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{sample_image, Entry, LayerSpec, RegistryConfig, Rootfs};

fn running_as_root() -> bool {
    haul_dist::store::running_as_root()
}

#[test]
fn pulled_image_exports_exactly_the_built_tree_and_matches_umoci() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");

    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("1.0: Pulling from library/sample\n"),
        "{text}"
    );
    for layer in &built.layers {
        let id = short(&layer.blob.digest);
        assert!(text.contains(&format!("{id}: Pulling fs layer")), "{text}");
        assert!(text.contains(&format!("{id}: Pull complete")), "{text}");
    }
    assert!(
        text.contains(&format!("Digest: {}", built.manifest.digest)),
        "{text}"
    );
    assert!(
        text.contains(&format!("Status: Downloaded newer image for {reference}")),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some(reference.as_str()));
    assert!(
        !text.contains('\x1b'),
        "plain progress has no control codes"
    );

    let exported = env.dir("export");
    assert_ok(&env.haul(&["export", &reference, exported.to_str().unwrap()]));
    let actual = Rootfs::read_dir(&exported).unwrap();
    let differences = image.expected_rootfs().diff(&actual, running_as_root());
    assert!(
        differences.is_empty(),
        "export differs from the image: {differences:#?}"
    );

    // umoci reads the store's own OCI layout and unpacks the same tree.
    if haul_testkit::peers::require_umoci().is_some() {
        let bundle = env.dir("bundle");
        let rootfs = haul_testkit::umoci::umoci_unpack(
            &env.root.path().join("content"),
            &reference,
            &bundle,
            !running_as_root(),
        )
        .unwrap();
        let by_umoci = Rootfs::read_dir(&rootfs).unwrap();
        let differences = by_umoci.diff(&actual, running_as_root());
        assert!(
            differences.is_empty(),
            "haul export differs from umoci unpack: {differences:#?}"
        );
    }

    let out = env.haul(&["inspect", &reference]);
    assert_ok(&out);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["manifestDigest"], built.manifest.digest.as_str());
    assert_eq!(inspected["id"], built.config.digest.as_str());
    let layers = inspected["layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.layers.len());
    for (got, want) in layers.iter().zip(&built.layers) {
        assert_eq!(got["digest"], want.blob.digest.as_str());
        assert_eq!(got["diffID"], want.diff_id.as_str());
    }
    assert_eq!(layers[0]["chainID"], built.layers[0].diff_id.as_str());
    env.assert_store_invariants();
}

#[test]
fn second_pull_is_up_to_date_and_moves_no_blob() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1.0");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/sample:1.0", proxy.authority());
    assert_ok(&env.haul(&["--progress", "plain", "pull", &reference]));
    // A first pull sends its GET at once: nothing to find locally.
    assert_eq!(proxy.count_matching("HEAD", "/manifests/"), 0);
    proxy.reset_counters();

    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("Already exists"), "{text}");
    assert!(
        text.contains(&format!("Status: Image is up to date for {reference}")),
        "{text}"
    );
    assert_eq!(
        proxy.count_matching("GET", "/blobs/"),
        0,
        "no blob was fetched again"
    );
    // The tag is resolved with a HEAD, which rate-limited registries do
    // not count, and the manifest it names is read from the store.
    assert_eq!(proxy.count_matching("HEAD", "/manifests/1.0"), 1);
    assert_eq!(
        proxy.count_matching("GET", "/manifests/"),
        0,
        "the manifest came from the store"
    );
    env.assert_store_invariants();
}

#[test]
fn a_tag_moved_to_another_image_is_fetched_again_on_the_next_pull() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/moving:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/moving:1", proxy.authority());
    assert_ok(&env.haul(&["pull", &reference]));

    let moved = sample_image().layer(LayerSpec::gzip(vec![Entry::file(
        "etc/moved",
        0o644,
        b"new\n".to_vec(),
    )]));
    let built = env.put_image(&moved, "library/moving:1");
    proxy.reset_counters();
    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Digest: {}", built.manifest.digest)),
        "{}",
        stdout(&out)
    );
    assert_eq!(proxy.count_matching("GET", "/manifests/1"), 1);
    let exported = env.dir("moved");
    assert_ok(&env.haul(&["export", &reference, exported.to_str().unwrap()]));
    assert_eq!(
        std::fs::read_to_string(exported.join("etc/moved")).unwrap(),
        "new\n"
    );
    env.assert_store_invariants();
}

#[test]
fn a_second_pull_of_an_index_reads_its_manifests_from_the_store() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/multi:1", proxy.authority());
    let pull = |platform: &str| env.haul(&["--platform", platform, "pull", &reference]);
    assert_ok(&pull("linux/arm64"));

    proxy.reset_counters();
    let out = pull("linux/arm64");
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Digest: {}", built.index.digest)),
        "{}",
        stdout(&out)
    );
    assert_eq!(proxy.count_matching("GET", "/manifests/"), 0);

    // Another platform: only its own manifest is fetched, by digest.
    proxy.reset_counters();
    assert_ok(&pull("linux/amd64"));
    let amd64 = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "amd64")
        .expect("the index has amd64");
    assert_eq!(proxy.count_matching("GET", "/manifests/"), 1);
    assert_eq!(
        proxy.count_matching("GET", &format!("/manifests/{}", amd64.manifest.digest)),
        1
    );
    env.assert_store_invariants();
}

#[test]
fn shared_base_layers_already_exist_and_only_new_blobs_move() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let base = sample_image();
    let built_base = env.put_image(&base, "library/base:1");
    let derived = sample_image().layer(LayerSpec::gzip(vec![Entry::random(
        "app/bin", 0o755, 300_000, 9,
    )]));
    let built_derived = env.put_image(&derived, "library/derived:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let host = proxy.authority();

    assert_ok(&env.haul(&["pull", &format!("{host}/library/base:1")]));
    proxy.reset_counters();
    let out = env.haul(&[
        "--progress",
        "plain",
        "pull",
        &format!("{host}/library/derived:1"),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    for layer in &built_base.layers {
        assert!(
            text.contains(&format!("{}: Already exists", short(&layer.blob.digest))),
            "{text}"
        );
    }
    let new_layer = &built_derived.layers.last().unwrap().blob;
    assert!(
        text.contains(&format!("{}: Pull complete", short(&new_layer.digest))),
        "{text}"
    );
    let layer_gets = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .filter(|r| {
            built_derived
                .layers
                .iter()
                .any(|l| r.path.ends_with(&l.blob.digest))
        })
        .count();
    assert_eq!(layer_gets, 1, "only the new layer's blob is fetched");
    assert_eq!(
        proxy.response_bytes_matching("GET", &new_layer.digest),
        new_layer.size
    );
    env.assert_store_invariants();
}

#[test]
fn pull_by_digest_and_several_references_at_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/a:1");
    env.put_image(&sample_image(), "library/b:1");
    let by_digest = format!("{}@{}", env.reference("library/a"), built.manifest.digest);
    let out = env.haul(&[
        "--progress",
        "plain",
        "pull",
        &by_digest,
        &env.reference("library/b:1"),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "{}: Pulling from library/a",
            built.manifest.digest
        )),
        "{text}"
    );
    assert!(text.contains("1: Pulling from library/b"), "{text}");
    let out = env.haul(&["images", "--format", "json-array"]);
    assert_ok(&out);
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == built.config.digest), "{images}");
    assert!(!ids.is_empty());
    env.assert_store_invariants();
}

#[test]
fn platform_is_chosen_from_an_index_and_all_platforms_can_be_pulled() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let reference = env.reference("library/multi:1");

    let out = env.haul(&["--platform", "linux/arm64", "pull", &reference]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Digest: {}", built.index.digest)),
        "{}",
        stdout(&out)
    );
    let exported = env.dir("arm64");
    assert_ok(&env.haul(&["export", &reference, exported.to_str().unwrap()]));
    assert_eq!(
        std::fs::read_to_string(exported.join("etc/arch")).unwrap(),
        "arm64\n"
    );

    let out = env.haul(&["--platform", "linux/s390x", "pull", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64"),
        "{err}"
    );

    let root = tempfile::tempdir().unwrap();
    let out = haul_in(root.path(), &["pull", "--all-platforms", &reference]);
    assert_ok(&out);
    // One row for the tag; each platform is stored under it.
    let out = haul_in(root.path(), &["images", "--format", "json-array"]);
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    for platform in ["linux/amd64", "linux/arm64/v8"] {
        let out = haul_in(
            root.path(),
            &["--platform", platform, "inspect", &reference],
        );
        assert_ok(&out);
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["platform"], platform);
    }
    env.assert_store_invariants();
    assert_store_invariants(root.path());
}

#[test]
fn dropped_connection_resumes_and_fetches_each_layer_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image().layer(LayerSpec::gzip(vec![Entry::random(
        "big", 0o644, 3_000_000, 3,
    )]));
    let built = env.put_image(&image, "library/big:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let big = &built.layers.last().unwrap().blob;
    proxy.add_rule(
        Rule::new(
            Match::path_ends_with(big.digest.as_str()).method("GET"),
            Fault::DropAfterBytes(1_000_000),
        )
        .once(),
    );
    let out = env.haul(&["pull", &format!("{}/library/big:1", proxy.authority())]);
    assert_ok(&out);
    assert_eq!(
        proxy.count_matching("GET", &big.digest),
        2,
        "one cut request, one resume"
    );
    assert_eq!(
        proxy.response_bytes_matching("GET", &big.digest),
        big.size,
        "no byte fetched twice"
    );
    env.assert_store_invariants();
}

#[test]
fn corrupted_blob_is_refused_and_nothing_is_committed() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/bad:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let victim = &built.layers[0].blob;
    proxy.add_rule(Rule::new(
        Match::path_ends_with(victim.digest.as_str()).method("GET"),
        Fault::FlipByte { offset: 100 },
    ));
    let out = env.haul(&[
        "--max-download-attempts",
        "2",
        "pull",
        &format!("{}/library/bad:1", proxy.authority()),
    ]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(victim.digest.as_str()),
        "the error names the corrupted layer's digest: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err}");
    let hex = &victim.digest["sha256:".len()..];
    assert!(
        !env.root
            .path()
            .join("content/blobs/sha256")
            .join(hex)
            .exists(),
        "the bad blob was committed"
    );
    let out = env.haul(&["images", "--format", "json-array"]);
    assert_eq!(stdout(&out).trim(), "[]", "no image is recorded");
    env.assert_store_invariants();
}

#[test]
fn malicious_layer_is_refused() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let outside = env.dir("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let image = haul_testkit::ImageBuilder::new().layer(LayerSpec::gzip(vec![
        Entry::symlink("escape", outside.to_str().unwrap()),
        Entry::file("escape/planted", 0o644, "gotcha"),
    ]));
    env.put_image(&image, "library/evil:1");
    let out = env.haul(&["pull", &env.reference("library/evil:1")]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("escape/planted"),
        "the error names the bad entry: {err}"
    );
    assert!(
        !outside.join("planted").exists(),
        "a file was written outside the layer"
    );
    env.assert_store_invariants();
}

#[test]
fn json_progress_is_docker_json_messages() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    let out = env.haul(&["--progress", "json", "pull", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    // Every line is a JSON object, the last one the result.
    let mut messages: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let result = messages.pop().unwrap();
    assert_eq!(result["aux"]["Reference"], reference.as_str(), "{result}");
    assert_eq!(messages[0]["status"], "Pulling from library/sample");
    assert_eq!(messages[0]["id"], "1.0");
    assert!(built.layers.len() > 1, "the sample has several layers");
    for layer in &built.layers {
        let short = &layer.blob.digest["sha256:".len().."sha256:".len() + 12];
        let of_layer: Vec<&serde_json::Value> =
            messages.iter().filter(|m| m["id"] == short).collect();
        assert!(
            of_layer.iter().any(|m| m["status"] == "Pull complete"),
            "layer {short} never reports Pull complete: {of_layer:?}"
        );
        assert!(
            of_layer.iter().any(|m| m["status"] == "Downloading"
                && m["progressDetail"]["total"].as_u64() == Some(layer.blob.size)),
            "layer {short} never reports Downloading with its size {}: {of_layer:?}",
            layer.blob.size
        );
    }
    assert!(messages.iter().any(|m| m["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("Digest: sha256:"))));
    env.assert_store_invariants();
}

#[test]
fn quiet_pull_prints_only_the_reference() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    let out = env.haul(&["-q", "pull", &reference]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{reference}\n"));
    env.assert_store_invariants();
}

#[test]
fn no_unpack_keeps_only_blobs_readable_by_skopeo() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", "--no-unpack", &reference]));
    assert!(
        !env.root.path().join("layers/sha256").exists()
            || std::fs::read_dir(env.root.path().join("layers/sha256"))
                .unwrap()
                .next()
                .is_none()
    );
    let layout = format!(
        "oci:{}:{}",
        env.root.path().join("content").display(),
        reference
    );
    let raw = haul_testkit::skopeo::run_skopeo(["inspect", "--raw", layout.as_str()]).unwrap();
    assert_eq!(
        raw, built.manifest_bytes,
        "skopeo reads the stored manifest unchanged"
    );
    let out = env.haul(&["export", &reference, env.dir("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not unpacked"), "{}", stderr(&out));
    env.assert_store_invariants();
}

#[test]
fn rmi_of_the_last_tags_frees_the_space() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", &reference]));
    assert_ok(&env.haul(&["tag", &reference, "local/copy:2"]));
    let out = env.haul(&["rmi", &reference]);
    assert_ok(&out);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    // The pull's hidden digest reference goes with the repository's last tag.
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], format!("Untagged: {reference}"));
    assert!(
        lines[1].starts_with(&format!(
            "Untagged: {}@sha256:",
            env.reference("library/sample")
        )),
        "{lines:?}"
    );
    // Still named by local/copy:2: nothing is freed.
    let count = |dir: &str| {
        std::fs::read_dir(env.root.path().join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(count("content/blobs/sha256") > 0);
    let images: serde_json::Value =
        serde_json::from_slice(&env.haul(&["images", "--format", "json-array"]).stdout).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images[0]["reference"], "docker.io/local/copy:2", "{images}");
    let id = images[0]["id"].as_str().unwrap().to_string();

    let out = env.haul(&["rmi", "local/copy:2"]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        format!("Untagged: local/copy:2\nDeleted: {id}\n")
    );
    assert_eq!(count("content/blobs/sha256"), 0, "rmi left blobs behind");
    assert_eq!(count("layers/sha256"), 0, "rmi left layers behind");
    let out = env.haul(&["gc"]);
    assert_ok(&out);
    assert!(
        stdout(&out).starts_with("Removed 0 images, 0 blobs, 0 layers"),
        "{}",
        stdout(&out)
    );
    let images = env.haul(&["images", "--format", "json-array"]);
    assert_eq!(stdout(&images).trim(), "[]");
    env.assert_store_invariants();
}

#[test]
fn schema1_manifests_from_old_registries_are_pulled() {
    let Some(env) = Env::start(RegistryConfig::no_auth().with_schema1()) else {
        return;
    };
    let image = haul_testkit::ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![
            Entry::dir("etc", 0o755),
            Entry::file("etc/old", 0o644, "schema 1\n"),
            Entry::file("etc/gone", 0o644, "removed above\n"),
        ]))
        .layer(LayerSpec::gzip(vec![
            Entry::whiteout("etc/gone"),
            Entry::random("bin/tool", 0o755, 50_000, 4),
        ]));
    let digest = put_schema1(&env, &image, "library/s1");

    let reference = env.reference("library/s1:old");
    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Digest: {digest}")),
        "{}",
        stdout(&out)
    );
    let exported = env.dir("s1-export");
    assert_ok(&env.haul(&["export", &reference, exported.to_str().unwrap()]));
    let differences = image
        .expected_rootfs()
        .diff(&Rootfs::read_dir(&exported).unwrap(), running_as_root());
    assert!(differences.is_empty(), "{differences:#?}");
    let out = env.haul(&["inspect", &reference]);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let built = image.write_oci_layout(&env.dir("again"), "t").unwrap();
    let diff_ids: Vec<&str> = inspected["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diffID"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(
        diff_ids, want,
        "the same layers, recognised by their diffIDs"
    );
    env.assert_store_invariants();
}

fn schema1_image() -> haul_testkit::ImageBuilder {
    haul_testkit::ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![
            Entry::dir("etc", 0o755),
            Entry::file("etc/old", 0o644, "schema 1\n"),
        ]))
        .layer(LayerSpec::gzip(vec![Entry::random(
            "bin/tool", 0o755, 50_000, 4,
        )]))
}

#[test]
fn schema1_layers_already_exist_on_a_second_pull() {
    let Some(env) = Env::start(RegistryConfig::no_auth().with_schema1()) else {
        return;
    };
    let image = schema1_image();
    put_schema1(&env, &image, "library/s1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/s1:old", proxy.authority());
    assert_ok(&env.haul(&["--progress", "plain", "pull", &reference]));
    proxy.reset_counters();

    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    let text = stdout(&out);
    let built = image.write_oci_layout(&env.dir("again"), "t").unwrap();
    for layer in &built.layers {
        let id = short(&layer.blob.digest);
        assert!(
            text.contains(&format!("{id}: Already exists")),
            "layer {id} is known by its blob's diffID:\n{text}"
        );
        assert!(!text.contains(&format!("{id}: Extracting")), "{text}");
    }
    assert!(
        text.contains(&format!("Status: Image is up to date for {reference}")),
        "{text}"
    );
    assert_eq!(
        proxy.count_matching("GET", "/blobs/"),
        0,
        "no layer blob was fetched again"
    );
}

#[test]
fn schema1_images_can_be_pulled_blobs_only_and_copied_to_an_oci_layout() {
    let Some(env) = Env::start(RegistryConfig::no_auth().with_schema1()) else {
        return;
    };
    let image = schema1_image();
    put_schema1(&env, &image, "library/s1");
    let reference = env.reference("library/s1:old");
    let built = image.write_oci_layout(&env.dir("again"), "t").unwrap();
    let want: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();

    let out = env.haul(&["pull", "--no-unpack", &reference]);
    assert_ok(&out);
    let out = env.haul(&["inspect", &reference]);
    assert_ok(&out);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diff_ids: Vec<&str> = inspected["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diffID"].as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, want, "diffIDs computed from the blobs");

    let dir = env.dir("s1-oci");
    let root = env.dir("copy-root");
    let out = haul_in(
        &root,
        &[
            "copy",
            &format!("docker://{reference}"),
            &format!("oci:{}:t", dir.display()),
        ],
    );
    assert_ok(&out);
    let layout = format!("oci:{}:t", dir.display());
    let config =
        haul_testkit::skopeo::run_skopeo(["inspect", "--config", layout.as_str()]).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let copied: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(copied, want, "skopeo reads the copied image's diffIDs");
}

/// A complete download that does not match its digest is tried once more
/// (a proxy may have corrupted it), not five times: then the pull fails
/// with one sentence naming the expected and the actual digest.
#[test]
fn a_corrupt_layer_is_retried_once_then_fails_naming_both_digests() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/bad:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let victim = built.layers[0].blob.digest.clone();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(victim.as_str()).method("GET"),
        Fault::FlipByte { offset: 100 },
    ));
    let start = std::time::Instant::now();
    let out = haul_command(
        env.root.path(),
        &[
            "--progress",
            "plain",
            "pull",
            &format!("{}/library/bad:1", proxy.authority()),
        ],
    )
    .env("HAUL_RETRY_TICK_MS", "1")
    .output()
    .unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let gets = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(victim.as_str()))
        .count();
    assert_eq!(gets, 2, "one download and one retry");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err}");
    assert!(
        err.contains(victim.as_str()),
        "names the expected digest: {err}"
    );
    assert!(
        err.matches("sha256:").count() >= 2,
        "names the digest the content had too: {err}"
    );
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}

#[test]
fn platform_of_a_single_image_must_match_what_is_asked() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/amd64-only:1");
    let reference = env.reference("library/amd64-only:1");
    let out = env.haul(&["--platform", "linux/arm64", "pull", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "image with reference {reference} was found but does not match the specified \
             platform: wanted linux/arm64"
        )) && err.contains("actual: linux/amd64"),
        "{err}"
    );
    assert_eq!(
        stdout(&env.haul(&["images", "-q"])),
        "",
        "nothing is recorded"
    );
    assert_ok(&env.haul(&["--platform", "linux/amd64", "pull", &reference]));
    env.assert_store_invariants();
}

#[test]
fn an_image_naming_no_platform_is_pulled_for_any_platform_with_a_warning() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image().platform(haul_testkit::image::Platform::new("", ""));
    env.put_image(&image, "library/no-platform:1");
    let reference = env.reference("library/no-platform:1");
    let out = env.haul(&["--platform", "linux/arm64", "pull", &reference]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("warning: ") && err.contains("names no platform"),
        "{err}"
    );
    assert_eq!(stdout(&env.haul(&["images", "-q"])).lines().count(), 1);
    let quiet = env.haul(&["pull", &reference]);
    assert_ok(&quiet);
    assert_eq!(stderr(&quiet), "", "no warning without --platform");
    env.assert_store_invariants();
}
