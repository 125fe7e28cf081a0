//! `haul push` end to end: mounts within a registry, uploads to another,
//! checked with skopeo and umoci.

use crate::common::*;
use haul_testkit::fault_proxy::FaultProxy;
use haul_testkit::{sample_image, Registry, RegistryConfig, Rootfs};

fn as_root() -> bool {
    haul_dist::store::running_as_root()
}

#[test]
fn push_within_a_registry_mounts_every_layer() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/source:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let host = proxy.authority();
    assert_ok(&env.haul(&["pull", &format!("{host}/library/source:1")]));
    assert_ok(&env.haul(&[
        "tag",
        &format!("{host}/library/source:1"),
        &format!("{host}/team/copy:2"),
    ]));
    proxy.reset_counters();

    let out = env.haul(&[
        "--progress",
        "plain",
        "push",
        &format!("{host}/team/copy:2"),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "The push refers to repository [{host}/team/copy]\n"
        )),
        "{text}"
    );
    for layer in &built.layers {
        assert!(
            text.contains(&format!(
                "{}: Mounted from library/source",
                short(&layer.diff_id)
            )),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "2: digest: {} size: {}",
            built.manifest.digest,
            built.manifest_bytes.len()
        )),
        "{text}"
    );
    let uploaded = proxy.request_bytes_matching("PUT", "/blobs/uploads/")
        + proxy.request_bytes_matching("PATCH", "/blobs/uploads/");
    assert_eq!(
        uploaded, built.config.size,
        "only the config moved; every layer was mounted"
    );

    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&env.registry, "team/copy:2").unwrap();
    assert_eq!(
        raw, built.manifest_bytes,
        "skopeo reads back the same manifest"
    );

    // A second push finds everything there.
    let out = env.haul(&[
        "--progress",
        "plain",
        "push",
        &format!("{host}/team/copy:2"),
    ]);
    assert_ok(&out);
    for layer in &built.layers {
        assert!(stdout(&out).contains(&format!("{}: Layer already exists", short(&layer.diff_id))));
    }
    env.assert_store_invariants();
}

