//! `haul serve`: the store as a read-only registry, read by skopeo, by
//! haul itself and by plain HTTP requests.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;
use haul_testkit::{sample_image, Entry, LayerSpec, RegistryConfig};

/// A `haul serve` process on an ephemeral loopback port, stopped (SIGKILL)
/// when dropped unless [`Served::terminate`] stopped it first.
pub(crate) struct Served {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `haul -v serve --listen 127.0.0.1:0 EXTRA...` on `root`.
    pub(crate) fn start(root: &Path, extra: &[&str]) -> Served {
        let mut args = vec!["-v", "serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = haul_command(root, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haul serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("haul serve prints where it listens")
            .unwrap();
        let addr = first
            .strip_prefix("Listening on http://")
            .or_else(|| first.strip_prefix("Listening on https://"))
            .unwrap_or_else(|| panic!("first line of haul serve: {first:?}"))
            .to_string();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Served {
            child: Some(child),
            addr,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT/NAME`.
    pub(crate) fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// What the server logged after its first line, so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it has stopped growing for 200 ms (at most 10 s): the
    /// lines of requests already answered, which reach the log's reader
    /// thread a moment after their responses.
    pub(crate) fn settled_log(&self) -> String {
        let start = std::time::Instant::now();
        let mut last = self.log();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = self.log();
            if now == last || start.elapsed() > std::time::Duration::from_secs(10) {
                return now;
            }
            last = now;
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM");
        child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A response: status, headers (lower-case names) and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first error code of an OCI error body.
    pub(crate) fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.json()))
            .to_string()
    }
}

/// Sends `method url` with `headers`, whatever the status.
pub(crate) fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let agent = haul_testkit::http::http_agent(None).unwrap();
    let mut request = agent.request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = haul_testkit::http::send(request).expect("the server answers");
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = response.header(&n).unwrap_or_default().to_string();
            (n, v)
        })
        .collect();
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn sha256(bytes: &[u8]) -> String {
    haul_dist::oci::Digest::sha256_of(bytes).to_string()
}

/// The manifest digest skopeo's copy of `image` (everything, digests
/// preserved) from the server into a fresh OCI layout names.
fn skopeo_copy_digest(served: &Served, image: &str, scratch: &Path) -> String {
    std::fs::create_dir_all(scratch).unwrap();
    let layout = scratch.join(format!("copy-{}", image.replace([':', '/'], "_")));
    haul_testkit::skopeo::run_skopeo([
        "copy".to_string(),
        "--all".to_string(),
        "--preserve-digests".to_string(),
        "--src-tls-verify=false".to_string(),
        "--src-no-creds".to_string(),
        "--dest-oci-accept-uncompressed-layers".to_string(),
        format!("docker://{}", served.reference(image)),
        format!("oci:{}:t", layout.display()),
    ])
    .unwrap_or_else(|e| panic!("skopeo copies {image} from haul serve: {e}"));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Copies `oci:LAYOUT:t` into the registry as `dest` with extra skopeo
/// flags (a format, a compression); returns the manifest digest stored.
fn skopeo_put(env: &Env, layout: &Path, dest: &str, extra: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> = vec!["copy".into()];
    args.extend(extra.iter().map(Into::into));
    args.extend(haul_testkit::skopeo::registry_flags(&env.registry, "dest-"));
    args.push(format!("oci:{}:t", layout.display()).into());
    args.push(format!("docker://{}", env.reference(dest)).into());
    haul_testkit::skopeo::run_skopeo(args).unwrap();
    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&env.registry, dest).unwrap();
    sha256(&raw)
}

#[test]
fn skopeo_copies_every_image_kind_from_serve_with_identical_digests() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let oci = env.put_image(&image, "library/oci:1").manifest.digest;
    // Another config: today's store keeps one manifest per config, so the
    // same image as Docker and as OCI would share one record.
    let layout = env.dir("layout");
    image
        .clone()
        .label("format", "docker")
        .write_oci_layout(&layout, "t")
        .unwrap();
    let docker = skopeo_put(&env, &layout, "library/docker:1", &["--format", "v2s2"]);
    // skopeo compresses uncompressed layers in the format asked for.
    let plain = env.dir("plain-layout");
    haul_testkit::ImageBuilder::new()
        .layer(LayerSpec::uncompressed(vec![Entry::file(
            "etc/zstd", 0o644, "zstd\n",
        )]))
        .layer(LayerSpec::uncompressed(vec![Entry::random(
            "data", 0o644, 200_000, 5,
        )]))
        .write_oci_layout(&plain, "t")
        .unwrap();
    let zstd = skopeo_put(
        &env,
        &plain,
        "library/zstd:1",
        &["--format", "oci", "--dest-compress-format", "zstd"],
    );
    let zstd_manifest = haul_testkit::skopeo::skopeo_inspect_raw(&env.registry, "library/zstd:1");
    assert!(
        String::from_utf8_lossy(&zstd_manifest.unwrap()).contains("tar+zstd"),
        "skopeo stored zstd layers"
    );
    let index = env.put_index("library/multi:1").index.digest;

    for name in ["library/oci:1", "library/docker:1", "library/zstd:1"] {
        assert_ok(&env.haul(&["pull", &env.reference(name)]));
    }
    assert_ok(&env.haul(&["pull", "--all-platforms", &env.reference("library/multi:1")]));

    let served = Served::start(env.root.path(), &[]);
    let scratch = env.dir("copies");
    for (name, expected) in [
        ("library/oci:1", &oci),
        ("library/docker:1", &docker),
        ("library/zstd:1", &zstd),
        ("library/multi:1", &index),
    ] {
        assert_eq!(
            &skopeo_copy_digest(&served, name, &scratch),
            expected,
            "{name}: the digest skopeo got from haul serve"
        );
    }
    // By digest too, with the stored media type.
    let answer = call(
        "GET",
        &format!("{}/v2/library/docker/manifests/{docker}", served.url()),
        &[],
    );
    assert_eq!(answer.status, 200);
    assert_eq!(sha256(&answer.body), docker);
    assert_eq!(
        answer.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(docker.as_str())
    );
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str())
    );
    // A client that accepts no index gets the platform manifest of a tag.
    let answer = call(
        "GET",
        &format!("{}/v2/library/multi/manifests/1", served.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_ne!(sha256(&answer.body), index);
    let log = served.settled_log();
    assert!(
        log.contains("GET /v2/library/oci/manifests/1 200"),
        "-v logs each request: {log}"
    );
    env.assert_store_invariants();
}

#[test]
fn a_single_platform_pull_of_an_index_serves_its_platform_manifest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    assert_ok(&env.haul(&[
        "--platform",
        "linux/arm64/v8",
        "pull",
        &env.reference("library/multi:1"),
    ]));
    let served = Served::start(env.root.path(), &[]);
    let arm = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap();
    let scratch = env.dir("copies");
    assert_eq!(
        skopeo_copy_digest(&served, "library/multi:1", &scratch),
        arm.manifest.digest,
        "only one platform is stored: the tag serves it, not the index"
    );
    let answer = call(
        "HEAD",
        &format!(
            "{}/v2/library/multi/manifests/{}",
            served.url(),
            built.index.digest
        ),
        &[],
    );
    assert_eq!(
        answer.status, 200,
        "the index blob is stored and served by digest"
    );
}

#[test]
fn haul_pulls_from_serve_into_another_root() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "team/app:1.0");
    let index = env.put_index("team/multi:2");
    assert_ok(&env.haul(&["pull", &env.reference("team/app:1.0")]));
    assert_ok(&env.haul(&["pull", "--all-platforms", &env.reference("team/multi:2")]));
    let served = Served::start(env.root.path(), &[]);

    let other = tempfile::tempdir().unwrap();
    let app = served.reference("team/app:1.0");
    let out = haul_in(other.path(), &["--progress", "plain", "pull", &app]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("Digest: {}", built.manifest.digest)),
        "{}",
        stdout(&out)
    );
    let out = haul_in(other.path(), &["pull", &app]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Image is up to date"),
        "{}",
        stdout(&out)
    );
    let multi = served.reference("team/multi:2");
    assert_ok(&haul_in(other.path(), &["pull", "--all-platforms", &multi]));
    let out = haul_in(other.path(), &["inspect", &multi]);
    assert_ok(&out);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["indexDigest"], index.index.digest.as_str());

    let exported = other.path().join("export");
    assert_ok(&haul_in(
        other.path(),
        &["export", &app, exported.to_str().unwrap()],
    ));
    let actual = haul_testkit::Rootfs::read_dir(&exported).unwrap();
    let differences = image
        .expected_rootfs()
        .diff(&actual, haul_dist::store::running_as_root());
    assert!(differences.is_empty(), "{differences:#?}");
    assert_store_invariants(other.path());
}

#[test]
fn blobs_honour_one_range_and_refuse_ranges_past_the_end() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/app:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    let served = Served::start(env.root.path(), &[]);
    let layer = &built.layers[0].blob;
    let url = format!("{}/v2/library/app/blobs/{}", served.url(), layer.digest);
    let size = layer.size;

    let whole = call("GET", &url, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(sha256(&whole.body), layer.digest);
    assert_eq!(
        whole.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));

    let head = call("HEAD", &url, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(head.body.is_empty());

    let part = call("GET", &url, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[10..20]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );
    let tail = call("GET", &url, &[("Range", "bytes=-5")]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, whole.body[whole.body.len() - 5..]);
    let from = call("GET", &url, &[("Range", &format!("bytes={}-", size - 3))]);
    assert_eq!(from.status, 206);
    assert_eq!(from.body, whole.body[whole.body.len() - 3..]);

    let past = call("GET", &url, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert_eq!(past.error_code(), "RANGE_INVALID");
    // Several ranges are not served as multipart: the whole blob comes.
    let several = call("GET", &url, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!(several.status, 200);
    assert_eq!(several.body, whole.body);
}

#[test]
fn listings_paginate_with_n_last_and_link() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/app:1");
    let source = env.reference("library/app:1");
    assert_ok(&env.haul(&["pull", &source]));
    let registry = env.registry.host();
    let mut tags = vec!["1".to_string()];
    for tag in ["a", "b", "c", "d"] {
        assert_ok(&env.haul(&["tag", &source, &format!("{registry}/library/app:{tag}")]));
        tags.push(tag.to_string());
    }
    let mut repositories = vec!["library/app".to_string()];
    for name in ["other/x", "other/y", "zeta"] {
        assert_ok(&env.haul(&["tag", &source, &format!("{registry}/{name}:1")]));
        repositories.push(name.to_string());
    }
    tags.sort();
    repositories.sort();
    let served = Served::start(env.root.path(), &[]);

    let all = call(
        "GET",
        &format!("{}/v2/library/app/tags/list", served.url()),
        &[],
    );
    assert_eq!(all.status, 200);
    assert_eq!(all.json()["name"], "library/app");
    assert_eq!(all.json()["tags"], serde_json::json!(tags));
    assert_eq!(all.header("link"), None);

    let follow = |first: &str, key: &str| -> (Vec<String>, usize) {
        let mut url = format!("{}{first}", served.url());
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = call("GET", &url, &[]);
            assert_eq!(page.status, 200, "{url}");
            pages += 1;
            let items = page.json()[key].as_array().unwrap().clone();
            assert!(items.len() <= 2, "{url}: n=2 gave {items:?}");
            seen.extend(items.iter().map(|v| v.as_str().unwrap().to_string()));
            match page.header("link") {
                Some(link) => {
                    let path = link
                        .strip_prefix('<')
                        .and_then(|l| l.split_once(">; rel=\"next\""))
                        .unwrap_or_else(|| panic!("Link: {link}"))
                        .0;
                    url = format!("{}{path}", served.url());
                }
                None => return (seen, pages),
            }
        }
    };
    let (seen, pages) = follow("/v2/library/app/tags/list?n=2", "tags");
    assert_eq!(seen, tags);
    assert_eq!(pages, 3);
    let (seen, pages) = follow("/v2/_catalog?n=2", "repositories");
    assert_eq!(seen, repositories);
    assert_eq!(pages, 2);
    let after = call(
        "GET",
        &format!("{}/v2/library/app/tags/list?last=b", served.url()),
        &[],
    );
    assert_eq!(after.json()["tags"], serde_json::json!(["c", "d"]));
    let bad = call("GET", &format!("{}/v2/_catalog?n=many", served.url()), &[]);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "PAGINATION_NUMBER_INVALID");
}

#[test]
fn unknown_names_tags_digests_and_writes_get_oci_errors() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/app:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    let served = Served::start(env.root.path(), &[]);
    let url = |path: &str| format!("{}{path}", served.url());
    let missing = sha256(b"nothing stored has this digest");

    let base = call("GET", &url("/v2/"), &[]);
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    for (path, status, code) in [
        ("/v2/nobody/manifests/1".to_string(), 404, "NAME_UNKNOWN"),
        (
            "/v2/nobody/blobs/".to_string() + &missing,
            404,
            "NAME_UNKNOWN",
        ),
        ("/v2/nobody/tags/list".to_string(), 404, "NAME_UNKNOWN"),
        (
            "/v2/library/app/manifests/2".to_string(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/library/app/manifests/{missing}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // A stored blob that is not a manifest is no manifest.
        (
            format!("/v2/library/app/manifests/{}", built.layers[0].blob.digest),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/library/app/blobs/{missing}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "/v2/library/app/blobs/sha256:zz".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/Bad_Name/manifests/1".to_string(), 400, "NAME_INVALID"),
    ] {
        let answer = call("GET", &url(&path), &[]);
        assert_eq!(answer.status, status, "GET {path}");
        assert_eq!(answer.error_code(), code, "GET {path}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }
    let head = call("HEAD", &url("/v2/library/app/manifests/2"), &[]);
    assert_eq!(head.status, 404);

    for (method, path) in [
        ("PUT", "/v2/library/app/manifests/2".to_string()),
        ("DELETE", "/v2/library/app/manifests/1".to_string()),
        ("POST", "/v2/library/app/blobs/uploads/".to_string()),
        ("PATCH", "/v2/library/app/blobs/uploads/x".to_string()),
        (
            "DELETE",
            format!("/v2/library/app/blobs/{}", built.config.digest),
        ),
    ] {
        let answer = call(method, &url(&path), &[]);
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.error_code(), "UNSUPPORTED", "{method} {path}");
    }
    // Nothing was removed by the DELETEs.
    let still = call("GET", &url("/v2/library/app/manifests/1"), &[]);
    assert_eq!(still.status, 200);
    assert_eq!(sha256(&still.body), built.manifest.digest);

    let referrers = call(
        "GET",
        &url(&format!(
            "/v2/library/app/referrers/{}",
            built.manifest.digest
        )),
        &[],
    );
    assert_eq!(referrers.status, 200);
    assert_eq!(
        referrers.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(referrers.json()["manifests"], serde_json::json!([]));

    let metrics = call("GET", &url("/metrics"), &[]);
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("haul_serve_requests_total{status=\"405\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("haul_serve_requests_total{status=\"404\"} "),
        "{text}"
    );
}

#[test]
fn referrers_lists_stored_manifests_whose_subject_is_the_digest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/app:1");
    // A signature-like artifact whose subject is the image. No haul
    // command stores artifacts yet, so its blobs are written into the
    // store's OCI layout directly, as a verified blob would be committed.
    let artifact_layout = env.dir("artifact");
    let config = b"{}";
    let layer = b"signature payload";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.example.signature.payload",
                    "digest": sha256(layer), "size": layer.len()}],
        "subject": {"mediaType": built.manifest.media_type,
                    "digest": built.manifest.digest, "size": built.manifest.size},
        "annotations": {"org.example.signed-by": "test"},
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let blobs = artifact_layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for bytes in [&config[..], &layer[..], &manifest_bytes[..]] {
        std::fs::write(blobs.join(&sha256(bytes)["sha256:".len()..]), bytes).unwrap();
    }
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    for bytes in [&config[..], &layer[..], &manifest_bytes[..]] {
        std::fs::copy(
            blobs.join(&sha256(bytes)["sha256:".len()..]),
            env.root
                .path()
                .join("content/blobs/sha256")
                .join(&sha256(bytes)["sha256:".len()..]),
        )
        .unwrap();
    }
    let served = Served::start(env.root.path(), &[]);
    let url = format!(
        "{}/v2/library/app/referrers/{}",
        served.url(),
        built.manifest.digest
    );
    let answer = call("GET", &url, &[]);
    assert_eq!(answer.status, 200);
    let listed = answer.json();
    assert_eq!(
        listed["manifests"],
        serde_json::json!([{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest_bytes),
            "size": manifest_bytes.len(),
            "artifactType": "application/vnd.example.signature",
            "annotations": {"org.example.signed-by": "test"},
        }])
    );
    let filtered = call(
        "GET",
        &format!("{url}?artifactType=application/vnd.example.other"),
        &[],
    );
    assert_eq!(filtered.json()["manifests"], serde_json::json!([]));
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    let by_digest = call(
        "GET",
        &format!(
            "{}/v2/library/app/manifests/{}",
            served.url(),
            sha256(&manifest_bytes)
        ),
        &[],
    );
    assert_eq!(by_digest.status, 200);
    assert_eq!(by_digest.body, manifest_bytes);
}

/// An image with one big uncompressed layer: a response that cannot fit
/// in the socket buffers, so the server is still sending it while the
/// test does something else.
fn big_image() -> haul_testkit::ImageBuilder {
    haul_testkit::ImageBuilder::new().layer(LayerSpec::uncompressed(vec![Entry::random(
        "big",
        0o644,
        24 << 20,
        7,
    )]))
}

/// Starts a GET of `url` and reads only its first `n` body bytes; returns
/// the reader to finish with.
fn start_reading(url: &str, n: usize) -> (Box<dyn Read + Send>, Vec<u8>) {
    let agent = haul_testkit::http::http_agent(None).unwrap();
    let response = agent.get(url).call().expect("blob GET");
    assert_eq!(response.status(), 200);
    let mut reader = response.into_reader();
    let mut first = vec![0; n];
    reader.read_exact(&mut first).unwrap();
    (reader, first)
}

#[test]
fn gc_waits_for_a_blob_response_in_flight() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&big_image(), "library/big:1");
    let reference = env.reference("library/big:1");
    assert_ok(&env.haul(&["pull", &reference]));
    let served = Served::start(env.root.path(), &[]);
    let blob = &built.layers[0].blob;
    let url = format!("{}/v2/library/big/blobs/{}", served.url(), blob.digest);
    let (mut reader, mut body) = start_reading(&url, 1 << 20);

    // Untagged, the image is garbage; the gc `rmi` runs would delete the
    // blob being sent, but waits for the response's lease (and gives up
    // after a second here).
    let out = haul_command(env.root.path(), &["rmi", &reference])
        .env("HAUL_LOCK_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "gc waited for the lease");
    assert!(stderr(&out).contains("gc.lock"), "{}", stderr(&out));
    assert!(
        env.root
            .path()
            .join("content/blobs/sha256")
            .join(&blob.digest["sha256:".len()..])
            .is_file(),
        "the blob is still stored while it is being served"
    );
    reader.read_to_end(&mut body).unwrap();
    assert_eq!(sha256(&body), blob.digest, "the response is whole");

    // Once the response ended, gc runs.
    let mut gc = None;
    for _ in 0..50 {
        let out = haul_command(env.root.path(), &["gc"])
            .env("HAUL_LOCK_TIMEOUT_SECS", "1")
            .output()
            .unwrap();
        if out.status.success() {
            gc = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gc.is_some(), "gc runs after the response ended");
    let gone = call("GET", &url, &[]);
    assert_eq!(gone.status, 404);
    env.assert_store_invariants();
}

#[test]
fn sigterm_lets_the_response_in_flight_finish_then_exits_zero() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&big_image(), "library/big:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/big:1")]));
    let mut served = Served::start(env.root.path(), &[]);
    let blob = built.layers[0].blob.clone();
    let url = format!("{}/v2/library/big/blobs/{}", served.url(), blob.digest);
    let (mut reader, mut body) = start_reading(&url, 1 << 20);

    let finisher = std::thread::spawn(move || {
        // Slowly enough that SIGTERM arrives while the body is being sent.
        std::thread::sleep(std::time::Duration::from_millis(300));
        reader.read_to_end(&mut body).unwrap();
        body
    });
    let addr = served.addr.clone();
    let status = served.terminate();
    assert!(
        status.success(),
        "haul serve exits 0 after SIGTERM: {status:?}"
    );
    let body = finisher.join().unwrap();
    assert_eq!(
        sha256(&body),
        blob.digest,
        "the response in flight finished"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn serves_https_with_the_given_identity() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/app:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    let ca = haul_testkit::tls::TestCa::generate("haul serve test CA").unwrap();
    let files = ca
        .write_server_files(&env.dir("tls"), &["127.0.0.1", "localhost"])
        .unwrap();
    let served = Served::start(
        env.root.path(),
        &[
            "--tls-cert",
            files.server_cert.to_str().unwrap(),
            "--tls-key",
            files.server_key.to_str().unwrap(),
        ],
    );
    let other = tempfile::tempdir().unwrap();
    let out = haul_in(
        other.path(),
        &[
            "--ca-file",
            files.ca_cert.to_str().unwrap(),
            "pull",
            &served.reference("library/app:1"),
        ],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&built.manifest.digest),
        "{}",
        stdout(&out)
    );
    let raw = haul_testkit::skopeo::run_skopeo([
        "inspect".to_string(),
        "--raw".to_string(),
        "--cert-dir".to_string(),
        files.ca_dir.display().to_string(),
        "--no-creds".to_string(),
        format!("docker://{}", served.reference("library/app:1")),
    ])
    .unwrap();
    assert_eq!(sha256(&raw), built.manifest.digest);
    assert_store_invariants(other.path());
}

#[test]
fn another_haul_uses_serve_as_its_mirror_with_ns() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "team/app:1");
    let reference = env.reference("team/app:1");
    assert_ok(&env.haul(&["pull", &reference]));
    let served = Served::start(env.root.path(), &[]);

    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            env.registry.host(),
            served.url()
        ),
    )
    .unwrap();
    let out = haul_in(
        other.path(),
        &["--config", config.to_str().unwrap(), "pull", &reference],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&built.manifest.digest),
        "{}",
        stdout(&out)
    );
    let log = served.settled_log();
    let asked = format!(
        "GET /v2/team/app/manifests/1?ns={} 200",
        env.registry.host().replace(':', "%3A")
    );
    assert!(log.contains(&asked), "the mirror answered {asked}: {log}");
    for layer in &built.layers {
        assert!(
            log.contains(&format!("GET /v2/team/app/blobs/{}?ns=", layer.blob.digest)),
            "layer {} came from the mirror: {log}",
            layer.blob.digest
        );
    }
    assert_store_invariants(other.path());
}

/// An image with one layer big enough to be held mid-way.
fn image_with_big_layer() -> haul_testkit::ImageBuilder {
    sample_image().layer(LayerSpec::gzip(vec![Entry::random(
        "big", 0o644, 4_000_000, 11,
    )]))
}

/// Lines of the server's request log for `GET` of `path`.
fn logged_gets(served: &Served, path: &str) -> usize {
    served
        .log()
        .lines()
        .filter(|l| l.contains(&format!("GET {path}")))
        .count()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn pull_through_fetches_each_blob_once_for_eight_concurrent_pulls() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&image_with_big_layer(), "library/app:1");
    let proxy = haul_testkit::FaultProxy::start(&env.registry.host()).unwrap();
    let big = built.layers.last().unwrap().blob.clone();
    // The big blob's upstream answer stops after 1 MB until every client
    // is waiting for it.
    let gate = haul_testkit::Gate::new();
    proxy.add_rule(
        haul_testkit::Rule::new(
            haul_testkit::Match::path_ends_with(big.digest.as_str()).method("GET"),
            haul_testkit::Fault::Hold {
                after_bytes: 1_000_000,
                gate: gate.clone(),
            },
        )
        .once(),
    );
    let cache = tempfile::tempdir().unwrap();
    let served = Served::start(cache.path(), &["--upstream", &proxy.authority()]);
    let reference = served.reference("library/app:1");

    let clients: Vec<_> = (0..8)
        .map(|_| {
            let reference = reference.clone();
            std::thread::spawn(move || {
                let root = tempfile::tempdir().unwrap();
                let out = haul_in(root.path(), &["pull", &reference]);
                (root, out)
            })
        })
        .collect();
    let big_path = format!("/v2/library/app/blobs/{}", big.digest);
    wait_for("eight clients asking for the big blob", || {
        logged_gets(&served, &big_path) >= 8
    });
    gate.open();
    for client in clients {
        let (root, out) = client.join().unwrap();
        assert_ok(&out);
        assert!(
            stdout(&out).contains(&built.manifest.digest),
            "{}",
            stdout(&out)
        );
        assert_store_invariants(root.path());
    }
    served.settled_log();
    assert_eq!(
        logged_gets(&served, &big_path),
        8,
        "each client asked once: none saw an error to retry"
    );
    let blobs = std::iter::once(&built.config).chain(built.layers.iter().map(|l| &l.blob));
    for blob in blobs {
        assert_eq!(
            proxy.count_matching("GET", &blob.digest),
            1,
            "upstream GETs of blob {}",
            blob.digest
        );
    }
    assert_eq!(
        proxy.response_bytes_matching("GET", &big.digest),
        big.size,
        "the big blob came from upstream once"
    );
    let metrics = call("GET", &format!("{}/metrics", served.url()), &[]);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("haul_serve_inflight_transfers 0"), "{text}");
    assert!(
        !text.contains("haul_serve_upstream_bytes_total 0\n"),
        "{text}"
    );

    // A later client is served from the store: upstream sees nothing.
    proxy.reset_counters();
    let root = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(root.path(), &["pull", &reference]));
    assert_eq!(proxy.count_matching("GET", "/blobs/"), 0);
}

#[test]
fn pull_through_resumes_a_dropped_upstream_without_any_client_error() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&image_with_big_layer(), "library/app:1");
    let proxy = haul_testkit::FaultProxy::start(&env.registry.host()).unwrap();
    let big = built.layers.last().unwrap().blob.clone();
    proxy.add_rule(
        haul_testkit::Rule::new(
            haul_testkit::Match::path_ends_with(big.digest.as_str()).method("GET"),
            haul_testkit::Fault::DropAfterBytes(1_500_000),
        )
        .once(),
    );
    let cache = tempfile::tempdir().unwrap();
    let served = Served::start(cache.path(), &["--upstream", &proxy.authority()]);
    let url = format!("{}/v2/library/app/blobs/{}", served.url(), big.digest);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || call("GET", &url, &[]))
        })
        .collect();
    for client in clients {
        let answer = client.join().unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            sha256(&answer.body),
            big.digest,
            "every client got the blob whole"
        );
    }
    let upstream: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&big.digest))
        .collect();
    assert_eq!(upstream.len(), 2, "one GET, one resume: {upstream:#?}");
    let range = upstream[1].header("range").unwrap_or_default().to_string();
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "the resume asks for the rest: {range:?}"
    );
    assert!(cache
        .path()
        .join("content/blobs/sha256")
        .join(&big.digest["sha256:".len()..])
        .is_file());
}

#[test]
fn pull_through_revalidates_tags_after_their_ttl() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let first = env.put_image(&sample_image(), "library/app:1");
    let proxy = haul_testkit::FaultProxy::start(&env.registry.host()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let served = Served::start(
        cache.path(),
        &["--upstream", &proxy.authority(), "--tag-ttl", "1"],
    );
    let url = format!("{}/v2/library/app/manifests/1", served.url());
    let answer = call("GET", &url, &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(sha256(&answer.body), first.manifest.digest);
    assert_eq!(call("GET", &url, &[]).status, 200);
    assert_eq!(
        proxy.count_matching("GET", "/manifests/1"),
        1,
        "within the TTL the tag is not asked again"
    );
    // The tag moves upstream; after the TTL a HEAD sees it.
    let second = env.put_image(&sample_image().label("v", "2"), "library/app:1");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let answer = call("GET", &url, &[]);
    assert_eq!(sha256(&answer.body), second.manifest.digest);
    assert_eq!(proxy.count_matching("HEAD", "/manifests/1"), 1);
    // Unchanged after another TTL: a HEAD only, the cached bytes served.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let answer = call("GET", &url, &[]);
    assert_eq!(sha256(&answer.body), second.manifest.digest);
    assert_eq!(proxy.count_matching("HEAD", "/manifests/1"), 2);
    assert_eq!(proxy.count_matching("GET", "/manifests/1"), 2);
    // By digest: immutable, from the store.
    let by_digest = format!(
        "{}/v2/library/app/manifests/{}",
        served.url(),
        first.manifest.digest
    );
    assert_eq!(
        sha256(&call("GET", &by_digest, &[]).body),
        first.manifest.digest
    );
    assert_eq!(proxy.count_matching("GET", &first.manifest.digest), 0);
    let missing = call(
        "GET",
        &format!("{}/v2/library/nothing/manifests/1", served.url()),
        &[],
    );
    assert_eq!(missing.status, 404);
    assert!(
        ["NAME_UNKNOWN", "MANIFEST_UNKNOWN"].contains(&missing.error_code().as_str()),
        "{}",
        missing.error_code()
    );
}

#[test]
fn pull_through_with_no_store_keeps_nothing_and_still_fetches_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&image_with_big_layer(), "library/app:1");
    let proxy = haul_testkit::FaultProxy::start(&env.registry.host()).unwrap();
    let big = built.layers.last().unwrap().blob.clone();
    let gate = haul_testkit::Gate::new();
    proxy.add_rule(
        haul_testkit::Rule::new(
            haul_testkit::Match::path_ends_with(big.digest.as_str()).method("GET"),
            haul_testkit::Fault::Hold {
                after_bytes: 1_000_000,
                gate: gate.clone(),
            },
        )
        .once(),
    );
    let cache = tempfile::tempdir().unwrap();
    let served = Served::start(
        cache.path(),
        &["--upstream", &proxy.authority(), "--no-store"],
    );
    let reference = served.reference("library/app:1");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let reference = reference.clone();
            std::thread::spawn(move || {
                let root = tempfile::tempdir().unwrap();
                let out = haul_in(root.path(), &["pull", &reference]);
                (root, out)
            })
        })
        .collect();
    let big_path = format!("/v2/library/app/blobs/{}", big.digest);
    wait_for("three clients asking for the big blob", || {
        logged_gets(&served, &big_path) >= 3
    });
    gate.open();
    for client in clients {
        let (root, out) = client.join().unwrap();
        assert_ok(&out);
        assert!(
            stdout(&out).contains(&built.manifest.digest),
            "{}",
            stdout(&out)
        );
        assert_store_invariants(root.path());
    }
    assert_eq!(proxy.count_matching("GET", &big.digest), 1);
    let count = |dir: &str| {
        std::fs::read_dir(cache.path().join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_for("the proxied blobs' files to go", || count("tmp") == 0);
    assert_eq!(count("content/blobs/sha256"), 0, "nothing kept");
    assert_eq!(count("ingest"), 0, "nothing kept");
}

/// A containerd of the test's own: root, state and socket in a temporary
/// directory; killed when dropped.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.btrfs"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let containerd = Containerd { child, dir };
        wait_for("containerd to answer", || {
            containerd
                .ctr(&["version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("ctr");
        command
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .arg("--namespace")
            .arg("haul-test")
            .args(args);
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containerd_pulls_through_a_hosts_toml_mirror_pointing_at_serve() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    if haul_testkit::require_binary("containerd", "containerd").is_none()
        || haul_testkit::require_binary("ctr", "containerd").is_none()
    {
        return;
    }
    if !haul_dist::store::running_as_root() {
        // Not a missing peer: a private containerd needs root.
        eprintln!("SKIPPED containerd_pulls_through_a_hosts_toml_mirror_pointing_at_serve: containerd needs root");
        return;
    }
    let built = env.put_image(&sample_image(), "library/app:1");
    let reference = env.reference("library/app:1");
    assert_ok(&env.haul(&["pull", &reference]));
    let served = Served::start(env.root.path(), &[]);

    // containerd's hosts.toml for the registry: haul serve first, then
    // the registry itself.
    let hosts = env.dir("hosts.d");
    let host_dir = hosts.join(env.registry.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            env.registry.url(),
            served.url()
        ),
    )
    .unwrap();

    let containerd = Containerd::start();
    let out = containerd
        .ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            &reference,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr images pull: {}\n{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        containerd.log()
    );
    let listed = containerd.ctr(&["images", "ls"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains(&built.manifest.digest)),
        "containerd has {reference} at {}: {listed}",
        built.manifest.digest
    );
    let log = served.settled_log();
    let ns = format!("ns={}", env.registry.host().replace(':', "%3A"));
    assert!(
        log.lines()
            .any(|l| l.contains("/v2/library/app/manifests/1?") && l.contains(&ns)),
        "containerd resolved the tag through haul serve with ?{ns}: {log}"
    );
    for blob in std::iter::once(&built.config).chain(built.layers.iter().map(|l| &l.blob)) {
        assert!(
            log.lines().any(|l| l.contains(&format!(
                "GET /v2/library/app/blobs/{}?{ns} 200",
                blob.digest
            ))),
            "blob {} came from haul serve: {log}",
            blob.digest
        );
    }
}

#[test]
fn clients_must_authenticate_when_serve_asks() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/app:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    let user = haul_testkit::Credentials::new("reader", "s3cret");
    let htpasswd = env.dir("htpasswd");
    haul_testkit::htpasswd::write_htpasswd(&htpasswd, std::slice::from_ref(&user)).unwrap();
    let served = Served::start(
        env.root.path(),
        &["--auth-htpasswd", htpasswd.to_str().unwrap()],
    );
    let manifest = format!("{}/v2/library/app/manifests/1", served.url());

    let anonymous = call("GET", &manifest, &[]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "UNAUTHORIZED");
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"haul serve\"")
    );
    let wrong = haul_testkit::Credentials::new("reader", "guess");
    let refused = call(
        "GET",
        &manifest,
        &[("Authorization", &wrong.basic_auth_header())],
    );
    assert_eq!(refused.status, 401);
    let metrics = call("GET", &format!("{}/metrics", served.url()), &[]);
    assert_eq!(metrics.status, 401, "metrics are protected too");
    let allowed = call(
        "GET",
        &manifest,
        &[("Authorization", &user.basic_auth_header())],
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(sha256(&allowed.body), built.manifest.digest);

    // haul itself answers the challenge with the credentials of `login`.
    let other = tempfile::tempdir().unwrap();
    let mut login = haul_command(
        other.path(),
        &[
            "login",
            &served.addr,
            "-u",
            &user.username,
            "--password-stdin",
        ],
    );
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), user.password.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    let out = haul_in(other.path(), &["pull", &served.reference("library/app:1")]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&built.manifest.digest),
        "{}",
        stdout(&out)
    );
    assert_store_invariants(other.path());
}

#[test]
fn a_fixed_bearer_token_admits_its_holders_only() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/app:1");
    assert_ok(&env.haul(&["pull", &env.reference("library/app:1")]));
    let token = env.dir("token");
    std::fs::write(&token, "t0ken-for-ci\n").unwrap();
    let served = Served::start(
        env.root.path(),
        &["--auth-token-file", token.to_str().unwrap()],
    );
    let tags = format!("{}/v2/library/app/tags/list", served.url());
    let answer = call("GET", &tags, &[]);
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"haul serve\"")
    );
    let answer = call("GET", &tags, &[("Authorization", "Bearer t0ken-for-ci")]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["tags"], serde_json::json!(["1"]));
    let answer = call("GET", &tags, &[("Authorization", "Bearer t0ken-for-c")]);
    assert_eq!(answer.status, 401);
    assert!(
        !served.settled_log().contains("t0ken-for-ci"),
        "the token is never logged"
    );
}

#[test]
fn pull_through_answers_head_and_ranges_of_blobs_it_lacks() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&image_with_big_layer(), "library/app:1");
    let proxy = haul_testkit::FaultProxy::start(&env.registry.host()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let served = Served::start(cache.path(), &["--upstream", &proxy.authority()]);
    let big = built.layers.last().unwrap().blob.clone();
    let url = format!("{}/v2/library/app/blobs/{}", served.url(), big.digest);

    let head = call("HEAD", &url, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(big.size.to_string().as_str())
    );
    assert_eq!(
        proxy.count_matching("GET", &big.digest),
        0,
        "a HEAD fetches nothing"
    );

    let part = call("GET", &url, &[("Range", "bytes=2000000-2000099")]);
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 2000000-2000099/{}", big.size).as_str())
    );
    let whole = call("GET", &url, &[]);
    assert_eq!(sha256(&whole.body), big.digest);
    assert_eq!(part.body, whole.body[2_000_000..2_000_100]);
    let past = call("GET", &url, &[("Range", &format!("bytes={}-", big.size))]);
    assert_eq!(past.status, 416);
    // The ranged client left early, which stopped its transfer; the next
    // one resumed the partial it left instead of starting over.
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&big.digest))
        .collect();
    assert!(!gets.is_empty() && gets.len() <= 2, "{gets:#?}");
    if let Some(resume) = gets.get(1) {
        let range = resume.header("range").unwrap_or_default();
        assert!(
            range.starts_with("bytes=") && range != "bytes=0-",
            "resumed from the partial: {range:?}"
        );
    }
    let unknown = call(
        "GET",
        &format!(
            "{}/v2/library/app/blobs/{}",
            served.url(),
            sha256(b"not upstream either")
        ),
        &[],
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "BLOB_UNKNOWN");
}
