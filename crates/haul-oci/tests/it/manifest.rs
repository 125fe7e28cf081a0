//! Manifest decoding: every kind, with and without a declared type, and the
//! ways it must fail.

use haul_oci::manifest::{parse_manifest, parse_manifest_with_limit, DEFAULT_MANIFEST_LIMIT};
use haul_oci::media_type as mt;
use haul_oci::{Digest, Error, Manifest};

const DOCKER_V2: &[u8] = include_bytes!("data/docker-v2-manifest.json");
const DOCKER_LIST: &[u8] = include_bytes!("data/docker-manifest-list.json");
const OCI_MANIFEST: &[u8] = include_bytes!("data/oci-manifest.json");
const OCI_MANIFEST_BARE: &[u8] = include_bytes!("data/oci-manifest-no-media-type.json");
const OCI_INDEX: &[u8] = include_bytes!("data/oci-index-attestations.json");
const SCHEMA1: &[u8] = include_bytes!("data/schema1-signed.json");

#[test]
fn docker_v2_manifest_with_header() {
    let p = parse_manifest(DOCKER_V2, Some(mt::DOCKER_MANIFEST)).unwrap();
    assert_eq!(p.media_type(), mt::DOCKER_MANIFEST);
    // Digest over the exact bytes (value computed independently with sha256sum).
    assert_eq!(
        p.digest().as_str(),
        "sha256:7b5ecb7d46aa940c7ee274bd07f9465c8388b591d0c756f60704714df9c9ac8b"
    );
    assert_eq!(p.bytes(), DOCKER_V2);
    assert_eq!(p.size(), DOCKER_V2.len() as u64);
    let m = p.manifest();
    let config = m.config().unwrap();
    assert_eq!(config.media_type().to_string(), mt::DOCKER_CONFIG);
    assert_eq!(
        config.digest().to_string(),
        "sha256:6ae0d4eaa088ece4bebcc379b28872dbc4d5e384d407f886d4d4e41b4b0723ba"
    );
    let layers = m.layers().unwrap();
    assert_eq!(layers.len(), 3);
    assert!(layers
        .iter()
        .all(|l| l.media_type().to_string() == mt::DOCKER_LAYER_GZIP));
    assert_eq!(layers[0].size(), 3_371_000);
    assert!(m.manifests().is_none());
    assert!(!m.is_index());
}

#[test]
fn oci_manifest_with_header_and_parameters() {
    let p = parse_manifest(
        OCI_MANIFEST,
        Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    )
    .unwrap();
    assert_eq!(p.media_type(), mt::OCI_MANIFEST);
    let image = p.manifest().as_image().unwrap();
    assert_eq!(image.layers().len(), 2);
    assert_eq!(
        image.layers()[1].media_type().to_string(),
        mt::OCI_LAYER_ZSTD
    );
    assert_eq!(
        image.annotations().as_ref().unwrap()["org.opencontainers.image.revision"],
        "0123456789abcdef"
    );
}

#[test]
fn docker_manifest_list_with_header() {
    let p = parse_manifest(DOCKER_LIST, Some(mt::DOCKER_MANIFEST_LIST)).unwrap();
    assert_eq!(p.media_type(), mt::DOCKER_MANIFEST_LIST);
    let m = p.manifest();
    assert!(m.is_index());
    let entries = m.manifests().unwrap();
    assert_eq!(entries.len(), 9);
    let windows = entries[7].platform().as_ref().unwrap();
    assert_eq!(windows.os_version().as_deref(), Some("10.0.17763.5122"));
    assert!(m.config().is_none() && m.layers().is_none());
}

#[test]
fn oci_index_with_header() {
    let p = parse_manifest(OCI_INDEX, Some(mt::OCI_INDEX)).unwrap();
    assert_eq!(p.media_type(), mt::OCI_INDEX);
    assert_eq!(p.manifest().manifests().unwrap().len(), 4);
}

