//! skopeo and umoci read the store's `content/` directly as an OCI layout.

use crate::common::{new_store, put_image};
use haul_store::ExportOptions;
use haul_testkit::skopeo::run_skopeo;
use haul_testkit::{sample_image, Rootfs};

#[test]
fn skopeo_inspects_and_copies_an_image_from_the_store() {
    let Some(_) = haul_testkit::peers::require_skopeo() else {
        return;
    };
    let (dir, store) = new_store();
    let builder = sample_image();
    let (record, built) = put_image(&store, &builder, "localhost:5000/haul/sample:1.0");
    store
        .tag(
            &haul_oci::Reference::parse("alpine").unwrap(),
            &record.target(),
        )
        .unwrap();
    let content = store.content_dir();

    for reference in [
        "localhost:5000/haul/sample:1.0",
        "docker.io/library/alpine:latest",
    ] {
        let image = format!("oci:{}:{reference}", content.display());
        let raw = run_skopeo(["inspect", "--raw", image.as_str()])
            .unwrap_or_else(|e| panic!("skopeo inspect --raw {image}: {e}"));
        assert_eq!(raw, built.manifest_bytes, "manifest of {reference}");
        let inspected: serde_json::Value =
            serde_json::from_slice(&run_skopeo(["inspect", image.as_str()]).unwrap()).unwrap();
        assert_eq!(inspected["Digest"], record.manifest_digest.as_str());
        assert_eq!(inspected["Architecture"], "amd64");
        assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    }

    // A full copy reads every blob and verifies its digest.
    let copied = dir.path().join("copied");
    let source = format!("oci:{}:localhost:5000/haul/sample:1.0", content.display());
    let dest = format!("dir:{}", copied.display());
    run_skopeo(["copy", source.as_str(), dest.as_str()])
        .unwrap_or_else(|e| panic!("skopeo copy {source} {dest}: {e}"));
    assert_eq!(
        std::fs::read(copied.join("manifest.json")).unwrap(),
        built.manifest_bytes
    );
    for layer in &built.layers {
        let hex = layer.blob.digest.strip_prefix("sha256:").unwrap();
        assert_eq!(
            std::fs::metadata(copied.join(hex)).unwrap().len(),
            layer.blob.size
        );
    }
}

#[test]
fn umoci_unpacks_the_store_like_our_export() {
    let Some(_) = haul_testkit::peers::require_umoci() else {
        return;
    };
    let (dir, store) = new_store();
    let builder = sample_image();
    let (record, _) = put_image(&store, &builder, "localhost:5000/haul/sample:1.0");
    let as_root = haul_store::running_as_root();
    let bundle = dir.path().join("bundle");
    let rootfs = haul_testkit::umoci::umoci_unpack(
        &store.content_dir(),
        "localhost:5000/haul/sample:1.0",
        &bundle,
        !as_root,
    )
    .unwrap();
    let ours = dir.path().join("ours");
    store
        .export_image(&record, &ours, &ExportOptions::default())
        .unwrap();
    let theirs = Rootfs::read_dir(&rootfs).unwrap();
    let mine = Rootfs::read_dir(&ours).unwrap();
    let diff = theirs.diff(&mine, as_root);
    assert!(
        diff.is_empty(),
        "our export differs from umoci's unpack:\n{}",
        diff.join("\n")
    );
    assert!(builder.expected_rootfs().diff(&theirs, as_root).is_empty());
}
