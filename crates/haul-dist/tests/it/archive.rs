//! `save` and `load` of docker-archives and OCI layouts, against skopeo as
//! the independent reader and writer of both formats.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use haul_dist::archive::{self, ArchiveKind, LoadOptions, LoadReport};
use haul_dist::oci::{
    media_type, parse_image_config, parse_manifest, Compression, Digest, Reference,
};
use haul_dist::store::{ExportOptions, ImageRecord, RefTarget, Store};
use haul_testkit::image::{blob_path, BuiltImage};
use haul_testkit::skopeo::run_skopeo;
use haul_testkit::{sample_image, Entry, ImageBuilder, LayerSpec, Rootfs};

/// A scratch directory with helpers for stores inside it.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self, name: &str) -> Store {
        Store::open(self.path(name)).unwrap()
    }
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// Puts `builder`'s image into `store` through the store's own door, as a
/// pull does: blobs, unpacked layers, image record, tag `name`.
fn put_image(store: &Store, scratch: &Scratch, builder: &ImageBuilder, name: &str) -> BuiltImage {
    let layout = scratch.path(&format!("layout-{}", name.replace([':', '/'], "_")));
    let built = builder.write_oci_layout(&layout, "t").unwrap();
    store
        .put_blob_bytes(&built.config_bytes, &digest(&built.config.digest))
        .unwrap();
    store
        .put_blob_bytes(&built.manifest_bytes, &digest(&built.manifest.digest))
        .unwrap();
    let mut parent: Option<Digest> = None;
    for layer in &built.layers {
        let bytes = fs::read(blob_path(&layout, &layer.blob.digest)).unwrap();
        store
            .put_blob_bytes(&bytes, &digest(&layer.blob.digest))
            .unwrap();
        let tar = haul_dist::store::decompressing_reader(&bytes[..], Compression::Gzip).unwrap();
        let info = store
            .register_layer(tar, parent.as_ref(), Some(&digest(&layer.diff_id)))
            .unwrap();
        parent = Some(info.chain_id);
    }
    let manifest = parse_manifest(
        built.manifest_bytes.clone(),
        Some(&built.manifest.media_type),
    )
    .unwrap();
    let config = parse_image_config(built.config_bytes.clone()).unwrap();
    let record = ImageRecord::from_parts(&manifest, &config).unwrap();
    store.put_image(&record).unwrap();
    store.tag(&reference(name), &record.target()).unwrap();
    built
}

fn resolve(store: &Store, name: &str) -> ImageRecord {
    store
        .resolve(&reference(name))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is not in the store"))
        .image
}

/// Exports `name` from `store` and compares it with `builder`'s tree.
#[track_caller]
fn assert_exports(store: &Store, scratch: &Scratch, name: &str, builder: &ImageBuilder) {
    let image = resolve(store, name);
    let target = scratch.path(&format!("export-{}", rand_suffix()));
    store
        .export_image(&image, &target, &ExportOptions::default())
        .unwrap();
    let actual = Rootfs::read_dir(&target).unwrap();
    let differences = builder
        .expected_rootfs()
        .diff(&actual, haul_dist::store::running_as_root());
    assert!(
        differences.is_empty(),
        "export of {name} differs from the image: {differences:#?}"
    );
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn load(store: &Store, input: &Path) -> LoadReport {
    archive::load(store, input, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {} failed: {e}", input.display()))
}

fn loaded_names(report: &LoadReport) -> Vec<String> {
    report
        .images
        .iter()
        .flat_map(|i| i.references.iter().map(|(r, _)| r.to_string()))
        .collect()
}

/// The regular files of a tar, by path; symlinks as `-> TARGET`.
fn tar_members(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                out.insert(name, data);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().unwrap().unwrap().display().to_string();
                out.insert(name, format!("-> {target}").into_bytes());
            }
            _ => {}
        }
    }
    out
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// `docker-archive:PATH[:REF]` / `oci:DIR:TAG` arguments for skopeo.
fn transport(kind: &str, path: &Path, suffix: Option<&str>) -> String {
    match suffix {
        Some(s) => format!("{kind}:{}:{s}", path.display()),
        None => format!("{kind}:{}", path.display()),
    }
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    json(&run_skopeo(args).unwrap())
}

