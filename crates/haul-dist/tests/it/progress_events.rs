//! What an embedder sees of a pull and a push: typed progress records, in
//! Docker's order of stages, against the real registry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::{short_id, Event, Message, Progress, ProgressOutput, Status};
use haul_dist::{PullOptions, PullSettings, Puller, PushSettings, Pusher};
use haul_testkit::{Entry, ImageBuilder, LayerSpec, Registry, RegistryConfig};
use tokio_util::sync::CancellationToken;

/// Every record written, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<Progress>>);

impl ProgressOutput for Recorded {
    fn write(&self, progress: Progress) {
        self.0.lock().unwrap().push(progress);
    }
}

impl Recorded {
    fn take(&self) -> Vec<Progress> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The stages one id went through, counts aside, repeats folded.
fn stages(records: &[Progress], id: &str) -> Vec<Status> {
    let mut stages: Vec<Status> = Vec::new();
    for status in records
        .iter()
        .filter(|p| p.id == id)
        .filter_map(Progress::as_status)
    {
        if stages.last().is_none_or(|last| !last.same_stage(status)) {
            stages.push(status.clone());
        }
    }
    stages
}

fn messages(records: &[Progress]) -> Vec<Message> {
    records
        .iter()
        .filter_map(|p| match &p.event {
            Event::Message(message) => Some(message.clone()),
            Event::Status(_) => None,
        })
        .collect()
}

/// The stage's kind: counted stages compare by kind alone.
fn kind(status: &Status) -> String {
    let debug = format!("{status:?}");
    debug
        .split(['(', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials: None,
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_then_a_push_report_every_stage_as_a_typed_status() {
    if haul_testkit::peers::require_docker_registry().is_none()
        || haul_testkit::peers::require_skopeo().is_none()
    {
        return;
    }
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(LayerSpec::gzip(vec![Entry::random(
        "data", 0o644, 300_000, 7,
    )]));
    let layout = scratch.path().join("layout");
    let built = image.write_oci_layout(&layout, "t").unwrap();
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &registry, "events/app:1")
        .unwrap();
    let layer = short_id(built.layers[0].blob.digest.as_str()).to_string();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let settings = PullSettings {
        retry_tick: Duration::from_millis(1),
        ..PullSettings::default()
    };
    let puller = Puller::new(client(), store.clone(), &settings);
    let reference = Reference::parse(&format!("{}/events/app:1", registry.host())).unwrap();
    let recorded = Arc::new(Recorded::default());
    let output = Arc::clone(&recorded) as Arc<dyn ProgressOutput>;

    let pull = |output: Arc<dyn ProgressOutput>| {
        let (puller, reference) = (&puller, &reference);
        async move {
            puller
                .pull(
                    reference,
                    &PullOptions::default(),
                    output,
                    CancellationToken::new(),
                )
                .await
                .unwrap()
        }
    };
    let report = pull(Arc::clone(&output)).await;
    let records = recorded.take();
    let seen: Vec<String> = stages(&records, &layer).iter().map(kind).collect();
    assert_eq!(
        seen,
        [
            "PullingFsLayer",
            "Downloading",
            "VerifyingChecksum",
            "DownloadComplete",
            "Extracting",
            "PullComplete"
        ],
        "{records:#?}"
    );
    let last_download = records
        .iter()
        .filter(|p| p.id == layer)
        .filter_map(|p| match p.as_status() {
            Some(Status::Downloading(counts)) => Some(*counts),
            _ => None,
        })
        .next_back()
        .expect("download counts");
    assert_eq!(
        (last_download.current, last_download.total),
        (built.layers[0].blob.size, Some(built.layers[0].blob.size))
    );
    assert_eq!(
        messages(&records),
        [
            Message::PullingFrom {
                repository: "events/app".into()
            },
            Message::Digest {
                digest: report.digest.to_string()
            },
            Message::PullFinished {
                reference: reference.familiar(),
                up_to_date: false
            },
        ]
    );

    // Again: the layer is present, and the image up to date.
    pull(Arc::clone(&output)).await;
    let again = recorded.take();
    assert_eq!(stages(&again, &layer), [Status::AlreadyExists]);
    assert!(messages(&again).contains(&Message::PullFinished {
        reference: reference.familiar(),
        up_to_date: true
    }));

    // A push to another repository of the same registry mounts the layer.
    let target = Reference::parse(&format!("{}/events/copy:1", registry.host())).unwrap();
    store
        .tag(&target, &store.target(&reference).unwrap().unwrap())
        .unwrap();
    let pusher = Pusher::new(
        client(),
        store,
        &PushSettings {
            retry_tick: Duration::from_millis(1),
            ..PushSettings::default()
        },
    );
    pusher
        .push(&target, Arc::clone(&output), CancellationToken::new())
        .await
        .unwrap();
    let pushed = recorded.take();
    // A push names a layer by its diffID, as Docker does.
    let layer_stages = stages(&pushed, short_id(&built.layers[0].diff_id));
    assert_eq!(
        layer_stages.first(),
        Some(&Status::Preparing),
        "{pushed:#?}"
    );
    assert!(
        matches!(
            layer_stages.last(),
            Some(Status::MountedFrom { repository }) if repository == "events/app"
        ),
        "{layer_stages:?}"
    );
    let pushed_messages = messages(&pushed);
    assert_eq!(
        pushed_messages.first(),
        Some(&Message::PushRefersTo {
            repository: target.name().to_string()
        })
    );
    assert!(
        matches!(pushed_messages.last(), Some(Message::ManifestPushed { tag: Some(tag), size, .. }) if tag == "1" && *size > 0),
        "{pushed_messages:?}"
    );
}
