//! `haul pull` when things go wrong around it: a process killed mid-pull,
//! two processes pulling the same image into one store, stalled
//! connections, Ctrl-C, the download concurrency limit and the retry
//! countdown. Real registry, real processes, faults from the testkit's
//! proxy; every wait is bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::image::{BlobRef, BuiltImage};
use haul_testkit::{sample_image, Entry, ImageBuilder, LayerSpec, RegistryConfig, Rootfs};

/// Size of the file in the big layer: random bytes do not compress, so
/// the blob is about as big.
const BIG: u64 = 8_000_000;

/// The sample image with one more layer holding `size` random bytes.
fn big_image(size: u64) -> ImageBuilder {
    sample_image().layer(LayerSpec::gzip(vec![Entry::random("big", 0o644, size, 1)]))
}

fn big_blob(built: &BuiltImage) -> &BlobRef {
    &built.layers.last().expect("the image has layers").blob
}

/// The big image in the registry, behind a fault proxy whose first GET of
/// the big blob stalls for `stall` after `after_bytes`: the image, what was
/// built, the proxy and the reference to pull through it.
fn stalled_big_image(
    env: &Env,
    size: u64,
    after_bytes: u64,
    stall: Duration,
) -> (ImageBuilder, BuiltImage, FaultProxy, String) {
    let image = big_image(size);
    let built = env.put_image(&image, "library/big:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(
        Rule::new(
            Match::path_ends_with(big_blob(&built).digest.as_str()).method("GET"),
            Fault::stall(after_bytes, stall),
        )
        .once(),
    );
    let reference = format!("{}/library/big:1", proxy.authority());
    (image, built, proxy, reference)
}

