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

/// Puts `image` into the registry as `REPO:old` with a signed schema 1
/// manifest (the registry converts a schema 2 one for a client that asks
/// only for schema 1); returns that manifest's digest.
pub fn put_schema1(env: &Env, image: &haul_testkit::ImageBuilder, repo: &str) -> String {
    let layout = env.dir(&format!("s1-layout-{}", repo.replace('/', "_")));
    image.write_oci_layout(&layout, "t").unwrap();
    // Docker schema 2 in the registry, which converts it to a signed
    // schema 1 manifest for a client that asks only for that.
    let mut args: Vec<std::ffi::OsString> = vec!["copy".into(), "--format".into(), "v2s2".into()];
    args.extend(haul_testkit::skopeo::registry_flags(&env.registry, "dest-"));
    args.push(format!("oci:{}:t", layout.display()).into());
    args.push(format!("docker://{}", env.reference(&format!("{repo}:src"))).into());
    haul_testkit::skopeo::run_skopeo(args).unwrap();
    let agent = env.registry.http_agent();
    let url = |tag: &str| format!("{}/v2/{repo}/manifests/{tag}", env.registry.url());
    let schema1 = haul_testkit::http::send(agent.get(&url("src")).set(
        "Accept",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ))
    .unwrap();
    assert_eq!(
        schema1.content_type(),
        "application/vnd.docker.distribution.manifest.v1+prettyjws"
    );
    let bytes = schema1.into_string().unwrap();
    let stored = haul_testkit::http::send_bytes(
        agent.put(&url("old")).set(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        bytes.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        stored.status(),
        201,
        "the registry keeps the schema 1 manifest"
    );
    stored.header("Docker-Content-Digest").unwrap().to_string()
}
