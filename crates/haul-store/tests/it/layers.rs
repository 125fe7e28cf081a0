//! Layer registration and unpacking per the OCI layer rules.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::common::{new_store, raw_tar, tar_of, tree, Raw};
use haul_oci::{Compression, Digest};
use haul_store::{decompressing_reader, Error, Store, UnpackOptions};
use haul_testkit::image::FIXED_MTIME;
use haul_testkit::Entry;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Everything under `layers/` except finished layers: must stay empty.
fn leftovers(store: &Store) -> Vec<String> {
    std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|p| p != "sha256")
        .collect()
}

#[test]
fn layer_is_unpacked_faithfully_with_markers_links_and_modes() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/secret", 0o600, "s3cret\n"),
        Entry::symlink("etc/rel", "secret"),
        Entry::symlink("abs", "/etc/secret"),
        Entry::hardlink("etc/hard", "etc/secret"),
        Entry::dir("bin", 0o755),
        Entry::random("bin/suid", 0o4755, 100, 5),
        Entry::random("bin/sgid", 0o2755, 10, 6),
        Entry::dir("tmp", 0o1777),
        Entry::dir("ro", 0o555),
        Entry::file("ro/inside", 0o444, "read-only\n"),
        Entry::whiteout("old/file"),
        Entry::dir("opq", 0o755),
        Entry::opaque("opq"),
        Entry::file("opq/new", 0o644, "new\n"),
        Entry::dir("home", 0o755),
        Entry::dir("home/user", 0o750).owned_by(1000, 1000),
        Entry::file("home/user/notes", 0o640, "mine\n").owned_by(1000, 1001),
        Entry::file("implicit/parent/file", 0o644, "x"),
    ]);
    let diff_id = Digest::sha256_of(&tar);
    let info = store
        .register_layer(&tar[..], None, Some(&diff_id))
        .unwrap();
    assert_eq!(info.diff_id, diff_id);
    assert_eq!(
        info.chain_id, diff_id,
        "a base layer's chain ID is its diff ID"
    );
    assert_eq!(info.parent, None);
    assert_eq!(info.size, tar.len() as u64);
    assert_eq!(info.skipped_entries, 0);
    assert_eq!(store.get_layer(&diff_id).unwrap(), Some(info));
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    let diff = store.layer_diff_dir(&diff_id);
    assert_eq!(
        diff,
        store
            .root()
            .join("layers/sha256")
            .join(diff_id.hex())
            .join("diff")
    );
    assert_eq!(std::fs::read(diff.join("etc/secret")).unwrap(), b"s3cret\n");
    assert_eq!(mode(&diff.join("etc/secret")), 0o600);
    assert_eq!(mode(&diff.join("bin/suid")), 0o4755);
    assert_eq!(mode(&diff.join("bin/sgid")), 0o2755);
    assert_eq!(mode(&diff.join("tmp")), 0o1777);
    assert_eq!(mode(&diff.join("ro")), 0o555);
    assert_eq!(
        std::fs::read(diff.join("ro/inside")).unwrap(),
        b"read-only\n"
    );
    assert_eq!(mode(&diff.join("implicit/parent")), 0o755);
    assert_eq!(
        std::fs::read_link(diff.join("etc/rel")).unwrap(),
        Path::new("secret")
    );
    assert_eq!(
        std::fs::read_link(diff.join("abs")).unwrap(),
        Path::new("/etc/secret")
    );
    let a = std::fs::metadata(diff.join("etc/secret")).unwrap();
    let b = std::fs::metadata(diff.join("etc/hard")).unwrap();
    assert_eq!(
        a.ino(),
        b.ino(),
        "etc/hard should be a hard link to etc/secret"
    );
    assert_eq!(a.nlink(), 2);

    // Whiteout and opaque markers are kept, as empty regular files.
    for marker in ["old/.wh.file", "opq/.wh..wh..opq"] {
        let m = std::fs::symlink_metadata(diff.join(marker)).unwrap();
        assert!(
            m.is_file() && m.len() == 0,
            "{marker} should be an empty file"
        );
    }
    assert!(diff.join("opq/new").is_file());

    // Times, directories included (set after their content).
    for path in ["etc/secret", "etc", "ro", "home/user", "opq"] {
        let m = std::fs::symlink_metadata(diff.join(path)).unwrap();
        assert_eq!(m.mtime() as u64, FIXED_MTIME, "mtime of {path}");
    }
    assert_eq!(
        std::fs::symlink_metadata(diff.join("abs")).unwrap().mtime() as u64,
        FIXED_MTIME,
        "a symlink's own mtime"
    );

    if haul_store::running_as_root() {
        let user = std::fs::metadata(diff.join("home/user")).unwrap();
        assert_eq!((user.uid(), user.gid()), (1000, 1000));
        let notes = std::fs::metadata(diff.join("home/user/notes")).unwrap();
        assert_eq!((notes.uid(), notes.gid()), (1000, 1001));
        assert_eq!(mode(&diff.join("home/user/notes")), 0o640);
    }
}

