//! Referrers (signatures, SBOMs, attestations) brought along by `copy`,
//! listed by `haul referrers`, shown by `haul inspect docker://`, against
//! the real registry (distribution 2.8 has no referrers API: the tag
//! schema fallback).

use std::collections::BTreeSet;
use std::time::Duration;

use haul_dist::oci::Digest;
use haul_dist::registry::{ClientConfig, RegistryClient, Repository, RetryPolicy};
use haul_testkit::{sample_image, MemoryRegistry, MemoryRegistryConfig, Registry, RegistryConfig};

use crate::common::*;

type Bytes = Vec<u8>;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub(crate) const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub(crate) const SBOM_TYPE: &str = "application/spdx+json";
pub(crate) const ATTESTATION_LAYER: &str = "application/vnd.in-toto+json";

pub(crate) fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials: None,
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        },
        certs_dir: std::env::temp_dir().join("haul-tests-no-certs-d"),
        ..ClientConfig::default()
    })
    .unwrap()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn put_blob(repo: &Repository, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    repo.upload_monolithic(
        &digest,
        data.len() as u64,
        &bytes::Bytes::from(data.to_vec()),
    )
    .await
    .expect("blob upload");
    digest
}

/// An artifact manifest: `artifact_type` (or none, with the empty-JSON
/// config, as cosign writes some), one layer of `payload`, and `subject`.
pub(crate) async fn attach(
    repo: &Repository,
    subject: (&Digest, u64, &str),
    artifact_type: Option<&str>,
    layer_type: &str,
    payload: &[u8],
) -> (Digest, Bytes) {
    let empty = put_blob(repo, b"{}").await;
    let layer = put_blob(repo, payload).await;
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": layer_type, "digest": layer.to_string(), "size": payload.len()}],
        "subject": {"mediaType": subject.2, "digest": subject.0.to_string(), "size": subject.1},
        "annotations": {"org.example.payload": String::from_utf8_lossy(payload)},
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = serde_json::json!(t);
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = Digest::sha256_of(&bytes);
    repo.put_manifest(digest.as_str(), OCI_MANIFEST, bytes.clone().into())
        .await
        .unwrap();
    (digest, bytes)
}

/// What a test attached to an image.
pub(crate) struct Attached {
    pub image: Digest,
    pub signature: Digest,
    pub sbom: Digest,
    /// A signature of the SBOM: a referrer of a referrer.
    pub sbom_signature: Digest,
    /// An attestation with the empty-JSON artifact type.
    pub attestation: Digest,
    /// The manifest of cosign's `sha256-HEX.sig` tag.
    pub digest_tag: (String, Digest),
    pub bytes: Vec<(Digest, Bytes)>,
}

/// Attaches a signature, an SBOM (itself signed), an untyped attestation
/// and a cosign digest tag to `name:tag` in `registry`.
pub(crate) fn attach_all(registry: &Registry, name: &str, tag: &str) -> Attached {
    runtime().block_on(async {
        let client = client();
        let repo = client.repository(&registry.host(), name).unwrap();
        let image = repo.get_manifest(tag).await.unwrap();
        let media = image.media_type.clone().unwrap();
        let subject = (&image.digest, image.bytes.len() as u64, media.as_str());
        let (signature, sig_bytes) =
            attach(&repo, subject, Some(SIG_TYPE), SIG_TYPE, b"signature").await;
        let (sbom, sbom_bytes) = attach(&repo, subject, Some(SBOM_TYPE), SBOM_TYPE, b"sbom").await;
        let sbom_subject = (&sbom, sbom_bytes.len() as u64, OCI_MANIFEST);
        let (sbom_signature, sbom_sig_bytes) = attach(
            &repo,
            sbom_subject,
            Some(SIG_TYPE),
            SIG_TYPE,
            b"signature of the sbom",
        )
        .await;
        let (attestation, att_bytes) =
            attach(&repo, subject, None, ATTESTATION_LAYER, b"attestation").await;
        // cosign's tag schema: a manifest under sha256-HEX.sig, no subject.
        let empty = put_blob(&repo, b"{}").await;
        let payload = put_blob(&repo, b"cosign simple signing").await;
        let cosign = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY, "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": payload.to_string(), "size": 21}],
        }))
        .unwrap();
        let tag_name = format!("sha256-{}.sig", image.digest.hex());
        let cosign_digest = repo
            .put_manifest(&tag_name, OCI_MANIFEST, cosign.clone().into())
            .await
            .unwrap();
        Attached {
            image: image.digest.clone(),
            signature: signature.clone(),
            sbom: sbom.clone(),
            sbom_signature: sbom_signature.clone(),
            attestation: attestation.clone(),
            digest_tag: (tag_name, cosign_digest.clone()),
            bytes: vec![
                (signature, sig_bytes),
                (sbom, sbom_bytes),
                (sbom_signature, sbom_sig_bytes),
                (attestation, att_bytes),
                (cosign_digest, cosign),
            ],
        }
    })
}

