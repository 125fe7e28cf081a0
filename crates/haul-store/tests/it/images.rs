//! Images, references, distribution metadata and garbage collection.

use crate::common;

use std::time::Duration;

use crate::common::{digest, new_store, put_image};
use haul_oci::{Digest, Reference};
use haul_store::{Error, GcOptions, IdMatch, IngestOutcome, Store};
use haul_testkit::{sample_image, Entry, ImageBuilder, LayerSpec};

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn small_image(seed: u64) -> ImageBuilder {
    ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![
            Entry::dir("base", 0o755),
            Entry::file("base/shared", 0o644, "shared base layer\n"),
        ]))
        .layer(LayerSpec::gzip(vec![Entry::random(
            &format!("own-{seed}"),
            0o644,
            10_000,
            seed,
        )]))
        .label("seed", &seed.to_string())
}

fn index_ref_names(store: &Store) -> Vec<(String, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.root().join("content/index.json")).unwrap())
            .unwrap();
    let mut out: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"][haul_store::ANNOTATION_REF_NAME]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn image_record_pairs_layers_with_diff_ids() {
    let (_dir, store) = new_store();
    let (record, built) = put_image(&store, &sample_image(), "haul/sample:1");
    assert_eq!(record.id, digest(&built.config.digest));
    assert_eq!(record.manifest_digest, digest(&built.manifest.digest));
    assert_eq!(record.manifest_size, built.manifest.size);
    assert_eq!(record.layers.len(), 3);
    let chains = built.chain_ids();
    for (i, layer) in record.layers.iter().enumerate() {
        assert_eq!(layer.digest.as_str(), built.layers[i].blob.digest);
        assert_eq!(layer.diff_id.as_str(), built.layers[i].diff_id);
        assert_eq!(layer.chain_id.as_str(), chains[i]);
        assert_eq!(layer.size, built.layers[i].blob.size);
    }
    assert_eq!(record.platform.os, "linux");
    assert_eq!(record.platform.architecture, "amd64");
    assert!(store.missing_blobs(&record).is_empty());
    assert!(store.missing_layers(&record).unwrap().is_empty());
    assert_eq!(
        store.get_image(&record.manifest_digest).unwrap(),
        Some(record.clone())
    );
    assert!(store
        .root()
        .join("images/sha256")
        .join(format!("{}.json", record.manifest_digest.hex()))
        .is_file());
}

#[test]
fn put_image_requires_manifest_and_config_blobs() {
    let (_dir, store) = new_store();
    let (mut record, _) = put_image(&store, &small_image(1), "a:1");
    record.manifest_digest = Digest::sha256_of(b"absent manifest");
    let err = store.put_image(&record).unwrap_err();
    assert!(matches!(err, Error::BlobNotFound { .. }), "{err}");
}

/// A second pull stores the record it already has: nothing is written
/// (the record keeps the time it was first stored), while a record that
/// changed is replaced.
#[test]
fn storing_an_image_record_again_as_it_is_writes_nothing() {
    let (_dir, store) = new_store();
    let (record, _) = put_image(&store, &small_image(1), "a:1");
    let path = store
        .root()
        .join("images/sha256")
        .join(format!("{}.json", record.manifest_digest.hex()));
    let written = || std::fs::metadata(&path).unwrap().modified().unwrap();
    let before = written();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut again = record.clone();
    again.added += 100;
    store.put_image(&again).unwrap();
    assert_eq!(written(), before, "not rewritten");
    assert_eq!(
        store.get_image(&record.manifest_digest).unwrap(),
        Some(record.clone())
    );

    let mut changed = record.clone();
    changed.created = Some("2020-01-01T00:00:00Z".into());
    store.put_image(&changed).unwrap();
    assert_eq!(
        store.get_image(&record.manifest_digest).unwrap(),
        Some(changed)
    );
}