/// The digest of the manifest skopeo generates for docker-archive `src`,
/// with the layers typed as the plain tars they are.
fn skopeo_manifest_digest(src: &str) -> Digest {
    let raw = String::from_utf8(run_skopeo(["inspect", "--raw", src]).unwrap()).unwrap();
    let fixed = raw.replace(
        "\"application/vnd.docker.image.rootfs.diff.tar.gzip\"",
        "\"application/vnd.docker.image.rootfs.diff.tar\"",
    );
    Digest::sha256_of(fixed.as_bytes())
}

fn store_is_empty(store: &Store) -> Result<(), String> {
    let images = store.list_image_records().unwrap();
    let blobs = store.list_blobs().unwrap();
    let layers = store.list_layers().unwrap();
    let leftovers: Vec<String> = ["ingest", "layers", "tmp"]
        .iter()
        .flat_map(|d| fs::read_dir(store.root().join(d)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "sha256" && !n.ends_with(".lock"))
        .collect();
    if images.is_empty() && blobs.is_empty() && layers.is_empty() && leftovers.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "images {images:?}, blobs {blobs:?}, layers {layers:?}, leftovers {leftovers:?}"
        ))
    }
}

#[test]
fn saved_docker_archive_has_dockers_layout() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let image = sample_image();
    let built = put_image(&store, &scratch, &image, "example.com/app:1.0");
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &file).unwrap();

    let members = tar_members(&file);
    let manifest = json(&members["manifest.json"]);
    let config_hex = built.config.digest.trim_start_matches("sha256:");
    let items = manifest.as_array().unwrap();
    assert_eq!(items.len(), 1, "{manifest}");
    let item = items[0].as_object().unwrap();
    assert_eq!(
        item.keys().collect::<Vec<_>>(),
        ["Config", "Layers", "RepoTags"],
        "{manifest}"
    );
    assert_eq!(item["Config"], format!("{config_hex}.json"));
    assert_eq!(item["RepoTags"], serde_json::json!(["example.com/app:1.0"]));
    assert_eq!(members[&format!("{config_hex}.json")], built.config_bytes);

    let layers = item["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.layers.len());
    let mut v1_ids = Vec::new();
    for (path, layer) in layers.iter().zip(&built.layers) {
        let path = path.as_str().unwrap();
        let v1 = path.strip_suffix("/layer.tar").expect("V1ID/layer.tar");
        assert_eq!(v1.len(), 64, "{path}");
        let tar = &members[path];
        assert_eq!(
            haul_testkit::image::sha256_digest(tar),
            layer.diff_id,
            "{path} is the uncompressed layer"
        );
        assert_eq!(tar.len() as u64, layer.diff_size);
        assert_eq!(members[&format!("{v1}/VERSION")], b"1.0");
        let legacy = json(&members[&format!("{v1}/json")]);
        assert_eq!(legacy["id"], v1);
        match v1_ids.last() {
            None => assert!(legacy.get("parent").is_none(), "{legacy}"),
            Some(parent) => assert_eq!(&legacy["parent"], parent),
        }
        v1_ids.push(serde_json::Value::from(v1));
    }
    let repositories = json(&members["repositories"]);
    assert_eq!(
        repositories,
        serde_json::json!({"example.com/app": {"1.0": v1_ids.last().unwrap()}})
    );

    // Deterministic: a second save is the same bytes.
    let again = scratch.path("again.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &again).unwrap();
    assert_eq!(fs::read(&file).unwrap(), fs::read(&again).unwrap());
}

#[test]
fn skopeo_reads_a_saved_docker_archive() {
    if haul_testkit::peers::require_skopeo().is_none() {
        return;
    }
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let built = put_image(&store, &scratch, &sample_image(), "example.com/app:1.0");
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &file).unwrap();

    let src = transport("docker-archive", &file, None);
    let inspected = skopeo_json(&["inspect", &src]);
    let diff_ids: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(
        inspected["Layers"],
        serde_json::json!(diff_ids),
        "{inspected}"
    );
    let config = run_skopeo(["inspect", "--config", "--raw", &src]).unwrap();
    assert_eq!(
        config, built.config_bytes,
        "skopeo reads the config as saved"
    );

    let layout = scratch.path("copied");
    run_skopeo(["copy", &src, &transport("oci", &layout, Some("t"))]).unwrap();
    let copied = skopeo_json(&["inspect", "--config", &transport("oci", &layout, Some("t"))]);
    assert_eq!(copied["rootfs"]["diff_ids"], serde_json::json!(diff_ids));

    // Loading the archive gives the manifest skopeo generates for it, but
    // for the layers' media type: skopeo calls the plain tars gzip.
    let fresh = scratch.store("fresh");
    let report = load(&fresh, &file);
    assert_eq!(
        report.images[0].image.manifest_digest,
        skopeo_manifest_digest(&src),
    );
}

