//! Uploads honour cancellation: an embedding program that cancels a push
//! or a copy gets control back within a second, no more bytes go out, and
//! the registry's upload session is cancelled with a DELETE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::DiscardOutput;
use haul_dist::{Copier, CopyOptions, PullOptions, PullSettings, Puller, PushSettings, Pusher};
use haul_testkit::{
    Entry, Fault, FaultProxy, Gate, ImageBuilder, LayerSpec, Match, Registry, RegistryConfig, Rule,
};
use tokio_util::sync::CancellationToken;

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials: None,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// A registry holding a one-layer image, and a second registry behind a
/// proxy that holds the answer to every blob upload's closing PUT.
struct Setup {
    source: Registry,
    _target: Registry,
    proxy: FaultProxy,
    gate: Gate,
    _scratch: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    haul_testkit::peers::require_docker_registry()?;
    haul_testkit::peers::require_skopeo()?;
    let source = Registry::start(RegistryConfig::no_auth()).unwrap();
    let target = Registry::start(RegistryConfig::no_auth()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(LayerSpec::gzip(vec![Entry::random(
        "data", 0o644, 300_000, 7,
    )]));
    let layout = scratch.path().join("layout");
    image.write_oci_layout(&layout, "t").unwrap();
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &source, "lib/up:1").unwrap();
    let proxy = FaultProxy::start(&target.host()).unwrap();
    let gate = Gate::new();
    proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/uploads/").method("PUT"),
        Fault::HoldRequest(gate.clone()),
    ));
    Some(Setup {
        source,
        _target: target,
        proxy,
        gate,
        _scratch: scratch,
    })
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Cancels `cancel` once the proxy holds an upload's PUT, and checks that
/// `run` ends within a second with "cancelled" and that the session got
/// its DELETE.
async fn cancel_while_uploading<F>(setup: &Setup, cancel: CancellationToken, run: F)
where
    F: std::future::Future<Output = Result<(), haul_dist::Error>> + Send + 'static,
{
    let task = tokio::spawn(run);
    wait_until("an upload in flight", || {
        setup.proxy.count_matching("PUT", "/blobs/uploads/") >= 1
    })
    .await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the upload stops within a second of its cancellation")
        .unwrap();
    assert!(
        matches!(&result, Err(e) if e.to_string().contains("cancelled")),
        "{result:?}"
    );
    wait_until("the session's DELETE", || {
        setup.proxy.count_matching("DELETE", "/blobs/uploads/") >= 1
    })
    .await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    setup.gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_push_stops_and_cancels_its_upload_session() {
    let Some(setup) = setup() else { return };
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let source = Reference::parse(&setup.source.reference("lib/up:1")).unwrap();
    Puller::new(client(), store.clone(), &PullSettings::default())
        .pull(
            &source,
            &PullOptions::default(),
            Arc::new(DiscardOutput),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let target = Reference::parse(&format!("{}/team/up:1", setup.proxy.authority())).unwrap();
    store
        .tag(&target, &store.resolve(&source).unwrap().unwrap().target())
        .unwrap();

    let pusher = Pusher::new(client(), store, &PushSettings::default());
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    cancel_while_uploading(&setup, cancel, async move {
        pusher
            .push(&target, Arc::new(DiscardOutput), token)
            .await
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_copy_stops_and_cancels_its_upload_session() {
    let Some(setup) = setup() else { return };
    let source = Reference::parse(&setup.source.reference("lib/up:1")).unwrap();
    let target = Reference::parse(&format!("{}/team/up:1", setup.proxy.authority())).unwrap();
    let copier = Copier::new(client(), &PushSettings::default());
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    cancel_while_uploading(&setup, cancel, async move {
        copier
            .copy(
                &source,
                &target,
                &CopyOptions::default(),
                Arc::new(DiscardOutput),
                token,
            )
            .await
            .map(|_| ())
    })
    .await;
}
