//! The upload manager: Docker's `upload_test.go` scenarios, plus error
//! order, exhausted retries, and pushes sharing an upload.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{fast_retries, stage, within, Gauge, MockUpload, RecordingOutput};
use haul_xfer::{Error, ProgressOutput, UploadManager};
use tokio_util::sync::CancellationToken;

const CBBF: &str = "sha256:cbbf2f9a99b47fc460d422812b6a5adff7dfee951d8fa2e4a98caa0382cfbdbf";
const L1515: &str = "sha256:1515325234325236634634608943609283523908626098235490238423902343";
const L6929: &str = "sha256:6929356290463485374960346430698374523437683470934634534953453453";
const L8159: &str = "sha256:8159352387436803946235346346368745389534789534897538734598734987";
const L4637: &str = "sha256:4637863963478346897346987346987346789346789364879364897364987346";

/// Docker's era expectations: each digest is the SHA-256 of the diffID text.
fn expected_digest(diff_id: &str) -> &'static str {
    match diff_id {
        CBBF => "sha256:c5095d6cf7ee42b7b064371dcc1dc3fb4af197f04d01a60009d484bd432724fc",
        L1515 => "sha256:968cbfe2ff5269ea1729b3804767a1f57ffbc442d3bc86f47edbf7e688a4f36e",
        L6929 => "sha256:8a5e56ab4b477a400470a7d5d4c1ca0c91235fd723ab19cc862636a06f3a735d",
        L8159 => "sha256:5e733e5cd3688512fc240bd5c178e72671c9915947d17bb8451750d827944cb2",
        L4637 => "sha256:ec4bb98d15e554a9f66c3ef9296cf46772c0ded3b1592bd8324d96e2f60f460c",
        other => panic!("unexpected diffID {other}"),
    }
}

/// Docker's six upload descriptors: the fourth repeats the first, the fifth
/// fails once.
fn six_descriptors(gauge: Option<&Arc<Gauge>>) -> Vec<Arc<MockUpload>> {
    let make = |diff_id: &str| {
        let descriptor = MockUpload::new(diff_id);
        match gauge {
            Some(gauge) => descriptor.with_gauge(gauge),
            None => descriptor,
        }
    };
    vec![
        Arc::new(make(CBBF)),
        Arc::new(make(L1515)),
        Arc::new(make(L6929)),
        Arc::new(make(CBBF)),
        Arc::new(make(L8159).with_retries(1)),
        Arc::new(make(L4637)),
    ]
}