#[test]
fn saved_docker_archive_loads_back_identically() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let image = sample_image();
    let built = put_image(&store, &scratch, &image, "example.com/app:1.0");
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &file).unwrap();

    let fresh = scratch.store("fresh");
    let report = load(&fresh, &file);
    assert_eq!(report.kind, ArchiveKind::DockerArchive);
    assert_eq!(loaded_names(&report), ["example.com/app:1.0"]);
    let loaded = resolve(&fresh, "example.com/app:1.0");
    assert_eq!(loaded.id.as_str(), built.config.digest, "same image ID");
    assert_eq!(loaded.manifest_media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(loaded.config_media_type, media_type::DOCKER_CONFIG);
    for (layer, original) in loaded.layers.iter().zip(&built.layers) {
        assert_eq!(layer.media_type, media_type::DOCKER_LAYER);
        assert_eq!(
            layer.digest.as_str(),
            original.diff_id,
            "the blob is the tar"
        );
        assert_eq!(layer.size, original.diff_size);
        assert!(fresh.get_layer(&layer.chain_id).unwrap().is_some());
    }
    fresh.verify_blob(&loaded.manifest_digest).unwrap();
    assert_exports(&fresh, &scratch, "example.com/app:1.0", &image);

    // And back out again: the same archive.
    let again = scratch.path("again.tar");
    archive::save_docker_archive(&fresh, &[reference("example.com/app:1.0")], &again).unwrap();
    assert_eq!(fs::read(&file).unwrap(), fs::read(&again).unwrap());
}

#[test]
fn one_image_under_two_tags_is_saved_once_and_base_layers_are_shared() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let base = sample_image();
    let built = put_image(&store, &scratch, &base, "example.com/a:1");
    store
        .tag(
            &reference("example.com/b:2"),
            &RefTarget::manifest(digest(&built.manifest.digest)),
        )
        .unwrap();
    let derived = sample_image().layer(LayerSpec::gzip(vec![Entry::file(
        "etc/derived",
        0o644,
        "yes\n",
    )]));
    put_image(&store, &scratch, &derived, "example.com/c:3");
    let file = scratch.path("all.tar");
    let refs = [
        "example.com/a:1",
        "example.com/b:2",
        "example.com/c:3",
        "example.com/a:1",
    ]
    .map(reference);
    let report = archive::save_docker_archive(&store, &refs, &file).unwrap();
    assert_eq!(report.images.len(), 2);

    let members = tar_members(&file);
    let manifest = json(&members["manifest.json"]);
    let items = manifest.as_array().unwrap();
    assert_eq!(items.len(), 2, "{manifest}");
    assert_eq!(
        items[0]["RepoTags"],
        serde_json::json!(["example.com/a:1", "example.com/b:2"])
    );
    assert_eq!(items[1]["RepoTags"], serde_json::json!(["example.com/c:3"]));
    let (a, c) = (
        items[0]["Layers"].as_array().unwrap(),
        items[1]["Layers"].as_array().unwrap(),
    );
    assert_eq!(a[..2], c[..2], "base layers are the same members");
    let configs = members
        .keys()
        .filter(|k| k.ends_with(".json") && !k.contains('/'))
        .count();
    assert_eq!(
        configs,
        3,
        "two configs and manifest.json: {:?}",
        members.keys()
    );
    let repositories = json(&members["repositories"]);
    assert_eq!(
        repositories["example.com/a"]["1"],
        repositories["example.com/b"]["2"]
    );

    let fresh = scratch.store("fresh");
    let loaded = load(&fresh, &file);
    assert_eq!(
        loaded_names(&loaded),
        ["example.com/a:1", "example.com/b:2", "example.com/c:3"]
    );
    assert_exports(&fresh, &scratch, "example.com/b:2", &base);
    assert_exports(&fresh, &scratch, "example.com/c:3", &derived);
}

