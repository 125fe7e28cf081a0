//! The store survives a process killed in the middle of `rmi` and `gc`
//! (HAUL_TEST_CRASH_AT aborts the process at its N-th crash point, before
//! or after each rename and removal), and a layer damaged on disk is taken
//! for absent, never for whole: the next pull succeeds and the export is
//! the image's. On an ext4 loop mount without dir_index too, when root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use haul_testkit::{sample_image, RegistryConfig, Rootfs};

fn as_root() -> bool {
    haul_dist::store::running_as_root()
}

/// The image pulled into `root`, and its reference.
fn pulled(env: &Env, root: &Path) -> String {
    let reference = env.reference("library/sample:1");
    assert_ok(&haul_in(root, &["pull", &reference]));
    reference
}

/// The export of `reference` from `root` into a fresh `dir`.
fn export(root: &Path, reference: &str, dir: &Path) -> Rootfs {
    let _ = std::fs::remove_dir_all(dir);
    assert_ok(&haul_in(
        root,
        &["export", reference, dir.to_str().unwrap()],
    ));
    Rootfs::read_dir(dir).unwrap()
}

/// Asserts that a pull into `root` succeeds and that its export equals
/// `clean`.
#[track_caller]
fn assert_pull_recovers(root: &Path, reference: &str, clean: &Rootfs, scratch: &Path, what: &str) {
    let out = haul_in(root, &["pull", reference]);
    assert!(
        out.status.success(),
        "{what}: the next pull failed: {}",
        stderr(&out)
    );
    let exported = export(root, reference, &scratch.join("export"));
    let differences = clean.diff(&exported, as_root());
    assert!(
        differences.is_empty(),
        "{what}: export differs from a clean pull's: {differences:#?}"
    );
}

fn layer_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("layers/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

/// Deletes the regular files of a diff (as a removal in listing order,
/// killed after the files went, would).
fn delete_files_under(dir: &Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            removed += delete_files_under(&path);
        } else if meta.is_file() {
            std::fs::remove_file(&path).unwrap();
            removed += 1;
        }
    }
    removed
}

#[test]
fn a_layer_whose_diff_lost_files_is_not_taken_for_present() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1");
    let reference = pulled(&env, env.root.path());
    let clean = export(env.root.path(), &reference, &env.dir("clean"));

    // "diff/ went first": layer.json stays, the files are gone.
    let mut removed = 0;
    for dir in layer_dirs(env.root.path()) {
        removed += delete_files_under(&dir.join("diff"));
    }
    assert!(removed > 0);
    assert_pull_recovers(
        env.root.path(),
        &reference,
        &clean,
        env.scratch.path(),
        "diff/ emptied under layer.json",
    );

    // "layer.json went first": the diff stays without its record.
    for dir in layer_dirs(env.root.path()) {
        std::fs::remove_file(dir.join("layer.json")).unwrap();
    }
    assert_pull_recovers(
        env.root.path(),
        &reference,
        &clean,
        env.scratch.path(),
        "layer.json removed, diff/ left",
    );
}

/// Runs `args` on `root`, aborting at crash point `at`. Whether it died.
fn crashed(root: &Path, args: &[&str], at: u64) -> bool {
    let out = haul_command(root, args)
        .env("HAUL_TEST_CRASH_AT", at.to_string())
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => false,
        None => true, // killed by the abort signal
        Some(code) => panic!(
            "{args:?} with crash point {at} failed with {code} instead of dying: {}",
            stderr(&out)
        ),
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Kills `rmi` then `gc` at seeded crash points on stores under `base`;
/// after each, the next pull must succeed and export what a clean pull
/// does. Returns how many crashes were checked.
fn crash_rmi_and_gc(env: &Env, base: &Path) -> usize {
    let template = base.join("template");
    let reference = pulled(env, &template);
    // The pull names the image by tag and by digest; removing the tag, its
    // repository's last, takes the digest reference along, so the image
    // and everything of it goes.
    let rmi = ["rmi", reference.as_str()];
    let clean = export(&template, &reference, &base.join("clean"));
    let work = base.join("work");
    let scratch = base.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut checked = 0;

    // `rmi` of every name of the image deletes it and runs gc: one run
    // covers untagging, the record's removal and gc's removals. Points
    // spread over the run (31 with the sample image), until one finishes.
    for at in [
        1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 21, 24, 27, 30, 34, 40, 50, 70, 100,
    ] {
        copy_tree(&template, &work);
        if !crashed(&work, &rmi, at) {
            break;
        }
        assert_pull_recovers(&work, &reference, &clean, &scratch, &format!("rmi at {at}"));
        let trash: Vec<_> = std::fs::read_dir(work.join("trash"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            trash.is_empty(),
            "rmi at {at}: trash left after the next command: {trash:?}"
        );
        // And the store stays usable for the next removal.
        assert_ok(&haul_in(&work, &rmi));
        assert_ok(&haul_in(&work, &["gc"]));
        checked += 1;
    }
    checked
}

#[test]
fn killing_rmi_and_gc_at_seeded_points_never_breaks_the_next_pull() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1");
    let checked = crash_rmi_and_gc(&env, env.scratch.path());
    assert!(checked >= 8, "only {checked} crash points were reached");
}

/// An ext4 filesystem made without dir_index, loop-mounted; unmounted on
/// drop.
struct Ext4Mount {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Ext4Mount {
    fn make(scratch: &Path) -> Option<Ext4Mount> {
        if !as_root() {
            eprintln!(
                "NOTE: not root; the ext4 (no dir_index) variant cannot mount and is skipped"
            );
            return None;
        }
        let image = scratch.join("ext4.img");
        let run = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        let ok = run(Command::new("truncate").arg("-s").arg("256M").arg(&image))
            && run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^dir_index"])
                .arg(&image))
            && run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&image)
                .arg(dir.path()));
        if !ok {
            eprintln!("NOTE: cannot loop-mount an ext4 image here; that variant is skipped");
            return None;
        }
        Some(Ext4Mount { dir, image })
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn killing_rmi_and_gc_on_ext4_without_dir_index_never_breaks_the_next_pull() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(mount) = Ext4Mount::make(env.scratch.path()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:1");
    let checked = crash_rmi_and_gc(&env, mount.dir.path());
    assert!(checked >= 8, "only {checked} crash points were reached");
}