#[test]
fn layer_json_records_identity_and_parent() {
    let (_dir, store) = new_store();
    let base = tar_of(vec![Entry::file("a", 0o644, "a")]);
    let top = tar_of(vec![Entry::file("b", 0o644, "b")]);
    let base_info = store.register_layer(&base[..], None, None).unwrap();
    let top_info = store
        .register_layer(&top[..], Some(&base_info.chain_id), None)
        .unwrap();
    let chain = haul_oci::chain_ids(&[base_info.diff_id.clone(), top_info.diff_id.clone()]);
    assert_eq!(top_info.chain_id, chain[1]);
    assert_eq!(top_info.parent.as_ref(), Some(&chain[0]));

    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            store
                .root()
                .join("layers/sha256")
                .join(chain[1].hex())
                .join("layer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["diff_id"], top_info.diff_id.as_str());
    assert_eq!(json["chain_id"], chain[1].as_str());
    assert_eq!(json["parent"], chain[0].as_str());
    assert_eq!(json["size"], top.len() as u64);
    assert!(json["created"].as_u64().unwrap() > 1_600_000_000);

    let stack = store.layer_chain(&chain[1]).unwrap();
    assert_eq!(stack, vec![base_info, top_info]);
}

#[test]
fn wrong_diff_id_is_refused_and_nothing_is_kept() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("a", 0o644, "a")]);
    let wrong = Digest::sha256_of(b"not this layer");
    let err = store
        .register_layer(&tar[..], None, Some(&wrong))
        .unwrap_err();
    match &err {
        Error::DiffIdMismatch { expected, actual } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &Digest::sha256_of(&tar));
        }
        other => panic!("expected DiffIdMismatch, got {other:?}"),
    }
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    assert!(store.list_layers().unwrap().is_empty());
}

#[test]
fn parent_must_be_registered() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("a", 0o644, "a")]);
    let missing = Digest::sha256_of(b"no such layer");
    let err = store
        .register_layer(&tar[..], Some(&missing), None)
        .unwrap_err();
    assert!(
        matches!(&err, Error::LayerNotFound { chain_id } if chain_id == &missing),
        "{err}"
    );
}

