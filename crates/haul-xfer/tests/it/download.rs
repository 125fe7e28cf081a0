//! The download manager: Docker's `download_test.go` scenarios, plus
//! zero-layer images, registration failures, slot release before
//! registration, and pulls sharing layers.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    fast_retries, stage, within, Gauge, MockDownload, MockLayerStore, RecordingOutput,
};
use haul_xfer::{DiffId, DownloadManager, Error, ProgressOutput};
use tokio_util::sync::CancellationToken;

const ID1: &str = "sha256:68e2c75dc5c78ea9240689c60d7599766c213ae210434c53af18470ae8c53ec1";
const ID2: &str = "sha256:64a636223116aa837973a5d9c2bdd17d9b204e4f95ac423e20e65dfbb3655473";
const ID3: &str = "sha256:58745a8bbd669c25213e9de578c4da5c8ee1c836b3581432c2b50e38a6753300";
const ID4: &str = "sha256:0dfb5b9577716cc173e95af7c10289322c29a6453a1718addc00c0c5b1330936";
const ID5: &str = "sha256:0a5f25fa1acbc647f6112a6276735d0fa01e4ee2aa7ec33015e337350e1ea23d";

/// The expected diffIDs of Docker's six descriptors (index 3 repeats id2).
const EXPECTED_DIFF_IDS: [&str; 6] = [ID1, ID2, ID3, ID2, ID4, ID5];

/// Docker's six descriptors: id1, id2, id3, id2 again, id4 (failing
/// `id4_failures` times), id5; id1 with its diffID known.
fn six_descriptors(gauge: Option<&Arc<Gauge>>, id4_failures: u32) -> Vec<Arc<MockDownload>> {
    let make = |id: &str| {
        let descriptor = MockDownload::new(id);
        match gauge {
            Some(gauge) => descriptor.with_gauge(gauge),
            None => descriptor,
        }
    };
    vec![
        Arc::new(make("id1").with_diff_id(ID1)),
        Arc::new(make("id2")),
        Arc::new(make("id3")),
        Arc::new(make("id2")),
        Arc::new(make("id4").with_retries(id4_failures)),
        Arc::new(make("id5")),
    ]
}

fn output(recording: &Arc<RecordingOutput>) -> Arc<dyn ProgressOutput> {
    Arc::clone(recording) as Arc<dyn ProgressOutput>
}

