//! The legacy v1 protocol end to end, against the two real v1 registries
//! of `../shared/peers/v1-registry` (Python and Node): images are put into
//! a v2 registry with skopeo, pulled with haul, pushed to the v1 registry
//! with `--protocol v1`, and pulled back into a fresh store.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::v1_registry::{V1Kind, V1Registry};
use haul_testkit::{sample_image, Entry, ImageBuilder, LayerSpec, RegistryConfig, Rootfs};

fn running_as_root() -> bool {
    haul_dist::store::running_as_root()
}

fn start_v1(kind: V1Kind) -> Option<V1Registry> {
    V1Registry::start(kind).expect("the v1 registry starts")
}

/// The sample image (3 layers) and one more built on it (4 layers).
fn images() -> (ImageBuilder, ImageBuilder) {
    let base = sample_image();
    let child = sample_image().layer(LayerSpec::gzip(vec![
        Entry::dir("child", 0o755),
        Entry::file("child/only-here", 0o644, "child\n"),
        Entry::random("child/blob.bin", 0o644, 300_000, 42),
    ]));
    (base, child)
}

fn diff_ids(root: &Path, reference: &str) -> Vec<String> {
    let out = haul_in(root, &["inspect", reference]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["layers"]
        .as_array()
        .expect("layers in inspect output")
        .iter()
        .map(|l| l["diffID"].as_str().unwrap().to_string())
        .collect()
}

fn assert_exports(root: &Path, reference: &str, image: &ImageBuilder, dir: &Path) {
    assert_ok(&haul_in(
        root,
        &["export", reference, dir.to_str().unwrap()],
    ));
    let actual = Rootfs::read_dir(dir).unwrap();
    let differences = image.expected_rootfs().diff(&actual, running_as_root());
    assert!(
        differences.is_empty(),
        "export of {reference} differs from the image: {differences:#?}"
    );
}

/// Puts both images into the v2 registry and the local store; tags them
/// with names on the v1 registry.
fn prepare(env: &Env, v1: &V1Registry) -> (String, String) {
    let (base, child) = images();
    env.put_image(&base, "team/app:base");
    env.put_image(&child, "team/app:child");
    let mut names = Vec::new();
    for tag in ["base", "child"] {
        let v2 = env.reference(&format!("team/app:{tag}"));
        assert_ok(&env.haul(&["pull", "--protocol", "v2", &v2]));
        let target = v1.reference(&format!("team/app:{tag}"));
        assert_ok(&env.haul(&["tag", &v2, &target]));
        names.push(target);
    }
    (names[0].clone(), names[1].clone())
}

fn push_pull_round_trip(kind: V1Kind) {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(v1) = start_v1(kind) else { return };
    let (base_ref, child_ref) = prepare(&env, &v1);
    let (base, child) = images();

    // First push: every image is sent, root first, then the tag.
    let out = env.haul(&["--progress", "plain", "push", "--protocol", "v1", &base_ref]);
    assert_ok(&out);
    let text = stdout(&out);
    for expected in [
        format!("Using the v1 registry protocol for {}", v1.host()),
        "Sending image list".to_string(),
        format!("Pushing repository {}", base_ref.trim_end_matches(":base")),
        "Image successfully pushed".to_string(),
        "Pushing tag for rev [".to_string(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("Image successfully pushed").count(),
        3,
        "three v1 images (two dependency images and the top image):\n{text}"
    );
    assert!(!text.contains("already pushed"), "{text}");

    // The child shares two v1 images with the base.
    let out = env.haul(&[
        "--progress",
        "plain",
        "push",
        "--protocol",
        "v1",
        &child_ref,
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(
        text.matches("already pushed, skipping").count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("Image successfully pushed").count(),
        2,
        "{text}"
    );

    // A second push sends nothing.
    let out = env.haul(&["--progress", "plain", "push", "--protocol", "v1", &base_ref]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(
        text.matches("already pushed, skipping").count(),
        3,
        "{text}"
    );
    assert!(!text.contains("Image successfully pushed"), "{text}");

    // Pull both back into a fresh store.
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(
        fresh.path(),
        &["--progress", "plain", "pull", "--protocol", "v1", &base_ref],
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("Pulling repository"), "{text}");
    assert!(
        text.contains(&format!("Status: Downloaded newer image for {base_ref}")),
        "{text}"
    );
    assert_exports(fresh.path(), &base_ref, &base, &env.dir("export-base"));
    assert_eq!(
        diff_ids(fresh.path(), &base_ref),
        diff_ids(env.root.path(), &base_ref),
        "the v1 round trip keeps the diffIDs"
    );

    let out = haul_in(
        fresh.path(),
        &[
            "--progress",
            "plain",
            "pull",
            "--protocol",
            "v1",
            &child_ref,
        ],
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("Already exists"),
        "shared layers are reused:\n{text}"
    );
    assert_exports(fresh.path(), &child_ref, &child, &env.dir("export-child"));
    assert_eq!(
        diff_ids(fresh.path(), &child_ref),
        diff_ids(env.root.path(), &child_ref)
    );

    // Pulling again is a no-op.
    let out = haul_in(
        fresh.path(),
        &[
            "--progress",
            "plain",
            "pull",
            "--protocol",
            "v1",
            &child_ref,
        ],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Status: Image is up to date for {child_ref}")),
        "{}",
        stdout(&out)
    );

    // The pushing store knows every layer under its v1 ID: a pull there
    // moves no layer.
    let out = env.haul(&["--progress", "plain", "pull", "--protocol", "v1", &base_ref]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(!text.contains("Downloading"), "{text}");
    assert!(text.contains("Already exists"), "{text}");
    assert_store_invariants(fresh.path());
    env.assert_store_invariants();
}

#[test]
fn python_registry_round_trip_keeps_rootfs_and_diff_ids() {
    push_pull_round_trip(V1Kind::Python);
}

#[test]
fn node_registry_round_trip_keeps_rootfs_and_diff_ids() {
    push_pull_round_trip(V1Kind::Node);
}

#[test]
fn auto_protocol_falls_back_to_v1_for_the_python_registry() {
    auto_protocol_falls_back_to_v1(V1Kind::Python);
}

#[test]
fn auto_protocol_falls_back_to_v1_for_the_node_registry() {
    auto_protocol_falls_back_to_v1(V1Kind::Node);
}

/// Without `--protocol`, push and pull find that the registry answers 404
/// to `/v2/` and speak v1; a v2 registry stays on v2.
fn auto_protocol_falls_back_to_v1(kind: V1Kind) {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(v1) = start_v1(kind) else {
        return;
    };
    let (base_ref, _) = prepare(&env, &v1);
    let out = env.haul(&["--progress", "plain", "push", &base_ref]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Using the v1 registry protocol for {}", v1.host())),
        "{}",
        stdout(&out)
    );
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["--progress", "plain", "pull", &base_ref]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Using the v1 registry protocol"),
        "{}",
        stdout(&out)
    );
    // And a v2 registry stays on v2.
    let v2 = env.reference("team/app:base");
    let out = haul_in(fresh.path(), &["--progress", "plain", "pull", &v2]);
    assert_ok(&out);
    assert!(
        !stdout(&out).contains("v1 registry protocol"),
        "{}",
        stdout(&out)
    );
    assert_store_invariants(fresh.path());
}

#[test]
fn dropped_layer_download_resumes() {
    for kind in [V1Kind::Python, V1Kind::Node] {
        let Some(env) = Env::start(RegistryConfig::no_auth()) else {
            return;
        };
        let Some(v1) = start_v1(kind) else { return };
        let (_, child_ref) = prepare(&env, &v1);
        assert_ok(&env.haul(&["push", "--protocol", "v1", &child_ref]));

        let proxy = FaultProxy::start(&v1.host()).unwrap();
        // The first read of every layer breaks after 100 kB.
        proxy.add_rule(
            Rule::new(
                Match::path_ends_with("/layer").method("GET"),
                Fault::DropAfterBytes(100_000),
            )
            .times(4),
        );
        let through = child_ref.replacen(&v1.host(), &proxy.authority(), 1);
        let fresh = tempfile::tempdir().unwrap();
        let out = haul_command(
            fresh.path(),
            &["--progress", "plain", "pull", "--protocol", "v1", &through],
        )
        .env("HAUL_RETRY_TICK_MS", "1")
        .output()
        .unwrap();
        assert_ok(&out);
        let (_, child) = images();
        assert_exports(
            fresh.path(),
            &through,
            &child,
            &env.dir(&format!("export-{kind:?}")),
        );
        let ranged: BTreeSet<String> = proxy
            .requests()
            .iter()
            .filter(|r| r.header("range").is_some())
            .map(|r| r.header("range").unwrap().to_string())
            .collect();
        if kind == V1Kind::Python {
            // Resumed with closed ranges (`bytes=N-(SIZE-1)`) from the byte
            // reached, as the Python registry needs.
            assert!(
                !ranged.is_empty(),
                "no ranged request: {:?}",
                proxy.requests()
            );
            for range in &ranged {
                let (first, last) = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .unwrap_or_else(|| panic!("unexpected range {range}"));
                let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
                assert!(first > 0 && first % 100_000 == 0 && last > first, "{range}");
            }
            // Bytes re-sent: only what the dropped reads had not delivered.
            let layer_bytes = proxy.response_bytes_matching("GET", "/layer");
            let out = haul_in(fresh.path(), &["inspect", &through]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let total: u64 = v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["size"].as_u64().unwrap())
                .sum();
            assert!(
                layer_bytes < total + 4 * 100_000 + 1,
                "{layer_bytes} bytes for {total} bytes of layers"
            );
        }
        assert_store_invariants(fresh.path());
    }
}

#[test]
fn wrong_payload_checksum_is_an_error_with_the_registrys_message() {
    for kind in [V1Kind::Python, V1Kind::Node] {
        let Some(v1) = start_v1(kind) else { return };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            use haul_dist::registry::v1::{IndexEntry, PutOutcome};
            let client =
                haul_dist::registry::RegistryClient::new(haul_dist::registry::ClientConfig {
                    credentials: None,
                    ..Default::default()
                })
                .unwrap();
            let registry = client.v1(&v1.host()).unwrap();
            let id = "ab".repeat(32);
            let session = registry
                .push_index(
                    "team/bad",
                    &[IndexEntry {
                        id: id.clone(),
                        tag: Some("latest".into()),
                        checksum: None,
                    }],
                )
                .await
                .unwrap();
            let ep = session.endpoints()[0].clone();
            let json = format!(r#"{{"id":"{id}"}}"#);
            assert_eq!(
                session
                    .put_image_json(&ep, &id, json.clone().into())
                    .await
                    .unwrap(),
                PutOutcome::Stored
            );
            let layer =
                LayerSpec::uncompressed(vec![Entry::file("f.txt", 0o644, "x\n")]).tar_bytes();
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes_of(layer.clone()))]);
            session.put_layer(&ep, &id, body).await.unwrap();
            let wrong = haul_dist::registry::v1::checksum::payload_checksum(b"{}", &layer);
            let err = session
                .put_checksum(&ep, &id, &wrong, None)
                .await
                .expect_err("a wrong payload checksum is refused");
            let text = err.to_string();
            assert!(
                text.contains("400") && text.to_lowercase().contains("checksum mismatch"),
                "{kind:?}: {text}"
            );
            // The right one is accepted (Python keeps the image incomplete;
            // Node deleted it, so only Python can still take it).
            if kind == V1Kind::Python {
                let right =
                    haul_dist::registry::v1::checksum::payload_checksum(json.as_bytes(), &layer);
                session.put_checksum(&ep, &id, &right, None).await.unwrap();
                assert!(session.image_exists(&ep, &id).await.unwrap());
            }
        });
    }
}

fn bytes_of(v: Vec<u8>) -> haul_dist::registry::v1::Bytes {
    haul_dist::registry::v1::Bytes::from(v)
}