#[test]
fn registering_an_existing_chain_returns_the_existing_layer() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("a", 0o644, "a")]);
    let diff_id = Digest::sha256_of(&tar);
    let first = store.register_layer(&tar[..], None, None).unwrap();
    // Known up front (expected diff ID): no unpack, but the reader is
    // still consumed and checked.
    let mut reader = &tar[..];
    let second = store
        .register_layer(&mut reader, None, Some(&diff_id))
        .unwrap();
    assert!(reader.is_empty(), "the reader should be read to its end");
    // Not known up front: unpacked, then discarded.
    let third = store.register_layer(&tar[..], None, None).unwrap();
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(store.list_layers().unwrap().len(), 1);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[test]
fn layers_register_in_parallel_from_several_threads() {
    let (_dir, store) = new_store();
    let tars: Vec<Vec<u8>> = (0..4u64)
        .map(|i| {
            tar_of(vec![
                Entry::dir("d", 0o755),
                Entry::random(&format!("d/file{i}"), 0o644, 300_000, i),
            ])
        })
        .collect();
    // Four different layers, and the first one twice more.
    let jobs: Vec<Vec<u8>> = tars
        .iter()
        .cloned()
        .chain([tars[0].clone(), tars[0].clone()])
        .collect();
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|tar| {
            let store = store.clone();
            std::thread::spawn(move || store.register_layer(&tar[..], None, None).unwrap())
        })
        .collect();
    let infos: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(infos[0], infos[4]);
    assert_eq!(infos[0], infos[5]);
    assert_eq!(store.list_layers().unwrap().len(), 4);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    for (i, tar) in tars.iter().enumerate() {
        let diff = store.layer_diff_dir(&Digest::sha256_of(tar));
        assert_eq!(
            std::fs::metadata(diff.join(format!("d/file{i}")))
                .unwrap()
                .len(),
            300_000
        );
    }
}

#[test]
fn compressed_layers_are_inflated_by_magic_whatever_the_media_type_says() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::random("big", 0o644, 2_000_000, 9)]);
    let diff_id = Digest::sha256_of(&tar);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    for (blob, declared) in [
        (&zst, Compression::Zstd),
        (&gz, Compression::Gzip),
        (&tar, Compression::Gzip),
        (&gz, Compression::Uncompressed),
    ] {
        let reader = decompressing_reader(&blob[..], declared).unwrap();
        let info = store.register_layer(reader, None, Some(&diff_id)).unwrap();
        assert_eq!(info.diff_id, diff_id);
    }
}

#[test]
fn without_root_devices_are_skipped_and_owners_ignored() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[
        Raw::file("plain", b"x"),
        Raw::device("null", tar::EntryType::Char),
        Raw::device("disk", tar::EntryType::Block),
        Raw {
            name: "fifo",
            kind: tar::EntryType::Fifo,
            link: "",
            data: b"",
            mode: 0o600,
        },
    ]);
    let options = UnpackOptions {
        as_root: false,
        xattrs: true,
        ..UnpackOptions::default()
    };
    let info = store
        .register_layer_with(&tar[..], None, None, &options)
        .unwrap();
    assert_eq!(info.skipped_entries, 2, "two devices skipped");
    let diff = store.layer_diff_dir(&info.chain_id);
    assert!(diff.join("plain").is_file());
    assert!(!diff.join("null").exists());
    assert!(std::fs::symlink_metadata(diff.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    let owned = tar_of(vec![Entry::file("f", 0o644, "f").owned_by(4242, 4243)]);
    let info = store
        .register_layer_with(&owned[..], None, None, &options)
        .unwrap();
    let m = std::fs::metadata(store.layer_diff_dir(&info.chain_id).join("f")).unwrap();
    assert_ne!(
        m.uid(),
        4242,
        "ownership must not be applied without as_root"
    );
}

#[test]
fn as_root_devices_are_created() {
    if !haul_store::running_as_root() {
        eprintln!("SKIP: not root");
        return;
    }
    let (_dir, store) = new_store();
    let tar = raw_tar(&[Raw::device("null", tar::EntryType::Char)]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    let path = store.layer_diff_dir(&info.chain_id).join("null");
    if info.skipped_entries == 1 {
        eprintln!("SKIP: root without CAP_MKNOD; the device was skipped");
        assert!(!path.exists());
        return;
    }
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(m.mode() & 0o7777, 0o666);
}

// ---------------------------------------------------------------- malice

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Registers `tar`, expecting an unsafe-entry error naming `entry` and
/// saying `reason`; checks nothing is left in `layers/`.
fn refused(store: &Store, tar: &[u8], entry: &str, reason: &str) {
    let err = store.register_layer(tar, None, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::UnsafeEntry { entry: e, .. } if e == entry),
        "expected an unsafe-entry error for {entry:?}, got: {msg}"
    );
    assert!(
        msg.contains(reason),
        "message {msg:?} should say {reason:?}"
    );
    assert!(
        store.list_layers().unwrap().is_empty() && leftovers(store).is_empty(),
        "nothing may be left in layers/ after refusing {entry:?}: {:?}",
        tree(&store.root().join("layers"))
    );
}

#[test]
fn dotdot_entries_are_refused() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[Raw::file("ok", b"1"), Raw::file("../escape", b"x")]);
    refused(&store, &tar, "../escape", "escapes the layer directory");
    let err = store
        .register_layer(
            &raw_tar(&[Raw::file("../../etc/passwd", b"x")])[..],
            None,
            None,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"layer entry "../../etc/passwd" escapes the layer directory"#
    );
    let tar = raw_tar(&[Raw::dir("a/"), Raw::file("a/../../x", b"x")]);
    refused(&store, &tar, "a/../../x", "escapes the layer directory");
}

