//! `haul save` and `haul load` end to end: images pulled from the real
//! registry, archives read by skopeo, loaded into fresh stores.

use std::fs;
use std::path::Path;

use crate::common::*;
use haul_testkit::skopeo::run_skopeo;
use haul_testkit::{sample_image, RegistryConfig, Rootfs};

fn running_as_root() -> bool {
    haul_dist::store::running_as_root()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_saved_image_loads_into_a_fresh_store_identically() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", &reference]));

    let file = env.dir("sample.tar");
    let out = env.haul(&["save", &reference, "-o", arg(&file)]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "", "save prints nothing");

    // skopeo reads it as a docker-archive with the image's diffIDs.
    let inspected =
        json(&run_skopeo(["inspect", &format!("docker-archive:{}", file.display())]).unwrap());
    let diff_ids: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(
        inspected["Layers"],
        serde_json::json!(diff_ids),
        "{inspected}"
    );

    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["load", "-i", arg(&file)]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("Loaded image: {reference}\n"));

    let out = haul_in(fresh.path(), &["inspect", &reference]);
    assert_ok(&out);
    let inspected = json(&out.stdout);
    assert_eq!(
        inspected["id"],
        built.config.digest.as_str(),
        "same image ID"
    );
    let exported = env.dir("export");
    assert_ok(&haul_in(
        fresh.path(),
        &["export", &reference, arg(&exported)],
    ));
    let differences = image
        .expected_rootfs()
        .diff(&Rootfs::read_dir(&exported).unwrap(), running_as_root());
    assert!(
        differences.is_empty(),
        "export after load differs: {differences:#?}"
    );
    env.assert_store_invariants();
}

#[test]
fn saving_a_missing_image_is_a_one_line_error_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    for format in ["docker", "oci"] {
        let target = out_dir.path().join("out.tar");
        let out = haul_in(
            root.path(),
            &[
                "save",
                "--format",
                format,
                "nothing/here:1",
                "-o",
                arg(&target),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(stderr(&out), "haul: no such image: nothing/here:1\n");
        let left: Vec<_> = fs::read_dir(out_dir.path()).unwrap().collect();
        assert!(left.is_empty(), "no output is left: {left:?}");
    }
}

#[test]
fn oci_format_writes_a_layout_skopeo_reads_with_the_same_digest() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/sample:2.0");
    let reference = env.reference("library/sample:2.0");
    assert_ok(&env.haul(&["pull", &reference]));

    let dir = env.dir("layout");
    assert_ok(&env.haul(&["save", "--format", "oci", &reference, "-o", arg(&dir)]));
    let inspected = json(&run_skopeo(["inspect", &format!("oci:{}:2.0", dir.display())]).unwrap());
    assert_eq!(
        inspected["Digest"],
        built.manifest.digest.as_str(),
        "{inspected}"
    );

    let tar = env.dir("layout.tar");
    assert_ok(&env.haul(&["save", "--format", "oci", &reference, "-o", arg(&tar)]));
    let inspected =
        json(&run_skopeo(["inspect", &format!("oci-archive:{}:2.0", tar.display())]).unwrap());
    assert_eq!(
        inspected["Digest"],
        built.manifest.digest.as_str(),
        "{inspected}"
    );

    // And haul loads it back under its full name, digests unchanged.
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["load", "-i", arg(&tar)]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("Loaded image: {reference}\n"));
    let out = haul_in(fresh.path(), &["inspect", &reference]);
    assert_ok(&out);
    assert_eq!(
        json(&out.stdout)["manifestDigest"],
        built.manifest.digest.as_str()
    );
    env.assert_store_invariants();
}

#[test]
fn a_corrupted_archive_is_refused_and_nothing_is_loaded() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:3.0");
    let reference = env.reference("library/sample:3.0");
    assert_ok(&env.haul(&["pull", &reference]));
    let file = env.dir("sample.tar");
    assert_ok(&env.haul(&["save", &reference, "-o", arg(&file)]));

    // Flip a byte in the middle of the archive: the first layer's tar,
    // whose 1 MiB file is most of it.
    let mut bytes = fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&file, bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["load", "-i", arg(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!("haul: cannot load {}: layer ", file.display()))
            && message.contains("hashes to"),
        "{message}"
    );
    let out = haul_in(fresh.path(), &["images", "--format", "json-array"]);
    assert_ok(&out);
    assert_eq!(json(&out.stdout), serde_json::json!([]));
    env.assert_store_invariants();
}

