//! Property tests of the docker-archive and OCI-layout readers (bounded
//! cases; `PROPTEST_CASES` runs more): archives of random bytes, of
//! random members and manifests over the formats' vocabulary, and layouts
//! with damaged or random `index.json` never panic the loader, and a
//! refused one leaves no image behind.

use std::fs;
use std::path::Path;

use haul_dist::archive::{self, LoadOptions};
use haul_dist::store::Store;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

const DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn member_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("manifest.json".to_string()),
        Just("repositories".to_string()),
        Just("config.json".to_string()),
        Just("layer.tar".to_string()),
        Just("index.json".to_string()),
        Just("oci-layout".to_string()),
        Just(format!("blobs/sha256/{}", &DIGEST[7..])),
        Just("../outside".to_string()),
        Just("/etc/passwd".to_string()),
        "[a-z]{1,6}(/[a-z.]{1,6}){0,2}",
    ]
}

fn json_value(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let strings = prop_oneof![
        Just(DIGEST.to_string()),
        Just("config.json".to_string()),
        Just("layer.tar".to_string()),
        Just("example.com/app:1".to_string()),
        Just("application/vnd.oci.image.manifest.v1+json".to_string()),
        Just("application/vnd.oci.image.index.v1+json".to_string()),
        Just("../outside".to_string()),
        "\\PC{0,10}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..5000).prop_map(Value::from),
        strings.prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("Config"),
        Just("RepoTags"),
        Just("Layers"),
        Just("schemaVersion"),
        Just("mediaType"),
        Just("manifests"),
        Just("digest"),
        Just("size"),
        Just("annotations"),
        Just("org.opencontainers.image.ref.name"),
        Just("config"),
        Just("layers"),
        Just("rootfs"),
        Just("diff_ids"),
        Just("imageLayoutVersion"),
    ]
    .prop_map(str::to_string);
    leaf.prop_recursive(depth, 40, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn member_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json_value(3).prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in members {
        let mut header = tar::Header::new_ustar();
        let raw = header.as_old_mut();
        let n = name.len().min(100);
        raw.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, &body[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn assert_no_image_on_failure(store: &Store, result: &Result<archive::LoadReport, archive::Error>) {
    if result.is_err() {
        assert!(store.list_image_records().unwrap().is_empty());
    }
}

fn fresh(dir: &Path) -> Store {
    Store::open(dir.join("store")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_as_an_archive_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh(dir.path());
        let file = dir.path().join("in.tar");
        fs::write(&file, &bytes).unwrap();
        let result = archive::load(&store, &file, &LoadOptions::default());
        assert_no_image_on_failure(&store, &result);
    }

    #[test]
    fn archives_of_random_members_never_panic(
        members in prop::collection::vec((member_name(), member_body()), 0..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh(dir.path());
        let file = dir.path().join("in.tar");
        fs::write(&file, tar_of(&members)).unwrap();
        let result = archive::load(&store, &file, &LoadOptions::default());
        assert_no_image_on_failure(&store, &result);
        prop_assert!(!dir.path().join("outside").exists());
    }

    #[test]
    fn layouts_with_random_index_and_blobs_never_panic(
        index in json_value(4),
        blob in member_body(),
        layout_marker in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh(dir.path());
        let layout = dir.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        if layout_marker {
            fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        }
        fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(layout.join("blobs/sha256").join(&DIGEST[7..]), &blob).unwrap();
        let result = archive::load(&store, &layout, &LoadOptions::default());
        assert_no_image_on_failure(&store, &result);
    }
}
