//! Two haul commands on one root always finish: loads of archives sharing
//! blobs in opposite order, and a clear error naming the holder when a
//! lock is held too long.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use haul_testkit::{Entry, ImageBuilder, LayerSpec};

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?} (deadlock?)\nstderr:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_haul(root: &Path, args: &[&str]) -> Child {
    haul_command(root, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn layer(seed: u64) -> LayerSpec {
    LayerSpec::gzip(vec![Entry::random(
        &format!("file-{seed}"),
        0o644,
        6_000_000,
        seed,
    )])
}

#[test]
fn two_loads_sharing_blobs_in_opposite_order_both_finish() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let forward = [1, 2, 3, 4];
    let mut images = Vec::new();
    for (name, seeds) in [
        ("forward", forward.to_vec()),
        ("backward", forward.iter().rev().copied().collect()),
    ] {
        let image = seeds
            .iter()
            .fold(ImageBuilder::new(), |image, seed| image.layer(layer(*seed)));
        let dir = scratch.path().join(name);
        let tag = format!("example.com/{name}:1");
        let built = image.write_oci_layout(&dir, &tag).unwrap();
        images.push((dir, tag, built));
    }
    // Same blobs, opposite order.
    let blobs = |i: usize| -> Vec<String> {
        images[i]
            .2
            .layers
            .iter()
            .map(|l| l.blob.digest.clone())
            .collect()
    };
    let mut reversed = blobs(1);
    reversed.reverse();
    assert_eq!(blobs(0), reversed);

    for round in 0..3 {
        let fresh = root.path().join(format!("round-{round}"));
        let children: Vec<Child> = images
            .iter()
            .map(|(dir, _, _)| spawn_haul(&fresh, &["load", "-i", dir.to_str().unwrap()]))
            .collect();
        for (child, (_, tag, _)) in children.into_iter().zip(&images) {
            let out = wait_bounded(child, Duration::from_secs(30), &format!("load of {tag}"));
            assert_ok(&out);
            assert_eq!(stdout(&out), format!("Loaded image: {tag}\n"));
        }
        for (_, tag, built) in &images {
            let out = haul_in(&fresh, &["inspect", tag]);
            assert_ok(&out);
            let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(inspected["id"], built.config.digest.as_str());
        }
        let parked: Vec<_> = std::fs::read_dir(fresh.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(parked.is_empty(), "left in tmp/: {parked:?}");
    }
}

#[test]
fn a_held_lock_times_out_naming_its_holder() {
    let scratch = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("layout");
    ImageBuilder::new()
        .layer(layer(9))
        .write_oci_layout(&dir, "example.com/held:1")
        .unwrap();
    // Open the store once so its files exist, then hold gc.lock as a
    // running gc would.
    assert_ok(&haul_in(root.path(), &["images"]));
    let lock = root.path().join("gc.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) runs");
    let started = Instant::now();
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .contains(&format!(" {} ", holder.id()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "flock never locked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let started = Instant::now();
    let out = haul_command(root.path(), &["load", "-i", dir.to_str().unwrap()])
        .env("HAUL_LOCK_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        err.contains("gc.lock") && err.contains(&format!("pid {} (flock", holder.id())),
        "the error names the lock and who holds it: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
