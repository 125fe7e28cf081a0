//! Shared helpers of the registry client's tests: real registries from the
//! testkit and clients configured for them.

use std::time::Duration;

use bytes::Bytes;
use haul_oci::Digest;
use haul_registry::auth::Credentials;
use haul_registry::{ClientConfig, RegistryClient, Repository, RetryPolicy};
use haul_testkit::{Registry, RegistryConfig};

/// Starts a registry, or returns `None` (skipping loudly) when the
/// `docker-registry` binary is missing outside CI.
pub(crate) fn start(config: RegistryConfig) -> Option<Registry> {
    haul_testkit::peers::require_docker_registry()?;
    Some(Registry::start(config).expect("the test registry starts"))
}

/// Client settings for tests: no credentials from the environment, quick
/// retries, the registry's CA trusted.
pub(crate) fn config_for(registry: &Registry) -> ClientConfig {
    let mut config = ClientConfig {
        credentials: None,
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(5),
        },
        certs_dir: std::env::temp_dir().join("haul-tests-no-certs-d"),
        ..ClientConfig::default()
    };
    if let Some(ca) = registry.ca_cert_path() {
        config.extra_ca_files.push(ca.to_path_buf());
    }
    config
}

/// A client that knows the registry's test user.
pub(crate) fn client_with_credentials(registry: &Registry, config: ClientConfig) -> RegistryClient {
    let client = RegistryClient::new(config).expect("client");
    if let Some(user) = registry.credentials() {
        client.set_credentials(
            &registry.host(),
            Credentials::basic(user.username.clone(), user.password.clone()),
        );
    }
    client
}

/// Deterministic pseudo-random bytes.
pub(crate) fn blob(seed: u64, size: usize) -> Bytes {
    Bytes::from(haul_testkit::image::random_bytes(seed, size))
}

/// Collects a blob stream.
pub(crate) async fn collect(
    repo: &Repository,
    digest: &Digest,
    size: Option<u64>,
) -> haul_registry::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let chunks: Vec<Bytes> = repo.blob_stream(digest, size).try_collect().await?;
    Ok(chunks.concat())
}

/// A minimal OCI image manifest over one config and the given layers.
pub(crate) fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> Bytes {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(),
                "size": s,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.0.to_string(),
            "size": config.1,
        },
        "layers": layers,
    });
    Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap())
}

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Uploads a blob monolithically and returns its digest.
pub(crate) async fn put_blob(repo: &Repository, data: &Bytes) -> Digest {
    let digest = Digest::sha256_of(data);
    repo.upload_monolithic(&digest, data.len() as u64, data)
        .await
        .expect("blob upload");
    digest
}