#[test]
fn schema1_signed_with_header() {
    let p = parse_manifest(SCHEMA1, Some(mt::DOCKER_MANIFEST_V1_SIGNED)).unwrap();
    assert_eq!(p.media_type(), mt::DOCKER_MANIFEST_V1_SIGNED);
    let s1 = p.manifest().as_schema1().unwrap();
    assert_eq!(s1.name, "library/busybox");
    assert_eq!(s1.tag, "1.24");
    assert_eq!(s1.architecture, "amd64");
    assert!(s1.is_signed());
    assert_eq!(s1.history.len(), 2);
    assert!(s1.history[1].v1_compatibility.contains("\"os\":\"linux\""));
    // Base layer first, the reverse of the document's order.
    let layers = s1.layer_digests();
    assert_eq!(layers[0], &s1.fs_layers[1].blob_sum);
    assert_eq!(layers[1], &s1.fs_layers[0].blob_sum);
}

#[test]
fn sniffs_content_when_header_says_nothing() {
    let cases: [(&[u8], &str); 6] = [
        (DOCKER_V2, mt::DOCKER_MANIFEST),
        (DOCKER_LIST, mt::DOCKER_MANIFEST_LIST),
        (OCI_MANIFEST, mt::OCI_MANIFEST),
        (OCI_MANIFEST_BARE, mt::OCI_MANIFEST),
        (OCI_INDEX, mt::OCI_INDEX),
        (SCHEMA1, mt::DOCKER_MANIFEST_V1_SIGNED),
    ];
    for header in [
        None,
        Some(""),
        Some("application/octet-stream"),
        Some("text/plain; charset=utf-8"),
        Some("application/json"),
    ] {
        for (bytes, want) in cases {
            let p = parse_manifest(bytes, header)
                .unwrap_or_else(|e| panic!("{want} with {header:?}: {e}"));
            assert_eq!(p.media_type(), want, "header {header:?}");
        }
    }
}

#[test]
fn sniffs_bare_index_and_unsigned_schema1() {
    let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let p = parse_manifest(&bare_index[..], None).unwrap();
    assert_eq!(p.media_type(), mt::OCI_INDEX);
    assert_eq!(p.manifest().manifests().unwrap().len(), 0);

    let mut s1: serde_json::Value = serde_json::from_slice(SCHEMA1).unwrap();
    s1.as_object_mut().unwrap().remove("signatures");
    let bytes = serde_json::to_vec(&s1).unwrap();
    let p = parse_manifest(bytes, None).unwrap();
    assert_eq!(p.media_type(), mt::DOCKER_MANIFEST_V1);
    assert!(!p.manifest().as_schema1().unwrap().is_signed());
}

#[test]
fn bare_oci_manifest_accepts_specific_header() {
    // No mediaType in the document: the header decides, nothing to disagree with.
    let p = parse_manifest(OCI_MANIFEST_BARE, Some(mt::OCI_MANIFEST)).unwrap();
    assert_eq!(p.media_type(), mt::OCI_MANIFEST);
    assert!(matches!(p.manifest(), Manifest::Image(_)));
}

#[test]
fn declared_type_disagreeing_with_document_is_refused() {
    let cases: [(&[u8], &str, &str); 3] = [
        (DOCKER_V2, mt::OCI_MANIFEST, mt::DOCKER_MANIFEST),
        (OCI_MANIFEST, mt::DOCKER_MANIFEST, mt::OCI_MANIFEST),
        (DOCKER_LIST, mt::OCI_INDEX, mt::DOCKER_MANIFEST_LIST),
    ];
    for (bytes, declared, in_doc) in cases {
        match parse_manifest(bytes, Some(declared)) {
            Err(Error::MediaTypeMismatch { declared: d, found }) => {
                assert_eq!(d, declared);
                assert_eq!(found, in_doc);
            }
            other => panic!("{declared}: expected MediaTypeMismatch, got {other:?}"),
        }
    }
}

#[test]
fn wrong_kind_for_declared_type_fails_to_decode() {
    // An index declared as a manifest (no mediaType field to compare).
    let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let err = parse_manifest(&bare_index[..], Some(mt::OCI_MANIFEST)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "image manifest",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("config"), "{err}");
}