fn diff_id_strings(diff_ids: &[DiffId]) -> Vec<&str> {
    diff_ids.iter().map(DiffId::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_download_registers_every_layer_in_order_with_the_expected_diff_ids() {
    let store = MockLayerStore::new();
    let id1 = store.preregister(&MockDownload::new("id1").content());
    assert_eq!(id1.diff_id, ID1);
    let manager = DownloadManager::new(Arc::clone(&store))
        .with_concurrency(3)
        .with_retry_policy(fast_retries());
    let gauge = Gauge::new();
    let descriptors = six_descriptors(Some(&gauge), 1);
    let recording = RecordingOutput::new();

    let (diff_ids, release) = within(
        10,
        "download",
        manager.download(&CancellationToken::new(), &descriptors, output(&recording)),
    )
    .await
    .expect("download succeeds");
    release.release().await;
    recording.close();

    assert_eq!(diff_id_strings(&diff_ids), EXPECTED_DIFF_IDS);
    for (i, descriptor) in descriptors.iter().enumerate() {
        assert_eq!(
            descriptor.registered().as_ref(),
            Some(&diff_ids[i]),
            "descriptor {i} ({}) should learn its diffID",
            descriptor.id
        );
    }

    let last = recording.last_by_id();
    assert_eq!(stage(&last["id1"]), "Already exists");
    for id in ["id2", "id3", "id4", "id5"] {
        assert_eq!(stage(&last[id]), "Pull complete", "last record of {id}");
    }
    assert!(
        recording
            .records_for("id2")
            .iter()
            .filter(|p| stage(p) == "Pulling fs layer")
            .count()
            == 1,
        "the duplicate id2 writes nothing of its own"
    );
    assert_eq!(
        descriptors[0].attempts.load(Ordering::SeqCst),
        0,
        "id1 exists: not downloaded"
    );
    assert_eq!(
        descriptors[3].attempts.load(Ordering::SeqCst),
        0,
        "the duplicate id2 is not downloaded"
    );
    assert_eq!(
        descriptors[4].attempts.load(Ordering::SeqCst),
        2,
        "id4 fails once, then succeeds"
    );
    assert!(
        gauge.max_seen() <= 3,
        "{} downloads ran at once",
        gauge.max_seen()
    );
    assert_eq!(gauge.max_seen(), 3, "the limit of 3 should be reached");
    assert_eq!(
        recording.late_writes(),
        0,
        "nothing is written after the release"
    );
    assert_eq!(
        descriptors[1].closed.load(Ordering::SeqCst),
        1,
        "close is called once per download"
    );
}

/// With the clock paused, every task runs before time moves on, so every
/// watcher sees every record: the exact countdown can be checked, with the
/// production policy (one-second ticks).
#[tokio::test(start_paused = true)]
async fn watchers_see_waiting_and_the_whole_retry_countdown() {
    let store = MockLayerStore::new();
    store.preregister(&MockDownload::new("id1").content());
    let manager = DownloadManager::new(Arc::clone(&store));
    let descriptors = six_descriptors(None, 1);
    let recording = RecordingOutput::new();
    let started = tokio::time::Instant::now();

    let (_, release) = manager
        .download(&CancellationToken::new(), &descriptors, output(&recording))
        .await
        .unwrap();
    release.release().await;

    let actions = |id: &str| -> Vec<String> {
        let mut actions: Vec<String> = recording
            .records_for(id)
            .into_iter()
            .map(|p| stage(&p))
            .collect();
        actions.dedup();
        actions
    };
    assert_eq!(
        actions("id4"),
        [
            "Pulling fs layer",
            "Downloading",
            "Retrying in 5 seconds",
            "Retrying in 4 seconds",
            "Retrying in 3 seconds",
            "Retrying in 2 seconds",
            "Retrying in 1 second",
            "Downloading",
            "Extracting",
            "Pull complete"
        ]
    );
    assert_eq!(
        actions("id5"),
        [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Extracting",
            "Pull complete"
        ],
        "the fourth download waits for one of the three slots"
    );
    // Every stage reaches every watcher, also one replaced at once (the
    // in-memory store registers without pausing); only counts coalesce.
    assert_eq!(
        actions("id2"),
        [
            "Pulling fs layer",
            "Downloading",
            "Extracting",
            "Pull complete"
        ]
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the retry waited 5 ticks of 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_download_returns_cancelled_and_writes_nothing_afterwards() {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries());
    let descriptors = six_descriptors(None, 1);
    let recording = RecordingOutput::new();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            cancel.cancel();
        })
    };

    let outcome = within(
        5,
        "download",
        manager.download(&cancel, &descriptors, output(&recording)),
    )
    .await;
    recording.close();
    canceller.await.unwrap();

    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    within(5, "the unshared transfers end", async {
        while manager.transfers().in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        recording.late_writes(),
        0,
        "nothing is written after download returned"
    );
    assert_eq!(store.registrations.load(Ordering::SeqCst), 0);
}

/// Docker's TestMaxDownloadAttempts: id4 fails `failures` times, with
/// `max_attempts` allowed.
async fn download_with_attempts(failures: u32, max_attempts: u32) -> Result<Vec<DiffId>, Error> {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(Arc::clone(&store))
        .with_concurrency(3)
        .with_retry_policy(fast_retries().with_max_attempts(max_attempts));
    let gauge = Gauge::new();
    let descriptors = six_descriptors(Some(&gauge), failures);
    let recording = RecordingOutput::new();
    let outcome = within(
        20,
        "download",
        manager.download(&CancellationToken::new(), &descriptors, output(&recording)),
    )
    .await;
    let attempts = descriptors[4].attempts.load(Ordering::SeqCst);
    assert_eq!(
        attempts,
        (failures + 1).min(max_attempts),
        "attempts of id4"
    );
    assert!(gauge.max_seen() <= 3);
    match outcome {
        Ok((diff_ids, release)) => {
            release.release().await;
            Ok(diff_ids)
        }
        Err(err) => Err(err),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_5_succeeds_at_the_2nd_attempt() {
    let diff_ids = download_with_attempts(1, 5).await.unwrap();
    assert_eq!(diff_id_strings(&diff_ids), EXPECTED_DIFF_IDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_5_succeeds_at_the_5th_attempt() {
    let diff_ids = download_with_attempts(4, 5).await.unwrap();
    assert_eq!(diff_id_strings(&diff_ids), EXPECTED_DIFF_IDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_5_fails_at_the_5th_attempt_with_the_layers_own_error() {
    let err = download_with_attempts(5, 5).await.unwrap_err();
    assert_eq!(err.to_string(), "simulating download attempt failure 5/5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_1_fails_after_1_attempt() {
    let err = download_with_attempts(1, 1).await.unwrap_err();
    assert_eq!(err.to_string(), "simulating download attempt failure 1/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_not_retry_failure_is_not_retried() {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(store).with_retry_policy(fast_retries());
    let descriptor = MockDownload::new("id1").with_retries(1);
    descriptor.permanent_failure.store(true, Ordering::SeqCst);
    let descriptors = vec![Arc::new(descriptor)];
    let err = manager
        .download(
            &CancellationToken::new(),
            &descriptors,
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "simulating download attempt failure 1/1");
    assert!(!err.is_retryable());
    assert_eq!(descriptors[0].attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_zero_layer_image_downloads_nothing() {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(store);
    let (diff_ids, release) = manager
        .download::<MockDownload>(
            &CancellationToken::new(),
            &[],
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await
        .unwrap();
    assert!(diff_ids.is_empty());
    assert_eq!(release.top_chain_id(), None);
    release.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_already_present_reports_already_exists_and_holds_one_reference() {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries());
    let first = vec![
        Arc::new(MockDownload::new("id1")),
        Arc::new(MockDownload::new("id2")),
    ];
    let (diff_ids, release) = manager
        .download(
            &CancellationToken::new(),
            &first,
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await
        .unwrap();
    release.release().await;

    let again = vec![
        Arc::new(MockDownload::new("id1").with_diff_id(diff_ids[0].as_str())),
        Arc::new(MockDownload::new("id2").with_diff_id(diff_ids[1].as_str())),
    ];
    // Both transfers' layer references go once nobody watches them.
    within(5, "the first pull's references are released", async {
        while store.releases.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let recording = RecordingOutput::new();
    let releases_before = store.releases.load(Ordering::SeqCst);
    assert_eq!(releases_before, 2);
    let (diff_ids_again, release) = manager
        .download(&CancellationToken::new(), &again, output(&recording))
        .await
        .unwrap();
    assert_eq!(diff_ids_again, diff_ids);
    assert_eq!(
        release.top_chain_id(),
        Some(common::chain_id(
            Some(&common::chain_id(None, &diff_ids[0])),
            &diff_ids[1]
        ))
    );
    let actions: Vec<_> = recording
        .records()
        .into_iter()
        .map(|p| (stage(&p), p.id))
        .map(|(stage, id)| (id, stage))
        .collect();
    assert_eq!(
        actions,
        [
            ("id1".to_owned(), "Already exists".to_owned()),
            ("id2".to_owned(), "Already exists".to_owned())
        ]
    );
    assert!(again.iter().all(|d| d.attempts.load(Ordering::SeqCst) == 0));
    assert!(
        again.iter().all(|d| d.registered().is_some()),
        "registered is called for present layers too"
    );
    // The lower layer's reference was dropped when the upper one was found.
    assert_eq!(store.releases.load(Ordering::SeqCst), releases_before + 1);
    release.release().await;
    assert_eq!(store.releases.load(Ordering::SeqCst), releases_before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_present_above_a_missing_one_is_downloaded_and_every_lookup_released() {
    // The layers are looked up all at once; the one found above the gap
    // is not used (its parent is downloaded again), and its handle, like
    // every other, goes back to the store exactly once.
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries());
    let first: Vec<_> = ["id1", "id2", "id3"]
        .into_iter()
        .map(|id| Arc::new(MockDownload::new(id)))
        .collect();
    let (diff_ids, release) = manager
        .download(
            &CancellationToken::new(),
            &first,
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await
        .unwrap();
    release.release().await;
    let second_chain = common::chain_id(Some(&common::chain_id(None, &diff_ids[0])), &diff_ids[1]);
    store.forget(&second_chain);

    let again: Vec<_> = ["id1", "id2", "id3"]
        .into_iter()
        .zip(&diff_ids)
        .map(|(id, diff_id)| Arc::new(MockDownload::new(id).with_diff_id(diff_id.as_str())))
        .collect();
    let recording = RecordingOutput::new();
    let (diff_ids_again, release) = manager
        .download(&CancellationToken::new(), &again, output(&recording))
        .await
        .unwrap();
    assert_eq!(diff_ids_again, diff_ids);
    let stages: Vec<_> = recording
        .records()
        .into_iter()
        .map(|p| (p.id.clone(), stage(&p)))
        .filter(|(_, stage)| stage == "Already exists" || stage == "Pull complete")
        .collect();
    assert_eq!(
        stages,
        [
            ("id1".to_owned(), "Already exists".to_owned()),
            ("id2".to_owned(), "Pull complete".to_owned()),
            ("id3".to_owned(), "Pull complete".to_owned()),
        ]
    );
    let attempts: Vec<u32> = again
        .iter()
        .map(|d| d.attempts.load(Ordering::SeqCst))
        .collect();
    assert_eq!(attempts, [0, 1, 1]);
    release.release().await;
    within(5, "every handle is released", async {
        loop {
            let out = store.handed_out.load(Ordering::SeqCst)
                + store.registrations.load(Ordering::SeqCst);
            if store.releases.load(Ordering::SeqCst) >= out {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // id1 and id3 were found (id3 unused); 3 + 2 registrations.
    assert_eq!(store.handed_out.load(Ordering::SeqCst), 2);
    assert_eq!(store.registrations.load(Ordering::SeqCst), 5);
    assert_eq!(store.releases.load(Ordering::SeqCst), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_failure_is_reported_and_not_retried() {
    let store = MockLayerStore::new();
    *store.fail_registration.lock().unwrap() = Some("no space left on device".to_owned());
    let manager = DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries());
    let descriptors = vec![
        Arc::new(MockDownload::new("id1")),
        Arc::new(MockDownload::new("id2")),
    ];
    let err = manager
        .download(
            &CancellationToken::new(),
            &descriptors,
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to register layer: no space left on device"
    );
    assert!(descriptors
        .iter()
        .all(|d| d.attempts.load(Ordering::SeqCst) == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_freed_after_the_download_so_the_limit_bounds_network_work_only() {
    let store = MockLayerStore::new();
    let gate = CancellationToken::new();
    *store.registration_gate.lock().unwrap() = Some(gate.clone());
    let manager = DownloadManager::new(Arc::clone(&store))
        .with_concurrency(1)
        .with_retry_policy(fast_retries());
    let gauge = Gauge::new();
    let descriptors: Vec<_> = ["id1", "id2", "id3"]
        .iter()
        .map(|id| {
            let mut descriptor = MockDownload::new(id).with_gauge(&gauge);
            descriptor.limit = 1;
            Arc::new(descriptor)
        })
        .collect();

    let pull = {
        let (manager, descriptors) = (Arc::new(manager), descriptors.clone());
        tokio::spawn(async move {
            manager
                .download(
                    &CancellationToken::new(),
                    &descriptors,
                    Arc::new(haul_xfer::DiscardOutput),
                )
                .await
                .map(|(diff_ids, _release)| diff_ids)
        })
    };
    within(
        10,
        "all three downloads finish while registration is blocked",
        async {
            while descriptors
                .iter()
                .any(|d| d.attempts.load(Ordering::SeqCst) == 0)
                || gauge.running() > 0
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        },
    )
    .await;
    assert_eq!(store.registrations.load(Ordering::SeqCst), 0);
    assert_eq!(gauge.max_seen(), 1);
    gate.cancel();
    let diff_ids = within(10, "pull", pull).await.unwrap().unwrap();
    assert_eq!(diff_id_strings(&diff_ids), [ID1, ID2, ID3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pulls_of_the_same_layers_download_each_layer_once() {
    let store = MockLayerStore::new();
    let manager =
        Arc::new(DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries()));
    let pull = |ids: &[&str]| {
        let descriptors: Vec<_> = ids
            .iter()
            .map(|id| Arc::new(MockDownload::new(id)))
            .collect();
        let manager = Arc::clone(&manager);
        let recording = RecordingOutput::new();
        let task_descriptors = descriptors.clone();
        let task_recording = Arc::clone(&recording);
        let task = tokio::spawn(async move {
            let (diff_ids, release) = manager
                .download(
                    &CancellationToken::new(),
                    &task_descriptors,
                    output(&task_recording),
                )
                .await?;
            release.release().await;
            Ok::<_, Error>(diff_ids)
        });
        (descriptors, recording, task)
    };
    let (a, a_out, a_task) = pull(&["id1", "id2", "id3"]);
    let (b, b_out, b_task) = pull(&["id1", "id2", "id3"]);
    let a_ids = within(10, "pull a", a_task).await.unwrap().unwrap();
    let b_ids = within(10, "pull b", b_task).await.unwrap().unwrap();
    assert_eq!(a_ids, b_ids);
    for i in 0..3 {
        let downloads = a[i].attempts.load(Ordering::SeqCst) + b[i].attempts.load(Ordering::SeqCst);
        assert_eq!(downloads, 1, "layer {i} downloaded {downloads} times");
    }
    for out in [a_out, b_out] {
        let last = out.last_by_id();
        assert!(["id1", "id2", "id3"]
            .iter()
            .all(|id| stage(&last[*id]) == "Pull complete"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_pull_does_not_cancel_layers_another_pull_waits_for() {
    let store = MockLayerStore::new();
    let manager =
        Arc::new(DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries()));
    let descriptors = |_: ()| -> Vec<Arc<MockDownload>> {
        ["id1", "id2"]
            .iter()
            .map(|id| Arc::new(MockDownload::new(id)))
            .collect()
    };
    let impatient = CancellationToken::new();
    let a = {
        let (manager, descriptors, cancel) =
            (Arc::clone(&manager), descriptors(()), impatient.clone());
        tokio::spawn(async move {
            manager
                .download(&cancel, &descriptors, Arc::new(haul_xfer::DiscardOutput))
                .await
                .map(|(diff_ids, _)| diff_ids)
        })
    };
    let b = {
        let (manager, descriptors) = (Arc::clone(&manager), descriptors(()));
        tokio::spawn(async move {
            let (diff_ids, release) = manager
                .download(
                    &CancellationToken::new(),
                    &descriptors,
                    Arc::new(haul_xfer::DiscardOutput),
                )
                .await?;
            release.release().await;
            Ok::<_, Error>(diff_ids)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    impatient.cancel();
    let a_outcome = within(5, "pull a", a).await.unwrap();
    assert!(matches!(a_outcome, Err(Error::Cancelled)), "{a_outcome:?}");
    let b_ids = within(10, "pull b", b)
        .await
        .unwrap()
        .expect("the other pull completes");
    assert_eq!(diff_id_strings(&b_ids), [ID1, ID2]);
}

/// Docker reads an image's diffIDs from its top layer's parents. A pull
/// that joins another pull's transfer for layer 2, while holding its own
/// fresh transfer for layer 1 (the other pull's layer 1 had finished, its
/// diffID unknown to the descriptor), must not depend on that fresh
/// transfer: here it never finishes, and the pull still succeeds with the
/// chain it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_joining_another_pulls_top_layer_reads_the_diff_ids_of_that_chain() {
    let store = MockLayerStore::new();
    let manager = DownloadManager::new(Arc::clone(&store)).with_retry_policy(fast_retries());
    let release_b = CancellationToken::new();
    let first = vec![
        Arc::new(MockDownload::new("la")),
        Arc::new(MockDownload::new("lb").gated(&release_b)),
    ];
    let first_output = RecordingOutput::new();
    let first_pull = {
        let manager = manager.clone();
        let first = first.clone();
        let output = output(&first_output);
        tokio::spawn(async move {
            manager
                .download(&CancellationToken::new(), &first, output)
                .await
        })
    };
    // The first pull's bottom layer is registered and its transfer gone;
    // its top layer is still downloading.
    within(10, "the first pull's bottom layer", async {
        while !first_output
            .records_for("la")
            .iter()
            .any(|p| stage(p) == "Pull complete")
            || manager.transfers().in_flight() != 1
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    let never = CancellationToken::new();
    let second = vec![
        Arc::new(MockDownload::new("la").gated(&never)),
        Arc::new(MockDownload::new("lb")),
    ];
    let second_output = RecordingOutput::new();
    let second_pull = {
        let manager = manager.clone();
        let second = second.clone();
        let output = output(&second_output);
        tokio::spawn(async move {
            manager
                .download(&CancellationToken::new(), &second, output)
                .await
        })
    };
    within(10, "the second pull's own bottom layer starts", async {
        while second[0].attempts.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    release_b.cancel();

    let expected = [
        common::sha256_digest(&MockDownload::new("la").content()),
        common::sha256_digest(&MockDownload::new("lb").content()),
    ];
    let (diff_ids, release) = within(10, "first pull", first_pull)
        .await
        .unwrap()
        .expect("the first pull succeeds");
    release.release().await;
    assert_eq!(diff_id_strings(&diff_ids), expected);
    let (diff_ids, release) = within(10, "second pull", second_pull)
        .await
        .unwrap()
        .expect("the second pull succeeds on the chain it joined");
    release.release().await;
    assert_eq!(diff_id_strings(&diff_ids), expected);
    assert_eq!(
        second[1].attempts.load(Ordering::SeqCst),
        0,
        "the second pull joined the first pull's top layer"
    );
}
