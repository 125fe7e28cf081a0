//! The client against injected faults: a fault proxy from the testkit sits
//! between the client and the real registry.

use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use haul_oci::Digest;
use haul_registry::{ClientConfig, Error, RegistryClient, Repository};
use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};
use haul_testkit::{Registry, RegistryConfig};

struct Setup {
    _registry: Registry,
    proxy: FaultProxy,
    repo: Repository,
}

/// A registry behind a fault proxy, a blob and a manifest in `faults/app`,
/// and a client that talks to the proxy.
async fn setup(
    config: RegistryConfig,
    tune: impl FnOnce(&mut ClientConfig),
) -> Option<(Setup, Bytes, Digest)> {
    let registry = start(config)?;
    let proxy = FaultProxy::start(&registry.host()).expect("proxy starts");
    let mut client_config = config_for(&registry);
    tune(&mut client_config);
    let client = RegistryClient::new(client_config).unwrap();
    if let Some(user) = registry.credentials() {
        client.set_credentials(
            &proxy.authority(),
            haul_registry::auth::Credentials::basic(&user.username, &user.password),
        );
    }
    let repo = client.repository(&proxy.authority(), "faults/app").unwrap();
    let data = blob(42, 2_000_000);
    let digest = put_blob(&repo, &data).await;
    proxy.reset_counters();
    Some((
        Setup {
            _registry: registry,
            proxy,
            repo,
        },
        data,
        digest,
    ))
}

#[tokio::test]
async fn dropped_blob_download_resumes_and_moves_only_missing_bytes() {
    let Some((s, data, digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::DropAfterBytes(700_000),
        )
        .once(),
    );
    let got = collect(&s.repo, &digest, Some(data.len() as u64))
        .await
        .expect("resumed download");
    assert_eq!(got, data);
    let gets: Vec<_> = s
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:"))
        .collect();
    assert_eq!(gets.len(), 2, "one cut request and one resume");
    let agent = gets[0].header("user-agent").unwrap_or_default();
    assert!(
        agent.starts_with("haul/"),
        "User-Agent names haul: {agent:?}"
    );
    assert_eq!(gets[1].header("range"), Some("bytes=700000-"));
    assert_eq!(
        s.proxy.response_bytes_matching("GET", "/blobs/sha256:"),
        data.len() as u64,
        "the resume fetched only the missing bytes"
    );
}

#[tokio::test]
async fn server_ignoring_range_still_yields_the_right_blob() {
    let Some((s, data, digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    let blobs = Match::path_contains("/blobs/sha256:").method("GET");
    s.proxy
        .add_rule(Rule::new(blobs.clone(), Fault::DropAfterBytes(500_000)).once());
    s.proxy
        .add_rule(Rule::new(blobs, Fault::IgnoreRange).once());
    let got = collect(&s.repo, &digest, Some(data.len() as u64))
        .await
        .expect("download");
    assert_eq!(
        got, data,
        "bytes before the offset are dropped, not duplicated"
    );
    assert_eq!(s.proxy.count_matching("GET", "/blobs/sha256:"), 2);
}

#[tokio::test]
async fn corrupted_byte_is_a_digest_mismatch() {
    let Some((s, data, digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::FlipByte { offset: 1234 },
        )
        .once(),
    );
    let err = collect(&s.repo, &digest, Some(data.len() as u64))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(digest.as_str()), "{err}");

    // The same for a manifest fetched by digest.
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&s.repo, &config).await;
    let manifest = image_manifest((&dc, 2), &[(&digest, data.len())]);
    let md = s
        .repo
        .put_manifest("v1", OCI_MANIFEST, manifest)
        .await
        .unwrap();
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/manifests/"),
            Fault::FlipByte { offset: 10 },
        )
        .once(),
    );
    let err = s.repo.get_manifest(md.as_str()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let Some((s, _data, _digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    let config = Bytes::from_static(b"{}");
    let dc = put_blob(&s.repo, &config).await;
    s.repo
        .put_manifest("v1", OCI_MANIFEST, image_manifest((&dc, 2), &[]))
        .await
        .unwrap();
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/manifests/v1").method("GET"),
            Fault::too_many_requests(1),
        )
        .once(),
    );
    let started = Instant::now();
    s.repo
        .get_manifest("v1")
        .await
        .expect("succeeds after waiting");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was not waited out ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited far too long: {waited:?}"
    );
    assert_eq!(s.proxy.count_matching("GET", "/manifests/v1"), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_limit_is_a_rate_limit_error() {
    let Some((s, _data, _digest)) = setup(RegistryConfig::no_auth(), |c| {
        c.retry.max_delay = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    s.proxy.add_rule(Rule::new(
        Match::path_contains("/manifests/"),
        Fault::too_many_requests(3600),
    ));
    let started = Instant::now();
    let err = s.repo.get_manifest("v1").await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("3600"), "{err}");
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let Some((s, _data, digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("HEAD"),
            Fault::status(503),
        )
        .times(2),
    );
    assert_eq!(s.repo.head_blob(&digest).await.unwrap(), Some(2_000_000));
    assert_eq!(s.proxy.count_matching("HEAD", "/blobs/"), 3);

    // An existence check that keeps failing is an error, never "absent".
    s.proxy.reset_counters();
    s.proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/sha256:").method("HEAD"),
        Fault::status(500),
    ));
    let err = s.repo.head_blob(&digest).await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err:?}");
    assert_eq!(
        s.proxy.count_matching("HEAD", "/blobs/"),
        4,
        "all attempts were made"
    );

    s.proxy.clear_rules();
    s.proxy.reset_counters();
    s.proxy.add_rule(Rule::new(
        Match::path_contains("/manifests/"),
        Fault::status(400),
    ));
    let err = s.repo.get_manifest("v1").await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 400, .. }), "{err:?}");
    assert_eq!(
        s.proxy.count_matching("GET", "/manifests/"),
        1,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn stalled_download_times_out_and_resumes() {
    let Some((s, data, digest)) = setup(RegistryConfig::no_auth(), |c| {
        c.read_timeout = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::stall(300_000, Duration::from_secs(20)),
        )
        .once(),
    );
    let started = Instant::now();
    let got = collect(&s.repo, &digest, Some(data.len() as u64))
        .await
        .expect("download");
    assert_eq!(got, data);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stall was not cut short"
    );
    assert_eq!(s.proxy.count_matching("GET", "/blobs/sha256:"), 2);
}