#[test]
fn push_to_an_empty_registry_uploads_what_skopeo_and_umoci_read_back() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "library/sample:1.0");
    let source = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", &source]));
    let second = Registry::start(RegistryConfig::htpasswd()).unwrap();
    let target = second.reference("mirror/sample:1.0");
    assert_ok(&env.haul(&["tag", &source, &target]));

    // Without credentials the push is refused, clearly, and nothing is stored.
    let out = env.haul(&["push", &target]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&second.host()) && err.contains("haul login"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let user = second.credentials().unwrap();
    let login = std::process::Command::new(env!("CARGO_BIN_EXE_haul"))
        .args([
            "login",
            &second.host(),
            "-u",
            &user.username,
            "-p",
            &user.password,
        ])
        .env("DOCKER_CONFIG", env.root.path().join("no-docker-config"))
        .output()
        .unwrap();
    assert_ok(&login);
    let out = env.haul(&["--progress", "plain", "push", &target]);
    assert_ok(&out);
    for layer in &built.layers {
        assert!(
            stdout(&out).contains(&format!("{}: Pushed", short(&layer.diff_id))),
            "{}",
            stdout(&out)
        );
    }

    let inspected = haul_testkit::skopeo::skopeo_inspect(&second, "mirror/sample:1.0").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    let layers: Vec<&str> = inspected["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = built
        .layers
        .iter()
        .map(|l| l.blob.digest.as_str())
        .collect();
    assert_eq!(layers, want);

    if haul_testkit::peers::require_umoci().is_some() {
        let layout = env.dir("from-second");
        haul_testkit::skopeo::skopeo_copy_to_oci(&second, "mirror/sample:1.0", &layout, "t")
            .unwrap();
        let rootfs =
            haul_testkit::umoci::umoci_unpack(&layout, "t", &env.dir("bundle"), !as_root())
                .unwrap();
        let exported = env.dir("export");
        assert_ok(&env.haul(&["export", &source, exported.to_str().unwrap()]));
        let differences = Rootfs::read_dir(&rootfs)
            .unwrap()
            .diff(&Rootfs::read_dir(&exported).unwrap(), as_root());
        assert!(
            differences.is_empty(),
            "umoci of the pushed image differs from haul export: {differences:#?}"
        );
    }
    env.assert_store_invariants();
}

#[test]
fn pushing_a_missing_image_names_it() {
    let root = tempfile::tempdir().unwrap();
    let out = haul_in(root.path(), &["push", "127.0.0.1:1/nothing/here:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("does not exist locally") && err.contains("127.0.0.1:1/nothing/here:1"),
        "{err}"
    );
}

/// A local image with a 3 MB layer, pulled from `env`'s registry through
/// a fault proxy, and the proxy.
fn pulled_big_image(env: &Env) -> (haul_testkit::image::BuiltImage, FaultProxy) {
    use haul_testkit::{Entry, LayerSpec};
    let image = sample_image().layer(LayerSpec::gzip(vec![Entry::random(
        "big", 0o644, 3_000_000, 8,
    )]));
    let built = env.put_image(&image, "library/big:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    assert_ok(&env.haul(&["pull", &format!("{}/library/big:1", proxy.authority())]));
    (built, proxy)
}

/// Tags the pulled big image for `target` (reached through a new fault
/// proxy, returned with the reference).
fn tagged_for(
    env: &Env,
    source: &FaultProxy,
    target: &Registry,
    name: &str,
) -> (FaultProxy, String) {
    let target_proxy = FaultProxy::start(&target.host()).unwrap();
    let reference = format!("{}/{name}", target_proxy.authority());
    assert_ok(&env.haul(&[
        "tag",
        &format!("{}/library/big:1", source.authority()),
        &reference,
    ]));
    (target_proxy, reference)
}

#[test]
fn interrupted_chunked_push_resends_only_the_refused_chunk() {
    use haul_testkit::fault_proxy::{Fault, Match, Rule};
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (built, proxy) = pulled_big_image(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let (target_proxy, reference) = tagged_for(&env, &proxy, &target, "library/big:1");
    let chunk: u64 = 500_000;
    // The third chunk of the big layer is refused twice, then accepted.
    let big = built.layers.last().unwrap();
    target_proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/uploads/").method("PATCH"),
            Fault::status(502),
        )
        .after(2)
        .times(2),
    );
    let out = haul_command(
        env.root.path(),
        &["--max-concurrent-uploads", "1", "push", &reference],
    )
    .env("HAUL_PUSH_CHUNK_BYTES", chunk.to_string())
    .output()
    .unwrap();
    assert_ok(&out);
    let patched = target_proxy.request_bytes_matching("PATCH", "/blobs/uploads/");
    let chunked_total: u64 = built
        .layers
        .iter()
        .map(|l| l.blob.size)
        .chain([built.config.size])
        .filter(|size| *size > chunk)
        .sum();
    assert_eq!(
        patched,
        chunked_total + 2 * chunk,
        "only the refused chunk was sent again (big layer {} bytes)",
        big.blob.size
    );
    let inspected = haul_testkit::skopeo::skopeo_inspect(&target, "library/big:1").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    env.assert_store_invariants();
}

#[test]
fn rate_limited_push_waits_and_succeeds() {
    use haul_testkit::fault_proxy::{Fault, Match, Rule};
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (built, proxy) = pulled_big_image(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let (target_proxy, reference) = tagged_for(&env, &proxy, &target, "library/big:1");
    target_proxy
        .add_rule(Rule::new(Match::path_contains("/blobs/"), Fault::too_many_requests(1)).times(2));
    let started = std::time::Instant::now();
    let out = env.haul(&["push", &reference]);
    assert_ok(&out);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was not waited out"
    );
    let inspected = haul_testkit::skopeo::skopeo_inspect(&target, "library/big:1").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    env.assert_store_invariants();
}

#[test]
fn a_push_outliving_its_token_gets_a_new_one() {
    use haul_testkit::fault_proxy::{Fault, Match, Rule};
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (_built, proxy) = pulled_big_image(&env);
    // The registry refuses a token after 2 s while the token server says
    // 300 s, so haul keeps using it until the registry answers 401.
    let mut config = RegistryConfig::token().with_token_lifetime(2);
    config.token.exact_expiry = true;
    config.token.advertised_lifetime_secs = Some(300);
    let target = Registry::start(config).unwrap();
    let (target_proxy, reference) = tagged_for(&env, &proxy, &target, "slow/big:1");
    let user = target.credentials().unwrap();
    assert_ok(
        &haul_command(
            env.root.path(),
            &[
                "login",
                &target_proxy.authority(),
                "-u",
                &user.username,
                "-p",
                &user.password,
            ],
        )
        .output()
        .unwrap(),
    );
    // Each layer's existence check is answered 429 (Retry-After: 1) once,
    // one layer at a time: the push lasts well past the token's 2 s.
    target_proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("HEAD"),
            Fault::too_many_requests(1),
        )
        .times(4),
    );
    let out = env.haul(&["--max-concurrent-uploads", "1", "push", &reference]);
    assert_ok(&out);
    // Tokens are cached for the 300 s announced: a scope asked for twice
    // means the registry refused its token mid-push and haul got a new one.
    let scopes: Vec<Vec<String>> = target
        .token_server()
        .unwrap()
        .issued_tokens()
        .into_iter()
        .map(|t| t.requested_scopes)
        .filter(|s| s.iter().any(|s| s.contains("slow/big")))
        .collect();
    let mut distinct = scopes.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        scopes.len() > distinct.len(),
        "no token was fetched again after expiring: {scopes:?}"
    );
    env.assert_store_invariants();
}

/// Ctrl-C stops a push; a second Ctrl-C ends the process at once, even
/// while it waits for an answer the first one could not cut short (here
/// the registry holds its answer to the manifest upload).
#[test]
fn a_second_interrupt_ends_a_push_at_once() {
    use haul_testkit::fault_proxy::{Fault, Match, Rule};
    use std::time::{Duration, Instant};
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (_, source) = pulled_big_image(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let (proxy, reference) = tagged_for(&env, &source, &target, "team/big:1");
    let gate = haul_testkit::Gate::new();
    proxy.add_rule(Rule::new(
        Match::path_contains("/manifests/").method("PUT"),
        Fault::HoldRequest(gate.clone()),
    ));
    let outputs = env.dir("out");
    std::fs::create_dir_all(&outputs).unwrap();
    let mut child = haul_command(
        env.root.path(),
        &["--progress", "plain", "push", &reference],
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::fs::File::create(outputs.join("stdout")).unwrap())
    .stderr(std::fs::File::create(outputs.join("stderr")).unwrap())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while proxy.count_matching("PUT", "/manifests/") == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no manifest PUT");
        std::thread::sleep(Duration::from_millis(10));
    }
    let interrupt = || {
        let status = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    interrupt();
    std::thread::sleep(Duration::from_millis(300));
    interrupt();
    let second = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if second.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    gate.open();
    let status = status.expect("the second interrupt ends haul at once");
    assert!(!status.success());
    assert!(
        second.elapsed() < Duration::from_secs(1),
        "ended {:?} after the second interrupt",
        second.elapsed()
    );
}
