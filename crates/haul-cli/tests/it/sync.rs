//! `haul sync`: sets of images sharing base layers mirrored into an empty
//! real registry through the fault proxy, which counts every upload.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use haul_dist::oci::Digest;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::image::BuiltImage;
use haul_testkit::{
    Entry, ImageBuilder, LayerSpec, MemoryRegistry, MemoryRegistryConfig, Registry, RegistryConfig,
};

use crate::common::*;
use crate::referrers::{attach, client, manifest_bytes, referrers_of, runtime, SIG_TYPE};

const APPS: usize = 6;
const TAGS: [&str; 3] = ["v1", "v2", "dev"];

/// An app image: two shared base layers and a layer of its own.
fn app_image(app: usize, tag: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![Entry::random(
            "base/os", 0o644, 300_000, 100,
        )]))
        .layer(LayerSpec::gzip(vec![Entry::random(
            "base/lib", 0o644, 120_000, 101,
        )]))
        .layer(LayerSpec::gzip(vec![Entry::file(
            "app/id",
            0o644,
            format!("app{app} {tag}\n"),
        )]))
        .label("app", &app.to_string())
}

/// What the source registry holds and the target repositories need.
struct Source {
    /// `repository:tag` -> manifest digest.
    manifests: BTreeMap<String, String>,
    /// target repository (without prefix) -> blobs it needs.
    blobs: BTreeMap<String, BTreeSet<String>>,
    /// The signature attached to team/app1:v1.
    signature: Digest,
    app1_v1: Digest,
}

fn blobs_of(image: &BuiltImage) -> impl Iterator<Item = String> + '_ {
    std::iter::once(image.config.digest.clone())
        .chain(image.layers.iter().map(|l| l.blob.digest.clone()))
}

/// Six apps with three tags each, a two-platform index, a signature.
fn fill_source(env: &Env) -> Source {
    let mut manifests = BTreeMap::new();
    let mut blobs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for app in 1..=APPS {
        for tag in TAGS {
            let repo = format!("team/app{app}");
            let built = env.put_image(&app_image(app, tag), &format!("{repo}:{tag}"));
            manifests.insert(format!("{repo}:{tag}"), built.manifest.digest.clone());
            if tag != "dev" {
                blobs.entry(repo).or_default().extend(blobs_of(&built));
            }
        }
    }
    let index = env.put_index("team/multi:1");
    manifests.insert("team/multi:1".into(), index.index.digest.clone());
    for image in &index.images {
        blobs
            .entry("team/multi".into())
            .or_default()
            .extend(blobs_of(image));
    }
    let app1_v1 = Digest::parse(&manifests["team/app1:v1"]).unwrap();
    let size = manifest_bytes(&env.registry.host(), "team/app1", "v1").len() as u64;
    let signature = runtime().block_on(async {
        let client = client();
        let repo = client
            .repository(&env.registry.host(), "team/app1")
            .unwrap();
        attach(
            &repo,
            (&app1_v1, size, "application/vnd.oci.image.manifest.v1+json"),
            Some(SIG_TYPE),
            SIG_TYPE,
            b"signature of app1",
        )
        .await
        .0
    });
    let app1 = blobs.get_mut("team/app1").unwrap();
    app1.insert(Digest::sha256_of(b"{}").to_string());
    app1.insert(Digest::sha256_of(b"signature of app1").to_string());
    Source {
        manifests,
        blobs,
        signature,
        app1_v1,
    }
}

fn sources(env: &Env) -> Vec<String> {
    (1..=APPS)
        .map(|app| env.reference(&format!("team/app{app}")))
        .chain(std::iter::once(env.reference("team/multi")))
        .collect()
}

fn sync_args<'a>(proxy: &'a str, sources: &'a [String]) -> Vec<&'a str> {
    let mut args = vec![
        "--progress",
        "plain",
        "sync",
        "--all-tags",
        "--exclude",
        "^dev$",
        "--all-platforms",
        "--to",
        proxy,
    ];
    args.extend(sources.iter().map(String::as_str));
    args
}

