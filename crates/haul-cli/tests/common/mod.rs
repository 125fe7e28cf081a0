//! Shared helpers of the command's end-to-end tests: a real registry with
//! images put in by skopeo, and the `haul` binary run against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haul_testkit::image::BuiltImage;
use haul_testkit::{ImageBuilder, Registry, RegistryConfig};

/// A registry, a store root and a scratch directory.
pub struct Env {
    pub registry: Registry,
    pub root: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
}

impl Env {
    /// Starts a registry (or returns `None`, skipping loudly, outside CI
    /// when the peers are missing).
    pub fn start(config: RegistryConfig) -> Option<Env> {
        haul_testkit::peers::require_docker_registry()?;
        haul_testkit::peers::require_skopeo()?;
        Some(Env {
            registry: Registry::start(config).expect("registry starts"),
            root: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        })
    }

    /// `HOST/NAME`.
    pub fn reference(&self, name: &str) -> String {
        self.registry.reference(name)
    }

    /// Builds `image`, and pushes it with skopeo as `name` (`repo:tag`).
    pub fn put_image(&self, image: &ImageBuilder, name: &str) -> BuiltImage {
        let layout = self
            .scratch
            .path()
            .join(format!("layout-{}", name.replace([':', '/'], "_")));
        let built = image.write_oci_layout(&layout, "t").unwrap();
        haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &self.registry, name)
            .unwrap();
        built
    }

    /// Builds the testkit's two-platform index and pushes it with skopeo
    /// as `name` (`repo:tag`).
    pub fn put_index(&self, name: &str) -> haul_testkit::image::BuiltIndex {
        let layout = self
            .scratch
            .path()
            .join(format!("index-{}", name.replace([':', '/'], "_")));
        let built = haul_testkit::image::write_oci_index_layout(
            &layout,
            "t",
            &haul_testkit::sample_platform_images(),
        )
        .unwrap();
        haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &self.registry, name)
            .unwrap();
        built
    }

    /// Runs haul with this store.
    pub fn haul(&self, args: &[&str]) -> Output {
        haul_in(self.root.path(), args)
    }

    /// A fresh directory under the scratch dir.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// Runs haul with the store at `root`.
pub fn haul_in(root: &Path, args: &[&str]) -> Output {
    haul_command(root, args).output().expect("haul runs")
}

/// The haul command with the store at `root`, progress as plain lines.
pub fn haul_command(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_haul"));
    command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("HAUL_ROOT")
        .env_remove("HAUL_CONFIG")
        .env("XDG_CONFIG_HOME", root.join("no-xdg-config"))
        .env("DOCKER_CONFIG", root.join("no-docker-config"));
    command
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing both streams otherwise.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "haul failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// The short id Docker shows for a digest.
pub fn short(digest: &str) -> &str {
    &digest["sha256:".len().."sha256:".len() + 12]
}