#[test]
fn tag_resolve_untag_and_list() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "alpine");
    let (two, _) = put_image(&store, &small_image(2), "localhost:5000/team/app:2.0");

    let resolve = |reference: &Reference| store.resolve(reference).unwrap().map(|r| r.image);
    assert_eq!(resolve(&r("alpine:latest")), Some(one.clone()));
    assert_eq!(resolve(&r("docker.io/library/alpine")), Some(one.clone()));
    assert_eq!(resolve(&r("alpine:3")), None);

    // A digest reference of the same repository finds the image by
    // manifest digest, before and after it is tagged explicitly.
    let by_digest = r(&format!("alpine@{}", one.manifest_digest));
    assert_eq!(resolve(&by_digest), Some(one.clone()));
    assert_eq!(resolve(&r(&format!("other@{}", one.manifest_digest))), None);
    assert_eq!(store.tag(&by_digest, &one.target()).unwrap(), None);
    assert_eq!(store.tag(&r("alpine:edge"), &one.target()).unwrap(), None);
    assert_eq!(
        store.tag(&r("alpine:edge"), &two.target()).unwrap(),
        Some(one.target()),
        "retagging returns the previous image"
    );

    let missing = Digest::sha256_of(b"no image");
    assert!(matches!(
        store.tag(&r("x:1"), &haul_store::RefTarget::manifest(missing)),
        Err(Error::ManifestNotFound { .. })
    ));

    let list = store.list_images().unwrap();
    let shown: Vec<(Vec<String>, Digest)> = list
        .iter()
        .map(|(refs, image)| {
            (
                refs.iter().map(|r| r.to_string()).collect(),
                image.id.clone(),
            )
        })
        .collect();
    // Sorted by first reference: alpine:edge (two) before alpine:latest.
    assert_eq!(
        shown,
        vec![
            (
                vec![
                    "docker.io/library/alpine:edge".to_string(),
                    "localhost:5000/team/app:2.0".to_string(),
                ],
                two.id.clone()
            ),
            (
                vec![
                    "docker.io/library/alpine:latest".to_string(),
                    format!("docker.io/library/alpine@{}", one.manifest_digest),
                ],
                one.id.clone()
            ),
        ]
    );

    // index.json lists every reference with its full name.
    assert_eq!(
        index_ref_names(&store),
        vec![
            (
                "docker.io/library/alpine:edge".to_string(),
                two.manifest_digest.to_string()
            ),
            (
                "docker.io/library/alpine:latest".to_string(),
                one.manifest_digest.to_string()
            ),
            (
                format!("docker.io/library/alpine@{}", one.manifest_digest),
                one.manifest_digest.to_string()
            ),
            (
                "localhost:5000/team/app:2.0".to_string(),
                two.manifest_digest.to_string()
            ),
        ]
    );

    assert_eq!(store.untag(&r("alpine:edge")).unwrap(), Some(two.target()));
    assert_eq!(store.untag(&r("alpine:edge")).unwrap(), None);
    assert_eq!(
        store.references_of(&two.id).unwrap(),
        vec![r("localhost:5000/team/app:2.0")]
    );
    assert_eq!(index_ref_names(&store).len(), 3);
}

#[test]
fn removing_the_last_tag_of_a_repository_drops_its_digest_references() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "team/app:1");
    let by_digest = r(&format!("team/app@{}", one.manifest_digest));
    let other_repo = r(&format!("mirror/app@{}", one.manifest_digest));
    store.tag(&by_digest, &one.target()).unwrap();
    store.tag(&other_repo, &one.target()).unwrap();
    store.tag(&r("team/app:2"), &one.target()).unwrap();

    let removed = store.remove_image(&r("team/app:1")).unwrap();
    assert_eq!(
        removed.untagged,
        vec![r("team/app:1")],
        "team/app:2 is left"
    );
    let removed = store.remove_image(&r("team/app:2")).unwrap();
    assert_eq!(
        removed.untagged,
        vec![r("team/app:2"), by_digest.clone()],
        "the last tag of team/app takes team/app's digest reference along"
    );
    assert_eq!(removed.deleted, None, "mirror/app still names the image");
    assert_eq!(
        store.references_of(&one.id).unwrap(),
        vec![other_repo.clone()]
    );

    let removed = store.remove_image(&other_repo).unwrap();
    assert_eq!(removed.untagged, vec![other_repo]);
    assert_eq!(removed.deleted, Some(one.id.clone()));
    assert!(store.list_images().unwrap().is_empty());
}

