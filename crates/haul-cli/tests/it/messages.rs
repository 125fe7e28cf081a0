//! What users read, as reviewed snapshots: the one-sentence errors of
//! `haul` for the failures people meet (connection refused, unknown host,
//! 401, 404, 500, a corrupted layer, a full disk), and the plain and JSON
//! progress of a small pull and push. Ports, digests, ids, sizes, temp
//! paths and times are filtered out, so a snapshot changes only when the
//! wording does.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{Entry, ImageBuilder, LayerSpec, RegistryConfig};

/// The filters every snapshot of this file uses.
fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    for (pattern, replacement) in [
        (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
        (r"\b[0-9a-f]{12}\b", "[ID]"),
        (r"(127\.0\.0\.1|localhost):\d+", "127.0.0.1:[PORT]"),
        (r"/tmp/[^\s:,]+", "[TMP]"),
        (r"\b\d+(\.\d+)?(B|kB|MB|GB)\b", "[SIZE]"),
        (r#""(current|total)":\d+"#, r#""$1":[N]"#),
        (r#""progress":"[^"]*""#, r#""progress":"[BAR]""#),
        (r"\b\d+(\.\d+)?(ms|µs|s)\b", "[TIME]"),
        (r"size: \d+", "size: [N]"),
    ] {
        settings.add_filter(pattern, replacement);
    }
    settings
}

fn small_image(seed: u64) -> ImageBuilder {
    ImageBuilder::new().layer(LayerSpec::gzip(vec![
        Entry::dir("etc", 0o755),
        Entry::random("etc/data", 0o644, 30_000, seed),
    ]))
}

/// stderr of a failed run, which must be one line and exit code 1.
#[track_caller]
fn error_of(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("internal error"), "{err}");
    err.trim().to_string()
}

/// Runs haul in a private mount namespace (root only) after `setup` (a
/// shell line) ran there: for a name service without DNS, or a tiny disk.
fn haul_in_namespace(root: &Path, setup: &str, args: &[&str]) -> Option<Output> {
    let usable = Command::new("unshare")
        .args(["--mount", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        assert!(
            !haul_testkit::peers::in_ci(),
            "unshare --mount is needed (as root) under CI"
        );
        eprintln!("SKIPPED: unshare --mount does not work here");
        return None;
    }
    let plain = haul_command(root, args);
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--", "sh", "-c"])
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh")
        .arg(plain.get_program())
        .args(plain.get_args());
    for (key, value) in plain.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    Some(command.output().expect("unshare runs"))
}

#[test]
fn error_sentences() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&small_image(1), "library/small:1");
    let blob = built.layers[0].blob.digest.clone();
    let mut sentences: Vec<(&str, String)> = Vec::new();

    // Connection refused: a port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = env.haul(&["pull", &format!("127.0.0.1:{port}/library/small:1")]);
    sentences.push(("connection refused", error_of(&out)));

    // Unknown host: a name under .invalid, resolved with files only (no
    // DNS query leaves the machine).
    let nss = env.dir("nsswitch.conf");
    std::fs::write(&nss, "hosts: files\n").unwrap();
    let setup = format!("mount --bind {} /etc/nsswitch.conf", nss.display());
    if let Some(out) = haul_in_namespace(
        env.root.path(),
        &setup,
        &["pull", "registry.haul-test.invalid/library/small:1"],
    ) {
        sentences.push(("unknown host", error_of(&out)));
    }

    // 404: a tag the repository does not have.
    let out = env.haul(&["pull", &env.reference("library/small:missing")]);
    sentences.push(("404 manifest unknown", error_of(&out)));

    // 500 on the layer, one attempt.
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(blob.as_str()).method("GET"),
        Fault::status(500),
    ));
    let through = format!("{}/library/small:1", proxy.authority());
    let out = env.haul(&["--max-download-attempts", "1", "pull", &through]);
    sentences.push(("500 on a layer", error_of(&out)));

    // A corrupted layer: tried twice, then refused.
    proxy.clear_rules();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(blob.as_str()).method("GET"),
        Fault::FlipByte { offset: 100 },
    ));
    let out = haul_command(env.root.path(), &["pull", &through])
        .env("HAUL_RETRY_TICK_MS", "1")
        .output()
        .unwrap();
    sentences.push(("digest mismatch", error_of(&out)));

    // A full disk: the store on a 256 KiB tmpfs, the layer a bigger one.
    let big = env.put_image(
        &ImageBuilder::new().layer(LayerSpec::gzip(vec![Entry::random(
            "big", 0o644, 1_000_000, 2,
        )])),
        "library/big:1",
    );
    assert!(big.layers[0].blob.size > 256 * 1024);
    let tiny = env.dir("tiny-root");
    std::fs::create_dir_all(&tiny).unwrap();
    let setup = format!("mount -t tmpfs -o size=256k tmpfs {}", tiny.display());
    if let Some(out) = haul_in_namespace(&tiny, &setup, &["pull", &env.reference("library/big:1")])
    {
        sentences.push(("disk full", error_of(&out)));
    }

    // 401: a registry that wants credentials, asked without any.
    let auth = Env::start(RegistryConfig::htpasswd()).unwrap();
    auth.put_image(&small_image(3), "library/private:1");
    let out = env.haul(&["pull", &auth.reference("library/private:1")]);
    sentences.push(("401 unauthorized", error_of(&out)));

    let text: String = sentences
        .iter()
        .map(|(case, sentence)| format!("{case}:\n  {sentence}\n"))
        .collect();
    settings().bind(|| insta::assert_snapshot!("error_sentences", text));
}

#[test]
fn progress_of_a_small_pull_and_push() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(other) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&small_image(4), "library/small:1");
    let reference = env.reference("library/small:1");
    for mode in ["plain", "json"] {
        let target = other.reference(&format!("team/small-{mode}:1"));
        let root = env.dir(&format!("root-{mode}"));
        let pull = haul_in(&root, &["--progress", mode, "pull", &reference]);
        assert_ok(&pull);
        assert_ok(&haul_in(&root, &["tag", &reference, &target]));
        let push = haul_in(&root, &["--progress", mode, "push", &target]);
        assert_ok(&push);
        let text = format!(
            "$ haul --progress {mode} pull REF\n{}$ haul --progress {mode} push TARGET\n{}",
            collapse_counts(&stdout(&pull)),
            collapse_counts(&stdout(&push))
        );
        settings().bind(|| insta::assert_snapshot!(format!("progress_{mode}"), text));
    }
}

/// Keeps the first of consecutive JSON records with the same id and
/// status: how many byte counts a transfer reports depends on how the
/// bytes arrived, not on what users read.
fn collapse_counts(output: &str) -> String {
    let mut kept = String::new();
    let mut previous: Option<(String, String)> = None;
    for line in output.lines() {
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .map(|v| (v["id"].to_string(), v["status"].to_string()));
        if key.is_some() && key == previous {
            continue;
        }
        previous = key;
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}
