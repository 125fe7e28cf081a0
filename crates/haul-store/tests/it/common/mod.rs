//! Shared helpers: putting a testkit image into a store the way a pull
//! does, and building tars with raw (unsafe) names.

use std::fs::File;
use std::path::Path;

use haul_oci::{media_type, Compression, Digest, Reference};
use haul_store::{decompressing_reader, ImageRecord, IngestOutcome, Store};
use haul_testkit::image::{BlobRef, BuiltImage};
use haul_testkit::{Entry, ImageBuilder, LayerSpec};

/// A store in a fresh temporary directory (kept alive by the guard).
pub(crate) fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("root")).expect("open store");
    (dir, store)
}

pub(crate) fn digest(s: &str) -> Digest {
    Digest::parse(s).expect("valid digest")
}

/// Streams a blob of an OCI layout into the store through an ingest.
pub(crate) fn ingest_blob(store: &Store, layout: &Path, blob: &BlobRef) {
    let d = digest(&blob.digest);
    match store.ingest(&d).expect("ingest") {
        IngestOutcome::Present { size } => assert_eq!(size, blob.size),
        IngestOutcome::Writer(mut w) => {
            let mut file = File::open(haul_testkit::image::blob_path(layout, &blob.digest))
                .expect("layout blob");
            std::io::copy(&mut file, &mut w).expect("copy blob");
            w.commit(blob.size, &d).expect("commit blob");
        }
    }
}

/// Writes `builder`'s image into a scratch OCI layout, then does what a
/// pull does: ingests every blob, registers the layers (diff IDs checked),
/// stores the image record and tags it `reference`.
pub(crate) fn put_image(
    store: &Store,
    builder: &ImageBuilder,
    reference: &str,
) -> (ImageRecord, BuiltImage) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let layout = scratch.path().join("layout");
    let built = builder
        .write_oci_layout(&layout, "t")
        .expect("write layout");
    ingest_blob(store, &layout, &built.manifest);
    ingest_blob(store, &layout, &built.config);
    let mut parent: Option<Digest> = None;
    for layer in &built.layers {
        ingest_blob(store, &layout, &layer.blob);
        let blob = store.open_blob(&digest(&layer.blob.digest)).expect("blob");
        let compression =
            media_type::layer_compression(&layer.blob.media_type).unwrap_or(Compression::Gzip);
        let tar = decompressing_reader(blob, compression).expect("decompress");
        let info = store
            .register_layer(tar, parent.as_ref(), Some(&digest(&layer.diff_id)))
            .expect("register layer");
        assert_eq!(info.size, layer.diff_size);
        parent = Some(info.chain_id);
    }
    let manifest = haul_oci::parse_manifest(
        store
            .read_blob_limited(&digest(&built.manifest.digest), 1 << 20)
            .unwrap(),
        Some(&built.manifest.media_type),
    )
    .expect("manifest");
    let config = haul_oci::parse_image_config(
        store
            .read_blob_limited(&digest(&built.config.digest), 1 << 20)
            .unwrap(),
    )
    .expect("config");
    let record = ImageRecord::from_parts(&manifest, &config).expect("record");
    assert_eq!(record.top_chain_id(), parent.as_ref());
    store.put_image(&record).expect("put image");
    store
        .tag(&Reference::parse(reference).unwrap(), &record.target())
        .expect("tag");
    (record, built)
}

/// The uncompressed tar of these entries.
pub(crate) fn tar_of(entries: Vec<Entry>) -> Vec<u8> {
    LayerSpec::uncompressed(entries).tar_bytes()
}

/// A tar entry written with raw bytes for its name (and link name), so
/// names the `tar` crate's builder refuses (`..`) can be tested.
pub(crate) struct Raw {
    pub name: &'static str,
    pub kind: tar::EntryType,
    pub link: &'static str,
    pub data: &'static [u8],
    pub mode: u32,
}

impl Raw {
    pub(crate) fn file(name: &'static str, data: &'static [u8]) -> Raw {
        Raw {
            name,
            kind: tar::EntryType::Regular,
            link: "",
            data,
            mode: 0o644,
        }
    }
    pub(crate) fn dir(name: &'static str) -> Raw {
        Raw {
            name,
            kind: tar::EntryType::Directory,
            link: "",
            data: b"",
            mode: 0o755,
        }
    }
    pub(crate) fn symlink(name: &'static str, target: &'static str) -> Raw {
        Raw {
            name,
            kind: tar::EntryType::Symlink,
            link: target,
            data: b"",
            mode: 0o777,
        }
    }
    pub(crate) fn hardlink(name: &'static str, target: &'static str) -> Raw {
        Raw {
            name,
            kind: tar::EntryType::Link,
            link: target,
            data: b"",
            mode: 0o644,
        }
    }
    /// A device node 1:3 (`/dev/null`) of `kind` (char or block).
    pub(crate) fn device(name: &'static str, kind: tar::EntryType) -> Raw {
        Raw {
            name,
            kind,
            link: "",
            data: b"",
            mode: 0o666,
        }
    }
}

/// A tar of raw entries (names up to 100 bytes).
pub(crate) fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(e.kind);
        header.set_mode(e.mode);
        header.set_size(e.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        {
            let old = header.as_old_mut();
            old.name.fill(0);
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname.fill(0);
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Relative paths of everything under `dir`, sorted.
pub(crate) fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