fn output(recording: &Arc<RecordingOutput>) -> Arc<dyn ProgressOutput> {
    Arc::clone(recording) as Arc<dyn ProgressOutput>
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_upload_tells_every_descriptor_its_remote_descriptor() {
    let manager = UploadManager::new()
        .with_concurrency(3)
        .with_retry_policy(fast_retries());
    let gauge = Gauge::new();
    let descriptors = six_descriptors(Some(&gauge));
    let recording = RecordingOutput::new();

    let remotes = within(
        10,
        "upload",
        manager.upload(&CancellationToken::new(), &descriptors, output(&recording)),
    )
    .await
    .expect("upload succeeds");
    recording.close();

    for (i, descriptor) in descriptors.iter().enumerate() {
        let remote = descriptor
            .remote()
            .unwrap_or_else(|| panic!("descriptor {i} has no remote descriptor"));
        assert_eq!(
            remote.digest,
            expected_digest(&descriptor.diff_id),
            "descriptor {i}"
        );
        assert_eq!(remote, remotes[i]);
        assert_eq!(descriptor.remote_calls.load(Ordering::SeqCst), 1);
    }
    assert_eq!(
        descriptors[3].attempts.load(Ordering::SeqCst),
        0,
        "the duplicate is not uploaded"
    );
    assert_eq!(
        descriptors[4].attempts.load(Ordering::SeqCst),
        2,
        "the flaky layer is retried once"
    );

    let preparing = |id: &str| {
        recording
            .records_for(id)
            .iter()
            .filter(|p| stage(p) == "Preparing")
            .count()
    };
    assert_eq!(
        preparing(CBBF),
        2,
        "Preparing is written for the duplicate too"
    );
    assert!([L1515, L6929, L8159, L4637]
        .iter()
        .all(|id| preparing(id) == 1));
    let last = recording.last_by_id();
    for id in [CBBF, L1515, L6929, L8159, L4637] {
        assert_eq!(
            last[id].counts().map(|b| b.current),
            Some(10),
            "last progress of {id}"
        );
    }
    assert!(
        gauge.max_seen() <= 3,
        "{} uploads ran at once",
        gauge.max_seen()
    );
    assert_eq!(gauge.max_seen(), 3, "the limit of 3 should be reached");
    assert_eq!(recording.late_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_upload_returns_cancelled_and_writes_nothing_afterwards() {
    let manager = UploadManager::new().with_retry_policy(fast_retries());
    let descriptors = six_descriptors(None);
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
        "upload",
        manager.upload(&cancel, &descriptors, output(&recording)),
    )
    .await;
    recording.close();
    canceller.await.unwrap();

    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    assert!(descriptors.iter().all(|d| d.remote().is_none()));
    within(5, "the uploads end", async {
        while manager.transfers().in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(recording.late_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_error_in_input_order_is_returned() {
    let manager = UploadManager::new().with_retry_policy(fast_retries());
    let descriptors = vec![
        Arc::new(MockUpload::new("slow").failing("slow layer failed", Duration::from_millis(80))),
        Arc::new(MockUpload::new("fast").failing("fast layer failed", Duration::from_millis(1))),
    ];
    let err = within(
        5,
        "upload",
        manager.upload(
            &CancellationToken::new(),
            &descriptors,
            Arc::new(haul_xfer::DiscardOutput),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "slow layer failed");
}

/// With the clock paused every watcher sees every record, so the whole
/// countdown of the production policy (one-second ticks) can be checked.
#[tokio::test(start_paused = true)]
async fn an_upload_failing_every_attempt_gives_up_after_five_with_a_countdown_between() {
    let manager = UploadManager::new().with_concurrency(3);
    let started = tokio::time::Instant::now();
    let descriptors = vec![Arc::new(MockUpload::new("flaky").with_retries(100))];
    let recording = RecordingOutput::new();
    let err = within(
        120,
        "upload",
        manager.upload(&CancellationToken::new(), &descriptors, output(&recording)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "simulating retry");
    assert_eq!(descriptors[0].attempts.load(Ordering::SeqCst), 5);
    let countdown: Vec<u32> = recording
        .records_for("flaky")
        .iter()
        .filter_map(|p| stage(p).strip_prefix("Retrying in ").map(str::to_owned))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    // Each countdown starts where the count goes up, and runs down to 1.
    let starts: Vec<u32> = countdown
        .iter()
        .enumerate()
        .filter(|&(i, n)| i == 0 || countdown[i - 1] != n + 1)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        starts,
        [5, 10, 15, 20],
        "delays of 5·attempt ticks: {countdown:?}"
    );
    assert_eq!(
        countdown.len(),
        5 + 10 + 15 + 20,
        "one record per tick: {countdown:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5 + 10 + 15 + 20));
}

#[tokio::test(start_paused = true)]
async fn uploads_past_the_limit_report_waiting() {
    let manager = UploadManager::new().with_concurrency(3);
    let descriptors = six_descriptors(None);
    let recording = RecordingOutput::new();
    manager
        .upload(&CancellationToken::new(), &descriptors, output(&recording))
        .await
        .unwrap();
    let waited: Vec<&str> = [CBBF, L1515, L6929, L8159, L4637]
        .into_iter()
        .filter(|id| {
            recording
                .records_for(id)
                .iter()
                .any(|p| stage(p) == "Waiting")
        })
        .collect();
    assert_eq!(
        waited,
        [L8159, L4637],
        "the 4th and 5th distinct uploads wait for a slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_share_an_upload_and_both_learn_where_the_layer_is() {
    let manager = Arc::new(UploadManager::new().with_retry_policy(fast_retries()));
    let push = |_: ()| {
        let descriptors = vec![
            Arc::new(MockUpload::new(CBBF)),
            Arc::new(MockUpload::new(L1515)),
        ];
        let (manager, task_descriptors) = (Arc::clone(&manager), descriptors.clone());
        let task = tokio::spawn(async move {
            manager
                .upload(
                    &CancellationToken::new(),
                    &task_descriptors,
                    Arc::new(haul_xfer::DiscardOutput),
                )
                .await
        });
        (descriptors, task)
    };
    let (a, a_task) = push(());
    let (b, b_task) = push(());
    within(10, "push a", a_task).await.unwrap().unwrap();
    within(10, "push b", b_task).await.unwrap().unwrap();
    for i in 0..2 {
        let uploads = a[i].attempts.load(Ordering::SeqCst) + b[i].attempts.load(Ordering::SeqCst);
        assert_eq!(uploads, 1, "layer {i} uploaded {uploads} times");
        assert_eq!(a[i].remote(), b[i].remote());
        assert_eq!(
            a[i].remote().unwrap().digest,
            expected_digest(&a[i].diff_id)
        );
    }
}