#[tokio::test]
async fn redirects_to_storage_carry_no_credentials() {
    let Some((s, data, digest)) = setup(RegistryConfig::token(), |_| {}).await else {
        return;
    };
    s.proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/sha256:").method("GET"),
        Fault::RedirectBlob,
    ));
    let got = collect(&s.repo, &digest, Some(data.len() as u64))
        .await
        .expect("download via redirect");
    assert_eq!(got, data);
    let to_registry = s
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path.contains("/blobs/sha256:"))
        .expect("the blob GET went to the registry first");
    assert!(
        to_registry
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ")),
        "the registry itself gets the token"
    );
    let storage = s.proxy.storage_requests();
    assert_eq!(storage.len(), 1);
    assert_eq!(
        storage[0].header("authorization"),
        None,
        "credentials leaked to the storage host"
    );
}

#[tokio::test]
async fn interrupted_chunked_upload_continues_from_the_registry_offset() {
    let Some((s, _data, _digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    let data = blob(77, 1_000_000);
    let digest = Digest::sha256_of(&data);
    let chunk = 200_000;
    // The third chunk is refused more times than one request retries: the
    // upload asks the registry where it stands and goes on from there.
    let patches_before_fault = 2;
    let attempts = 4; // config_for's retry policy
    let proxy = &s.proxy;
    let repo = &s.repo;
    let mut session = repo.start_upload().await.unwrap();
    for i in 0..patches_before_fault {
        repo.upload_chunk(&mut session, data.slice(i * chunk..(i + 1) * chunk))
            .await
            .unwrap();
    }
    proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/uploads/").method("PATCH"),
            Fault::status(502),
        )
        .times(attempts),
    );
    repo.continue_chunked(session, &digest, data.len() as u64, &data, chunk)
        .await
        .expect("upload continues");
    assert_eq!(collect(repo, &digest, None).await.unwrap(), data);
    assert!(
        proxy.count_matching("GET", "/blobs/uploads/") >= 1,
        "the registry was asked for the upload's offset"
    );
    assert_eq!(
        proxy.request_bytes_matching("PATCH", "/blobs/uploads/"),
        data.len() as u64 + (attempts * chunk) as u64,
        "only the refused chunk was sent again, never the completed ones"
    );
}

/// A layer attempt's stream (the caller counts attempts): a failing
/// request is sent once and ends the stream; a connection that breaks
/// after moving the download on is resumed at once, every time.
#[tokio::test]
async fn an_attempt_stream_sends_a_failing_request_once_and_resumes_only_after_progress() {
    use futures::TryStreamExt;
    let Some((s, data, digest)) = setup(RegistryConfig::no_auth(), |_| {}).await else {
        return;
    };
    let gets = |s: &Setup| {
        s.proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:"))
            .count()
    };
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::status(500),
        )
        .once(),
    );
    let failed: Result<Vec<Bytes>, Error> = s
        .repo
        .blob_stream_attempt(&digest, Some(data.len() as u64), 0)
        .try_collect()
        .await;
    assert!(failed.is_err(), "the 500 ends the attempt");
    assert_eq!(gets(&s), 1, "sent once");

    s.proxy.reset_counters();
    s.proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::DropAfterBytes(300_000),
        )
        .times(3),
    );
    let chunks: Vec<Bytes> = s
        .repo
        .blob_stream_attempt(&digest, Some(data.len() as u64), 0)
        .try_collect()
        .await
        .expect("every drop followed progress: resumed for free");
    assert_eq!(chunks.concat(), data);
    assert_eq!(gets(&s), 4, "three drops, three resumes");
}