/// The digest of every completed blob `PUT` (201) the proxy saw.
fn blob_puts(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/") && r.status == 201)
        .filter_map(|r| {
            r.path
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("digest="))
                .map(|d| d.replace("%3A", ":"))
        })
        .collect()
}

fn upload_starts(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST" && r.path.contains("/blobs/uploads/") && !r.path.contains("mount=")
        })
        .count()
}

fn uploaded_bytes(proxy: &FaultProxy) -> u64 {
    proxy.request_bytes_matching("PATCH", "/blobs/uploads/")
        + proxy.request_bytes_matching("PUT", "/blobs/uploads/")
}

/// Every image of the source is on the target under `mirror/`, with the
/// source's digest; the dev tags are not.
fn assert_mirrored(source: &Source, target: &Registry) {
    for (name, digest) in &source.manifests {
        let (repo, tag) = name.split_once(':').unwrap();
        let mirrored = format!("mirror/{repo}");
        if tag == "dev" {
            let tags = haul_testkit::skopeo::run_skopeo([
                "list-tags".to_string(),
                "--tls-verify=false".to_string(),
                format!("docker://{}/{mirrored}", target.host()),
            ])
            .unwrap();
            assert!(
                !String::from_utf8_lossy(&tags).contains("\"dev\""),
                "the excluded tag was synced"
            );
            continue;
        }
        let bytes = manifest_bytes(&target.host(), &mirrored, tag);
        assert_eq!(
            &Digest::sha256_of(&bytes).to_string(),
            digest,
            "{mirrored}:{tag} has the source's digest"
        );
    }
    assert_eq!(
        referrers_of(&target.host(), "mirror/team/app1", &source.app1_v1),
        [source.signature.clone()].into_iter().collect(),
        "the signature came along (sync copies referrers by default)"
    );
}

#[test]
fn sync_of_images_sharing_layers_uploads_each_blob_once_and_a_rerun_moves_nothing() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let source = fill_source(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let to = format!("{}/mirror", proxy.authority());
    let sources = sources(&env);

    let out = env.haul(&sync_args(&to, &sources));
    assert_ok(&out);
    assert_mirrored(&source, &target);

    let distinct: BTreeSet<String> = source.blobs.values().flatten().cloned().collect();
    let puts = blob_puts(&proxy);
    let mut per_blob: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &puts {
        *per_blob.entry(d.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_blob
            .keys()
            .map(|d| d.to_string())
            .collect::<BTreeSet<_>>(),
        distinct,
        "every distinct blob is uploaded, and nothing else"
    );
    assert!(
        per_blob.values().all(|&n| n == 1),
        "a blob was uploaded more than once: {per_blob:?}"
    );
    assert_eq!(
        upload_starts(&proxy),
        distinct.len(),
        "one upload session per blob"
    );
    // Shared blobs reach the other repositories by mount.
    let needed: usize = source.blobs.values().map(BTreeSet::len).sum();
    assert_eq!(
        proxy.count_matching("POST", "mount="),
        needed - distinct.len(),
        "every other placement of a blob is a mount"
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Synced {} images: {} blobs moved",
            APPS * 2 + 1,
            distinct.len()
        )),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("Synced ") && l.contains(" to "))
            .count(),
        APPS * 2 + 1,
        "one summary line per image: {text}"
    );

    // A second run finds everything there.
    proxy.reset_counters();
    let again = env.haul(&sync_args(&to, &sources));
    assert_ok(&again);
    assert_eq!(uploaded_bytes(&proxy), 0, "the second run moved blob bytes");
    assert_eq!(upload_starts(&proxy), 0);
    assert_eq!(proxy.count_matching("POST", "mount="), 0);
    assert!(
        stdout(&again).contains(&format!(
            "Synced {} images: 0 blobs moved (0 bytes)",
            APPS * 2 + 1
        )),
        "{}",
        stdout(&again)
    );
    assert_mirrored(&source, &target);
}

