//! Property tests of the parsers (proptest, bounded cases so they run in
//! the normal test suite; `PROPTEST_CASES=100000 cargo test -p haul-oci
//! --test properties` runs them longer). Whatever the input, parsing
//! never panics; what parses prints back to something that parses the
//! same.

use haul_oci::{parse_image_config, parse_manifest, Digest, Platform, Reference};
use proptest::prelude::*;

/// 256 cases, or `PROPTEST_CASES`.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A plausible reference: host[:port]/path[:tag][@digest], with odd
/// characters mixed in.
fn reference_text() -> impl Strategy<Value = String> {
    let component = "[a-z0-9]{1,8}([._-]{1,2}[a-z0-9]{1,8}){0,2}";
    (
        prop::option::of((
            "[a-zA-Z0-9-]{1,10}(\\.[a-z]{1,5})?",
            prop::option::of(1u16..),
        )),
        prop::collection::vec(component, 1..4),
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        prop::option::of("[0-9a-f]{64}"),
    )
        .prop_map(|(host, path, tag, digest)| {
            let mut s = String::new();
            if let Some((h, port)) = host {
                s.push_str(&h);
                if let Some(p) = port {
                    s.push_str(&format!(":{p}"));
                }
                s.push('/');
            }
            s.push_str(&path.join("/"));
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            if let Some(d) = digest {
                s.push_str("@sha256:");
                s.push_str(&d);
            }
            s
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn references_never_panic(input in "\\PC{0,80}") {
        let _ = Reference::parse(&input);
        let _ = Reference::parse_raw(&input);
    }

    #[test]
    fn parsed_references_print_back_to_themselves(input in reference_text()) {
        if let Ok(parsed) = Reference::parse_raw(&input) {
            let printed = parsed.to_string();
            let again = Reference::parse_raw(&printed)
                .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which fails: {e}"));
            prop_assert_eq!(&again, &parsed);
            prop_assert_eq!(again.to_string(), printed);
            let familiar = parsed.familiar();
            prop_assert_eq!(Reference::parse_raw(&familiar).unwrap(), parsed);
        }
    }

    #[test]
    fn digests_never_panic_and_round_trip(input in "\\PC{0,80}", hex in "[0-9a-f]{64}") {
        let _ = Digest::parse(&input);
        let text = format!("sha256:{hex}");
        prop_assert_eq!(Digest::parse(&text).unwrap().to_string(), text);
    }

    #[test]
    fn platforms_never_panic(input in "\\PC{0,40}") {
        if let Ok(p) = Platform::parse(&input) {
            let _ = p.to_string();
        }
    }

    #[test]
    fn manifests_of_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                          content_type in prop::option::of("\\PC{0,60}")) {
        let _ = parse_manifest(bytes, content_type.as_deref());
    }

    #[test]
    fn damaged_manifests_and_indexes_never_panic(
        which in 0usize..SAMPLES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = SAMPLES[which].as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        for content_type in [None, Some("application/vnd.oci.image.manifest.v1+json"),
                             Some("application/vnd.docker.distribution.manifest.list.v2+json"),
                             Some("application/vnd.docker.distribution.manifest.v1+prettyjws")] {
            let _ = parse_manifest(bytes.clone(), content_type);
        }
        let _ = parse_image_config(bytes);
    }

    #[test]
    fn configs_of_any_json_never_panic(value in json_value(3)) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let _ = parse_image_config(bytes.clone());
        let _ = parse_manifest(bytes, None);
    }
}

/// Valid documents of each kind, to damage.
const SAMPLES: &[&str] = &[
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#,
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#,
    r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#,
    r#"{"schemaVersion":1,"name":"library/a","tag":"1","architecture":"amd64","fsLayers":[{"blobSum":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}],"history":[{"v1Compatibility":"{\"id\":\"x\"}"}]}"#,
    r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=b"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]},"history":[{"created_by":"x"}]}"#,
];

fn json_value(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(
                "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
                    .to_string()
            ),
            Just("layers".to_string()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("schemaVersion"),
        Just("mediaType"),
        Just("config"),
        Just("layers"),
        Just("manifests"),
        Just("digest"),
        Just("size"),
        Just("platform"),
        Just("rootfs"),
        Just("diff_ids"),
        Just("architecture"),
        Just("os"),
        Just("history"),
        Just("fsLayers"),
        Just("annotations"),
        Just("urls"),
    ]
    .prop_map(str::to_string);
    leaf.prop_recursive(depth, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
