//! Pulls that share one download manager, with their timing controlled by
//! the fault proxy holding one blob until the test lets it go.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::{Progress, ProgressOutput, Status};
use haul_dist::{PullOptions, PullSettings, Puller};
use haul_testkit::image::BuiltImage;
use haul_testkit::{
    Entry, Fault, FaultProxy, Gate, ImageBuilder, LayerSpec, Match, Registry, RegistryConfig, Rule,
};
use tokio_util::sync::CancellationToken;

/// Every record a pull wrote.
#[derive(Default)]
struct Recorded(Mutex<Vec<Progress>>);

impl ProgressOutput for Recorded {
    fn write(&self, progress: Progress) {
        self.0.lock().unwrap().push(progress);
    }
}

impl Recorded {
    fn saw(&self, id: &str, status: &Status) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.id == id && p.as_status() == Some(status))
    }
}

fn layer(name: &str, seed: u64) -> LayerSpec {
    LayerSpec::gzip(vec![Entry::random(name, 0o644, 200_000, seed)])
}

fn short(digest: &str) -> &str {
    &digest["sha256:".len().."sha256:".len() + 12]
}

fn put(
    registry: &Registry,
    scratch: &std::path::Path,
    image: &ImageBuilder,
    name: &str,
) -> BuiltImage {
    let layout = scratch.join(name.replace([':', '/'], "_"));
    let built = image.write_oci_layout(&layout, "t").unwrap();
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", registry, name).unwrap();
    built
}

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials: None,
        ..ClientConfig::default()
    })
    .unwrap()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pull B = [Z, X] has X downloaded (and unpacked) while Z is held; pull
/// A = [X, Y, X] then runs to the end, registering X a second time on Y.
/// B's X must still be registered from B's own download: the layer a
/// download produced goes to its own registration and nowhere else
/// (Docker's design; a side table keyed by diffID let A take B's layer,
/// and B then registered an empty layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_used_twice_in_one_image_never_takes_another_pulls_layer() {
    if haul_testkit::peers::require_docker_registry().is_none()
        || haul_testkit::peers::require_skopeo().is_none()
    {
        return;
    }
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (x, y, z) = (layer("x", 1), layer("y", 2), layer("z", 3));
    let image_a = ImageBuilder::new()
        .layer(x.clone())
        .layer(y)
        .layer(x.clone());
    let image_b = ImageBuilder::new().layer(z).layer(x);
    let built_a = put(&registry, scratch.path(), &image_a, "race/a:1");
    let built_b = put(&registry, scratch.path(), &image_b, "race/b:1");
    let z_digest = built_b.layers[0].blob.digest.clone();
    let x_digest = built_b.layers[1].blob.digest.clone();
    assert_eq!(built_a.layers[0].blob.digest, x_digest);

    let proxy = FaultProxy::start(&registry.host()).unwrap();
    let gate = Gate::new();
    proxy.add_rule(Rule::new(
        Match::path_ends_with(z_digest.as_str()).method("GET"),
        Fault::Hold {
            after_bytes: 0,
            gate: gate.clone(),
        },
    ));

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let settings = PullSettings {
        retry_tick: Duration::from_millis(1),
        ..PullSettings::default()
    };
    let puller = Arc::new(Puller::new(client(), store, &settings));
    let reference =
        |name: &str| Reference::parse(&format!("{}/{name}", proxy.authority())).unwrap();

    let recorded_b = Arc::new(Recorded::default());
    let pull_b = {
        let puller = Arc::clone(&puller);
        let output = Arc::clone(&recorded_b) as Arc<dyn ProgressOutput>;
        let reference = reference("race/b:1");
        tokio::spawn(async move {
            puller
                .pull(
                    &reference,
                    &PullOptions::default(),
                    output,
                    CancellationToken::new(),
                )
                .await
        })
    };
    wait_until("B has X downloaded while Z is held", || {
        recorded_b.saw(short(&x_digest), &Status::DownloadComplete)
            && proxy.count_matching("GET", z_digest.as_str()) >= 1
    })
    .await;

    let report_a = puller
        .pull(
            &reference("race/a:1"),
            &PullOptions::default(),
            Arc::new(Recorded::default()),
            CancellationToken::new(),
        )
        .await
        .expect("pull A succeeds");
    let diff_ids_a: Vec<String> = report_a.images[0]
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    let want_a: Vec<String> = built_a.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(diff_ids_a, want_a);

    gate.open();
    let report_b = tokio::time::timeout(Duration::from_secs(30), pull_b)
        .await
        .expect("pull B ends")
        .unwrap()
        .expect("pull B succeeds: its X is its own");
    let diff_ids_b: Vec<String> = report_b.images[0]
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    let want_b: Vec<String> = built_b.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(diff_ids_b, want_b);
    let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let store = puller.store();
    for chain in built_b.chain_ids() {
        let chain = haul_dist::oci::Digest::parse(&chain).unwrap();
        let info = store
            .get_layer(&chain)
            .unwrap()
            .unwrap_or_else(|| panic!("B's layer {chain} is in the store"));
        assert_ne!(info.diff_id.as_str(), empty, "no empty layer is registered");
    }
}