/// The digests `registry/name`'s referrers listing gives for `subject`.
pub(crate) fn referrers_of(registry: &str, name: &str, subject: &Digest) -> BTreeSet<Digest> {
    runtime().block_on(async {
        let client = client();
        let repo = client.repository(registry, name).unwrap();
        repo.referrers(subject, None)
            .await
            .unwrap()
            .iter()
            .map(|d| Digest::try_from(d.digest()).unwrap())
            .collect()
    })
}

/// The manifest bytes `registry/name@digest` serves.
pub(crate) fn manifest_bytes(registry: &str, name: &str, reference: &str) -> Vec<u8> {
    runtime().block_on(async {
        let client = client();
        let repo = client.repository(registry, name).unwrap();
        repo.get_manifest(reference).await.unwrap().bytes.to_vec()
    })
}

/// The digests the fallback index `sha256-HEX` of `subject` lists.
pub(crate) fn fallback_index(registry: &str, name: &str, subject: &Digest) -> BTreeSet<String> {
    let bytes = manifest_bytes(registry, name, &format!("sha256-{}", subject.hex()));
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

fn set(digests: &[&Digest]) -> BTreeSet<Digest> {
    digests.iter().map(|d| (*d).clone()).collect()
}

#[test]
fn copy_with_referrers_brings_signatures_sboms_and_their_referrers_byte_for_byte() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();

    let out = env.haul(&[
        "--progress",
        "plain",
        "copy",
        "--referrers",
        "--digest-tags",
        &format!("docker://{}", env.reference("app:1.0")),
        &target.reference("mirror/app:1.0"),
    ]);
    assert_ok(&out);

    let host = target.host();
    assert_eq!(
        referrers_of(&host, "mirror/app", &attached.image),
        set(&[&attached.signature, &attached.sbom, &attached.attestation]),
        "the image's referrers on the target"
    );
    assert_eq!(
        referrers_of(&host, "mirror/app", &attached.sbom),
        set(&[&attached.sbom_signature]),
        "the referrer of the referrer on the target"
    );
    // The fallback index lists exactly the copied referrers.
    let listed = fallback_index(&host, "mirror/app", &attached.image);
    let expected: BTreeSet<String> = [&attached.signature, &attached.sbom, &attached.attestation]
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(listed, expected);
    for (digest, bytes) in &attached.bytes {
        assert_eq!(
            &manifest_bytes(&host, "mirror/app", digest.as_str()),
            bytes,
            "{digest} arrives byte for byte"
        );
    }
    let (tag, digest) = &attached.digest_tag;
    let cosign = manifest_bytes(&host, "mirror/app", tag);
    assert_eq!(&Digest::sha256_of(&cosign), digest, "{tag} comes along");
    assert_eq!(
        Digest::sha256_of(&manifest_bytes(&host, "mirror/app", "1.0")),
        attached.image
    );

    // Without the flags, the image alone.
    let plain = Registry::start(RegistryConfig::no_auth()).unwrap();
    let out = env.haul(&[
        "copy",
        &env.reference("app:1.0"),
        &plain.reference("app:1.0"),
    ]);
    assert_ok(&out);
    assert!(referrers_of(&plain.host(), "app", &attached.image).is_empty());
    env.assert_store_invariants();
}

