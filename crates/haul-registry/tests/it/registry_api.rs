//! The registry client against the real registry (CNCF distribution 2.8),
//! in every auth mode and over TLS.

use crate::common::*;
use bytes::Bytes;
use haul_oci::Digest;
use haul_registry::auth::Credentials;
use haul_registry::{Error, MountOutcome, RegistryClient};
use haul_testkit::{Grant, RegistryConfig};

/// Pushes two blobs (one monolithic, one chunked), a config and a manifest,
/// then reads all of it back: the round trip every mode must support.
async fn push_and_pull_round_trip(client: &RegistryClient, registry: &str, name: &str) {
    let repo = client.repository(registry, name).unwrap();
    let layer1 = blob(1, 300_000);
    let layer2 = blob(2, 1_100_000);
    let config = Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let d1 = put_blob(&repo, &layer1).await;
    let d2 = Digest::sha256_of(&layer2);
    repo.upload_chunked(&d2, layer2.len() as u64, &layer2, 256 * 1024)
        .await
        .expect("chunked upload");
    let dc = put_blob(&repo, &config).await;
    let manifest = image_manifest(
        (&dc, config.len()),
        &[(&d1, layer1.len()), (&d2, layer2.len())],
    );
    let pushed = repo
        .put_manifest("v1", OCI_MANIFEST, manifest.clone())
        .await
        .expect("manifest push");
    assert_eq!(pushed, Digest::sha256_of(&manifest));

    let fetched = repo.get_manifest("v1").await.expect("manifest by tag");
    assert_eq!(
        fetched.bytes, manifest,
        "manifest bytes must come back unchanged"
    );
    assert_eq!(fetched.digest, pushed);
    assert_eq!(fetched.media_type.as_deref(), Some(OCI_MANIFEST));
    let by_digest = repo
        .get_manifest(pushed.as_str())
        .await
        .expect("manifest by digest");
    assert_eq!(by_digest.bytes, manifest);
    let head = repo
        .head_manifest("v1")
        .await
        .unwrap()
        .expect("HEAD finds the tag");
    assert_eq!(head.digest, pushed);
    assert_eq!(head.size, Some(manifest.len() as u64));

    assert_eq!(
        repo.head_blob(&d2).await.unwrap(),
        Some(layer2.len() as u64)
    );
    assert_eq!(
        collect(&repo, &d1, Some(layer1.len() as u64))
            .await
            .unwrap(),
        layer1
    );
    assert_eq!(
        collect(&repo, &d2, Some(layer2.len() as u64))
            .await
            .unwrap(),
        layer2
    );
    assert_eq!(repo.tags(None).await.unwrap(), vec!["v1".to_string()]);
}

#[tokio::test]
async fn round_trip_without_auth() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    push_and_pull_round_trip(&client, &reg.host(), "plain/app").await;
}

#[tokio::test]
async fn round_trip_with_basic_auth() {
    let Some(reg) = start(RegistryConfig::htpasswd()) else {
        return;
    };
    let client = client_with_credentials(&reg, config_for(&reg));
    push_and_pull_round_trip(&client, &reg.host(), "basic/app").await;
}

#[tokio::test]
async fn round_trip_with_token_auth() {
    let Some(reg) = start(RegistryConfig::token()) else {
        return;
    };
    let client = client_with_credentials(&reg, config_for(&reg));
    push_and_pull_round_trip(&client, &reg.host(), "token/app").await;
    let issued = reg.token_server().unwrap().issued_count();
    assert!(issued >= 1, "tokens must come from the token server");
    assert!(
        issued <= 4,
        "tokens are cached per scope, yet {issued} were fetched for one repository"
    );
}

#[tokio::test]
async fn round_trip_over_tls_with_token_auth() {
    let Some(reg) = start(RegistryConfig::token().with_tls()) else {
        return;
    };
    let client = client_with_credentials(&reg, config_for(&reg));
    push_and_pull_round_trip(&client, &reg.host(), "tls/app").await;
}

#[tokio::test]
async fn round_trip_over_tls_with_basic_auth() {
    let Some(reg) = start(RegistryConfig::htpasswd().with_tls()) else {
        return;
    };
    let client = client_with_credentials(&reg, config_for(&reg));
    push_and_pull_round_trip(&client, &reg.host(), "tls/basic").await;
}

#[tokio::test]
async fn tls_registry_with_an_untrusted_certificate_is_refused() {
    let Some(reg) = start(RegistryConfig::no_auth().with_tls()) else {
        return;
    };
    let mut config = config_for(&reg);
    config.extra_ca_files.clear();
    let client = RegistryClient::new(config).unwrap();
    let err = client.ping(&reg.host()).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().contains("certificate"),
        "the error names the certificate: {err}"
    );
}

