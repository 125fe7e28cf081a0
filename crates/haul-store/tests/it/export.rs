//! Flattening layers into a root filesystem.

use std::os::unix::fs::MetadataExt;

use crate::common::{new_store, put_image, tar_of};
use haul_oci::Digest;
use haul_store::{Error, ExportOptions, Store};
use haul_testkit::{sample_image, Entry, ImageBuilder, LayerSpec, Rootfs};

fn register_all(store: &Store, layers: &[LayerSpec]) -> Vec<Digest> {
    let mut parent: Option<Digest> = None;
    let mut out = Vec::new();
    for layer in layers {
        let tar = layer.tar_bytes();
        let info = store
            .register_layer(&tar[..], parent.as_ref(), None)
            .unwrap();
        parent = Some(info.chain_id.clone());
        out.push(info.chain_id);
    }
    out
}

fn assert_rootfs(expected: &Rootfs, dir: &std::path::Path) {
    let actual = Rootfs::read_dir(dir).unwrap();
    let diff = expected.diff(&actual, haul_store::running_as_root());
    assert!(
        diff.is_empty(),
        "exported rootfs differs from the expected one:\n{}",
        diff.join("\n")
    );
}

#[test]
fn export_applies_whiteouts_opaque_dirs_and_replacements() {
    let (dir, store) = new_store();
    let layers = vec![
        LayerSpec::uncompressed(vec![
            Entry::dir("a", 0o755),
            Entry::file("a/1", 0o644, "one"),
            Entry::file("a/2", 0o644, "two"),
            Entry::dir("keep", 0o755),
            Entry::file("keep/x", 0o644, "x"),
            Entry::file("del", 0o644, "bye"),
            Entry::dir("o", 0o700),
            Entry::file("o/old", 0o644, "old"),
            Entry::dir("o/sub", 0o755),
            Entry::file("o/sub/deep", 0o644, "deep"),
            Entry::symlink("s", "a"),
            Entry::file("h1", 0o644, "linked"),
            Entry::hardlink("h2", "h1"),
            Entry::dir("gone", 0o755),
            Entry::file("gone/f", 0o644, "f"),
        ]),
        LayerSpec::uncompressed(vec![
            Entry::whiteout("del"),
            Entry::whiteout("a/1"),
            Entry::whiteout("gone"),
            Entry::dir("o", 0o755),
            Entry::opaque("o"),
            Entry::file("o/new", 0o644, "new"),
            // A directory over a lower symlink replaces it: nothing is
            // written through `s` into `a`.
            Entry::dir("s", 0o755),
            Entry::file("s/f", 0o644, "in s"),
            // A file over a lower directory replaces the whole tree.
            Entry::file("keep", 0o600, "now a file"),
            Entry::file("a/3", 0o644, "three"),
        ]),
        LayerSpec::uncompressed(vec![
            // Re-created after the lower whiteout.
            Entry::file("del", 0o644, "back"),
            Entry::file("h3", 0o644, "top"),
            Entry::hardlink("h4", "h3"),
        ]),
    ];
    let chain = register_all(&store, &layers);
    let target = dir.path().join("out/rootfs");
    let report = store
        .export_layers(&chain, &target, &ExportOptions::default())
        .unwrap();
    assert_eq!(report.skipped, 0);
    assert_rootfs(&Rootfs::from_layers(&layers), &target);

    assert!(!target.join("a/1").exists());
    assert!(!target.join("a/f").exists(), "written through the symlink");
    assert_eq!(std::fs::read(target.join("s/f")).unwrap(), b"in s");
    assert!(!target.join("o/old").exists() && !target.join("o/sub").exists());
    assert_eq!(std::fs::read(target.join("del")).unwrap(), b"back");
    let ino = |p: &str| std::fs::metadata(target.join(p)).unwrap().ino();
    assert_eq!(ino("h1"), ino("h2"));
    assert_eq!(ino("h3"), ino("h4"));
    assert_eq!(
        std::fs::metadata(&target).unwrap().mode() & 0o7777,
        0o755,
        "the root of the export"
    );
    let siblings: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec!["rootfs"], "no temporary directory left");

    // export_rootfs follows parents from the top layer.
    let again = dir.path().join("again");
    store
        .export_rootfs(chain.last().unwrap(), &again, &ExportOptions::default())
        .unwrap();
    assert_rootfs(&Rootfs::from_layers(&layers), &again);
}