#[test]
fn referrers_filter_takes_one_artifact_type_and_reads_untyped_manifests() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let copy = |filter: &str, to: &str| {
        env.haul(&[
            "copy",
            "--referrers-filter",
            &format!("artifactType={filter}"),
            &env.reference("app:1.0"),
            &target.reference(to),
        ])
    };
    assert_ok(&copy(SBOM_TYPE, "sbom/app:1.0"));
    assert_eq!(
        referrers_of(&target.host(), "sbom/app", &attached.image),
        set(&[&attached.sbom])
    );
    // The attestation declares the empty-JSON type: its layers say what it is.
    assert_ok(&copy(ATTESTATION_LAYER, "att/app:1.0"));
    assert_eq!(
        referrers_of(&target.host(), "att/app", &attached.image),
        set(&[&attached.attestation])
    );

    let bad = env.haul(&[
        "copy",
        "--referrers-filter",
        "type=x",
        &env.reference("app:1.0"),
        &target.reference("x/app:1"),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("artifactType=TYPE"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn referrers_command_lists_a_table_and_json_and_inspect_reads_the_registry() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");

    let out = env.haul(&["referrers", &env.reference("app:1.0"), "--format", "json"]);
    assert_ok(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digests: BTreeSet<Digest> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Digest::parse(d["digest"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        digests,
        set(&[&attached.signature, &attached.sbom, &attached.attestation])
    );
    let sbom_entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == attached.sbom.to_string())
        .unwrap();
    assert_eq!(sbom_entry["artifactType"], SBOM_TYPE);

    // The untyped attestation is judged by its layers.
    let typed = env.haul(&[
        "referrers",
        &env.reference("app:1.0"),
        "--artifact-type",
        ATTESTATION_LAYER,
        "--format",
        "json",
    ]);
    assert_ok(&typed);
    let typed: serde_json::Value = serde_json::from_slice(&typed.stdout).unwrap();
    let typed: Vec<&str> = typed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(typed, vec![attached.attestation.as_str()]);

    let table = env.haul(&[
        "referrers",
        &format!("docker://{}", env.reference("app:1.0")),
    ]);
    assert_ok(&table);
    let text = stdout(&table);
    assert!(text.starts_with("DIGEST"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains(&attached.signature.to_string()) && text.contains(SIG_TYPE));

    // Remote inspect: nothing pulled, skopeo's keys, the referrers too.
    let out = env.haul(&["inspect", &format!("docker://{}", env.reference("app:1.0"))]);
    assert_ok(&out);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skopeo = haul_testkit::skopeo::skopeo_inspect(&env.registry, "app:1.0").unwrap();
    for key in ["Digest", "Architecture", "Os", "Layers"] {
        assert_eq!(shown[key], skopeo[key], "{key}");
    }
    assert_eq!(shown["Digest"], built.manifest.digest.to_string());
    assert_eq!(shown["Referrers"].as_array().unwrap().len(), 3);
    assert!(
        shown["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "1.0"),
        "referrer tags are not image tags: {}",
        shown["RepoTags"]
    );
    assert!(!env.root.path().join("content").exists(), "inspect pulled");
}

#[test]
fn copy_into_a_registry_with_the_referrers_api_trusts_oci_subject_and_back_out_through_the_api() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let api = MemoryRegistry::start(MemoryRegistryConfig::default()).unwrap();

    let out = env.haul(&[
        "copy",
        "--referrers",
        "--digest-tags",
        &env.reference("app:1.0"),
        &api.reference("mirror/app:1.0"),
    ]);
    assert_ok(&out);
    let expected = set(&[&attached.signature, &attached.sbom, &attached.attestation]);
    assert_eq!(
        referrers_of(&api.host(), "mirror/app", &attached.image),
        expected
    );
    assert_eq!(
        referrers_of(&api.host(), "mirror/app", &attached.sbom),
        set(&[&attached.sbom_signature])
    );
    // The registry said OCI-Subject: no fallback index was written.
    let mut tags = api.tags("mirror/app");
    tags.sort();
    assert_eq!(tags, vec!["1.0".to_string(), attached.digest_tag.0.clone()]);
    assert_eq!(
        api.count("PUT", "/manifests/sha256-"),
        1,
        "only the cosign tag"
    );
    for (digest, bytes) in &attached.bytes {
        assert_eq!(
            api.manifest("mirror/app", digest.as_str()).as_ref(),
            Some(bytes),
            "{digest}"
        );
    }

    // And out again: the source's referrers API is read, the real
    // registry gets the fallback index.
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let fallback_reads = api.count(
        "GET",
        &format!("/manifests/sha256-{}", attached.image.hex()),
    );
    let out = env.haul(&[
        "copy",
        "--referrers",
        &api.reference("mirror/app:1.0"),
        &target.reference("again/app:1.0"),
    ]);
    assert_ok(&out);
    assert!(api.count("GET", "/referrers/") >= 2, "the API was asked");
    assert_eq!(
        api.count(
            "GET",
            &format!("/manifests/sha256-{}", attached.image.hex())
        ),
        fallback_reads,
        "the fallback tag was read although the API answers"
    );
    let listed = fallback_index(&target.host(), "again/app", &attached.image);
    assert_eq!(
        listed,
        expected
            .iter()
            .map(|d| d.to_string())
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn without_oci_subject_the_fallback_index_is_kept_where_the_api_exists() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "app:1.0");
    let attached = attach_all(&env.registry, "app", "1.0");
    let api = MemoryRegistry::start(MemoryRegistryConfig {
        oci_subject: false,
        ..MemoryRegistryConfig::default()
    })
    .unwrap();
    let out = env.haul(&[
        "copy",
        "--referrers",
        &env.reference("app:1.0"),
        &api.reference("app:1.0"),
    ]);
    assert_ok(&out);
    let listed = fallback_index(&api.host(), "app", &attached.image);
    let expected: BTreeSet<String> = [&attached.signature, &attached.sbom, &attached.attestation]
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(listed, expected);
}