/// Polls `condition` every 10 ms until it holds, failing the test after
/// `timeout`.
#[track_caller]
fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The partial file the ingest of `digest` writes under ROOT/ingest/.
fn partial_path(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    root.join("ingest").join(format!("sha256-{hex}.partial"))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A `haul` child process with its output going to files (no pipe to fill
/// up); killed on drop if still running, so a failing test leaves no
/// process behind.
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn spawn(mut command: Command, outputs: &Path, name: &str) -> Running {
        std::fs::create_dir_all(outputs).unwrap();
        let stdout = outputs.join(format!("{name}.stdout"));
        let stderr = outputs.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        Running {
            child: command.spawn().expect("haul starts"),
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout` for the process to end.
    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout` for the process to end; fails the test (and
    /// kills it) if it does not.
    #[track_caller]
    fn finish(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_for(timeout) {
            Some(status) => status,
            None => panic!(
                "haul did not end within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            ),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    #[track_caller]
    fn assert_ok(&mut self, timeout: Duration) {
        let status = self.finish(timeout);
        assert!(
            status.success(),
            "haul failed ({status})\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The exported tree of `reference` equals what `image` was built from.
#[track_caller]
fn assert_exports(env: &Env, reference: &str, image: &ImageBuilder, dir: &str) {
    let exported = env.dir(dir);
    assert_ok(&env.haul(&["export", reference, exported.to_str().unwrap()]));
    let actual = Rootfs::read_dir(&exported).unwrap();
    let differences = image
        .expected_rootfs()
        .diff(&actual, haul_dist::store::running_as_root());
    assert!(
        differences.is_empty(),
        "export differs from the image: {differences:#?}"
    );
}

/// The GETs of `digest` the proxy saw, in arrival order.
fn blob_gets(proxy: &FaultProxy, digest: &str) -> Vec<haul_testkit::RequestRecord> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(digest))
        .collect()
}

#[test]
fn killed_pull_is_resumed_from_its_partial_by_the_next_pull() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = big_image(BIG);
    let built = env.put_image(&image, "library/big:1");
    let big = big_blob(&built);
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(big.digest.as_str()).method("GET"),
        Fault::Stall {
            after_bytes: 3_000_000,
            duration: Duration::from_secs(30),
            close: false,
        },
    ));
    let reference = format!("{}/library/big:1", proxy.authority());

    let mut first = Running::spawn(
        haul_command(
            env.root.path(),
            &["--progress", "plain", "pull", &reference],
        ),
        &env.dir("out"),
        "first",
    );
    wait_until(Duration::from_secs(15), "3 MB of the big blob", || {
        proxy.response_bytes_matching("GET", &big.digest) >= 3_000_000
    });
    // The ingest writes through a buffer: wait for most of what was sent
    // to reach the partial file.
    let partial = partial_path(env.root.path(), &big.digest);
    wait_until(Duration::from_secs(10), "the partial file to grow", || {
        file_size(&partial) >= 2_000_000
    });
    assert_eq!(first.wait_for(Duration::ZERO), None, "the pull is stalled");
    first.kill(); // SIGKILL: no chance to clean up
    let kept = file_size(&partial);
    assert!(
        (2_000_000..=3_000_000).contains(&kept),
        "the partial holds {kept} bytes"
    );
    let blob_path = env
        .root
        .path()
        .join("content/blobs/sha256")
        .join(&big.digest["sha256:".len()..]);
    assert!(!blob_path.exists(), "a killed pull committed the blob");

    proxy.clear_rules();
    proxy.reset_counters();
    let out = env.haul(&["--progress", "plain", "pull", &reference]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().last(), Some(reference.as_str()));

    let gets = blob_gets(&proxy, &big.digest);
    assert_eq!(gets.len(), 1, "one GET resumes the blob: {gets:#?}");
    assert_eq!(
        gets[0].header("range"),
        Some(format!("bytes={kept}-").as_str()),
        "the GET asks for the bytes after the partial"
    );
    assert_eq!(
        proxy.response_bytes_matching("GET", &big.digest),
        big.size - kept,
        "only the missing bytes were fetched"
    );
    assert!(!partial.exists(), "the partial was committed");
    assert_eq!(file_size(&blob_path), big.size);
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn two_processes_pulling_one_image_fetch_each_blob_once() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    // Whoever gets the big blob first holds its ingest lock for a while,
    // so the other process surely asks for it meanwhile.
    let (image, built, proxy, reference) =
        stalled_big_image(&env, BIG, 1_000_000, Duration::from_secs(2));
    let args = ["--progress", "plain", "pull", reference.as_str()];
    let outputs = env.dir("out");
    let mut a = Running::spawn(haul_command(env.root.path(), &args), &outputs, "a");
    let mut b = Running::spawn(haul_command(env.root.path(), &args), &outputs, "b");
    a.assert_ok(Duration::from_secs(30));
    b.assert_ok(Duration::from_secs(30));

    for (name, run) in [("a", &a), ("b", &b)] {
        let text = run.stdout();
        assert_eq!(
            text.lines().last(),
            Some(reference.as_str()),
            "stdout of {name}:\n{text}"
        );
    }
    assert_eq!(proxy.rule_uses(), [1], "the stall was applied");
    for layer in &built.layers {
        let gets = blob_gets(&proxy, &layer.blob.digest);
        assert_eq!(
            gets.len(),
            1,
            "layer {} was fetched by one process only: {gets:#?}",
            layer.blob.digest
        );
        assert_eq!(
            proxy.response_bytes_matching("GET", &layer.blob.digest),
            layer.blob.size,
            "layer {} moved once",
            layer.blob.digest
        );
    }
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn stalled_connection_times_out_and_the_download_resumes() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (image, built, proxy, reference) =
        stalled_big_image(&env, 3_000_000, 1_000_000, Duration::from_secs(20));
    let big = big_blob(&built);

    let start = Instant::now();
    let out = haul_command(env.root.path(), &["pull", &reference])
        .env("HAUL_READ_TIMEOUT_SECS", "1")
        .output()
        .expect("haul runs");
    let took = start.elapsed();
    assert_ok(&out);
    assert!(
        took < Duration::from_secs(10),
        "the pull waited out the stall ({took:?})"
    );
    let gets = blob_gets(&proxy, &big.digest);
    assert_eq!(gets.len(), 2, "a stalled GET and a resume: {gets:#?}");
    assert_eq!(gets[0].response_bytes, 1_000_000);
    assert_eq!(gets[1].header("range"), Some("bytes=1000000-"));
    assert_eq!(
        proxy.response_bytes_matching("GET", &big.digest),
        big.size,
        "no byte fetched twice"
    );
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn interrupt_cancels_a_pull_promptly_and_a_later_pull_completes() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = big_image(3_000_000);
    let built = env.put_image(&image, "library/big:1");
    let big = big_blob(&built);
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(big.digest.as_str()).method("GET"),
        Fault::stall(1_000_000, Duration::from_secs(30)),
    ));
    let reference = format!("{}/library/big:1", proxy.authority());

    let mut pull = Running::spawn(
        haul_command(
            env.root.path(),
            &["--progress", "plain", "pull", &reference],
        ),
        &env.dir("out"),
        "interrupted",
    );
    wait_until(Duration::from_secs(15), "the stall", || {
        proxy.response_bytes_matching("GET", &big.digest) >= 1_000_000
    });
    let start = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &pull.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = pull.finish(Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(5));
    // Exit code 130 (not death by the signal): haul caught the interrupt,
    // cancelled, cleaned up and reported.
    assert!(
        status.code() == Some(130),
        "{status}\nstdout:\n{}\nstderr:\n{}",
        pull.stdout(),
        pull.stderr()
    );
    assert!(
        !pull.stdout().lines().any(|l| l == reference),
        "an interrupted pull does not print its reference"
    );

    // The interrupted download left its partial: the next pull resumes it.
    let kept = file_size(&partial_path(env.root.path(), &big.digest));
    assert!(kept > 0, "the interrupted pull kept no partial");
    proxy.clear_rules();
    proxy.reset_counters();
    let out = env.haul(&["pull", &reference]);
    assert_ok(&out);
    let gets = blob_gets(&proxy, &big.digest);
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(
        gets[0].header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn max_concurrent_downloads_bounds_the_layer_gets_in_flight() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let mut image = ImageBuilder::new();
    for n in 0..6u64 {
        image = image.layer(LayerSpec::gzip(vec![Entry::random(
            &format!("layer{n}"),
            0o644,
            100_000,
            100 + n,
        )]));
    }
    let built = env.put_image(&image, "library/six:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    for layer in &built.layers {
        proxy.add_rule(Rule::new(
            Match::path_ends_with(layer.blob.digest.as_str()).method("GET"),
            Fault::stall(0, Duration::from_millis(300)),
        ));
    }
    let reference = format!("{}/library/six:1", proxy.authority());

    let mut pull = Running::spawn(
        haul_command(
            env.root.path(),
            &["--max-concurrent-downloads", "2", "pull", &reference],
        ),
        &env.dir("out"),
        "pull",
    );
    // A layer GET is in flight from its arrival at the proxy until the
    // proxy has handed out its last byte (counted before the client can
    // have it, so a slot is never seen free early).
    let in_flight = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .filter(|r| {
                built
                    .layers
                    .iter()
                    .any(|l| r.path.ends_with(&l.blob.digest) && r.response_bytes < l.blob.size)
            })
            .count()
    };
    let mut most = 0;
    let start = Instant::now();
    while pull.wait_for(Duration::ZERO).is_none() {
        most = most.max(in_flight());
        assert!(start.elapsed() < Duration::from_secs(30), "the pull hangs");
        std::thread::sleep(Duration::from_millis(2));
    }
    pull.assert_ok(Duration::ZERO);
    assert_eq!(
        proxy.rule_uses(),
        [1; 6],
        "every layer was fetched once, stalled"
    );
    assert_eq!(most, 2, "layer GETs in flight at once");
    env.assert_store_invariants();
}

#[test]
fn retry_countdown_shows_in_plain_progress() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "library/sample:1");
    let victim = &built.layers[0].blob;
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    // A failing request is one attempt of the layer, shown as a countdown
    // (the registry client does not retry layer GETs on its own).
    proxy.add_rule(
        Rule::new(
            Match::path_ends_with(victim.digest.as_str()).method("GET"),
            Fault::status(500),
        )
        .times(2),
    );
    let reference = format!("{}/library/sample:1", proxy.authority());

    let start = Instant::now();
    let out = haul_command(
        env.root.path(),
        &[
            "--progress",
            "plain",
            "--max-download-attempts",
            "5",
            "pull",
            &reference,
        ],
    )
    .env("HAUL_RETRY_TICK_MS", "100")
    .output()
    .expect("haul runs");
    let took = start.elapsed();
    assert_ok(&out);
    let text = stdout(&out);
    let id = short(&victim.digest);
    assert!(
        text.contains(&format!("{id}: Retrying in 5 seconds\n")),
        "{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with(&format!("{id}: Retrying in ")))
            .count()
            == 2,
        "two countdowns, one line each: {text}"
    );
    assert!(text.contains(&format!("{id}: Pull complete")), "{text}");
    assert_eq!(
        blob_gets(&proxy, &victim.digest).len(),
        3,
        "two failed attempts and a good one"
    );
    assert!(
        took < Duration::from_secs(10),
        "the countdown took {took:?}: the tick was not shortened"
    );
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn interrupt_reaches_a_pull_waiting_for_another_process() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (_image, built, proxy, reference) =
        stalled_big_image(&env, 3_000_000, 1_000_000, Duration::from_secs(30));
    let big = big_blob(&built);
    let args = ["--progress", "plain", "pull", reference.as_str()];
    let outputs = env.dir("out");

    // The first process holds the big blob's ingest lock, stalled.
    let mut holder = Running::spawn(haul_command(env.root.path(), &args), &outputs, "holder");
    wait_until(Duration::from_secs(15), "the stall", || {
        proxy.response_bytes_matching("GET", &big.digest) >= 1_000_000
    });
    // The second waits for that lock: the other layers are in the store
    // by now, so it has nothing else to do.
    let mut waiter = Running::spawn(haul_command(env.root.path(), &args), &outputs, "waiter");
    wait_until(Duration::from_secs(15), "the waiter to wait", || {
        waiter
            .stdout()
            .contains(&format!("{}: Pulling fs layer", short(&big.digest)))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(waiter.wait_for(Duration::ZERO), None, "the waiter waits");

    let start = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &waiter.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = waiter.finish(Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        status.code() == Some(130),
        "{status}\nstdout:\n{}\nstderr:\n{}",
        waiter.stdout(),
        waiter.stderr()
    );
    assert_eq!(
        blob_gets(&proxy, &big.digest).len(),
        1,
        "the waiter did not fetch the blob"
    );
    assert_eq!(holder.wait_for(Duration::ZERO), None, "the holder goes on");
    holder.kill();
    env.assert_store_invariants();
}

#[test]
fn a_pull_waiting_for_a_killed_process_resumes_its_partial() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (image, built, proxy, reference) =
        stalled_big_image(&env, 3_000_000, 1_000_000, Duration::from_secs(30));
    let big = big_blob(&built);
    let args = ["--progress", "plain", "pull", reference.as_str()];
    let outputs = env.dir("out");

    let mut holder = Running::spawn(haul_command(env.root.path(), &args), &outputs, "holder");
    wait_until(Duration::from_secs(15), "the stall", || {
        proxy.response_bytes_matching("GET", &big.digest) >= 1_000_000
    });
    let partial = partial_path(env.root.path(), &big.digest);
    wait_until(Duration::from_secs(10), "the partial file to grow", || {
        file_size(&partial) >= 500_000
    });
    let mut waiter = Running::spawn(haul_command(env.root.path(), &args), &outputs, "waiter");
    wait_until(Duration::from_secs(15), "the waiter to wait", || {
        waiter
            .stdout()
            .contains(&format!("{}: Pulling fs layer", short(&big.digest)))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        blob_gets(&proxy, &big.digest).len(),
        1,
        "the waiter waits for the holder's lock instead of fetching"
    );

    holder.kill(); // SIGKILL: its lock goes with it, its partial stays
    waiter.assert_ok(Duration::from_secs(15));
    assert_eq!(
        waiter.stdout().lines().last(),
        Some(reference.as_str()),
        "{}",
        waiter.stdout()
    );
    let gets = blob_gets(&proxy, &big.digest);
    assert_eq!(gets.len(), 2, "the holder's GET and the resume: {gets:#?}");
    let from: u64 = gets[1]
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the waiter resumes with a Range: {:#?}", gets[1]));
    assert!(
        (500_000..=1_000_000).contains(&from),
        "resumed from byte {from}"
    );
    assert_eq!(gets[1].response_bytes, big.size - from);
    assert_exports(&env, &reference, &image, "export");
    env.assert_store_invariants();
}

#[test]
fn interrupt_cancels_a_pull_stalled_on_its_manifest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(Rule::new(
        Match::path_contains("/manifests/").method("GET"),
        Fault::stall(0, Duration::from_secs(30)),
    ));
    let reference = format!("{}/library/sample:1", proxy.authority());
    let mut pull = Running::spawn(
        haul_command(
            env.root.path(),
            &["--progress", "plain", "pull", &reference],
        ),
        &env.dir("out"),
        "interrupted",
    );
    wait_until(Duration::from_secs(15), "the manifest GET", || {
        proxy.count_matching("GET", "/manifests/") >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &pull.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = pull.finish(Duration::from_secs(5));
    assert!(
        status.code() == Some(130),
        "{status}\nstderr:\n{}",
        pull.stderr()
    );
    env.assert_store_invariants();
}

/// `haul pull A B` of two schema 1 images sharing their base (diffIDs
/// unknown: a first pull), with one download at a time and the proxy
/// holding blobs so the order is known: A's base1 is registered before B
/// asks for it (B starts its own base1 transfer, which waits for the
/// slot), B joins A's transfer for base2, its top. When base2 is done, B
/// is done, whatever its own base1 does (Docker reads the diffIDs from the
/// top layer's parents); it must not fail with "too few parent layers".
#[test]
fn two_first_time_schema1_pulls_sharing_a_base_both_succeed() {
    let Some(env) = Env::start(RegistryConfig::no_auth().with_schema1()) else {
        return;
    };
    let base1 = LayerSpec::gzip(vec![Entry::random("base1", 0o644, 100_000, 11)]);
    let base2 = LayerSpec::gzip(vec![Entry::random("base2", 0o644, 100_000, 12)]);
    let top = LayerSpec::gzip(vec![Entry::random("top", 0o644, 100_000, 13)]);
    let image_a = ImageBuilder::new()
        .layer(base1.clone())
        .layer(base2.clone())
        .layer(top);
    let image_b = ImageBuilder::new().layer(base1).layer(base2);
    put_schema1(&env, &image_a, "library/s1a");
    put_schema1(&env, &image_b, "library/s1b");
    let built = image_a.write_oci_layout(&env.dir("built-a"), "t").unwrap();
    let digest = |i: usize| built.layers[i].blob.digest.clone();
    let id = |i: usize| short(&built.layers[i].blob.digest).to_string();

    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let hold = |matcher: Match| {
        let gate = haul_testkit::Gate::new();
        proxy.add_rule(Rule::new(
            matcher,
            Fault::Hold {
                after_bytes: 0,
                gate: gate.clone(),
            },
        ));
        gate
    };
    let b_manifest = hold(Match::path_contains("/library/s1b/manifests/").method("GET"));
    let base2_blob = hold(Match::path_ends_with(digest(1).as_str()).method("GET"));
    let top_blob = hold(Match::path_ends_with(digest(2).as_str()).method("GET"));

    let a = format!("{}/library/s1a:old", proxy.authority());
    let b = format!("{}/library/s1b:old", proxy.authority());
    let mut command = haul_command(
        env.root.path(),
        &[
            "--progress",
            "plain",
            "--max-concurrent-downloads",
            "1",
            "pull",
            &a,
            &b,
        ],
    );
    command.env("HAUL_RETRY_TICK_MS", "1");
    let mut pull = Running::spawn(command, &env.dir("out"), "pull");
    let minute = Duration::from_secs(60);
    let after = |text: &str, first: &str, then: &str| {
        text.find(first).is_some_and(|at| text[at..].contains(then))
    };
    wait_until(minute, "A's base1 registered", || {
        pull.stdout().contains(&format!("{}: Pull complete", id(0)))
    });
    b_manifest.open();
    wait_until(minute, "B's own base1 waiting for the slot", || {
        after(
            &pull.stdout(),
            &format!("{}: Pull complete", id(0)),
            &format!("{}: Waiting", id(0)),
        )
    });
    base2_blob.open();
    wait_until(minute, "base2 registered", || {
        pull.stdout().contains(&format!("{}: Pull complete", id(1)))
    });
    let b_status = format!("Status: Downloaded newer image for {b}");
    let waited = Instant::now();
    while !pull.stdout().contains(&b_status) && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let b_done_before_a = pull.stdout().contains(&b_status);
    top_blob.open();
    pull.assert_ok(minute);
    assert!(
        b_done_before_a,
        "B was done as soon as its top layer was, while A's top was held:\n{}",
        pull.stdout()
    );
    assert_eq!(
        proxy.count_matching("GET", digest(1).as_str()),
        1,
        "base2 moved once, for both pulls"
    );
    assert_exports(&env, &a, &image_a, "export-a");
    assert_exports(&env, &b, &image_b, "export-b");
}

/// The first layer of the sample image in the registry, behind a proxy.
fn sample_behind_proxy(env: &Env) -> (BuiltImage, FaultProxy, String) {
    let built = env.put_image(&sample_image(), "library/sample:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/sample:1", proxy.authority());
    (built, proxy, reference)
}

/// A blob that answers 500 every time costs exactly the layer's attempts
/// (5 by default): one request each, each failure shown as a countdown in
/// plain and JSON progress and logged at -v with its attempt number.
#[test]
fn a_blob_answering_500_costs_one_request_per_layer_attempt() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (built, proxy, reference) = sample_behind_proxy(&env);
    let victim = built.layers[0].blob.digest.clone();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(victim.as_str()).method("GET"),
        Fault::status(500),
    ));
    let id = short(&victim).to_string();
    for mode in ["plain", "json"] {
        proxy.reset_counters();
        let out = haul_command(
            env.root.path(),
            &["-v", "--progress", mode, "pull", &reference],
        )
        .env("HAUL_RETRY_TICK_MS", "1")
        .output()
        .expect("haul runs");
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", stdout(&out));
        assert_eq!(
            blob_gets(&proxy, &victim).len(),
            5,
            "{mode}: one request per attempt, 5 attempts"
        );
        let text = stdout(&out);
        for seconds in [5, 10, 15, 20] {
            let shown = format!("Retrying in {seconds} seconds");
            let seen = match mode {
                "plain" => text.contains(&format!("{id}: {shown}")),
                _ => text.lines().any(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    v["id"] == id.as_str() && v["status"] == shown.as_str()
                }),
            };
            assert!(
                seen,
                "{mode}: the countdown after attempt {} shows\n{text}",
                seconds / 5
            );
        }
        let log = stderr(&out);
        for attempt in 1..=4 {
            let line = log
                .lines()
                .find(|l| l.contains(&format!("(attempt {attempt} of 5), retrying")))
                .unwrap_or_else(|| panic!("{mode}: -v logs attempt {attempt}:\n{log}"));
            // The line names the image (the pull's span) and the layer
            // (the transfer's span).
            assert!(
                line.contains(&format!("pull{{image={reference}}}"))
                    && line.contains(&format!("layer{{id={id}}}")),
                "{mode}: {line}"
            );
        }
    }
}

/// `--max-download-attempts 1` means one request, and the error comes at
/// once (no countdown, no hidden retries), with the real tick.
#[test]
fn one_download_attempt_means_one_request_and_a_prompt_error() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let (built, proxy, reference) = sample_behind_proxy(&env);
    let victim = built.layers[0].blob.digest.clone();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(victim.as_str()).method("GET"),
        Fault::status(500),
    ));
    let start = Instant::now();
    let out = env.haul(&[
        "--progress",
        "plain",
        "--max-download-attempts",
        "1",
        "pull",
        &reference,
    ]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(blob_gets(&proxy, &victim).len(), 1, "one try");
    assert!(!stdout(&out).contains("Retrying"), "{}", stdout(&out));
    assert!(took < Duration::from_secs(3), "the error took {took:?}");
}