#[tokio::test]
async fn certs_d_directory_supplies_the_ca() {
    let Some(reg) = start(RegistryConfig::no_auth().with_tls()) else {
        return;
    };
    let certs_d = tempfile::tempdir().unwrap();
    let host_dir = certs_d.path().join(reg.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(reg.ca_cert_path().unwrap(), host_dir.join("ca.crt")).unwrap();
    let mut config = config_for(&reg);
    config.extra_ca_files.clear();
    config.certs_dir = certs_d.path().to_path_buf();
    let client = RegistryClient::new(config).unwrap();
    client
        .ping(&reg.host())
        .await
        .expect("CA from certs.d/HOST:PORT is trusted");
}

#[tokio::test]
async fn insecure_registry_skips_certificate_checks() {
    let Some(reg) = start(RegistryConfig::no_auth().with_tls()) else {
        return;
    };
    let mut config = config_for(&reg);
    config.extra_ca_files.clear();
    config.insecure_registries.push(reg.host());
    let client = RegistryClient::new(config).unwrap();
    client
        .ping(&reg.host())
        .await
        .expect("insecure registry reachable");
}

#[tokio::test]
async fn basic_auth_registry_refuses_anonymous_and_accepts_credentials() {
    let Some(reg) = start(RegistryConfig::htpasswd()) else {
        return;
    };
    let anonymous = RegistryClient::new(config_for(&reg)).unwrap();
    let err = anonymous
        .repository(&reg.host(), "secret/app")
        .unwrap()
        .tags(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&reg.host()) && text.contains("haul login"),
        "{text}"
    );

    let wrong = RegistryClient::new(config_for(&reg)).unwrap();
    let err = wrong
        .login(
            &reg.host(),
            &Credentials::basic("testuser", "not-the-password"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("not-the-password"),
        "secret leaked: {err}"
    );

    let user = reg.credentials().unwrap();
    anonymous
        .login(
            &reg.host(),
            &Credentials::basic(&user.username, &user.password),
        )
        .await
        .expect("right credentials log in");
}

#[tokio::test]
async fn token_registry_refuses_anonymous_push_and_accepts_credentials() {
    let Some(reg) = start(RegistryConfig::token().with_anonymous(vec![Grant::pull("public/app")]))
    else {
        return;
    };
    let anonymous = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = anonymous.repository(&reg.host(), "public/app").unwrap();
    let err = repo.start_upload().await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { .. } | Error::Denied { .. }),
        "anonymous push must be refused: {err:?}"
    );
    // Pull is allowed anonymously: a missing manifest is "not found", not 401.
    let err = repo.get_manifest("latest").await.unwrap_err();
    assert!(
        err.is_not_found(),
        "anonymous pull reaches the registry: {err:?}"
    );

    let user = reg.credentials().unwrap();
    let err = anonymous
        .login(&reg.host(), &Credentials::basic(&user.username, "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let authed = client_with_credentials(&reg, config_for(&reg));
    authed
        .repository(&reg.host(), "public/app")
        .unwrap()
        .start_upload()
        .await
        .expect("the user may push");
}

#[tokio::test]
async fn missing_things_are_typed_not_found_errors() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "nothing/here").unwrap();
    let err = repo.get_manifest("latest").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("nothing/here"), "{err}");
    let digest = Digest::sha256_of(b"absent");
    assert_eq!(repo.head_blob(&digest).await.unwrap(), None);
    let err = collect(&repo, &digest, None).await.unwrap_err();
    assert!(matches!(err, Error::BlobNotFound { .. }), "{err:?}");
    assert_eq!(repo.head_manifest("latest").await.unwrap(), None);
}

#[tokio::test]
async fn manifest_delete_removes_it() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "del/app").unwrap();
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&repo, &config).await;
    let manifest = image_manifest((&dc, 2), &[]);
    let digest = repo
        .put_manifest("gone", OCI_MANIFEST, manifest)
        .await
        .unwrap();
    repo.delete_manifest(&digest).await.expect("delete");
    assert!(repo
        .get_manifest(digest.as_str())
        .await
        .unwrap_err()
        .is_not_found());
}

#[tokio::test]
async fn tag_listing_follows_pagination() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "many/tags").unwrap();
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&repo, &config).await;
    let manifest = image_manifest((&dc, 2), &[]);
    let mut expected: Vec<String> = (0..23).map(|i| format!("t{i:02}")).collect();
    for tag in &expected {
        repo.put_manifest(tag, OCI_MANIFEST, manifest.clone())
            .await
            .unwrap();
    }
    expected.sort();
    let mut got = repo.tags(Some(5)).await.unwrap();
    got.sort();
    assert_eq!(got, expected, "all 23 tags across pages of 5");
}