#[test]
fn sync_dry_run_lists_what_would_move_and_moves_nothing() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    for tag in ["v1", "v2"] {
        env.put_image(&app_image(1, tag), &format!("team/app1:{tag}"));
    }
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let to = format!("{}/mirror", proxy.authority());
    let out = env.haul(&[
        "sync",
        "--dry-run",
        "--to",
        &to,
        &env.reference("team/app1:v1"),
        &env.reference("team/app1:v2"),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("Would sync 127"))
            .count(),
        2,
        "{text}"
    );
    // Config + 3 layers each; the two base layers shared: 6 distinct.
    assert!(
        text.contains("Would sync 2 images: 6 distinct blobs to move"),
        "{text}"
    );
    for method in ["POST", "PUT", "PATCH"] {
        assert_eq!(
            proxy.count_matching(method, "/v2/"),
            0,
            "{method} in a dry run"
        );
    }
    assert!(!env.root.path().join("uploads").exists());
}

#[test]
fn sync_file_names_tag_lists_and_patterns() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let mut digests = BTreeMap::new();
    for app in 1..=2 {
        for tag in TAGS {
            let built = env.put_image(&app_image(app, tag), &format!("team/app{app}:{tag}"));
            digests.insert((app, tag), built.manifest.digest);
        }
    }
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let file = env.dir("sync.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[sync]]
source = "{src}/team/app1"
tags = ["v2"]
to = "{dst}/one"

[[sync]]
source = "{src}/team/app2"
all-tags = true
include = ["^v"]
exclude = ["2$"]
to = "{dst}/two"

[[sync]]
source = "{src}/team/app1"
all-tags = true
semver = ">=2"
to = "{dst}/three"
"#,
            src = env.registry.host(),
            dst = target.host()
        ),
    )
    .unwrap();
    let out = env.haul(&["sync", "--file", file.to_str().unwrap()]);
    assert_ok(&out);
    let host = target.host();
    assert_eq!(
        Digest::sha256_of(&manifest_bytes(&host, "one/team/app1", "v2")).to_string(),
        digests[&(1, "v2")]
    );
    assert_eq!(
        Digest::sha256_of(&manifest_bytes(&host, "two/team/app2", "v1")).to_string(),
        digests[&(2, "v1")]
    );
    let listed = runtime().block_on(async {
        let client = client();
        let one = client
            .repository(&host, "one/team/app1")
            .unwrap()
            .tags(None)
            .await
            .unwrap();
        let two = client
            .repository(&host, "two/team/app2")
            .unwrap()
            .tags(None)
            .await
            .unwrap();
        let three = client
            .repository(&host, "three/team/app1")
            .unwrap()
            .tags(None)
            .await
            .unwrap();
        (one, two, three)
    });
    assert_eq!(
        listed,
        (
            vec!["v2".to_string()],
            vec!["v1".to_string()],
            vec!["v2".to_string()]
        )
    );

    let bad = env.dir("bad.toml");
    std::fs::write(&bad, "[[sync]]\nsource = \"x\"\n").unwrap();
    let out = env.haul(&["sync", "--file", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid sync file"),
        "{}",
        stderr(&out)
    );
}

/// Chunks of the killed run (small, so that layers go in several).
const CHUNK: u64 = 64 * 1024;

