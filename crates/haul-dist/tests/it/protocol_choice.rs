//! An embedder gets the protocol fallback `haul` has: with
//! `Protocol::Auto`, `Puller` and `Pusher` speak v1 to a registry without
//! the v2 API, and say so in a typed message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::{Event, Message, Progress, ProgressOutput};
use haul_dist::{
    Protocol, PullOptions, PullSettings, Puller, PushSettings, Pushed, Pusher, ReferrerOptions,
};
use haul_testkit::v1_registry::{V1Kind, V1Registry};
use haul_testkit::{Entry, ImageBuilder, LayerSpec, Registry, RegistryConfig};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Messages(Mutex<Vec<Message>>);

impl ProgressOutput for Messages {
    fn write(&self, progress: Progress) {
        if let Event::Message(message) = progress.event {
            self.0.lock().unwrap().push(message);
        }
    }
}

impl Messages {
    fn said_v1_for(&self, registry: &str) -> bool {
        self.0.lock().unwrap().contains(&Message::UsingV1Protocol {
            registry: registry.to_string(),
        })
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials: None,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn pull_settings(protocol: Protocol) -> PullSettings {
    PullSettings {
        retry_tick: Duration::from_millis(1),
        protocol,
        ..PullSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speaks_v1_to_a_v1_only_registry_for_push_and_pull() {
    if haul_testkit::peers::require_docker_registry().is_none()
        || haul_testkit::peers::require_skopeo().is_none()
    {
        return;
    }
    let Some(v1) = V1Registry::start(V1Kind::Node).expect("the v1 registry starts") else {
        return;
    };
    // The image comes into a store from a v2 registry.
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(LayerSpec::gzip(vec![Entry::random(
        "data", 0o644, 100_000, 3,
    )]));
    let layout = scratch.path().join("layout");
    image.write_oci_layout(&layout, "t").unwrap();
    haul_testkit::skopeo::push_oci_layout_with_skopeo(&layout, "t", &registry, "team/app:1")
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let from_v2 = Reference::parse(&format!("{}/team/app:1", registry.host())).unwrap();
    let pulled = Puller::new(client(), store.clone(), &pull_settings(Protocol::Auto))
        .pull(
            &from_v2,
            &PullOptions::default(),
            Arc::new(haul_dist::xfer::DiscardOutput),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let on_v1 = Reference::parse(&v1.reference("team/app:1")).unwrap();
    store
        .tag(&on_v1, &store.target(&from_v2).unwrap().unwrap())
        .unwrap();

    // Auto, to the v2 registry, stayed v2 and said nothing of v1.
    let said = Arc::new(Messages::default());
    let pusher = Pusher::new(
        client(),
        store.clone(),
        &PushSettings {
            retry_tick: Duration::from_millis(1),
            protocol: Protocol::Auto,
            ..PushSettings::default()
        },
    );
    let to_v2 = Reference::parse(&format!("{}/team/copy:1", registry.host())).unwrap();
    store
        .tag(&to_v2, &store.target(&from_v2).unwrap().unwrap())
        .unwrap();
    let pushed = pusher
        .push(&to_v2, Arc::clone(&said) as _, CancellationToken::new())
        .await
        .unwrap();
    assert!(pushed.manifest().is_some(), "{pushed:?}");
    assert!(!said.said_v1_for(&registry.host()));

    // Referrers cannot go to a v1 registry: refused, in one sentence.
    let with_referrers = ReferrerOptions {
        referrers: true,
        ..ReferrerOptions::default()
    };
    let refused = pusher
        .push_with(
            &on_v1,
            &with_referrers,
            Arc::new(haul_dist::xfer::DiscardOutput),
            CancellationToken::new(),
        )
        .await
        .expect_err("v1 has no referrers");
    assert!(
        refused
            .to_string()
            .contains("v1 protocol, which has no referrers"),
        "{refused}"
    );

    // Auto, to the v1-only registry: a v1 push, and a line saying so.
    let pushed = pusher
        .push(&on_v1, Arc::clone(&said) as _, CancellationToken::new())
        .await
        .unwrap();
    let Pushed::V1(report) = pushed else {
        panic!("a v1 push was expected: {pushed:?}");
    };
    assert!(!report.pushed.is_empty(), "{report:?}");
    assert!(said.said_v1_for(on_v1.registry()));

    // Into a fresh store: v2 alone fails there, Auto pulls the same image.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_store = Store::open(fresh.path()).unwrap();
    let v2_only = Puller::new(client(), fresh_store.clone(), &pull_settings(Protocol::V2))
        .pull(
            &on_v1,
            &PullOptions::default(),
            Arc::new(haul_dist::xfer::DiscardOutput),
            CancellationToken::new(),
        )
        .await;
    assert!(v2_only.is_err(), "a v1-only registry has no v2 API");
    let said = Arc::new(Messages::default());
    let report = Puller::new(
        client(),
        fresh_store.clone(),
        &pull_settings(Protocol::Auto),
    )
    .pull(
        &on_v1,
        &PullOptions::default(),
        Arc::clone(&said) as _,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(said.said_v1_for(on_v1.registry()));
    let stored = fresh_store.resolve(&on_v1).unwrap().expect("pulled");
    let original = store.resolve(&from_v2).unwrap().expect("pulled");
    assert_eq!(
        stored
            .image
            .layers
            .iter()
            .map(|l| &l.diff_id)
            .collect::<Vec<_>>(),
        original
            .image
            .layers
            .iter()
            .map(|l| &l.diff_id)
            .collect::<Vec<_>>(),
        "the same layers came back through v1 ({report:?}, {pulled:?})"
    );
}
