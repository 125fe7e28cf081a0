//! Mirrors are tried in order for reads, falling back to the registry.

use crate::common::*;
use bytes::Bytes;
use haul_registry::RegistryClient;
use haul_testkit::RegistryConfig;

/// Pushes a one-config image tagged `v1` whose config says `marker`.
async fn push_marked_image(
    client: &RegistryClient,
    registry: &str,
    marker: &str,
) -> haul_oci::Digest {
    let repo = client.repository(registry, "library/app").unwrap();
    let config = Bytes::from(format!(r#"{{"marker":"{marker}"}}"#));
    let dc = put_blob(&repo, &config).await;
    let manifest = image_manifest((&dc, config.len()), &[]);
    repo.put_manifest("v1", OCI_MANIFEST, manifest)
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_go_to_the_mirror_first_and_fall_back_to_the_registry() {
    let Some(origin) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let Some(mirror) = start(RegistryConfig::no_auth()) else {
        return;
    };
    let plain = RegistryClient::new(config_for(&origin)).unwrap();
    let origin_digest = push_marked_image(&plain, &origin.host(), "origin").await;
    let mirror_digest = push_marked_image(&plain, &mirror.host(), "mirror").await;
    assert_ne!(origin_digest, mirror_digest);

    // A dead mirror first, then a live one: the live mirror answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut config = config_for(&origin);
    config.mirrors.insert(
        origin.host(),
        vec![dead_url.clone(), format!("http://{}", mirror.host())],
    );
    let mirrored = RegistryClient::new(config).unwrap();
    let repo = mirrored.repository(&origin.host(), "library/app").unwrap();
    let got = repo.get_manifest("v1").await.unwrap();
    assert_eq!(
        got.digest, mirror_digest,
        "the first live mirror serves the read"
    );

    // A tag the mirror lacks comes from the registry itself.
    let only_origin = plain.repository(&origin.host(), "library/app").unwrap();
    let manifest = only_origin.get_manifest("v1").await.unwrap();
    only_origin
        .put_manifest("only-origin", OCI_MANIFEST, manifest.bytes)
        .await
        .unwrap();
    let got = repo.get_manifest("only-origin").await.unwrap();
    assert_eq!(got.digest, origin_digest);

    // Writes never go to a mirror.
    let config = Bytes::from_static(b"{\"written\":true}");
    let written = put_blob(&repo, &config).await;
    assert!(only_origin.head_blob(&written).await.unwrap().is_some());
    let mirror_repo = plain.repository(&mirror.host(), "library/app").unwrap();
    assert!(mirror_repo.head_blob(&written).await.unwrap().is_none());
}