#[test]
fn a_killed_sync_run_again_uploads_nothing_twice_and_continues_the_held_session() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let source = fill_source(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let to = format!("{}/mirror", proxy.authority());
    let sources = sources(&env);
    // Some blobs complete, then one chunk is held until haul dies: the
    // registry keeps the session's earlier chunks.
    proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/uploads/").method("PATCH"),
            Fault::DelayRequest(Duration::from_secs(120)),
        )
        .after(8)
        .once(),
    );
    let mut args = vec!["--max-concurrent-uploads", "1"];
    args.extend(sync_args(&to, &sources));
    let mut first = haul_command(env.root.path(), &args)
        .env("HAUL_PUSH_CHUNK_BYTES", CHUNK.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while proxy.rule_uses() != vec![1] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the held chunk never came"
        );
        assert!(first.try_wait().unwrap().is_none(), "the sync ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let done_before: BTreeSet<String> = blob_puts(&proxy).into_iter().collect();
    assert!(
        !done_before.is_empty(),
        "no blob was complete before the kill"
    );
    proxy.clear_rules();
    proxy.reset_counters();

    let mut command = haul_command(env.root.path(), &sync_args(&to, &sources));
    let out = command
        .env("HAUL_PUSH_CHUNK_BYTES", CHUNK.to_string())
        .output()
        .unwrap();
    assert_ok(&out);
    assert_mirrored(&source, &target);
    let again = blob_puts(&proxy);
    let twice: Vec<_> = again.iter().filter(|d| done_before.contains(*d)).collect();
    assert!(twice.is_empty(), "uploaded again after the kill: {twice:?}");
    let distinct: BTreeSet<String> = source.blobs.values().flatten().cloned().collect();
    let all: BTreeSet<String> = done_before.iter().chain(&again).cloned().collect();
    assert_eq!(all, distinct, "every blob uploaded in one of the runs");
    assert_eq!(
        again.len(),
        again.iter().collect::<BTreeSet<_>>().len(),
        "a blob was uploaded twice in the rerun"
    );
    assert!(
        proxy.count_matching("GET", "/blobs/uploads/") >= 1,
        "the registry was asked where the recorded session stands"
    );
    let left = std::fs::read_dir(env.root.path().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "finished uploads are forgotten");
}

#[test]
fn sync_reads_each_manifest_once_resolves_tags_with_head_and_waits_for_quota() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let quota = MemoryRegistry::start(MemoryRegistryConfig {
        rate_limit: Some(10),
        rate_limit_reset: Some(3),
        ..MemoryRegistryConfig::default()
    })
    .unwrap();
    // The source: one image under three tags, and a two-platform index.
    env.put_image(&app_image(1, "v1"), "team/app:v1");
    env.put_index("team/multi:1");
    for tag in ["v1", "v2", "v3"] {
        assert_ok(&env.haul(&[
            "copy",
            &env.reference("team/app:v1"),
            &quota.reference(&format!("team/app:{tag}")),
        ]));
    }
    assert_ok(&env.haul(&[
        "copy",
        "--all-platforms",
        &env.reference("team/multi:1"),
        &quota.reference("team/multi:1"),
    ]));
    let gets_before = quota.manifest_gets();
    let heads_before = quota.count("HEAD", "/manifests/");

    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "--progress",
        "plain",
        "sync",
        "--rate-limit-floor",
        "9",
        "--all-tags",
        "--all-platforms",
        "--to",
        &format!("{}/mirror", target.host()),
        &quota.reference("team/app"),
        &quota.reference("team/multi"),
    ]);
    assert_ok(&out);
    // One GET per distinct manifest: the image, the index, its two
    // platform manifests; the four tags were resolved with HEAD.
    assert_eq!(quota.manifest_gets() - gets_before, 4, "manifest GETs");
    assert!(quota.count("HEAD", "/manifests/") - heads_before >= 4);
    let text = stdout(&out);
    for wanted in [
        "pulls left, waiting 3 s",
        "waiting 1 s",
        "Rate limit: going on",
    ] {
        assert!(text.contains(wanted), "no {wanted:?} in:\n{text}");
    }
    for (repo, tag) in [("team/app", "v2"), ("team/multi", "1")] {
        assert_eq!(
            manifest_bytes(&target.host(), &format!("mirror/{repo}"), tag),
            quota.manifest(repo, tag).unwrap()
        );
    }
}

