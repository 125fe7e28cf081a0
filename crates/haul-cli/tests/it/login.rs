//! `haul login` / `haul logout` against the real registry.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use haul_testkit::{Registry, RegistryConfig};

fn haul(docker_config: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haul"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haul runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_login_cycle(config: RegistryConfig) {
    if haul_testkit::peers::require_docker_registry().is_none() {
        return;
    }
    let registry = Registry::start(config).unwrap();
    let host = registry.host();
    let user = registry.credentials().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config.json");

    let out = haul(
        dir.path(),
        &["login", &host, "-u", &user.username, "--password-stdin"],
        "wrong-password\n",
    );
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(&host) && err.contains("unauthorized"), "{err}");
    assert!(
        !err.contains("wrong-password"),
        "the password was printed: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err}");
    assert!(
        !config_file.exists(),
        "nothing is stored after a failed login"
    );

    let out = haul(
        dir.path(),
        &["login", &host, "-u", &user.username, "--password-stdin"],
        &format!("{}\n", user.password),
    );
    assert!(out.status.success(), "login failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "Login Succeeded");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    let auth = stored["auths"][&host]["auth"].as_str().unwrap();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    assert_eq!(
        text(&decoded),
        format!("{}:{}", user.username, user.password)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "config.json must be private");

    let out = haul(dir.path(), &["logout", &host], "");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("Removing login credentials for {host}")
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    assert!(stored["auths"].get(&host).is_none(), "{stored}");
    let out = haul(dir.path(), &["logout", &host], "");
    assert_eq!(text(&out.stdout).trim(), format!("Not logged in to {host}"));
}

#[test]
fn login_and_logout_with_basic_auth() {
    check_login_cycle(RegistryConfig::htpasswd());
}

#[test]
fn login_and_logout_with_token_auth() {
    check_login_cycle(RegistryConfig::token());
}

#[test]
fn login_without_a_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = haul(dir.path(), &["login", "127.0.0.1:1", "-u", "x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--password-stdin"),
        "{}",
        text(&out.stderr)
    );
}