#[test]
fn absolute_paths_are_made_relative() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[Raw::file("/abs-haul-test", b"x")]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    assert_eq!(
        std::fs::read(store.layer_diff_dir(&info.chain_id).join("abs-haul-test")).unwrap(),
        b"x"
    );
    assert!(!Path::new("/abs-haul-test").exists());
}

#[test]
fn writing_through_a_planted_absolute_symlink_is_refused() {
    let (_dir, store) = new_store();
    let outside = tempfile::tempdir().unwrap();
    let target = leak(outside.path().display().to_string());
    let tar = raw_tar(&[Raw::symlink("a", target), Raw::file("a/x", b"pwned")]);
    refused(&store, &tar, "a/x", "goes through the symlink \"a\"");
    let tar = raw_tar(&[Raw::symlink("a", target), Raw::dir("a/sub/")]);
    refused(&store, &tar, "a/sub/", "goes through the symlink");
    assert!(
        tree(outside.path()).is_empty(),
        "nothing may be written outside: {:?}",
        tree(outside.path())
    );
}

#[test]
fn writing_through_a_planted_relative_symlink_is_refused() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[Raw::symlink("a", ".."), Raw::file("a/b", b"pwned")]);
    refused(&store, &tar, "a/b", "goes through the symlink");
    let tar = raw_tar(&[
        Raw::dir("d/"),
        Raw::symlink("d/up", "../.."),
        Raw::file("d/up/escaped", b"x"),
    ]);
    refused(
        &store,
        &tar,
        "d/up/escaped",
        "goes through the symlink \"d/up\"",
    );
    assert!(!store.root().join("layers/b").exists());
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[Raw::hardlink("h", "../outside")]);
    refused(
        &store,
        &tar,
        "h",
        "is a hard link to \"../outside\", which escapes",
    );

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), b"secret").unwrap();
    let target = leak(outside.path().display().to_string());
    let tar = raw_tar(&[Raw::symlink("s", target), Raw::hardlink("h", "s/victim")]);
    refused(&store, &tar, "h", "goes through a symlink");

    let tar = raw_tar(&[Raw::hardlink("h", "not-in-layer")]);
    refused(&store, &tar, "h", "is not in this layer");
    let tar = raw_tar(&[Raw::dir("d/"), Raw::hardlink("h", "d")]);
    refused(&store, &tar, "h", "is a directory");
    assert_eq!(
        std::fs::metadata(outside.path().join("victim"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn a_later_entry_replaces_an_earlier_one_without_following_it() {
    let (_dir, store) = new_store();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), b"original").unwrap();
    let target = leak(outside.path().join("f").display().to_string());
    // A symlink to a file outside, then a regular file of the same name:
    // the symlink is replaced, the outside file untouched.
    let tar = raw_tar(&[
        Raw::symlink("f", target),
        Raw::file("f", b"inside"),
        Raw::dir("d/"),
        Raw::file("d/x", b"x"),
        Raw::file("d", b"now a file"),
    ]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    let diff = store.layer_diff_dir(&info.chain_id);
    assert_eq!(std::fs::read(diff.join("f")).unwrap(), b"inside");
    assert_eq!(std::fs::read(diff.join("d")).unwrap(), b"now a file");
    assert_eq!(
        std::fs::read(outside.path().join("f")).unwrap(),
        b"original"
    );
}

#[test]
fn truncated_tar_is_an_error_and_leaves_nothing() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::random("big", 0o644, 100_000, 1)]);
    let err = store
        .register_layer(&tar[..50_000], None, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Tar { .. } | Error::Entry { .. }),
        "{err}"
    );
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[test]
fn staged_layers_unpack_in_any_order_and_commit_on_their_parents() {
    let (_dir, store) = new_store();
    let lower = tar_of(vec![Entry::file("a", 0o644, "lower")]);
    let upper = tar_of(vec![Entry::file("b", 0o644, "upper")]);
    // The upper layer finishes unpacking first, as a smaller download would.
    let staged_upper = store
        .stage_layer(&upper[..], None, &UnpackOptions::default())
        .unwrap();
    let staged_lower = store
        .stage_layer(&lower[..], None, &UnpackOptions::default())
        .unwrap();
    assert_eq!(staged_lower.diff_id(), &Digest::sha256_of(&lower));
    let base = store.commit_staged(staged_lower, None).unwrap();
    let top = store
        .commit_staged(staged_upper, Some(&base.chain_id))
        .unwrap();
    assert_eq!(top.parent.as_ref(), Some(&base.chain_id));
    assert_eq!(
        top.chain_id,
        haul_store::chain_id(Some(&base.chain_id), &Digest::sha256_of(&upper))
    );
    let upper_file = store.layer_diff_dir(&top.chain_id).join("b");
    assert_eq!(std::fs::read_to_string(upper_file).unwrap(), "upper");
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[test]
fn a_staged_layer_dropped_uncommitted_leaves_nothing() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("a", 0o644, "x")]);
    let staged = store
        .stage_layer(&tar[..], None, &UnpackOptions::default())
        .unwrap();
    assert!(!leftovers(&store).is_empty());
    drop(staged);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    assert!(store.list_layers().unwrap().is_empty());
}