#[test]
fn sync_into_an_oci_layout_and_from_it_into_a_registry_keeps_every_digest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let mut digests = BTreeMap::new();
    for app in 1..=2 {
        for tag in TAGS {
            let built = env.put_image(&app_image(app, tag), &format!("team/app{app}:{tag}"));
            digests.insert(format!("team/app{app}:{tag}"), built.manifest.digest);
        }
    }
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let layout = env.dir("airgap");
    let sources: Vec<String> = (1..=2)
        .map(|app| format!("{}/team/app{app}", proxy.authority()))
        .collect();
    let mut args = vec!["sync", "--all-tags", "--exclude", "^dev$", "--to"];
    let to = format!("oci:{}", layout.display());
    args.push(&to);
    args.extend(sources.iter().map(String::as_str));
    let out = env.haul(&args);
    assert_ok(&out);
    assert!(stdout(&out).contains("Synced 4 images"), "{}", stdout(&out));
    // Each distinct blob crossed the network once for the four images.
    let mut gets: BTreeMap<String, usize> = BTreeMap::new();
    for r in proxy.requests() {
        if r.method == "GET" && r.path.contains("/blobs/sha256:") {
            let digest = r.path.rsplit('/').next().unwrap().to_string();
            *gets.entry(digest).or_default() += 1;
        }
    }
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob was fetched twice: {gets:?}"
    );
    // Config + own layer per image, two shared base layers.
    assert_eq!(gets.len(), 4 * 2 + 2, "{gets:?}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let named: BTreeMap<String, String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(named.len(), 4, "{named:?}");

    // Back out of the layout into another registry.
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "sync",
        "--to",
        &format!("{}/mirror", target.host()),
        &format!("oci:{}", layout.display()),
    ]);
    assert_ok(&out);
    for (name, digest) in &digests {
        let (repo, tag) = name.split_once(':').unwrap();
        if tag == "dev" {
            continue;
        }
        assert_eq!(
            &Digest::sha256_of(&manifest_bytes(
                &target.host(),
                &format!("mirror/{repo}"),
                tag
            ))
            .to_string(),
            digest,
            "{name}"
        );
    }
    let both = env.haul(&["sync", "--to", &to, &format!("oci:{}", layout.display())]);
    assert_eq!(both.status.code(), Some(1));
    assert!(
        stderr(&both).contains("not between layouts"),
        "{}",
        stderr(&both)
    );
}

#[test]
fn a_sync_with_a_missing_image_syncs_the_others_and_fails_naming_it() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&app_image(1, "v1"), "team/app1:v1");
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "sync",
        "--to",
        &format!("{}/mirror", target.host()),
        &env.reference("team/app1:v1"),
        &env.reference("team/nothing:v1"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "failed to sync {} to {}/mirror/team/nothing:v1",
            env.reference("team/nothing:v1"),
            target.host()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one sentence per failure: {err}");
    assert!(stdout(&out).contains("Synced 1 images"), "{}", stdout(&out));
    assert_eq!(
        Digest::sha256_of(&manifest_bytes(&target.host(), "mirror/team/app1", "v1")).to_string(),
        built.manifest.digest
    );
    let usage = env.haul(&["sync", "--include", "x", "--to", &target.host(), "a/b"]);
    assert_eq!(usage.status.code(), Some(1));
    assert!(
        stderr(&usage).contains("add --all-tags"),
        "{}",
        stderr(&usage)
    );
}

#[test]
fn tags_of_one_signed_image_synced_at_once_leave_one_fallback_index_entry_per_referrer() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&app_image(1, "v1"), "team/app:v1");
    for tag in ["v2", "v3", "v4"] {
        env.put_image(&app_image(1, "v1"), &format!("team/app:{tag}"));
    }
    let subject = Digest::parse(&built.manifest.digest).unwrap();
    let size = built.manifest_bytes.len() as u64;
    let signatures: BTreeSet<Digest> = runtime().block_on(async {
        let client = client();
        let repo = client.repository(&env.registry.host(), "team/app").unwrap();
        let mut out = BTreeSet::new();
        for n in 0..3 {
            let payload = format!("signature {n}");
            out.insert(
                attach(
                    &repo,
                    (&subject, size, "application/vnd.oci.image.manifest.v1+json"),
                    Some(SIG_TYPE),
                    SIG_TYPE,
                    payload.as_bytes(),
                )
                .await
                .0,
            );
        }
        out
    });
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "sync",
        "--all-tags",
        "--to",
        &format!("{}/mirror", target.host()),
        &env.reference("team/app"),
    ]);
    assert_ok(&out);
    // Four copies of one subject wrote its fallback index at once.
    let index: serde_json::Value = serde_json::from_slice(&manifest_bytes(
        &target.host(),
        "mirror/team/app",
        &format!("sha256-{}", subject.hex()),
    ))
    .unwrap();
    let listed: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        signatures.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "each referrer listed once: {listed:?}"
    );
}

