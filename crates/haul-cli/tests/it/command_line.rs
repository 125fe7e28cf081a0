//! The `haul` binary's surface: help, version and usage errors.

use std::process::{Command, Output};

fn haul(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haul"))
        .args(args)
        .env_remove("HAUL_ROOT")
        .output()
        .expect("the haul binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_command_of_the_design() {
    let out = haul(&["--help"]);
    assert!(out.status.success(), "haul --help failed: {}", stderr(&out));
    let help = stdout(&out);
    for command in [
        "pull", "push", "copy", "images", "inspect", "tag", "rmi", "gc", "export", "save", "load",
        "login", "logout", "version",
    ] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "`haul --help` does not list `{command}`:\n{help}"
        );
    }
}

#[test]
fn help_lists_the_global_options() {
    let help = stdout(&haul(&["--help"]));
    for option in [
        "--root",
        "--progress",
        "--quiet",
        "--platform",
        "--insecure-registry",
        "--max-concurrent-downloads",
        "--max-concurrent-uploads",
        "--max-download-attempts",
        "--verbose",
    ] {
        assert!(
            help.contains(option),
            "`haul --help` lacks {option}:\n{help}"
        );
    }
}

#[test]
fn version_command_prints_name_crate_version_and_commit() {
    let out = haul(&["version"]);
    assert!(
        out.status.success(),
        "haul version failed: {}",
        stderr(&out)
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    assert!(head.status.success(), "the tests run from a git checkout");
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(
        stdout(&out).trim(),
        format!("haul {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completion_scripts_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = haul(&["completion", shell]);
        assert!(out.status.success(), "completion {shell}: {}", stderr(&out));
        let script = stdout(&out);
        for command in ["pull", "push", "copy", "save", "load", "login"] {
            assert!(
                script.contains(command),
                "the {shell} completion lacks `{command}`"
            );
        }
    }
    let out = haul(&["completion", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn manpage_is_roff_naming_the_commands() {
    let out = haul(&["manpage"]);
    assert!(out.status.success(), "manpage: {}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH haul 1"), "not a roff man page:\n{page}");
    for command in ["pull", "push", "copy", "export"] {
        assert!(page.contains(command), "the man page lacks `{command}`");
    }
}

#[test]
fn unknown_command_is_a_usage_error_with_exit_code_2() {
    let out = haul(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("frobnicate"),
        "the error should name the unknown command: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_code_2() {
    let out = haul(&["pull", "--no-such-flag", "alpine"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
}

#[test]
fn bad_flag_value_is_a_usage_error_with_exit_code_2() {
    let out = haul(&["--progress", "fancy", "images"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let out = haul(&["--max-download-attempts", "0", "images"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
}

#[test]
fn missing_argument_is_a_usage_error_with_exit_code_2() {
    let out = haul(&["pull"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let out = haul(&[]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
}

#[test]
fn a_bad_reference_is_named_once() {
    let root = tempfile::tempdir().unwrap();
    let out = haul(&["--root", root.path().to_str().unwrap(), "pull", "bad ref"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("invalid reference").count(), 1, "{err}");
    assert!(err.contains("\"bad ref\""), "{err}");
}