#[test]
fn export_of_the_sample_image_matches_the_expected_rootfs() {
    let (dir, store) = new_store();
    let builder = sample_image();
    let (record, _) = put_image(&store, &builder, "haul/sample:1");
    let target = dir.path().join("rootfs");
    store
        .export_image(&record, &target, &ExportOptions::default())
        .unwrap();
    assert_rootfs(&builder.expected_rootfs(), &target);
}

#[test]
fn export_refuses_a_non_empty_target_and_accepts_an_empty_one() {
    let (dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("f", 0o644, "f")]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    let target = dir.path().join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("existing"), b"x").unwrap();
    let err = store
        .export_rootfs(&info.chain_id, &target, &ExportOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::TargetNotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read(target.join("existing")).unwrap(), b"x");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    store
        .export_rootfs(&info.chain_id, &empty, &ExportOptions::default())
        .unwrap();
    assert_eq!(std::fs::read(empty.join("f")).unwrap(), b"f");
}

#[test]
fn export_of_a_missing_layer_fails_and_leaves_nothing() {
    let (dir, store) = new_store();
    let target = dir.path().join("t");
    let err = store
        .export_layers(
            &[Digest::sha256_of(b"nope")],
            &target,
            &ExportOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::LayerNotFound { .. }), "{err}");
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the store"
    );
}

#[test]
fn export_without_root_keeps_modes_and_skips_owners() {
    let (dir, store) = new_store();
    let image = ImageBuilder::new().layer(LayerSpec::gzip(vec![
        Entry::dir("ro", 0o555),
        Entry::file("ro/f", 0o444, "f"),
        Entry::file("suid", 0o4755, "s"),
        Entry::file("owned", 0o644, "o").owned_by(4242, 4242),
    ]));
    let (record, _) = put_image(&store, &image, "x:1");
    let target = dir.path().join("t");
    store
        .export_image(&record, &target, &ExportOptions { as_root: false })
        .unwrap();
    let mode = |p: &str| std::fs::symlink_metadata(target.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/f"), 0o444);
    assert_eq!(mode("suid"), 0o4755);
    assert_ne!(std::fs::metadata(target.join("owned")).unwrap().uid(), 4242);
}

/// A layer whose directory and file carry `user.*` xattrs (PAX records).
fn layer_with_xattrs() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, value) in [
        ("d/", tar::EntryType::Directory, &b"dir value"[..]),
        ("d/f", tar::EntryType::Regular, &b"file value"[..]),
    ] {
        builder
            .append_pax_extensions([("SCHILY.xattr.user.haul", value)])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_cksum();
        builder.append_data(&mut header, name, &[][..]).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn export_keeps_the_xattrs_of_directories_and_files() {
    let (dir, store) = new_store();
    let info = store
        .register_layer(&layer_with_xattrs()[..], None, None)
        .unwrap();
    let target = dir.path().join("t");
    store
        .export_rootfs(&info.chain_id, &target, &ExportOptions::default())
        .unwrap();
    let get = |path: &std::path::Path| {
        rustix::fs::lgetxattr(path, "user.haul", &mut [0u8; 64][..])
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    assert_eq!(
        get(&target.join("d")),
        Ok("dir value".len()),
        "the directory's xattr"
    );
    assert_eq!(
        get(&target.join("d/f")),
        Ok("file value".len()),
        "the file's xattr"
    );
}

#[test]
fn export_into_an_existing_empty_directory_writes_in_place() {
    // `.` and mount points cannot be renamed over: the export fills them
    // (the command's test exports into `.`).
    let (dir, store) = new_store();
    let tar = tar_of(vec![Entry::file("f", 0o644, "f")]);
    let info = store.register_layer(&tar[..], None, None).unwrap();
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let inode = std::fs::metadata(&target).unwrap().ino();
    store
        .export_rootfs(&info.chain_id, &target, &ExportOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::metadata(&target).unwrap().ino(),
        inode,
        "the same directory"
    );
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"f");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "the store and the target, no temporary sibling"
    );
}