#[tokio::test]
async fn streamed_upload_and_mount_between_repositories() {
    let Some(reg) = start(RegistryConfig::token()) else {
        return;
    };
    let client = client_with_credentials(&reg, config_for(&reg));
    let source = client.repository(&reg.host(), "mount/source").unwrap();
    let target = client.repository(&reg.host(), "mount/target").unwrap();
    let data = blob(7, 700_000);
    let digest = Digest::sha256_of(&data);
    let chunks: Vec<haul_registry::Result<Bytes>> = data
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    source
        .upload_streamed(&digest, Box::pin(futures::stream::iter(chunks)))
        .await
        .expect("streamed upload");
    assert_eq!(
        source.head_blob(&digest).await.unwrap(),
        Some(data.len() as u64)
    );

    match target.mount_blob(&digest, "mount/source").await.unwrap() {
        MountOutcome::Mounted => {}
        MountOutcome::Upload(_) => panic!("the registry should mount a blob it has"),
    }
    assert_eq!(
        target.head_blob(&digest).await.unwrap(),
        Some(data.len() as u64)
    );

    // A blob the source does not have falls back to an upload session.
    let other = blob(8, 1000);
    let other_digest = Digest::sha256_of(&other);
    match target
        .mount_blob(&other_digest, "mount/source")
        .await
        .unwrap()
    {
        MountOutcome::Upload(session) => {
            target
                .continue_chunked(session, &other_digest, other.len() as u64, &other, 400)
                .await
                .expect("upload continues in the session the mount opened");
        }
        MountOutcome::Mounted => panic!("cannot mount what the source lacks"),
    }
    assert_eq!(collect(&target, &other_digest, None).await.unwrap(), other);
}

#[tokio::test]
async fn wrong_digest_on_upload_is_refused_by_the_registry() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "bad/upload").unwrap();
    let data = blob(9, 1000);
    let wrong = Digest::sha256_of(b"something else");
    let err = repo
        .upload_monolithic(&wrong, data.len() as u64, &data)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DIGEST_INVALID"), "{err}");
    assert_eq!(repo.head_blob(&wrong).await.unwrap(), None);
}

#[tokio::test]
async fn referrers_are_listed_through_the_tag_fallback() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "ref/app").unwrap();
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&repo, &config).await;
    let image = image_manifest((&dc, 2), &[]);
    let image_digest = repo
        .put_manifest("v1", OCI_MANIFEST, image.clone())
        .await
        .unwrap();
    assert!(repo
        .referrers(&image_digest, None)
        .await
        .unwrap()
        .is_empty());

    let empty = Bytes::from_static(b"{}");
    let de = put_blob(&repo, &empty).await;
    for (i, kind) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let artifact = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": de.to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image_digest.to_string(), "size": image.len()},
            "annotations": {"n": i.to_string()},
        });
        let bytes = Bytes::from(serde_json::to_vec(&artifact).unwrap());
        let digest = Digest::sha256_of(&bytes);
        repo.put_manifest(digest.as_str(), OCI_MANIFEST, bytes)
            .await
            .unwrap();
    }
    let all = repo.referrers(&image_digest, None).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let sboms = repo
        .referrers(&image_digest, Some("application/vnd.example.sbom"))
        .await
        .unwrap();
    assert_eq!(sboms.len(), 1);
    // The fallback index is an ordinary tag any client can read.
    let tag = haul_registry::fallback_tag(&image_digest);
    assert!(repo.tags(None).await.unwrap().contains(&tag));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referrers_pushed_at_once_all_land_in_the_fallback_index() {
    let Some(reg) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let client = RegistryClient::new(config_for(&reg)).unwrap();
    let repo = client.repository(&reg.host(), "ref/many").unwrap();
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&repo, &config).await;
    let image = image_manifest((&dc, 2), &[]);
    let image_digest = repo
        .put_manifest("v1", OCI_MANIFEST, image.clone())
        .await
        .unwrap();
    let mut pushes = Vec::new();
    for i in 0..12 {
        let repo = repo.clone();
        let artifact = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": dc.to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image_digest.to_string(), "size": image.len()},
            "annotations": {"n": i.to_string()},
        });
        let bytes = Bytes::from(serde_json::to_vec(&artifact).unwrap());
        pushes.push(tokio::spawn(async move {
            let digest = Digest::sha256_of(&bytes);
            repo.put_manifest(digest.as_str(), OCI_MANIFEST, bytes)
                .await
                .unwrap();
            digest
        }));
    }
    let mut pushed = std::collections::BTreeSet::new();
    for p in pushes {
        pushed.insert(p.await.unwrap());
    }
    let listed: std::collections::BTreeSet<Digest> = repo
        .referrers(&image_digest, None)
        .await
        .unwrap()
        .iter()
        .map(|d| Digest::try_from(d.digest()).unwrap())
        .collect();
    assert_eq!(
        listed, pushed,
        "a concurrent update of the fallback index was lost"
    );
}