/// A connection dropped midway after moving the download on is resumed
/// with Range at once and spends no attempt: one attempt is enough.
#[test]
fn a_dropped_then_resumed_blob_spends_no_attempt() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = big_image(BIG);
    let built = env.put_image(&image, "library/big:1");
    let big = big_blob(&built).clone();
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    proxy.add_rule(
        Rule::new(
            Match::path_ends_with(big.digest.as_str()).method("GET"),
            Fault::DropAfterBytes(BIG / 3),
        )
        .times(2),
    );
    let reference = format!("{}/library/big:1", proxy.authority());
    let out = env.haul(&[
        "--progress",
        "plain",
        "--max-download-attempts",
        "1",
        "pull",
        &reference,
    ]);
    assert_ok(&out);
    assert!(!stdout(&out).contains("Retrying"), "{}", stdout(&out));
    let gets = blob_gets(&proxy, &big.digest);
    assert_eq!(gets.len(), 3, "two drops, each resumed: {gets:#?}");
    assert_eq!(
        gets[1].header("range"),
        Some(format!("bytes={}-", BIG / 3).as_str())
    );
    assert_eq!(
        gets.iter().map(|g| g.response_bytes).sum::<u64>(),
        big.size,
        "no byte fetched twice"
    );
    assert_exports(&env, &reference, &image, "export");
}