#[test]
fn pax_mtime_keeps_sub_second_precision() {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("mtime", &b"1000.75"[..])])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("precise").unwrap();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_mtime(1000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, &b"hi"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let (_dir, store) = new_store();
    let layer = store.register_layer(&tar[..], None, None).unwrap();
    let meta = std::fs::metadata(store.layer_diff_dir(&layer.chain_id).join("precise")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1000, 750_000_000));
}

/// Files are created with their mode and, as root, left with the owner a
/// new file gets when that is the one asked for: whatever the umask took
/// away, special bits, or a setgid store (whose new files get its group)
/// still end up as the tar says.
#[test]
fn modes_and_owners_are_exact_whatever_the_umask_or_a_setgid_store() {
    let (_dir, store) = new_store();
    let as_root = UnpackOptions::default().as_root;
    let layers = store.root().join("layers");
    if as_root {
        // New entries under a setgid directory get its group, not ours.
        std::os::unix::fs::chown(&layers, None, Some(4242)).unwrap();
        let mode = std::fs::metadata(&layers).unwrap().mode();
        std::fs::set_permissions(
            &layers,
            std::os::unix::fs::PermissionsExt::from_mode(mode | 0o2000),
        )
        .unwrap();
    }
    let tar = tar_of(vec![
        Entry::file("open", 0o666, "o"),
        Entry::file("all", 0o777, "a"),
        Entry::file("none", 0o000, "n"),
        Entry::file("suid-root", 0o4711, "s").owned_by(0, 0),
        Entry::file("sgid-other", 0o2755, "g").owned_by(7, 8),
        Entry::file("plain-root", 0o640, "p").owned_by(0, 0),
    ]);
    let diff_id = Digest::sha256_of(&tar);
    store
        .register_layer(&tar[..], None, Some(&diff_id))
        .unwrap();
    let diff = store.layer_diff_dir(&diff_id);
    assert_eq!(mode(&diff.join("open")), 0o666);
    assert_eq!(mode(&diff.join("all")), 0o777);
    assert_eq!(mode(&diff.join("none")), 0o000);
    assert_eq!(mode(&diff.join("suid-root")), 0o4711);
    assert_eq!(mode(&diff.join("sgid-other")), 0o2755);
    assert_eq!(mode(&diff.join("plain-root")), 0o640);
    assert_eq!(std::fs::read(diff.join("none")).unwrap(), b"n");
    if as_root {
        let owner = |name: &str| {
            let m = std::fs::metadata(diff.join(name)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("plain-root"), (0, 0), "not the setgid store's group");
        assert_eq!(owner("suid-root"), (0, 0));
        assert_eq!(owner("sgid-other"), (7, 8));
    }
}

/// A layer is registered without a sync of its own (the filesystem is
/// synced before an image record names it); after a crash its layer.json
/// may be empty or cut. Such a layer is absent, and registering it again
/// replaces it.
#[test]
fn a_layer_whose_layer_json_was_cut_by_a_crash_is_absent_and_replaced() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("f", 0o644, "content")]);
    let diff_id = Digest::sha256_of(&tar);
    let info = store
        .register_layer(&tar[..], None, Some(&diff_id))
        .unwrap();
    let json = store
        .root()
        .join("layers/sha256")
        .join(diff_id.hex())
        .join("layer.json");
    for damaged in [&b""[..], &b"{\"chain_id\": \"sha2"[..]] {
        std::fs::write(&json, damaged).unwrap();
        assert_eq!(store.get_layer(&diff_id).unwrap(), None);
        let again = store
            .register_layer(&tar[..], None, Some(&diff_id))
            .unwrap();
        assert_eq!(again.chain_id, info.chain_id);
        assert_eq!(
            store.get_layer(&diff_id).unwrap().map(|l| l.diff_id),
            Some(diff_id.clone())
        );
        assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    }
}

