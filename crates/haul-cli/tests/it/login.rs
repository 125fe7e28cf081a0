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

/// Runs `haul login HOST` on a pseudo-terminal (python's `pty`), answering
/// the prompts like a user: the transcript (what the terminal showed) and
/// the exit code.
fn login_on_a_terminal(
    docker_config: &std::path::Path,
    host: &str,
    username: &str,
    password: &str,
) -> Option<(String, i32)> {
    const SCRIPT: &str = r#"
import os, pty, select, sys, termios, time
haul, host, user, password, config = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.environ["DOCKER_CONFIG"] = config
    os.execv(haul, [haul, "login", host])
seen = b""
def read_until(token, timeout=20):
    global seen
    end = time.time() + timeout
    while token is None or token not in seen:
        ready, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not ready:
            if token is None:
                return
            sys.stdout.write(seen.decode("utf-8", "replace"))
            sys.exit(90)
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk
read_until(b"Username: ")
os.write(fd, user.encode() + b"\n")
read_until(b"Password: ")
# Type once the prompt has turned echo off, as a person would after
# reading it (typed-ahead input would be echoed by any program).
end = time.time() + 10
while termios.tcgetattr(fd)[3] & termios.ECHO and time.time() < end:
    time.sleep(0.01)
os.write(fd, password.encode() + b"\n")
read_until(None)
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let python = match Command::new("python3").arg("--version").output() {
        Ok(_) => "python3",
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 is needed for the pseudo-terminal test"
            );
            eprintln!("skipping: python3 is not installed");
            return None;
        }
    };
    let out = Command::new(python)
        .args([
            "-c",
            SCRIPT,
            env!("CARGO_BIN_EXE_haul"),
            host,
            username,
            password,
        ])
        .arg(docker_config)
        .output()
        .expect("python3 runs");
    Some((text(&out.stdout), out.status.code().unwrap_or(-1)))
}

#[test]
fn login_on_a_terminal_prompts_for_the_password_without_echo() {
    if haul_testkit::peers::require_docker_registry().is_none() {
        return;
    }
    let registry = Registry::start(RegistryConfig::htpasswd()).unwrap();
    let host = registry.host();
    let user = registry.credentials().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();

    let Some((shown, code)) = login_on_a_terminal(dir.path(), &host, &user.username, "wrong-pass")
    else {
        return;
    };
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("Password: "), "{shown}");
    assert!(
        !shown.contains("wrong-pass"),
        "the password was echoed: {shown}"
    );
    assert!(
        shown.contains("unauthorized: incorrect username or password"),
        "{shown}"
    );
    assert!(
        !shown.contains("haul login"),
        "no advice to run what was just run: {shown}"
    );

    let (shown, code) =
        login_on_a_terminal(dir.path(), &host, &user.username, &user.password).unwrap();
    assert_eq!(code, 0, "{shown}");
    assert!(
        !shown.contains(&user.password),
        "the password was echoed: {shown}"
    );
    assert!(shown.contains("Login Succeeded"), "{shown}");
    assert!(
        shown.contains("stored unencrypted") && shown.contains("config.json"),
        "the unencrypted storage is said: {shown}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert!(stored["auths"][&host]["auth"].is_string(), "{stored}");
}
