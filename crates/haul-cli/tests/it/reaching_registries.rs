//! Reaching registries as users expect: unreachable registries fail at
//! once with a sentence naming the host and the cause, a v2 registry gets
//! no v1 request, and credentials go only where a challenge asked for them.

use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{sample_image, RegistryConfig};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs haul, returning its output and how long it took.
fn timed(root: &std::path::Path, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = haul_in(root, args);
    (out, started.elapsed())
}

#[track_caller]
fn assert_fails_fast(out: &std::process::Output, took: Duration, expected: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}, expected under 1 s; stderr: {}",
        stderr(out)
    );
    let text = stderr(out);
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in stderr: {text}");
    }
    assert_eq!(text.trim_end().lines().count(), 1, "one sentence: {text}");
    assert!(!text.contains("internal error"), "{text}");
}

#[test]
fn pull_from_a_closed_port_fails_in_under_a_second_naming_the_host() {
    let root = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", closed_port());
    for protocol in ["auto", "v2", "v1"] {
        let (out, took) = timed(
            root.path(),
            &["pull", "--protocol", protocol, &format!("{host}/x:1")],
        );
        assert_fails_fast(&out, took, &[&host, "connection refused"]);
    }
}

#[test]
fn pull_from_an_unknown_host_fails_in_under_a_second_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let (out, took) = timed(root.path(), &["pull", "no-such-registry.invalid/x:1"]);
    assert_fails_fast(
        &out,
        took,
        &[
            "no-such-registry.invalid",
            "unknown host no-such-registry.invalid",
        ],
    );
}

#[test]
fn a_registry_answering_500_to_everything_fails_quickly_with_the_status() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(Match::any(), Fault::status(500)));
    let host = proxy.authority();
    let started = Instant::now();
    let out = env.haul(&["pull", &format!("{host}/x:1")]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let text = stderr(&out);
    assert!(text.contains(&host) && text.contains("500"), "{text}");
    assert!(
        proxy.count_matching("GET", "/v2/") <= 2,
        "the probe is asked at most twice: {:?}",
        proxy.requests()
    );
    assert_eq!(proxy.count_matching("*", "/v1/"), 0);
}

#[test]
fn auto_protocol_sends_no_v1_request_to_a_v2_registry_and_probes_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    env.put_image(&sample_image(), "team/app:2");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let host = proxy.authority();
    let out = env.haul(&[
        "pull",
        &format!("{host}/team/app:1"),
        &format!("{host}/team/app:2"),
    ]);
    assert_ok(&out);
    assert_ok(&env.haul(&[
        "tag",
        &format!("{host}/team/app:1"),
        &format!("{host}/team/copy:1"),
    ]));
    assert_ok(&env.haul(&["push", &format!("{host}/team/copy:1")]));
    let requests = proxy.requests();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert!(
        !paths.iter().any(|p| p.starts_with("/v1/")),
        "no /v1/ request: {paths:#?}"
    );
    assert_eq!(
        paths.iter().filter(|p| **p == "/v2/").count(),
        2,
        "one probe per command (pull of two references, push): {paths:#?}"
    );
}

/// A Docker config that holds the test user's password for `host`.
fn docker_config_with_password(dir: &std::path::Path, host: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode("testuser:testpass");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
}

#[test]
fn a_token_registry_never_receives_basic_credentials_during_pull_and_push() {
    let Some(env) = Env::start(RegistryConfig::token()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let host = proxy.authority();
    let docker_config = env.dir("docker-config");
    docker_config_with_password(&docker_config, &host);
    let run = |args: &[&str]| {
        let out = haul_command(env.root.path(), args)
            .env("DOCKER_CONFIG", &docker_config)
            .output()
            .unwrap();
        assert_ok(&out);
    };
    run(&["pull", &format!("{host}/team/app:1")]);
    run(&[
        "tag",
        &format!("{host}/team/app:1"),
        &format!("{host}/team/pushed:1"),
    ]);
    run(&["push", &format!("{host}/team/pushed:1")]);

    let requests = proxy.requests();
    let basic: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("basic"))
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        basic.is_empty(),
        "Basic credentials were sent to: {basic:#?}"
    );
    assert!(
        requests.iter().any(|r| r
            .header("authorization")
            .is_some_and(|v| v.starts_with("Bearer "))),
        "the pull and push used tokens: {requests:#?}"
    );
    let probes: Vec<_> = requests.iter().filter(|r| r.path == "/v2/").collect();
    assert!(
        probes.iter().all(|r| r.header("authorization").is_none()),
        "probes carry no credentials: {probes:#?}"
    );
}
