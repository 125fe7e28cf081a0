//! `haul push` and `haul copy docker:// docker://` through a connection
//! cut in the middle of an upload: the registry (distribution 2.8) drops
//! the session, haul starts a fresh one as a retry of that layer (with its
//! countdown) and ends with the source digest on the target, having sent
//! little more than the image.

use crate::common::*;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::image::BuiltImage;
use haul_testkit::{sample_image, Entry, LayerSpec, Registry, RegistryConfig};

/// Bytes of the big layer.
const BIG: u64 = 3_000_000;
/// Chunk size of the chunked runs.
const CHUNK: u64 = 500_000;
/// Where the connection is cut within the request.
const CUT: u64 = 250_000;

/// The image: the sample plus a 3 MB layer of random bytes, in `env`'s
/// registry as `library/big:1`.
fn big_image(env: &Env) -> BuiltImage {
    let image = sample_image().layer(LayerSpec::gzip(vec![Entry::random("big", 0o644, BIG, 8)]));
    env.put_image(&image, "library/big:1")
}

fn image_bytes(built: &BuiltImage) -> u64 {
    built.layers.iter().map(|l| l.blob.size).sum::<u64>() + built.config.size
}

fn uploaded(proxy: &FaultProxy) -> u64 {
    proxy.request_bytes_matching("PATCH", "/blobs/uploads/")
        + proxy.request_bytes_matching("PUT", "/blobs/uploads/")
}

/// How a cut upload is sent: chunked or in one PUT.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Chunked,
    Monolithic,
}

/// The rule cutting the big layer's upload `CUT` bytes into the request
/// carrying its bytes.
fn cut_rule(built: &BuiltImage, mode: Mode) -> Rule {
    let big = &built.layers.last().unwrap().blob.digest;
    let matcher = match mode {
        // The first PATCH of any layer above the chunk size.
        Mode::Chunked => Match::path_contains("/blobs/uploads/").method("PATCH"),
        Mode::Monolithic => {
            Match::path_contains(format!("digest={}", big.replace(':', "%3A"))).method("PUT")
        }
    };
    Rule::new(matcher, Fault::DropRequestAfterBytes(CUT)).once()
}

/// Runs `args` with fast countdowns and, when chunked, small chunks.
fn run(env: &Env, mode: Mode, args: &[&str]) -> std::process::Output {
    let mut command = haul_command(env.root.path(), args);
    command.env("HAUL_RETRY_TICK_MS", "1");
    if let Mode::Chunked = mode {
        command.env("HAUL_PUSH_CHUNK_BYTES", CHUNK.to_string());
    }
    command.output().unwrap()
}

/// What every cut upload must show: success, one visible retry of the big
/// layer, the source's digest on the target, and at most the image again
/// by `CUT` bytes (the session the registry dropped), well under 1.2x.
fn assert_survived(
    out: &std::process::Output,
    built: &BuiltImage,
    proxy: &FaultProxy,
    target: &Registry,
    name: &str,
    id: Option<&str>,
) {
    assert_ok(out);
    assert_eq!(proxy.rule_uses(), vec![1], "the cut happened once");
    let text = stdout(out);
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(": Retrying in 5 seconds"))
        .collect();
    assert_eq!(
        retries.len(),
        1,
        "the cut is one visible retry of one layer:\n{text}"
    );
    if let Some(id) = id {
        assert!(retries[0].starts_with(id), "{text}");
    }
    let inspected = haul_testkit::skopeo::skopeo_inspect(target, name).unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    let sent = uploaded(proxy);
    let image = image_bytes(built);
    // The proxy counts the whole frame that crossed the cut: up to one
    // 256 KiB read buffer of the client more.
    assert!(
        sent <= image + CUT + 256 * 1024,
        "sent {sent} bytes for an image of {image}: more than the cut session again"
    );
    assert!(
        sent as f64 <= 1.2 * image as f64,
        "sent {sent} bytes for an image of {image} (over 1.2x)"
    );
}

fn push_survives_a_cut(mode: Mode) {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = big_image(&env);
    assert_ok(&env.haul(&["pull", &env.reference("library/big:1")]));
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let reference = format!("{}/library/big:1", proxy.authority());
    assert_ok(&env.haul(&["tag", &env.reference("library/big:1"), &reference]));
    proxy.add_rule(cut_rule(&built, mode));

    let out = run(&env, mode, &["--progress", "plain", "push", &reference]);
    let id = short(&built.layers.last().unwrap().diff_id).to_string();
    let id = matches!(mode, Mode::Monolithic).then_some(id.as_str());
    assert_survived(&out, &built, &proxy, &target, "library/big:1", id);
}

fn copy_survives_a_cut(mode: Mode) {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = big_image(&env);
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    proxy.add_rule(cut_rule(&built, mode));

    let out = run(
        &env,
        mode,
        &[
            "--progress",
            "plain",
            "copy",
            &format!("docker://{}", env.reference("library/big:1")),
            &format!("docker://{}/library/big:1", proxy.authority()),
        ],
    );
    let id = short(&built.layers.last().unwrap().blob.digest).to_string();
    let id = matches!(mode, Mode::Monolithic).then_some(id.as_str());
    assert_survived(&out, &built, &proxy, &target, "library/big:1", id);
}

#[test]
fn push_survives_a_connection_cut_mid_patch() {
    push_survives_a_cut(Mode::Chunked);
}

#[test]
fn push_survives_a_connection_cut_mid_monolithic_put() {
    push_survives_a_cut(Mode::Monolithic);
}

#[test]
fn copy_survives_a_connection_cut_mid_patch() {
    copy_survives_a_cut(Mode::Chunked);
}

#[test]
fn copy_survives_a_connection_cut_mid_monolithic_put() {
    copy_survives_a_cut(Mode::Monolithic);
}

#[test]
fn a_killed_push_run_again_continues_the_session_it_recorded() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = big_image(&env);
    assert_ok(&env.haul(&["pull", &env.reference("library/big:1")]));
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let reference = format!("{}/library/big:1", proxy.authority());
    assert_ok(&env.haul(&["tag", &env.reference("library/big:1"), &reference]));
    // The big layer goes first; its third chunk is held until haul dies,
    // so the registry holds exactly two chunks of a live session.
    proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/uploads/").method("PATCH"),
            Fault::DelayRequest(std::time::Duration::from_secs(120)),
        )
        .after(2)
        .once(),
    );
    let args = ["--max-concurrent-uploads", "1", "push", reference.as_str()];
    let mut first = haul_command(env.root.path(), &args)
        .env("HAUL_PUSH_CHUNK_BYTES", CHUNK.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while proxy.rule_uses() != vec![1] {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the third chunk never came"
        );
        assert!(first.try_wait().unwrap().is_none(), "the push ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let records = std::fs::read_dir(env.root.path().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 1, "the open session was recorded");
    proxy.clear_rules();
    proxy.reset_counters();

    let out = run(
        &env,
        Mode::Chunked,
        &["--max-concurrent-uploads", "1", "push", &reference],
    );
    assert_ok(&out);
    let inspected = haul_testkit::skopeo::skopeo_inspect(&target, "library/big:1").unwrap();
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    assert!(
        proxy.count_matching("GET", "/blobs/uploads/") >= 1,
        "the registry was asked where the recorded session stands"
    );
    let sent = uploaded(&proxy);
    let image = image_bytes(&built);
    assert!(
        sent <= image - 2 * CHUNK,
        "the rerun sent {sent} bytes of an image of {image}: the two chunks the registry held went again"
    );
    let left = std::fs::read_dir(env.root.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "finished uploads are forgotten");
}
