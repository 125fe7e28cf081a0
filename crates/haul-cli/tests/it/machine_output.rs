//! Output for machines and pipes: `--progress json` is a stream of Docker
//! JSON messages and nothing else, failures and results included; a closed
//! stdout ends the output quietly; logs show probes, retries and requests
//! (never a secret) and carry no colour codes off a terminal.

use std::io::Read;
use std::process::Stdio;

use crate::common::*;
use base64::Engine;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{sample_image, RegistryConfig};
use serde_json::Value;

/// Every stdout line parsed as a JSON object (what `jq -c .` checks).
#[track_caller]
fn json_lines(out: &std::process::Output) -> Vec<Value> {
    let text = stdout(out);
    assert!(!text.is_empty(), "no output; stderr: {}", stderr(out));
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nin:\n{text}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

#[test]
fn json_progress_of_pull_push_and_copy_is_json_lines_ending_with_a_result() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "team/app:1");
    let source = env.reference("team/app:1");

    let out = env.haul(&["--progress", "json", "pull", &source]);
    assert_ok(&out);
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|l| l["status"] == "Pull complete"),
        "{lines:#?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(
        last["aux"]["Digest"],
        built.manifest.digest.as_str(),
        "{last}"
    );
    assert_eq!(last["aux"]["Reference"], source.as_str(), "{last}");

    let target = env.reference("team/pushed:7");
    assert_ok(&env.haul(&["tag", &source, &target]));
    let out = env.haul(&["--progress", "json", "push", &target]);
    assert_ok(&out);
    let lines = json_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(
        last["aux"],
        serde_json::json!({
            "Tag": "7",
            "Digest": built.manifest.digest.as_str(),
            "Size": built.manifest_bytes.len(),
        }),
        "{lines:#?}"
    );

    let copied = env.reference("team/copied:1");
    let out = env.haul(&["--progress", "json", "copy", &source, &copied]);
    assert_ok(&out);
    let lines = json_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(
        last["aux"]["Digest"],
        built.manifest.digest.as_str(),
        "{last}"
    );
}

#[test]
fn json_progress_of_a_failure_ends_with_a_docker_error_object() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let missing = env.reference("team/absent:1");
    let out = env.haul(&["--progress", "json", "pull", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let last = lines.last().unwrap();
    let message = last["error"].as_str().expect("an error field");
    assert!(message.contains("team/absent"), "{last}");
    assert_eq!(last["errorDetail"]["message"], message);
    assert!(stderr(&out).contains(message), "stderr keeps the sentence");

    // Also when nothing answers at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = env.haul(&["--progress", "json", "push", &format!("{closed}/x:1")]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert!(lines.last().unwrap()["error"].is_string(), "{lines:#?}");
}

/// Runs haul with its stdout a pipe whose reader is already gone.
fn run_with_closed_stdout(env: &Env, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = haul_command(env.root.path(), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn a_closed_stdout_ends_pull_and_images_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    let reference = env.reference("team/app:1");
    for args in [
        vec!["--progress", "plain", "pull", reference.as_str()],
        vec!["images"],
        vec!["--progress", "json", "pull", reference.as_str()],
    ] {
        let (status, err) = run_with_closed_stdout(&env, &args);
        let quiet =
            status.code() == Some(0) || status.code() == Some(141) || status.signal() == Some(13);
        assert!(quiet, "haul {args:?} exited {status}; stderr: {err}");
        assert!(!err.contains("panicked"), "haul {args:?}: {err}");
    }
}

#[test]
fn verbose_logs_show_probes_retries_and_requests_without_secrets_or_colour() {
    let Some(env) = Env::start(RegistryConfig::htpasswd()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(Match::path_contains("/manifests/"), Fault::status(503)).once());
    let host = proxy.authority();
    let docker_config = env.dir("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("testuser:testpass");
    std::fs::write(
        docker_config.join("config.json"),
        serde_json::json!({"auths": {&host: {"auth": &auth}}}).to_string(),
    )
    .unwrap();
    let pull = |verbosity: &str, reference: &str| {
        let out = haul_command(env.root.path(), &[verbosity, "pull", reference])
            .env("DOCKER_CONFIG", &docker_config)
            .env_remove("HAUL_LOG")
            .output()
            .unwrap();
        assert_ok(&out);
        stderr(&out)
    };

    let log = pull("-v", &format!("{host}/team/app:1"));
    assert!(
        log.contains(&format!("probing GET http://{host}/v2/")),
        "{log}"
    );
    assert!(
        log.contains("failed (attempt 1 of") && log.contains("retrying in"),
        "the 503 retry is shown: {log}"
    );

    let log = pull("-vv", &format!("{host}/team/app:1"));
    assert!(log.contains("authorization: <redacted>"), "{log}");
    assert!(!log.contains(&auth) && !log.contains("testpass"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes off a terminal: {log}"
    );
}