#[test]
fn oci_layout_keeps_every_digest_and_skopeo_reads_it() {
    if haul_testkit::peers::require_skopeo().is_none() {
        return;
    }
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let image = sample_image();
    let built = put_image(&store, &scratch, &image, "example.com/app:1.0");
    let refs = [reference("example.com/app:1.0")];

    let dir = scratch.path("layout");
    archive::save_oci_layout(&store, &refs, &dir).unwrap();
    let index = json(&fs::read(dir.join("index.json")).unwrap());
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], built.manifest.digest.as_str());
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "1.0"
    );
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "example.com/app:1.0"
    );
    for layer in &built.layers {
        let saved = fs::read(blob_path(&dir, &layer.blob.digest)).unwrap();
        assert_eq!(
            haul_testkit::image::sha256_digest(&saved),
            layer.blob.digest
        );
    }
    let inspected = skopeo_json(&["inspect", &transport("oci", &dir, Some("1.0"))]);
    assert_eq!(
        inspected["Digest"],
        built.manifest.digest.as_str(),
        "{inspected}"
    );
    let raw = run_skopeo(["inspect", "--raw", &transport("oci", &dir, Some("1.0"))]).unwrap();
    assert_eq!(raw, built.manifest_bytes);

    let tar = scratch.path("layout.tar");
    archive::save_oci_layout(&store, &refs, &tar).unwrap();
    assert!(tar.is_file());
    let inspected = skopeo_json(&["inspect", &transport("oci-archive", &tar, Some("1.0"))]);
    assert_eq!(
        inspected["Digest"],
        built.manifest.digest.as_str(),
        "{inspected}"
    );
}

#[test]
fn oci_layouts_load_back_with_their_names() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let image = sample_image();
    let built = put_image(&store, &scratch, &image, "example.com/app:1.0");
    store
        .tag(
            &reference("alpine:edge"),
            &RefTarget::manifest(digest(&built.manifest.digest)),
        )
        .unwrap();
    let refs = [reference("example.com/app:1.0"), reference("alpine:edge")];
    let dir = scratch.path("layout");
    archive::save_oci_layout(&store, &refs, &dir).unwrap();
    let tar = scratch.path("layout.tar");
    archive::save_oci_layout(&store, &refs, &tar).unwrap();

    for (n, input) in [dir, tar].iter().enumerate() {
        let fresh = scratch.store(&format!("fresh-{n}"));
        let report = load(&fresh, input);
        assert_eq!(report.kind, ArchiveKind::OciLayout);
        assert_eq!(
            loaded_names(&report),
            ["example.com/app:1.0", "docker.io/library/alpine:edge"]
        );
        let loaded = resolve(&fresh, "alpine:edge");
        assert_eq!(loaded.manifest_digest.as_str(), built.manifest.digest);
        assert_eq!(loaded.id.as_str(), built.config.digest);
        assert_eq!(fresh.missing_blobs(&loaded), Vec::<Digest>::new());
        assert_exports(&fresh, &scratch, "example.com/app:1.0", &image);
    }
}

