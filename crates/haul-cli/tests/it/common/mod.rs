//! Shared helpers of the command's end-to-end tests: a real registry with
//! images put in by skopeo, and the `haul` binary run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haul_testkit::image::BuiltImage;
use haul_testkit::{ImageBuilder, Registry, RegistryConfig};

/// A registry, a store root and a scratch directory.
pub(crate) struct Env {
    pub registry: Registry,
    pub root: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
}

impl Env {
    /// Starts a registry (or returns `None`, skipping loudly, outside CI
    /// when the peers are missing).
    pub(crate) fn start(config: RegistryConfig) -> Option<Env> {
        haul_testkit::peers::require_docker_registry()?;
        haul_testkit::peers::require_skopeo()?;
        Some(Env {
            registry: Registry::start(config).expect("registry starts"),
            root: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        })
    }

    /// `HOST/NAME`.
    pub(crate) fn reference(&self, name: &str) -> String {
        self.registry.reference(name)
    }

    /// Builds `image`, and pushes it with skopeo as `name` (`repo:tag`).
    pub(crate) fn put_image(&self, image: &ImageBuilder, name: &str) -> BuiltImage {
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
    pub(crate) fn put_index(&self, name: &str) -> haul_testkit::image::BuiltIndex {
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
    pub(crate) fn haul(&self, args: &[&str]) -> Output {
        haul_in(self.root.path(), args)
    }

    /// A fresh directory under the scratch dir.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// Runs haul with the store at `root`.
pub(crate) fn haul_in(root: &Path, args: &[&str]) -> Output {
    haul_command(root, args).output().expect("haul runs")
}

/// The haul command with the store at `root`, progress as plain lines.
/// Retry countdowns tick every millisecond instead of every second, so no
/// test sits through a real one; a test about the countdown sets
/// `HAUL_RETRY_TICK_MS` back itself (a later `env` call wins).
pub(crate) fn haul_command(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_haul"));
    command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("HAUL_ROOT")
        .env_remove("HAUL_CONFIG")
        .env("XDG_CONFIG_HOME", root.join("no-xdg-config"))
        .env("HAUL_RETRY_TICK_MS", "1")
        .env("DOCKER_CONFIG", root.join("no-docker-config"));
    command
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing both streams otherwise.
#[track_caller]
pub(crate) fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "haul failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// The short id Docker shows for a digest.
pub(crate) fn short(digest: &str) -> &str {
    &digest["sha256:".len().."sha256:".len() + 12]
}

/// Checks what must hold of a store after any sequence of commands, and
/// panics naming what does not:
///
/// - every blob in `content/blobs/` hashes to its name;
/// - `content/` is an OCI layout in which skopeo can copy every named
///   manifest (`oci:ROOT/content:REF`), so every blob it needs is there;
/// - removing every image and collecting garbage (on a copy of the store)
///   leaves no blob, no layer and no `index.json` entry.
#[track_caller]
pub(crate) fn assert_store_invariants(root: &Path) {
    let blobs = root.join("content/blobs/sha256");
    for entry in std::fs::read_dir(&blobs).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut file = std::fs::File::open(&path).unwrap();
        let mut digester = haul_dist::oci::Digester::new(haul_dist::oci::Algorithm::Sha256);
        std::io::copy(&mut file, &mut digester).unwrap();
        assert_eq!(
            digester.finish().hex(),
            name,
            "blob {} does not hash to its name",
            path.display()
        );
    }

    let index: serde_json::Value = match std::fs::read(root.join("content/index.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("content/index.json is JSON"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({"manifests": []}),
        Err(e) => panic!("content/index.json: {e}"),
    };
    let scratch = tempfile::tempdir().unwrap();
    for entry in index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
    {
        let name = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("every index.json entry is named");
        assert_blobs_present(&blobs, entry, name);
        // skopeo 1.9 skips index.json entries of Docker media types (newer
        // skopeo reads them); for those the check above is the whole check.
        let media_type = entry["mediaType"].as_str().unwrap_or_default();
        if !media_type.starts_with("application/vnd.oci.image.") {
            continue;
        }
        let copy = scratch
            .path()
            .join(haul_dist::oci::Digest::sha256_of(name.as_bytes()).hex());
        haul_testkit::skopeo::run_skopeo([
            "copy".to_string(),
            "--quiet".to_string(),
            format!("oci:{}/content:{name}", root.display()),
            format!("dir:{}", copy.display()),
        ])
        .unwrap_or_else(|e| panic!("skopeo cannot copy {name} out of the store: {e}"));
    }

    // Everything removed, on a copy: gc must leave nothing behind.
    let copy = scratch.path().join("store");
    let status = Command::new("cp")
        .arg("-a")
        .arg(root)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a of the store");
    let images = haul_in(&copy, &["images", "--format", "json-array"]);
    assert_ok(&images);
    let listed: serde_json::Value = serde_json::from_slice(&images.stdout).unwrap();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap())
        .collect();
    ids.dedup();
    if !ids.is_empty() {
        let mut args = vec!["rmi", "-f"];
        args.extend(&ids);
        assert_ok(&haul_in(&copy, &args));
    }
    assert_ok(&haul_in(&copy, &["gc"]));
    let count = |dir: &str| {
        std::fs::read_dir(copy.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        count("content/blobs/sha256"),
        0,
        "gc after removing every image left blobs"
    );
    assert_eq!(
        count("layers/sha256"),
        0,
        "gc after removing every image left layers"
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(copy.join("content/index.json"))
            .unwrap_or_else(|_| b"{\"manifests\":[]}".to_vec()),
    )
    .unwrap();
    assert_eq!(
        index["manifests"],
        serde_json::json!([]),
        "index.json still names images"
    );
}

/// Panics unless the blob `descriptor` names, and for a manifest its
/// config and layers, for an index every manifest it lists, are in
/// `blobs` (the store names an index only when it holds it whole).
#[track_caller]
fn assert_blobs_present(blobs: &Path, descriptor: &serde_json::Value, name: &str) {
    let digest = descriptor["digest"]
        .as_str()
        .expect("descriptors have digests");
    let path = blobs.join(&digest["sha256:".len()..]);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{name}: blob {digest} is not in the store: {e}"));
    let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if media_type.contains("list") || media_type.contains("index") {
        for child in manifest["manifests"].as_array().into_iter().flatten() {
            assert_blobs_present(blobs, child, name);
        }
        return;
    }
    if !media_type.contains("manifest") {
        return;
    }
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    for child in std::iter::once(&manifest["config"]).chain(&layers) {
        let digest = child["digest"]
            .as_str()
            .expect("manifest descriptors have digests");
        assert!(
            blobs.join(&digest["sha256:".len()..]).is_file(),
            "{name}: blob {digest} of its manifest is not in the store"
        );
    }
}

impl Env {
    /// [`assert_store_invariants`] on this env's store.
    #[track_caller]
    pub(crate) fn assert_store_invariants(&self) {
        assert_store_invariants(self.root.path());
    }
}

/// Puts `image` into the registry as `REPO:old` with a signed schema 1
/// manifest (the registry converts a schema 2 one for a client that asks
/// only for schema 1); returns that manifest's digest.
pub(crate) fn put_schema1(env: &Env, image: &haul_testkit::ImageBuilder, repo: &str) -> String {
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