#[test]
fn save_to_standard_output_and_load_from_standard_input() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    let built = env.put_image(&image, "library/sample:4.0");
    let reference = env.reference("library/sample:4.0");
    assert_ok(&env.haul(&["pull", &reference]));

    // `haul save REF > x.tar`, and `-o -` alike.
    for args in [
        vec!["save", reference.as_str()],
        vec!["save", reference.as_str(), "-o", "-"],
    ] {
        let file = env.dir("piped.tar");
        let out = haul_command(env.root.path(), &args)
            .stdout(fs::File::create(&file).unwrap())
            .output()
            .unwrap();
        assert_ok(&out);
        let inspected =
            json(&run_skopeo(["inspect", &format!("docker-archive:{}", file.display())]).unwrap());
        let diff_ids: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(inspected["Layers"], serde_json::json!(diff_ids), "{args:?}");

        // `haul load < x.tar` into a fresh store, and `-i -` alike.
        for load in [vec!["load"], vec!["load", "-i", "-"]] {
            let fresh = tempfile::tempdir().unwrap();
            let out = haul_command(fresh.path(), &load)
                .stdin(fs::File::open(&file).unwrap())
                .output()
                .unwrap();
            assert_ok(&out);
            assert_eq!(
                stdout(&out),
                format!("Loaded image: {reference}\n"),
                "{load:?}"
            );
            let out = haul_in(fresh.path(), &["inspect", &reference]);
            assert_eq!(json(&out.stdout)["id"], built.config.digest.as_str());
        }
    }
    // The store's temporary directory keeps no spooled archive.
    let tmp = env.root.path().join("tmp");
    let left: Vec<_> = fs::read_dir(&tmp).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "save left {left:?} in the store");

    // The OCI layout goes down a pipe as a tar skopeo reads.
    let file = env.dir("piped-oci.tar");
    let out = haul_command(env.root.path(), &["save", "--format", "oci", &reference])
        .stdout(fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert_ok(&out);
    let inspected =
        json(&run_skopeo(["inspect", &format!("oci-archive:{}:4.0", file.display())]).unwrap());
    assert_eq!(inspected["Digest"], built.manifest.digest.as_str());
    env.assert_store_invariants();
}

#[test]
fn load_of_garbage_on_standard_input_names_standard_input() {
    let root = tempfile::tempdir().unwrap();
    let garbage = root.path().join("garbage");
    fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let out = haul_command(root.path(), &["load"])
        .stdin(fs::File::open(&garbage).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("haul: cannot load standard input: "),
        "{message}"
    );
}

#[test]
fn export_into_the_current_directory_and_as_a_tar_stream() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let image = sample_image();
    env.put_image(&image, "library/sample:5.0");
    let reference = env.reference("library/sample:5.0");
    assert_ok(&env.haul(&["pull", &reference]));
    let expected = image.expected_rootfs();
    let check = |dir: &Path, what: &str| {
        let differences = expected.diff(&Rootfs::read_dir(dir).unwrap(), running_as_root());
        assert!(differences.is_empty(), "{what} differs: {differences:#?}");
    };

    // `haul export REF .` in an empty directory writes into it.
    let here = env.dir("here");
    fs::create_dir(&here).unwrap();
    let out = haul_command(env.root.path(), &["export", &reference, "."])
        .current_dir(&here)
        .output()
        .unwrap();
    assert_ok(&out);
    check(&here, "export into .");

    // `-o FILE` and `-o -` write the same tree as a tar.
    let file = env.dir("rootfs.tar");
    assert_ok(&env.haul(&["export", &reference, "-o", arg(&file)]));
    let piped = env.dir("piped-rootfs.tar");
    let out = haul_command(env.root.path(), &["export", &reference, "-o", "-"])
        .stdout(fs::File::create(&piped).unwrap())
        .output()
        .unwrap();
    assert_ok(&out);
    for (tar, name) in [(&file, "tar file"), (&piped, "tar on stdout")] {
        let unpacked = env.dir(&format!("unpacked-{name}"));
        let mut archive = tar::Archive::new(fs::File::open(tar).unwrap());
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_preserve_ownerships(running_as_root());
        archive.unpack(&unpacked).unwrap();
        check(&unpacked, name);
    }
    let left: Vec<_> = fs::read_dir(env.root.path().join("tmp"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "export left {left:?} in the store");

    // A non-empty target is refused, naming it.
    let out = env.haul(&["export", &reference, arg(&here)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("export target {} exists", here.display())),
        "{}",
        stderr(&out)
    );
    env.assert_store_invariants();
}