#[test]
fn docker_archive_written_by_skopeo_loads() {
    if haul_testkit::peers::require_skopeo().is_none() {
        return;
    }
    let scratch = Scratch::new();
    let image = sample_image();
    let layout = scratch.path("layout");
    let built = image.write_oci_layout(&layout, "t").unwrap();
    let file = scratch.path("by-skopeo.tar");
    run_skopeo([
        "copy",
        &transport("oci", &layout, Some("t")),
        &transport("docker-archive", &file, Some("example.com/app:2.0")),
    ])
    .unwrap();

    let store = scratch.store("store");
    let report = load(&store, &file);
    assert_eq!(loaded_names(&report), ["example.com/app:2.0"]);
    let loaded = resolve(&store, "example.com/app:2.0");
    assert_eq!(loaded.id.as_str(), built.config.digest);
    assert_eq!(
        loaded.manifest_digest,
        skopeo_manifest_digest(&transport("docker-archive", &file, None))
    );
    assert_exports(&store, &scratch, "example.com/app:2.0", &image);
}

#[test]
fn oci_layouts_written_by_skopeo_with_a_bare_tag_are_named_after_the_input() {
    if haul_testkit::peers::require_skopeo().is_none() {
        return;
    }
    let scratch = Scratch::new();
    let image = sample_image();
    let layout = scratch.path("my-layout");
    let built = image.write_oci_layout(&layout, "t").unwrap();
    let tar = scratch.path("Web_App.tar");
    run_skopeo([
        "copy",
        "--preserve-digests",
        &transport("oci", &layout, Some("t")),
        &transport("oci-archive", &tar, Some("1.0")),
    ])
    .unwrap();

    let store = scratch.store("store");
    let report = load(&store, &layout);
    assert_eq!(loaded_names(&report), ["localhost/my-layout:t"]);
    let report = load(&store, &tar);
    assert_eq!(loaded_names(&report), ["localhost/web-app:1.0"]);
    let loaded = resolve(&store, "localhost/web-app:1.0");
    assert_eq!(loaded.manifest_digest.as_str(), built.manifest.digest);
    assert_exports(&store, &scratch, "localhost/web-app:1.0", &image);

    // A repository given by the caller wins.
    let options = LoadOptions {
        repository: Some(reference("example.com/named")),
        ..LoadOptions::default()
    };
    let report = archive::load(&store, &layout, &options).unwrap();
    assert_eq!(loaded_names(&report), ["example.com/named:t"]);
}

/// The offset and size of member `name` in the tar at `path`.
fn member_span(path: &Path, name: &str) -> (u64, u64) {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().display().to_string() == name {
            return (entry.raw_file_position(), entry.size());
        }
    }
    panic!("{name} is not in {}", path.display());
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_archives_are_refused_and_nothing_is_recorded() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let built = put_image(&store, &scratch, &sample_image(), "example.com/app:1.0");
    let refs = [reference("example.com/app:1.0")];

    // A docker-archive with one byte flipped in a file's content of the
    // last layer (the tar still parses; only its hash gives it away).
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &refs, &file).unwrap();
    let manifest = json(&tar_members(&file)["manifest.json"]);
    let last = manifest[0]["Layers"][2].as_str().unwrap().to_owned();
    let (offset, size) = member_span(&file, &last);
    flip_byte(&file, offset + size / 2);
    let fresh = scratch.store("fresh");
    let err = archive::load(&fresh, &file, &LoadOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&last), "names the layer: {message}");
    assert!(
        message.contains(&built.layers[2].diff_id),
        "names the expected diffID: {message}"
    );
    store_is_empty(&fresh).unwrap_or_else(|e| panic!("after {message}: {e}"));

    // An OCI layout with a byte flipped in a compressed layer blob.
    let dir = scratch.path("layout");
    archive::save_oci_layout(&store, &refs, &dir).unwrap();
    let blob = blob_path(&dir, &built.layers[1].blob.digest);
    flip_byte(&blob, fs::metadata(&blob).unwrap().len() / 2);
    let err = archive::load(&fresh, &dir, &LoadOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&built.layers[1].blob.digest) && message.contains("hashes to"),
        "names the blob: {message}"
    );
    store_is_empty(&fresh).unwrap_or_else(|e| panic!("after {message}: {e}"));
}