/// A download slot covers network work only: with one slot, the second
/// layer's download starts as soon as the first layer's blob is in,
/// while the first is still extracting (128 MB of zeros from a small
/// blob: fast to fetch, slow to unpack).
#[test]
fn the_next_download_starts_while_the_previous_layer_is_still_extracting() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![Entry::file(
            "zeros",
            0o644,
            vec![0u8; 128 * 1024 * 1024],
        )]))
        .layer(LayerSpec::gzip(vec![Entry::random(
            "small", 0o644, 10_000, 5,
        )]));
    let built = env.put_image(&image, "library/slow-unpack:1");
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let reference = format!("{}/library/slow-unpack:1", proxy.authority());
    let first = short(&built.layers[0].blob.digest).to_string();
    let second = built.layers[1].blob.digest.clone();
    let command = haul_command(
        env.root.path(),
        &[
            "--progress",
            "plain",
            "--max-concurrent-downloads",
            "1",
            // 128 MiB from ~130 kB is past the default bomb limit.
            "--max-layer-expansion",
            "2000",
            "pull",
            &reference,
        ],
    );
    let mut pull = Running::spawn(command, &env.dir("out"), "pull");
    let start = Instant::now();
    let (mut second_started, mut first_done) = (None, None);
    while first_done.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            pull.stdout()
        );
        if second_started.is_none() && !blob_gets(&proxy, &second).is_empty() {
            second_started = Some(Instant::now());
        }
        if pull.stdout().contains(&format!("{first}: Pull complete")) {
            first_done = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    pull.assert_ok(Duration::from_secs(60));
    let second_started =
        second_started.expect("the second layer was fetched before the first was complete");
    let overlap = first_done.unwrap() - second_started;
    eprintln!("the second download started {overlap:?} before the first layer was extracted");
    assert!(
        overlap > Duration::from_millis(50),
        "the second download started only {overlap:?} before the first layer was extracted"
    );
    let text = pull.stdout();
    let at = |line: &str| {
        text.find(line)
            .unwrap_or_else(|| panic!("{line:?} in\n{text}"))
    };
    assert!(at(&format!("{first}: Download complete")) < at(&format!("{first}: Extracting")));
    assert_exports(&env, &reference, &image, "export");
}
