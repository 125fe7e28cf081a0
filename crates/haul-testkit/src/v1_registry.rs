//! The two real v1 registries of `../shared/peers/v1-registry` (the
//! original Python `docker-registry` 0.9.1 and the Node
//! `docker-registry-server` 2.2.0), started on 127.0.0.1 with an ephemeral
//! port.
//!
//! Setup runs once per machine into a cache directory
//! (`$HAUL_V1_PEERS_CACHE`, default `/tmp/haul-v1-peers`), under a file lock
//! so that parallel tests do not race; the scripts are idempotent. Each
//! [`V1Registry`] gets its own data directory (the set-up tree is linked
//! into it), so servers never share images; it is killed and removed on
//! drop. Missing prerequisites skip loudly outside CI and panic under
//! `CI=true` (see [`V1Registry::start`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Which v1 server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Kind {
    /// The original Python registry (strict: 409 for complete images).
    Python,
    /// The Node registry (lenient: accepts re-pushes, ignores Range).
    Node,
}

impl V1Kind {
    fn dir_name(self) -> &'static str {
        match self {
            V1Kind::Python => "python",
            V1Kind::Node => "node",
        }
    }
}

/// A running v1 registry.
pub struct V1Registry {
    kind: V1Kind,
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

/// Where the peers' scripts are: `$HAUL_V1_PEERS_DIR`, else
/// `../shared/peers/v1-registry` from the workspace root.
pub fn peers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HAUL_V1_PEERS_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/v1-registry")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HAUL_V1_PEERS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/haul-v1-peers"))
}

/// Skips (outside CI) or panics (under CI) for a missing prerequisite.
// Test support: a skipped test must say so loudly on the test's stderr.
#[allow(clippy::print_stderr)]
fn missing(what: &str, fix: &str) -> Option<V1Registry> {
    if crate::peers::in_ci() {
        panic!("v1 registry peer unavailable under CI: {what}; {fix}");
    }
    eprintln!("\n======== SKIP: {what}; this test did not run. {fix} ========\n");
    None
}

impl V1Registry {
    /// Starts a server of `kind`, setting it up first if needed.
    /// `Ok(None)`: a prerequisite is missing outside CI (a SKIP line was
    /// printed); under CI that panics with what to install.
    pub fn start(kind: V1Kind) -> Result<Option<V1Registry>> {
        Self::start_with_env(kind, &[])
    }

    /// Like [`V1Registry::start`], with extra environment for `run.sh`
    /// (e.g. `V1_ENDPOINTS`, `V1_USERS`).
    pub fn start_with_env(kind: V1Kind, env: &[(&str, &str)]) -> Result<Option<V1Registry>> {
        let scripts = peers_dir();
        let (setup, run) = match kind {
            V1Kind::Python => {
                if crate::peers::find_binary("dpkg-deb").is_none() {
                    return Ok(missing(
                        "`dpkg-deb` not found",
                        "Install it with `apt-get install -y dpkg`",
                    ));
                }
                (scripts.join("setup.sh"), scripts.join("run.sh"))
            }
            V1Kind::Node => {
                for bin in ["node", "npm"] {
                    if crate::peers::find_binary(bin).is_none() {
                        return Ok(missing(
                            &format!("`{bin}` not found"),
                            "Install it with `apt-get install -y nodejs npm`",
                        ));
                    }
                }
                (scripts.join("node/setup.sh"), scripts.join("node/run.sh"))
            }
        };
        if !setup.is_file() {
            return Ok(missing(
                &format!("{} does not exist", setup.display()),
                "Set HAUL_V1_PEERS_DIR to the v1-registry peers folder",
            ));
        }
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).map_err(|source| Error::Io {
            context: format!("creating {}", cache.display()),
            source,
        })?;
        let installed = cache.join(kind.dir_name());
        {
            // `flock` (util-linux) serialises concurrent setups of one cache.
            let lock_path = cache.join(format!("{}.lock", kind.dir_name()));
            let mut command = match crate::peers::find_binary("flock") {
                Some(flock) => {
                    let mut c = Command::new(flock);
                    c.arg(&lock_path).arg("bash");
                    c
                }
                None => Command::new("bash"),
            };
            let out = command
                .arg(&setup)
                .arg(&installed)
                .stdin(Stdio::null())
                .output()
                .map_err(|source| Error::Io {
                    context: format!("running {}", setup.display()),
                    source,
                })?;
            if !out.status.success() {
                let log = String::from_utf8_lossy(&out.stderr).into_owned();
                return Ok(missing(
                    &format!("{} failed: {}", setup.display(), tail(&log)),
                    "See ../shared/peers/v1-registry/README.md (Requirements)",
                ));
            }
        }

        // A private directory for this server: the set-up tree linked in,
        // a fresh `data`.
        let dir = tempfile::Builder::new()
            .prefix("haul-v1-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "creating a v1 registry directory".into(),
                source,
            })?;
        let entries = std::fs::read_dir(&installed).map_err(|source| Error::Io {
            context: format!("reading {}", installed.display()),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "data" {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).map_err(|source| {
                Error::Io {
                    context: format!("linking {}", entry.path().display()),
                    source,
                }
            })?;
        }
        std::fs::create_dir_all(dir.path().join("data")).map_err(|source| Error::Io {
            context: "creating the data directory".into(),
            source,
        })?;

        let mut command = Command::new("bash");
        command
            .arg(&run)
            .arg(dir.path())
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("server.log")).map_err(|source| {
                    Error::Io {
                        context: "creating the server log".into(),
                        source,
                    }
                })?,
            ))
            .env(
                "SQLALCHEMY_INDEX_DATABASE",
                format!("sqlite:///{}/index.db", dir.path().display()),
            )
            .env("V1_WORKERS", "4");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|source| Error::Io {
            context: format!("running {}", run.display()),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
        let url = match line.trim().strip_prefix("READY ") {
            Some(url) => url.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                return Err(Error::Command {
                    command: format!("{} {} 0", run.display(), dir.path().display()),
                    status: "no READY line".into(),
                    stderr: tail(&log).to_string(),
                });
            }
        };
        Ok(Some(V1Registry {
            kind,
            child,
            url,
            dir,
        }))
    }

    /// Which server this is.
    pub fn kind(&self) -> V1Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// `127.0.0.1:PORT/NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for V1Registry {
    fn drop(&mut self) {
        // SIGTERM lets gunicorn's master stop its workers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    let mut start = start;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