/// A docker-archive holding `members` (files), written by hand.
fn hand_made_archive(path: &Path, members: &[(&str, &[u8])]) {
    let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn paths_leaving_the_archive_are_refused() {
    let scratch = Scratch::new();
    let layer = LayerSpec::uncompressed(vec![Entry::file("a", 0o644, "a\n")]).tar_bytes();
    let diff_id = haul_testkit::image::sha256_digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    fs::write(scratch.path("outside.tar"), &layer).unwrap();
    let store = scratch.store("store");
    for bad in ["../outside.tar", "/etc/passwd", "x/../../outside.tar"] {
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": "config.json", "RepoTags": ["evil:1"], "Layers": [bad]}
        ]))
        .unwrap();
        let file = scratch.path("evil.tar");
        hand_made_archive(
            &file,
            &[("config.json", &config), ("manifest.json", &manifest)],
        );
        let err = archive::load(&store, &file, &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("{bad:?}"))
                && (message.contains("escapes the archive") || message.contains("is absolute")),
            "{bad}: {message}"
        );
        store_is_empty(&store).unwrap();
    }
}

#[test]
fn compressed_docker_archives_load() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let image = sample_image();
    put_image(&store, &scratch, &image, "example.com/app:1.0");
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &file).unwrap();
    let gz = scratch.path("app.tar.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    encoder.write_all(&fs::read(&file).unwrap()).unwrap();
    encoder.finish().unwrap();

    let fresh = scratch.store("fresh");
    assert_eq!(loaded_names(&load(&fresh, &gz)), ["example.com/app:1.0"]);
    assert_exports(&fresh, &scratch, "example.com/app:1.0", &image);
    let spooled = fs::read_dir(fresh.root().join("tmp")).unwrap().count();
    assert_eq!(spooled, 0, "the inflated copy is removed");
}

#[test]
fn saving_a_missing_image_fails_before_writing_anything() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    put_image(&store, &scratch, &sample_image(), "example.com/app:1.0");
    let out = scratch.path("out");
    fs::create_dir(&out).unwrap();
    let refs = [
        reference("example.com/app:1.0"),
        reference("example.com/missing:2"),
    ];
    for target in [
        out.join("x.tar"),
        out.join("layout"),
        out.join("layout.tar"),
    ] {
        let err = if target.ends_with("x.tar") {
            archive::save_docker_archive(&store, &refs, &target).unwrap_err()
        } else {
            archive::save_oci_layout(&store, &refs, &target).unwrap_err()
        };
        assert_eq!(err.to_string(), "no such image: example.com/missing:2");
        let left: Vec<_> = fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "nothing is written: {left:?}");
    }
}

#[test]
fn a_stored_layer_that_does_not_match_its_diff_id_fails_the_save() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let built = put_image(&store, &scratch, &sample_image(), "example.com/app:1.0");
    // Swap the second layer's blob for the first one's: valid gzip, wrong tar.
    let second = store.blob_path(&digest(&built.layers[1].blob.digest));
    let first = store.blob_path(&digest(&built.layers[0].blob.digest));
    fs::remove_file(&second).unwrap();
    fs::copy(&first, &second).unwrap();

    let out = scratch.path("out");
    fs::create_dir(&out).unwrap();
    let err = archive::save_docker_archive(
        &store,
        &[reference("example.com/app:1.0")],
        &out.join("app.tar"),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&built.layers[1].diff_id) && message.contains("hashes to"),
        "{message}"
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "no output is left");
}