#[test]
fn ctrl_c_stops_a_sync_with_one_sentence_and_exit_130() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    for app in 1..=3 {
        env.put_image(&app_image(app, "v1"), &format!("team/app{app}:v1"));
    }
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let gate = haul_testkit::Gate::new();
    proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/uploads/").method("PUT"),
        Fault::HoldRequest(gate.clone()),
    ));
    let to = format!("{}/mirror", proxy.authority());
    let sources: Vec<String> = (1..=3)
        .map(|app| env.reference(&format!("team/app{app}:v1")))
        .collect();
    let mut args = vec!["sync", "--to", to.as_str()];
    args.extend(sources.iter().map(String::as_str));
    let child = spawn_haul(&env, &args);
    let start = Instant::now();
    while proxy.count_matching("PUT", "/blobs/uploads/") == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no blob PUT");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    gate.open();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        "haul: sync interrupted: 0 of 3 images synced",
        "one sentence for the interrupt"
    );
}

#[test]
fn copies_waiting_for_a_shared_blob_leave_the_upload_slots_to_blobs_that_can_move() {
    // Three images share a base layer. While its one upload is held, the
    // copies into the other two repositories wait for it without taking
    // an upload slot: with two slots, every other blob still moves.
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let images: Vec<BuiltImage> = (1..=3)
        .map(|app| env.put_image(&app_image(app, "v1"), &format!("team/app{app}:v1")))
        .collect();
    let base = images[0].layers[0].blob.digest.clone();
    assert!(images.iter().all(|i| i.layers[0].blob.digest == base));
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let gate = haul_testkit::Gate::new();
    let held = format!("digest={}", base.replace(':', "%3A"));
    proxy.add_rule(Rule::new(
        Match::path_contains(held.as_str()).method("PUT"),
        Fault::HoldRequest(gate.clone()),
    ));
    let to = format!("{}/mirror", proxy.authority());
    let sources: Vec<String> = (1..=3)
        .map(|app| env.reference(&format!("team/app{app}:v1")))
        .collect();
    let mut args = vec!["sync", "--max-concurrent-uploads", "2", "--to", to.as_str()];
    args.extend(sources.iter().map(String::as_str));
    let child = spawn_haul(&env, &args);
    let others: BTreeSet<String> = images
        .iter()
        .flat_map(blobs_of)
        .filter(|d| *d != base)
        .collect();
    let start = Instant::now();
    loop {
        let put: BTreeSet<String> = blob_puts(&proxy).into_iter().collect();
        let mounted = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201)
            .count();
        // Every blob but the base is in (sent once, or mounted for the
        // second and third repository) while the base is held.
        if others.iter().all(|d| put.contains(d)) && mounted >= 2 {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            gate.open();
            let out = child.wait_with_output().unwrap();
            panic!(
                "with the base held, only {put:?} were sent ({mounted} mounts) of {others:?}: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!blob_puts(&proxy).contains(&base), "the base is still held");
    gate.open();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    // The base was sent once, and mounted into the two other repositories.
    let puts = blob_puts(&proxy);
    assert_eq!(puts.iter().filter(|d| **d == base).count(), 1, "{puts:?}");
    let base_mounts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains(&held.replace("digest=", "mount=")))
        .count();
    assert_eq!(base_mounts, 2, "the base is mounted into app2 and app3");
    for (app, image) in images.iter().enumerate() {
        let bytes = manifest_bytes(&target.host(), &format!("mirror/team/app{}", app + 1), "v1");
        assert_eq!(Digest::sha256_of(&bytes).to_string(), image.manifest.digest);
    }
}

/// `haul ARGS` started in the background, its output captured.
fn spawn_haul(env: &Env, args: &[&str]) -> std::process::Child {
    haul_command(env.root.path(), args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