/// A layer whose diff changed after its registration, deep in the tree,
/// is absent (its seal no longer holds and the count differs), and
/// registering it again replaces it.
#[test]
fn a_layer_whose_diff_changed_after_registration_is_absent_and_replaced() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![
        Entry::dir("a", 0o755),
        Entry::dir("a/b", 0o755),
        Entry::dir("a/b/c", 0o755),
        Entry::file("a/b/c/deep", 0o644, "deep"),
        Entry::file("top", 0o644, "top"),
    ]);
    let diff_id = Digest::sha256_of(&tar);
    let info = store
        .register_layer(&tar[..], None, Some(&diff_id))
        .unwrap();
    assert_eq!(info.entries, Some(5));
    let seal = info.seal.clone().expect("a new layer is sealed");
    assert_eq!(seal.directories, 4, "diff/, a, a/b, a/b/c");
    let diff = store.layer_diff_dir(&diff_id);
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("a file removed deep in the tree", |d| {
            std::fs::remove_file(d.join("a/b/c/deep")).unwrap()
        }),
        ("a file added deep in the tree", |d| {
            std::fs::write(d.join("a/b/extra"), "x").unwrap()
        }),
        ("a directory removed with its content", |d| {
            std::fs::remove_dir_all(d.join("a/b")).unwrap()
        }),
    ];
    for (what, damage) in damages {
        assert!(
            store.get_layer(&diff_id).unwrap().is_some(),
            "{what}: before"
        );
        damage(&diff);
        assert_eq!(
            store.get_layer(&diff_id).unwrap(),
            None,
            "{what}: get_layer"
        );
        assert_eq!(
            store.verify_layer(&diff_id).unwrap(),
            None,
            "{what}: verify_layer"
        );
        let again = store
            .register_layer(&tar[..], None, Some(&diff_id))
            .unwrap();
        assert_eq!(again.chain_id, info.chain_id, "{what}");
        assert_eq!(
            std::fs::read(diff.join("a/b/c/deep")).unwrap(),
            b"deep",
            "{what}"
        );
        assert!(
            leftovers(&store).is_empty(),
            "{what}: {:?}",
            leftovers(&store)
        );
    }
}

