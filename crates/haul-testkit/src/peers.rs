//! Checking that the external peers (docker-registry, skopeo, umoci) exist.

use std::path::{Path, PathBuf};

/// Finds `name` in `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when running under CI (`CI=true` or `CI=1`), where a missing peer is
/// a failure, never a skip.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1") | Ok("yes")
    )
}

/// Returns the path of `name`, or decides what a test should do without it.
///
/// Under CI a missing binary panics with the `apt-get install` line to fix
/// it. Elsewhere it prints a loud SKIP line to stderr and returns `None`, so
/// that the test can return early (see [`require_peer!`](crate::require_peer)).
// Test support: a skipped test must say so loudly on the test's stderr.
#[allow(clippy::print_stderr)]
pub fn require_binary(name: &str, debian_package: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(name) {
        return Some(path);
    }
    let fix = format!("apt-get install -y {debian_package}");
    if in_ci() {
        panic!("required test peer `{name}` is missing under CI; install it with `{fix}`");
    }
    eprintln!(
        "\n======== SKIP: `{name}` not found in PATH; this test did not run. Install it with `{fix}` ========\n"
    );
    None
}

/// `docker-registry` (Debian package `docker-registry`).
pub fn require_docker_registry() -> Option<PathBuf> {
    require_binary("docker-registry", "docker-registry")
}

/// `skopeo` (Debian package `skopeo`).
pub fn require_skopeo() -> Option<PathBuf> {
    require_binary("skopeo", "skopeo")
}

/// `umoci` (Debian package `umoci`).
pub fn require_umoci() -> Option<PathBuf> {
    require_binary("umoci", "umoci")
}

/// Returns early from the calling test (which must return `()`) when a peer
/// is missing outside CI; panics under CI.
///
/// ```no_run
/// # fn t() {
/// haul_testkit::require_peer!("skopeo");
/// haul_testkit::require_peer!("docker-registry", "docker-registry");
/// # }
/// ```
#[macro_export]
macro_rules! require_peer {
    ($name:expr) => {
        $crate::require_peer!($name, $name)
    };
    ($name:expr, $package:expr) => {
        match $crate::peers::require_binary($name, $package) {
            Some(path) => path,
            None => return,
        }
    };
}

/// Runs `command`, returning its stdout; a non-zero exit is an
/// [`Error::Command`](crate::Error::Command) carrying stderr.
pub(crate) fn run_command(mut command: std::process::Command) -> crate::Result<Vec<u8>> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| crate::Error::Io {
            context: format!("running {shown}"),
            source,
        })?;
    if !output.status.success() {
        return Err(crate::Error::Command {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}

/// Finds `name` or fails with [`Error::MissingBinary`](crate::Error::MissingBinary).
pub(crate) fn binary(name: &str, package: &str) -> crate::Result<PathBuf> {
    find_binary(name).ok_or_else(|| crate::Error::MissingBinary {
        name: name.into(),
        package: package.into(),
    })
}