#[test]
fn images_are_found_by_id_and_unique_id_prefix() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "a:1");
    let (two, _) = put_image(&store, &small_image(2), "b:1");
    let hex = one.id.hex();
    for text in [one.id.to_string(), hex.to_string(), hex[..12].to_string()] {
        assert_eq!(
            store.find_image_by_id(&text).unwrap(),
            IdMatch::One(Box::new(one.clone())),
            "{text}"
        );
    }
    assert_eq!(
        store
            .find_image_by_id(&format!("sha256:{}", &two.id.hex()[..20]))
            .unwrap(),
        IdMatch::One(Box::new(two.clone()))
    );
    // Too short to be an ID, not hex, or nobody's.
    for text in [&hex[..11], "not-an-id-at-all", "0123456789abcdef0123"] {
        assert_eq!(
            store.find_image_by_id(text).unwrap(),
            IdMatch::None,
            "{text}"
        );
    }
}

#[test]
fn index_json_names_only_images_whose_every_blob_is_present() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "a:1");
    let (two, _) = put_image(&store, &small_image(2), "b:1");
    // b's own layer blob goes missing (as when a layer "already exists"
    // under another blob): the layout must not name b.
    let own_layer = &two.layers[1].digest;
    assert!(one.layers.iter().all(|l| &l.digest != own_layer));
    std::fs::remove_file(store.blob_path(own_layer)).unwrap();
    store.tag(&r("a:2"), &one.target()).unwrap();
    let names: Vec<String> = index_ref_names(&store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        vec![
            "docker.io/library/a:1".to_string(),
            "docker.io/library/a:2".to_string()
        ]
    );
}

#[test]
fn remove_image_drops_the_record_with_its_last_reference() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "a:1");
    store.tag(&r("b:1"), &one.target()).unwrap();

    let removed = store.remove_image(&r("a:1")).unwrap();
    assert_eq!(removed.deleted, None, "b:1 still names the image");
    assert!(store.get_image(&one.manifest_digest).unwrap().is_some());
    let removed = store.remove_image(&r("b:1")).unwrap();
    assert_eq!(removed.deleted, Some(one.id.clone()));
    assert!(store.get_image(&one.manifest_digest).unwrap().is_none());
    assert!(store.list_images().unwrap().is_empty());
    assert!(matches!(
        store.remove_image(&r("b:1")),
        Err(Error::ReferenceNotFound { .. })
    ));

    let (two, _) = put_image(&store, &small_image(2), "c:1");
    store.tag(&r("c:2"), &two.target()).unwrap();
    let mut refs = store.delete_image(&two.id).unwrap();
    refs.sort();
    assert_eq!(refs, vec![r("c:1"), r("c:2")]);
    assert!(index_ref_names(&store).is_empty());
}

#[test]
fn distribution_sources_are_recorded_per_diff_id() {
    let (_dir, store) = new_store();
    let diff = Digest::sha256_of(b"diff");
    let gz = Digest::sha256_of(b"gzip blob");
    let zst = Digest::sha256_of(b"zstd blob");
    assert!(store.distribution_sources(&diff).unwrap().is_empty());
    assert_eq!(store.diff_id_for_blob(&gz).unwrap(), None);
    store
        .add_distribution_source(&diff, &gz, "docker.io/library/alpine")
        .unwrap();
    store
        .add_distribution_source(&diff, &zst, "localhost:5000/mirror")
        .unwrap();
    store
        .add_distribution_source(&diff, &gz, "docker.io/library/alpine")
        .unwrap();
    let sources: Vec<(String, String)> = store
        .distribution_sources(&diff)
        .unwrap()
        .into_iter()
        .map(|s| (s.digest.to_string(), s.repository))
        .collect();
    assert_eq!(
        sources,
        vec![
            (zst.to_string(), "localhost:5000/mirror".to_string()),
            (gz.to_string(), "docker.io/library/alpine".to_string()),
        ],
        "deduplicated, most recent last"
    );
    assert_eq!(store.diff_id_for_blob(&gz).unwrap(), Some(diff.clone()));
    assert_eq!(store.diff_id_for_blob(&zst).unwrap(), Some(diff));
}