/// The seal is a shortcut, not the verdict: a diff that is whole but whose
/// seal no longer holds (its seal file lost, or its directories given new
/// ctimes, as a copy of the store does) is still found by counting its
/// entries, and one that lost an entry is not.
#[test]
fn a_whole_diff_whose_seal_does_not_hold_is_counted_instead() {
    let (_dir, store) = new_store();
    let tar = tar_of(vec![
        Entry::dir("d", 0o755),
        Entry::file("d/f", 0o644, "f"),
        Entry::file("g", 0o644, "g"),
    ]);
    let diff_id = Digest::sha256_of(&tar);
    let info = store
        .register_layer(&tar[..], None, Some(&diff_id))
        .unwrap();
    let layer_dir = store.root().join("layers/sha256").join(diff_id.hex());
    let diff = layer_dir.join("diff");

    // A new ctime on a directory, nothing added or removed.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(diff.join("d")).unwrap().permissions();
    std::fs::set_permissions(diff.join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(diff.join("d"), mode).unwrap();
    assert_eq!(
        store.get_layer(&diff_id).unwrap(),
        Some(info.clone()),
        "ctime changed"
    );
    assert_eq!(store.verify_layer(&diff_id).unwrap(), Some(info.clone()));

    std::fs::remove_file(layer_dir.join("diff.seal")).unwrap();
    assert_eq!(
        store.get_layer(&diff_id).unwrap(),
        Some(info.clone()),
        "seal file gone"
    );

    std::fs::remove_file(diff.join("g")).unwrap();
    assert_eq!(store.get_layer(&diff_id).unwrap(), None, "an entry lost");
}

/// Entries are created first and what is in the way is looked at only
/// when the creation finds something there: every kind over every kind
/// still ends as the last entry says (a directory over a directory
/// merges), and nothing is followed.
#[test]
fn every_kind_of_entry_replaces_every_kind_before_it() {
    let (_dir, store) = new_store();
    let tar = raw_tar(&[
        Raw::file("base", b"base"),
        // file over: file, symlink, directory (with content), hard link
        Raw::file("f1", b"old"),
        Raw::file("f1", b"new"),
        Raw::symlink("f2", "base"),
        Raw::file("f2", b"new"),
        Raw::dir("f3/"),
        Raw::file("f3/inner", b"x"),
        Raw::file("f3", b"new"),
        Raw::hardlink("f4", "base"),
        Raw::file("f4", b"new"),
        // symlink over: file, symlink, directory
        Raw::file("s1", b"old"),
        Raw::symlink("s1", "base"),
        Raw::symlink("s2", "f1"),
        Raw::symlink("s2", "base"),
        Raw::dir("s3/"),
        Raw::symlink("s3", "base"),
        // directory over: file, symlink, directory (merged)
        Raw::file("d1", b"old"),
        Raw::dir("d1/"),
        Raw::symlink("d2", "base"),
        Raw::dir("d2/"),
        Raw::dir("d3/"),
        Raw::file("d3/kept", b"kept"),
        Raw::dir("d3/"),
        // hard link over a file
        Raw::file("h1", b"old"),
        Raw::hardlink("h1", "base"),
    ]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    let diff = store.layer_diff_dir(&info.chain_id);
    for name in ["f1", "f2", "f3", "f4"] {
        let meta = std::fs::symlink_metadata(diff.join(name)).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(std::fs::read(diff.join(name)).unwrap(), b"new", "{name}");
    }
    assert_eq!(
        std::fs::read(diff.join("base")).unwrap(),
        b"base",
        "never written through"
    );
    for name in ["s1", "s2", "s3"] {
        assert_eq!(
            std::fs::read_link(diff.join(name)).unwrap(),
            Path::new("base"),
            "{name}"
        );
    }
    for name in ["d1", "d2", "d3"] {
        let meta = std::fs::symlink_metadata(diff.join(name)).unwrap();
        assert!(meta.is_dir(), "{name}");
    }
    assert_eq!(std::fs::read(diff.join("d3/kept")).unwrap(), b"kept");
    let base = std::fs::metadata(diff.join("base")).unwrap();
    let h1 = std::fs::metadata(diff.join("h1")).unwrap();
    assert_eq!(base.ino(), h1.ino());
}