#[test]
fn loading_an_image_the_store_has_keeps_its_record() {
    let scratch = Scratch::new();
    let store = scratch.store("store");
    let built = put_image(&store, &scratch, &sample_image(), "example.com/app:1.0");
    let file = scratch.path("app.tar");
    archive::save_docker_archive(&store, &[reference("example.com/app:1.0")], &file).unwrap();
    store.untag(&reference("example.com/app:1.0")).unwrap();
    store
        .tag(
            &reference("example.com/keep:1"),
            &RefTarget::manifest(digest(&built.manifest.digest)),
        )
        .unwrap();

    let report = load(&store, &file);
    assert_eq!(loaded_names(&report), ["example.com/app:1.0"]);
    let image = resolve(&store, "example.com/app:1.0");
    assert_eq!(
        image.manifest_digest.as_str(),
        built.manifest.digest,
        "the pulled (compressed) manifest stays"
    );
}

#[test]
fn docker_manifests_go_into_oci_layouts_with_oci_media_types() {
    let scratch = Scratch::new();
    let original = scratch.store("original");
    let image = sample_image();
    let built = put_image(&original, &scratch, &image, "example.com/app:1.0");
    let file = scratch.path("app.tar");
    let refs = [reference("example.com/app:1.0")];
    archive::save_docker_archive(&original, &refs, &file).unwrap();
    let store = scratch.store("store");
    load(&store, &file);
    let docker = resolve(&store, "example.com/app:1.0");
    assert_eq!(docker.manifest_media_type, media_type::DOCKER_MANIFEST);

    let dir = scratch.path("layout");
    let report = archive::save_oci_layout(&store, &refs, &dir).unwrap();
    let saved = &report.images[0];
    assert_ne!(saved.manifest_digest, docker.manifest_digest, "converted");
    let index = json(&fs::read(dir.join("index.json")).unwrap());
    assert_eq!(index["manifests"][0]["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        index["manifests"][0]["digest"],
        saved.manifest_digest.as_str()
    );
    let manifest = json(&fs::read(blob_path(&dir, saved.manifest_digest.as_str())).unwrap());
    assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], media_type::OCI_CONFIG);
    assert_eq!(manifest["config"]["digest"], built.config.digest.as_str());
    for (layer, stored) in manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&docker.layers)
    {
        assert_eq!(layer["mediaType"], media_type::OCI_LAYER);
        assert_eq!(layer["digest"], stored.digest.as_str(), "blobs are kept");
    }
    if haul_testkit::peers::require_skopeo().is_some() {
        let inspected = skopeo_json(&["inspect", &transport("oci", &dir, Some("1.0"))]);
        assert_eq!(inspected["Digest"], saved.manifest_digest.as_str());
    }
    let fresh = scratch.store("fresh");
    load(&fresh, &dir);
    assert_eq!(
        resolve(&fresh, "example.com/app:1.0").id.as_str(),
        built.config.digest
    );
    assert_exports(&fresh, &scratch, "example.com/app:1.0", &image);
}

#[test]
fn an_image_index_in_a_layout_loads_the_requested_platform() {
    let scratch = Scratch::new();
    let dir = scratch.path("multi");
    let built =
        haul_testkit::write_oci_index_layout(&dir, "both", &haul_testkit::sample_platform_images())
            .unwrap();
    let store = scratch.store("store");
    let options = LoadOptions {
        platform: Some("linux/arm64".parse().unwrap()),
        ..LoadOptions::default()
    };
    let report = archive::load(&store, &dir, &options).unwrap();
    assert_eq!(loaded_names(&report), ["localhost/multi:both"]);
    let image = resolve(&store, "localhost/multi:both");
    let target = store
        .target(&reference("localhost/multi:both"))
        .unwrap()
        .unwrap();
    let arm = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap();
    assert_eq!(image.manifest_digest.as_str(), arm.manifest.digest);
    assert_eq!(
        target.index.as_ref().map(|d| d.to_string()),
        Some(built.index.digest.clone())
    );
    assert!(store.missing_blobs(&image).is_empty());
}