/// One batch for an image's layers records the same as one call per
/// layer, a diff ID twice in the batch included (an image with the same
/// layer twice, under two blobs), and a batch of what is known changes no
/// file.
#[test]
fn distribution_sources_of_an_image_are_recorded_in_one_batch() {
    let (_dir, store) = new_store();
    let diffs: Vec<Digest> = (0..40u8).map(|i| Digest::sha256_of(&[i])).collect();
    let blobs: Vec<Digest> = (0..40u8).map(|i| Digest::sha256_of(&[i, i])).collect();
    let other_blob = Digest::sha256_of(b"the first layer again, as zstd");
    let mut layers: Vec<(Digest, Digest)> =
        diffs.iter().cloned().zip(blobs.iter().cloned()).collect();
    layers.push((diffs[0].clone(), other_blob.clone()));
    store
        .add_distribution_sources(&layers, "r.example/app")
        .unwrap();
    for (diff, blob) in diffs.iter().zip(&blobs).skip(1) {
        let sources = store.distribution_sources(diff).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(&sources[0].digest, blob);
        assert_eq!(store.diff_id_for_blob(blob).unwrap().as_ref(), Some(diff));
    }
    let first: Vec<Digest> = store
        .distribution_sources(&diffs[0])
        .unwrap()
        .into_iter()
        .map(|s| s.digest)
        .collect();
    assert_eq!(
        first,
        vec![blobs[0].clone(), other_blob.clone()],
        "both, in order"
    );
    assert_eq!(
        store.diff_id_for_blob(&other_blob).unwrap(),
        Some(diffs[0].clone())
    );

    // Again, the last pair first: only the first layer's file changes.
    let dir = store.root().join("distribution");
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let files: Vec<std::path::PathBuf> = walk(&dir);
    let before: Vec<_> = files.iter().map(|f| stamp(f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    store
        .add_distribution_sources(&layers[1..40], "r.example/app")
        .unwrap();
    let after: Vec<_> = files.iter().map(|f| stamp(f)).collect();
    assert_eq!(before, after, "nothing rewritten");
    assert_eq!(walk(&dir).len(), files.len());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn gc_frees_what_no_reference_reaches_and_keeps_the_rest() {
    let (_dir, store) = new_store();
    let (keep, _) = put_image(&store, &small_image(1), "keep:1");
    let (drop_me, _) = put_image(&store, &small_image(2), "drop:1");
    for image in [&keep, &drop_me] {
        for layer in &image.layers {
            store
                .add_distribution_source(&layer.diff_id, &layer.digest, "example.com/x")
                .unwrap();
        }
    }
    // Shared base layer: same blob, same chain.
    assert_eq!(keep.layers[0], drop_me.layers[0]);
    // An orphan blob, a stale partial download, a stale registration.
    let orphan = Digest::sha256_of(b"orphan");
    store.put_blob_bytes(b"orphan", &orphan).unwrap();
    let partial = Digest::sha256_of(b"partial download");
    match store.ingest(&partial).unwrap() {
        IngestOutcome::Writer(mut w) => w.write_all(b"partial").unwrap(),
        IngestOutcome::Present { .. } => unreachable!(),
    }
    std::fs::create_dir_all(store.root().join("layers/tmp-killed/diff")).unwrap();

    // Nothing is lost while both are tagged (except true garbage).
    let report = store.gc().unwrap();
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert_eq!(report.partials_removed, 1, "{report:?}");
    assert_eq!(
        report.layers_removed, 1,
        "the half-unpacked registration counts: {report:?}"
    );
    assert!(!store.has_blob(&orphan));
    assert!(store.missing_blobs(&drop_me).is_empty());
    assert!(!store.root().join("layers/tmp-killed").exists());
    assert!(common::tree(&store.root().join("ingest")).is_empty());

    store.remove_image(&r("drop:1")).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.images_removed, 0, "{report:?}");
    // drop:1's manifest, config and own layer blob; its own layer.
    assert_eq!(report.blobs_removed, 3, "{report:?}");
    assert_eq!(report.layers_removed, 1, "{report:?}");
    assert!(report.bytes_freed > 10_000, "{report:?}");

    assert!(store.missing_blobs(&keep).is_empty(), "keep:1 lost blobs");
    assert!(
        store.missing_layers(&keep).unwrap().is_empty(),
        "keep:1 lost layers"
    );
    assert_eq!(
        store.missing_blobs(&drop_me),
        vec![
            drop_me.manifest_digest.clone(),
            drop_me.id.clone(),
            drop_me.layers[1].digest.clone()
        ]
    );
    assert_eq!(
        store.missing_layers(&drop_me).unwrap(),
        vec![drop_me.layers[1].chain_id.clone()]
    );
    assert!(store
        .distribution_sources(&drop_me.layers[1].diff_id)
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .distribution_sources(&keep.layers[1].diff_id)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        index_ref_names(&store),
        vec![(
            "docker.io/library/keep:1".to_string(),
            keep.manifest_digest.to_string()
        )]
    );

    // An untagged image record is garbage too.
    store.untag(&r("keep:1")).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.images_removed, 1, "{report:?}");
    assert_eq!(report.layers_removed, 2, "{report:?}");
    assert!(store.list_blobs().unwrap().is_empty());
    assert!(store.list_layers().unwrap().is_empty());
}

#[test]
fn gc_waits_for_leases_and_spares_recent_partials_when_asked() {
    let (_dir, store) = new_store();
    let lease = store.lease().unwrap();
    let other = store.clone();
    let result = std::thread::spawn(move || {
        other.gc_with(&GcOptions {
            lock_timeout: Some(Duration::from_millis(50)),
            ..GcOptions::default()
        })
    })
    .join()
    .unwrap();
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "gc must not run while a lease is held, got {result:?}"
    );
    drop(lease);

    let d = Digest::sha256_of(b"recent");
    match store.ingest(&d).unwrap() {
        IngestOutcome::Writer(mut w) => w.write_all(b"rec").unwrap(),
        IngestOutcome::Present { .. } => unreachable!(),
    }
    let report = store
        .gc_with(&GcOptions {
            keep_partials_younger_than: Some(Duration::from_secs(3600)),
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!(report.partials_removed, 0);
    match store.ingest(&d).unwrap() {
        IngestOutcome::Writer(w) => assert_eq!(w.offset(), 3),
        IngestOutcome::Present { .. } => unreachable!(),
    }
}

#[test]
fn store_reopens_with_its_content() {
    let (_dir, store) = new_store();
    let (one, _) = put_image(&store, &small_image(1), "a:1");
    let again = Store::open(store.root()).unwrap();
    assert_eq!(
        again.resolve(&r("a:1")).unwrap().map(|r| r.image),
        Some(one)
    );
    assert_eq!(index_ref_names(&again).len(), 1);
}

#[test]
fn two_manifests_of_one_config_are_two_images_each_kept_by_its_references() {
    let (_dir, store) = new_store();
    let (gzip, _) = put_image(&store, &small_image(1), "app:gzip");
    let mut other = small_image(1);
    other
        .annotations
        .insert("org.example.variant".into(), "b".into());
    let (annotated, _) = put_image(&store, &other, "app:annotated");
    assert_eq!(gzip.id, annotated.id, "one config");
    assert_ne!(gzip.manifest_digest, annotated.manifest_digest);

    // Each reference resolves to its own manifest; the layout names both.
    let manifest_of = |name: &str| {
        store
            .resolve(&r(name))
            .unwrap()
            .map(|resolved| resolved.image.manifest_digest)
    };
    assert_eq!(manifest_of("app:gzip"), Some(gzip.manifest_digest.clone()));
    assert_eq!(
        manifest_of("app:annotated"),
        Some(annotated.manifest_digest.clone())
    );
    assert_eq!(
        index_ref_names(&store),
        vec![
            (
                "docker.io/library/app:annotated".to_string(),
                annotated.manifest_digest.to_string()
            ),
            (
                "docker.io/library/app:gzip".to_string(),
                gzip.manifest_digest.to_string()
            ),
        ]
    );
    assert_eq!(store.list_images().unwrap().len(), 2);
    assert!(matches!(
        store.find_image_by_id(gzip.id.as_str()).unwrap(),
        IdMatch::One(_)
    ));

    // Removing one leaves the other whole, also after gc.
    let removed = store.remove_image(&r("app:annotated")).unwrap();
    assert_eq!(
        removed.deleted, None,
        "app:gzip's manifest has that image ID still"
    );
    store.gc().unwrap();
    assert!(!store.has_blob(&annotated.manifest_digest));
    assert!(store.missing_blobs(&gzip).is_empty());
    assert_eq!(manifest_of("app:gzip"), Some(gzip.manifest_digest.clone()));
}

#[test]
fn a_reference_through_an_index_keeps_every_stored_platform_and_names_the_index() {
    let (_dir, store) = new_store();
    let (amd, _) = put_image(&store, &small_image(1), "plain:amd");
    let arm_builder = small_image(2).platform(haul_testkit::image::Platform::linux_arm64());
    let (arm, _) = put_image(&store, &arm_builder, "plain:arm");
    let entries: Vec<serde_json::Value> = [&amd, &arm]
        .iter()
        .map(|image| {
            serde_json::json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": image.platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = Digest::sha256_of(&index_bytes);
    store.put_blob_bytes(&index_bytes, &index_digest).unwrap();
    let target = haul_store::RefTarget {
        manifest: amd.manifest_digest.clone(),
        index: Some(index_digest.clone()),
    };
    store.tag(&r("multi:1"), &target).unwrap();
    store.untag(&r("plain:amd")).unwrap();
    store.untag(&r("plain:arm")).unwrap();

    // The layout names the index, whole; gc keeps both platforms.
    assert_eq!(
        index_ref_names(&store),
        vec![(
            "docker.io/library/multi:1".to_string(),
            index_digest.to_string()
        )]
    );
    store.gc().unwrap();
    assert!(
        store.missing_blobs(&arm).is_empty(),
        "arm64 kept by the index"
    );
    assert!(store.has_blob(&index_digest));
    assert_eq!(
        store.platform_siblings().unwrap(),
        std::collections::HashSet::from([arm.manifest_digest.clone()])
    );
    // A digest reference of the repository finds the index and each platform.
    let found = store
        .resolve(&r(&format!("multi@{}", arm.manifest_digest)))
        .unwrap()
        .unwrap();
    assert_eq!(found.image.manifest_digest, arm.manifest_digest);
    let found = store
        .resolve(&r(&format!("multi@{index_digest}")))
        .unwrap()
        .unwrap();
    assert_eq!(found.index, Some(index_digest.clone()));

    // Without the arm64 image, the layout names the platform it has.
    std::fs::remove_file(store.blob_path(&arm.layers[1].digest)).unwrap();
    store.tag(&r("multi:1"), &target).unwrap();
    store.tag(&r("other:1"), &amd.target()).unwrap();
    let names = index_ref_names(&store);
    assert!(
        names.contains(&(
            "docker.io/library/multi:1".to_string(),
            amd.manifest_digest.to_string()
        )),
        "{names:?}"
    );

    store.remove_image(&r("multi:1")).unwrap();
    store.remove_image(&r("other:1")).unwrap();
    store.gc().unwrap();
    assert!(store.list_blobs().unwrap().is_empty());
    assert!(store.list_image_records().unwrap().is_empty());
}