#[test]
fn unsupported_declared_type() {
    for ct in [mt::OCI_CONFIG, "text/html", mt::DOCKER_LAYER_GZIP] {
        match parse_manifest(OCI_MANIFEST_BARE, Some(ct)) {
            Err(Error::UnsupportedMediaType { media_type }) => assert_eq!(media_type, ct),
            other => panic!("{ct}: expected UnsupportedMediaType, got {other:?}"),
        }
    }
}

#[test]
fn unsupported_media_type_in_document() {
    let doc = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json","blobs":[]}"#;
    let err = parse_manifest(&doc[..], None).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedMediaType { media_type } if media_type == "application/vnd.oci.artifact.manifest.v1+json"),
        "{err:?}"
    );
}

#[test]
fn unrecognisable_documents() {
    let err = parse_manifest(&br#"{"schemaVersion":2}"#[..], None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidDocument {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
    let err = parse_manifest(&b"not json"[..], None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
    let err = parse_manifest(&b"[1,2]"[..], Some(mt::OCI_MANIFEST)).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
}

#[test]
fn wrong_schema_version() {
    let doc = br#"{"schemaVersion":3,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let err = parse_manifest(&doc[..], None).unwrap_err();
    match err {
        Error::InvalidDocument { what, reason } => {
            assert_eq!(what, "image manifest");
            assert!(reason.contains("schemaVersion is 3"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn schema1_rules() {
    let mut s1: serde_json::Value = serde_json::from_slice(SCHEMA1).unwrap();
    s1["history"].as_array_mut().unwrap().pop();
    let err = parse_manifest(serde_json::to_vec(&s1).unwrap(), None).unwrap_err();
    match err {
        Error::InvalidDocument { what, reason } => {
            assert_eq!(what, "schema 1 manifest");
            assert_eq!(reason, "2 layers but 1 history entries");
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut s1: serde_json::Value = serde_json::from_slice(SCHEMA1).unwrap();
    s1["fsLayers"][0]["blobSum"] = "sha256:short".into();
    let err = parse_manifest(serde_json::to_vec(&s1).unwrap(), None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "schema 1 manifest",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn size_limit() {
    assert_eq!(DEFAULT_MANIFEST_LIMIT, 4 * 1024 * 1024);
    let err = parse_manifest_with_limit(DOCKER_V2, None, 100).unwrap_err();
    match &err {
        Error::TooLarge { what, size, limit } => {
            assert_eq!(*what, "manifest");
            assert_eq!(*size, DOCKER_V2.len() as u64);
            assert_eq!(*limit, 100);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "manifest is {} bytes, over the limit of 100 bytes",
            DOCKER_V2.len()
        )
    );
    // Exactly at the limit is fine.
    parse_manifest_with_limit(DOCKER_V2, None, DOCKER_V2.len()).unwrap();

    // The default limit: a valid document padded past 4 MiB is refused
    // before any decoding.
    let mut big = DOCKER_V2.to_vec();
    big.resize(DEFAULT_MANIFEST_LIMIT + 1, b' ');
    assert!(matches!(
        parse_manifest(big, Some(mt::DOCKER_MANIFEST)),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn verify_against_expected_digest() {
    let p = parse_manifest(DOCKER_V2, None).unwrap();
    p.verify(
        &"sha256:7b5ecb7d46aa940c7ee274bd07f9465c8388b591d0c756f60704714df9c9ac8b"
            .parse()
            .unwrap(),
    )
    .unwrap();
    let sha512 = Digest::of(haul_oci::Algorithm::Sha512, DOCKER_V2);
    p.verify(&sha512).unwrap();
    let wrong = Digest::sha256_of(b"something else");
    assert!(matches!(
        p.verify(&wrong),
        Err(Error::DigestMismatch { .. })
    ));
}

#[test]
fn whitespace_changes_digest_but_not_content() {
    let compact: serde_json::Value = serde_json::from_slice(DOCKER_V2).unwrap();
    let compact = serde_json::to_vec(&compact).unwrap();
    let a = parse_manifest(DOCKER_V2, None).unwrap();
    let b = parse_manifest(compact, None).unwrap();
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.manifest(), b.manifest());
}