#[test]
fn oci_save_of_several_images_names_each_fully_and_adds_to_a_layout() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let first = env.put_image(&sample_image(), "library/a:1");
    let second = env.put_image(&sample_image().label("n", "2"), "library/b:1");
    let third = env.put_image(&sample_image().label("n", "3"), "library/c:3");
    let (a, b, c) = (
        env.reference("library/a:1"),
        env.reference("library/b:1"),
        env.reference("library/c:3"),
    );
    assert_ok(&env.haul(&["pull", &a, &b, &c]));

    // Two images with the same tag: each is named by its full reference.
    let dir = env.dir("layout");
    assert_ok(&env.haul(&["save", "--format", "oci", &a, &b, "-o", arg(&dir)]));
    let digest_of = |name: &str| {
        json(&run_skopeo(["inspect", &format!("oci:{}:{name}", dir.display())]).unwrap())["Digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest_of(&a), first.manifest.digest);
    assert_eq!(digest_of(&b), second.manifest.digest);

    // Saving into the existing layout adds to it; the others stay.
    assert_ok(&env.haul(&["save", "--format", "oci", &c, "-o", arg(&dir)]));
    assert_eq!(digest_of(&c), third.manifest.digest);
    assert_eq!(digest_of(&a), first.manifest.digest);
    assert_eq!(digest_of(&b), second.manifest.digest);
    // Saving one again replaces its entry rather than doubling it.
    assert_ok(&env.haul(&["save", "--format", "oci", &a, "-o", arg(&dir)]));
    let index = json(&fs::read(dir.join("index.json")).unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    let leftovers: Vec<_> = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // And the whole layout loads back with every name.
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["load", "-i", arg(&dir)]);
    assert_ok(&out);
    for reference in [&a, &b, &c] {
        assert!(
            stdout(&out).contains(&format!("Loaded image: {reference}\n")),
            "{}",
            stdout(&out)
        );
    }
    assert_store_invariants(fresh.path());
    env.assert_store_invariants();
}

#[test]
fn save_and_export_to_a_pipe_write_into_it_and_leave_it_a_pipe() {
    use std::os::unix::fs::FileTypeExt;
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "library/sample:6.0");
    let reference = env.reference("library/sample:6.0");
    assert_ok(&env.haul(&["pull", &reference]));
    // A FIFO stands in for /dev/null and other devices: renaming a file
    // over it would replace it.
    for args in [
        vec!["save", reference.as_str(), "-o"],
        vec!["export", reference.as_str(), "-o"],
    ] {
        let fifo = env.dir("pipe");
        let _ = fs::remove_file(&fifo);
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let (sent, received) = std::sync::mpsc::channel();
        {
            let fifo = fifo.clone();
            std::thread::spawn(move || sent.send(fs::read(&fifo).unwrap()));
        }
        let mut full = args.clone();
        full.push(arg(&fifo));
        assert_ok(&env.haul(&full));
        // A haul that renamed a file over the pipe never opened it: the
        // reader would wait for ever, so it gets a bounded wait.
        let bytes = received
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{args:?} never wrote into the pipe"));
        assert!(
            fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
            "{args:?} replaced the pipe"
        );
        let names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        let expected = if args[0] == "save" {
            "manifest.json"
        } else {
            "data"
        };
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "{args:?}: a tar with {expected}: {names:?}"
        );
    }
}
