//! The transfer manager: Docker's `transfer_test.go` scenarios, plus slot
//! order, run-time limits, restarts after cancellation, and slow watchers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{downloading, stage, within, Gauge, RecordingOutput};
use haul_xfer::{
    ChannelOutput, Error, Progress, ProgressOutput, Status, TransferContext, TransferManager,
    Watcher,
};
use tokio_util::sync::CancellationToken;

fn output(recording: &Arc<RecordingOutput>) -> Arc<dyn ProgressOutput> {
    Arc::clone(recording) as Arc<dyn ProgressOutput>
}

/// Docker's "ticker" job: 0..=10 under action "testing", 10 ms apart.
async fn tick_to_ten(ctx: &TransferContext, id: &str) {
    for i in 0..=10 {
        ctx.progress().write(downloading(id, i, 10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks each id's `current` values strictly increase and end at 10.
fn assert_strictly_increasing_to_ten(recording: &RecordingOutput, ids: &[String]) {
    for id in ids {
        let currents: Vec<u64> = recording
            .records_for(id)
            .iter()
            .map(|p| {
                p.counts()
                    .map(|b| b.current)
                    .expect("ticker records carry counts")
            })
            .collect();
        assert!(
            currents.windows(2).all(|w| w[0] < w[1]),
            "{id}: progress went backwards or repeated: {currents:?}"
        );
        assert_eq!(
            currents.last(),
            Some(&10),
            "{id}: last progress should be 10: {currents:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_report_strictly_increasing_progress_ending_at_the_final_value() {
    let manager = TransferManager::<()>::new(5);
    let recording = RecordingOutput::new();
    let ids: Vec<String> = (1..=3).map(|i| format!("id{i}")).collect();

    let mut watchers = Vec::new();
    for id in &ids {
        let (key, id) = (id.clone(), id.clone());
        let work = move |ctx: TransferContext| {
            assert!(
                ctx.has_slot(),
                "a slot was free, so it must be granted before the work starts"
            );
            async move {
                tick_to_ten(&ctx, &id).await;
                Ok(())
            }
        };
        watchers.push(manager.transfer(key, work, output(&recording)).await);
    }
    for watcher in watchers {
        within(5, "transfer done", watcher.transfer().done()).await;
        watcher.release().await;
    }
    recording.close();

    assert_strictly_increasing_to_ten(&recording, &ids);
    assert_eq!(recording.late_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_the_limit_run_at_once_and_the_limit_is_reached() {
    let manager = TransferManager::<()>::new(3);
    let recording = RecordingOutput::new();
    let gauge = Gauge::new();
    let ids: Vec<String> = (1..=8).map(|i| format!("id{i}")).collect();

    let mut watchers = Vec::new();
    for id in &ids {
        let (key, id, gauge) = (id.clone(), id.clone(), Arc::clone(&gauge));
        let work = move |ctx: TransferContext| async move {
            ctx.acquire_slot().await?;
            let (_running, now) = gauge.enter();
            assert!(now <= 3, "{now} transfers running with a limit of 3");
            tick_to_ten(&ctx, &id).await;
            Ok(())
        };
        watchers.push(manager.transfer(key, work, output(&recording)).await);
    }
    for watcher in watchers {
        within(5, "transfer done", watcher.transfer().done()).await;
        assert!(watcher.transfer().result().unwrap().is_ok());
        watcher.release().await;
    }
    recording.close();

    assert_eq!(gauge.max_seen(), 3, "the limit should be used fully");
    assert_strictly_increasing_to_ten(&recording, &ids);
    assert_eq!(manager.slot_usage(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_goes_inactive_gives_its_slot_to_the_next_one() {
    let manager = TransferManager::<()>::new(3);
    let recording = RecordingOutput::new();
    let gauge = Gauge::new();
    let test_done = CancellationToken::new();
    let ids: Vec<String> = (1..=8).map(|i| format!("id{i}")).collect();

    let mut watchers = Vec::new();
    for id in &ids {
        let (key, id) = (id.clone(), id.clone());
        let (gauge, test_done) = (Arc::clone(&gauge), test_done.clone());
        let work = move |ctx: TransferContext| async move {
            ctx.acquire_slot().await?;
            {
                let (_running, now) = gauge.enter();
                assert!(now <= 3, "{now} transfers running with a limit of 3");
                tick_to_ten(&ctx, &id).await;
            }
            ctx.release_slot();
            // Hold on after giving the slot back: the other five can only
            // finish if the slots really were handed on.
            test_done.cancelled().await;
            Ok(())
        };
        watchers.push(manager.transfer(key, work, output(&recording)).await);
    }
    // Every transfer has gone inactive before any is done.
    within(10, "all eight transfers ticked to 10", async {
        while recording
            .last_by_id()
            .values()
            .filter(|p| p.counts().map(|b| b.current) == Some(10))
            .count()
            < 8
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(watchers.iter().all(|w| !w.transfer().is_done()));
    test_done.cancel();
    for watcher in watchers {
        within(5, "transfer done", watcher.transfer().done()).await;
        assert!(watcher.transfer().result().unwrap().is_ok());
        watcher.release().await;
    }
    recording.close();

    assert_eq!(gauge.max_seen(), 3);
    assert_strictly_increasing_to_ten(&recording, &ids);
    assert_eq!(
        manager.slot_usage(),
        (0, 0),
        "a slot given back early must not be given back twice"
    );
}

/// Docker's job for the watch tests: waits for `ready`, then counts up every
/// 10 ms until its transfer is cancelled.
async fn count_until_cancelled(
    ctx: TransferContext,
    ready: CancellationToken,
) -> Result<(), Error> {
    ready.cancelled().await;
    let mut i = 0;
    loop {
        tokio::select! {
            _ = ctx.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                ctx.progress().write(downloading("id1", i, 0));
                i += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_every_watcher_cancels_and_releases_the_transfer() {
    let manager = TransferManager::<()>::new(5);
    let ready = CancellationToken::new();
    let outputs: Vec<_> = (0..5).map(|_| RecordingOutput::new()).collect();

    let job_ready = ready.clone();
    let first = manager
        .transfer(
            "id1",
            move |ctx| count_until_cancelled(ctx, job_ready),
            output(&outputs[0]),
        )
        .await;
    let transfer = first.transfer().clone();
    let mut watchers = vec![first];
    for recording in &outputs[1..] {
        watchers.push(transfer.watch(output(recording)));
    }
    ready.cancel();
    for recording in &outputs {
        within(
            5,
            "every watcher gets a record",
            recording.wait_for_records(1),
        )
        .await;
    }

    for (watcher, recording) in watchers.into_iter().zip(&outputs) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        watcher.release().await;
        recording.close();
    }
    within(
        5,
        "released after the last watcher left",
        transfer.released(),
    )
    .await;
    assert!(transfer.is_done());
    assert!(transfer.is_cancelled());
    tokio::time::sleep(Duration::from_millis(30)).await;
    for (i, recording) in outputs.iter().enumerate() {
        assert_eq!(
            recording.late_writes(),
            0,
            "watcher {i} wrote after its release"
        );
    }
    assert_eq!(manager.in_flight(), 0);
}

#[tokio::test]
async fn watching_a_finished_transfer_and_releasing_everything_releases_it_once() {
    let manager = TransferManager::<()>::new(5);
    let (unread0, _rx0) = ChannelOutput::new();
    let (unread1, _rx1) = ChannelOutput::new();
    let late = RecordingOutput::new();

    let w0 = manager
        .transfer("id1", |_ctx| async { Ok(()) }, Arc::new(unread0))
        .await;
    let transfer = w0.transfer().clone();
    let w1 = transfer.watch(Arc::new(unread1));
    within(5, "done", transfer.done()).await;
    let w2 = transfer.watch(output(&late));
    assert_eq!(transfer.watcher_count(), 3);

    w0.release().await;
    w1.release().await;
    assert!(!transfer.is_released(), "watcher 2 is still attached");
    w2.release().await;
    within(5, "released", transfer.released()).await;
    assert!(
        !transfer.is_cancelled(),
        "a transfer done before its watchers left is not cancelled"
    );
    assert!(
        late.records().is_empty(),
        "a watcher attached after the end receives nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_requested_five_times_runs_its_work_once() {
    let manager = TransferManager::<()>::new(5);
    let ready = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let outputs: Vec<_> = (0..5).map(|_| RecordingOutput::new()).collect();

    let mut watchers: Vec<Watcher<()>> = Vec::new();
    for recording in &outputs {
        let (ready, calls) = (ready.clone(), Arc::clone(&calls));
        let work = move |ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            count_until_cancelled(ctx, ready)
        };
        watchers.push(manager.transfer("id1", work, output(recording)).await);
    }
    ready.cancel();
    for recording in &outputs {
        within(
            5,
            "every watcher gets a record",
            recording.wait_for_records(1),
        )
        .await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the work must run exactly once"
    );

    let transfers: Vec<_> = watchers.iter().map(|w| w.transfer().clone()).collect();
    assert!(transfers.windows(2).all(|w| w[0].key() == w[1].key()));
    for (watcher, recording) in watchers.into_iter().zip(&outputs) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        watcher.release().await;
        recording.close();
    }
    for transfer in &transfers {
        within(5, "released", transfer.released()).await;
        within(5, "done", transfer.done()).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(outputs.iter().all(|o| o.late_writes() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_watcher_first_sees_the_latest_record() {
    let manager = TransferManager::<()>::new(1);
    let step = Arc::new(tokio::sync::Notify::new());
    let first = RecordingOutput::new();
    let job_step = Arc::clone(&step);
    let watcher = manager
        .transfer(
            "k",
            move |ctx: TransferContext| async move {
                for i in 0..3 {
                    ctx.progress().write(downloading("k", i, 3));
                }
                job_step.notified().await;
                ctx.progress().status("k", Status::DownloadComplete);
                Ok(())
            },
            output(&first),
        )
        .await;
    within(5, "first watcher sees the last of three records", async {
        while first
            .records()
            .last()
            .and_then(|p| p.counts().map(|b| b.current))
            != Some(2)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;

    let late = RecordingOutput::new();
    let second = watcher.transfer().watch(output(&late));
    within(5, "replay", late.wait_for_records(1)).await;
    assert_eq!(late.records()[0], downloading("k", 2, 3));
    step.notify_one();
    within(5, "done", second.delivered()).await;
    assert_eq!(stage(late.records().last().unwrap()), "Download complete");
    second.release().await;
    watcher.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_transfers_get_their_slots_in_request_order() {
    let manager = TransferManager::<()>::new(1);
    let gate = CancellationToken::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let outputs: Vec<_> = (0..6).map(|_| RecordingOutput::new()).collect();

    let mut watchers = Vec::new();
    for (i, recording) in outputs.iter().enumerate() {
        let (gate, order) = (gate.clone(), Arc::clone(&order));
        let work = move |ctx: TransferContext| async move {
            if !ctx.has_slot() {
                ctx.progress().status(&format!("k{i}"), Status::Waiting);
            }
            ctx.acquire_slot().await?;
            order.lock().unwrap().push(i);
            gate.cancelled().await;
            Ok(())
        };
        watchers.push(
            manager
                .transfer(format!("k{i}"), work, output(recording))
                .await,
        );
    }
    assert_eq!(manager.slot_usage(), (1, 5));
    for recording in &outputs[1..] {
        within(
            5,
            "queued transfers report Waiting",
            recording.wait_for_records(1),
        )
        .await;
        assert_eq!(stage(&recording.records()[0]), "Waiting");
    }
    gate.cancel();
    for watcher in watchers {
        within(5, "done", watcher.transfer().done()).await;
        watcher.release().await;
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_runs_everything_at_once() {
    let manager = TransferManager::<()>::new(0);
    let all_here = Arc::new(tokio::sync::Barrier::new(20));
    let mut watchers = Vec::new();
    for i in 0..20 {
        let all_here = Arc::clone(&all_here);
        let work = move |ctx: TransferContext| async move {
            assert!(ctx.has_slot());
            // Only returns once all twenty run at the same time.
            all_here.wait().await;
            Ok(())
        };
        watchers.push(
            manager
                .transfer(format!("k{i}"), work, Arc::new(haul_xfer::DiscardOutput))
                .await,
        );
    }
    for watcher in watchers {
        within(5, "all twenty ran together", watcher.transfer().done()).await;
        watcher.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_limit_at_run_time_starts_queued_transfers() {
    let manager = TransferManager::<()>::new(1);
    let gate = CancellationToken::new();
    let gauge = Gauge::new();
    let mut watchers = Vec::new();
    for i in 0..5 {
        let (gate, gauge) = (gate.clone(), Arc::clone(&gauge));
        let work = move |ctx: TransferContext| async move {
            ctx.acquire_slot().await?;
            let _running = gauge.enter();
            gate.cancelled().await;
            Ok(())
        };
        watchers.push(
            manager
                .transfer(format!("k{i}"), work, Arc::new(haul_xfer::DiscardOutput))
                .await,
        );
    }
    within(5, "one running", async {
        while gauge.running() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(manager.slot_usage(), (1, 4));

    manager.set_concurrency(3);
    assert_eq!(manager.concurrency(), 3);
    assert_eq!(manager.slot_usage(), (3, 2));
    within(5, "three running after the raise", async {
        while gauge.running() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    gate.cancel();
    for watcher in watchers {
        within(5, "done", watcher.transfer().done()).await;
        watcher.release().await;
    }
    assert_eq!(gauge.max_seen(), 3);
    assert_eq!(manager.slot_usage(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_key_being_cancelled_waits_for_it_and_starts_afresh() {
    let manager = TransferManager::<&'static str>::new(3);
    let let_old_finish = CancellationToken::new();
    let old_running = Arc::new(AtomicUsize::new(0));

    let (finish, running) = (let_old_finish.clone(), Arc::clone(&old_running));
    let old = manager
        .transfer(
            "k",
            move |ctx: TransferContext| async move {
                running.fetch_add(1, Ordering::SeqCst);
                ctx.cancelled().await;
                // A slow shutdown: still running after its cancellation.
                finish.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok("old")
            },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    let old_transfer = old.transfer().clone();
    old.release().await;
    assert!(old_transfer.is_cancelled());
    assert!(!old_transfer.is_done());

    let new_calls = Arc::new(AtomicUsize::new(0));
    let request = {
        let (manager, calls, running) = (
            manager.clone(),
            Arc::clone(&new_calls),
            Arc::clone(&old_running),
        );
        tokio::spawn(async move {
            let work = move |_ctx: TransferContext| {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    running.load(Ordering::SeqCst),
                    0,
                    "new work started while the old ran"
                );
                async { Ok("new") }
            };
            manager
                .transfer("k", work, Arc::new(haul_xfer::DiscardOutput))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !request.is_finished(),
        "the request must wait for the cancelled transfer"
    );
    assert_eq!(new_calls.load(Ordering::SeqCst), 0);

    let_old_finish.cancel();
    let new = within(5, "the request starts afresh", request)
        .await
        .unwrap();
    assert_eq!(new_calls.load(Ordering::SeqCst), 1);
    assert!(old_transfer.is_done());
    assert!(!new.transfer().is_cancelled());
    assert_eq!(
        within(5, "new done", new.transfer().wait()).await.unwrap(),
        "new"
    );
    new.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_transfer_leaves_the_queue_without_taking_a_slot() {
    let manager = TransferManager::<()>::new(1);
    let gate = CancellationToken::new();
    let job_gate = gate.clone();
    let holder = manager
        .transfer(
            "holder",
            move |ctx: TransferContext| async move {
                ctx.acquire_slot().await?;
                job_gate.cancelled().await;
                Ok(())
            },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    let queued = manager
        .transfer(
            "queued",
            |ctx: TransferContext| async move {
                ctx.acquire_slot().await?;
                unreachable!("a cancelled queued transfer never gets a slot");
            },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    assert_eq!(manager.slot_usage(), (1, 1));
    let queued_transfer = queued.transfer().clone();
    queued.release().await;
    let outcome = within(5, "cancelled while queued", queued_transfer.wait()).await;
    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    assert_eq!(manager.slot_usage(), (1, 0));

    let next = manager
        .transfer(
            "next",
            |ctx: TransferContext| async move { ctx.acquire_slot().await },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    gate.cancel();
    within(5, "the next transfer gets the slot", next.transfer().wait())
        .await
        .unwrap();
    next.release().await;
    holder.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_needs_no_watcher_and_release_after_completion_does_not_cancel() {
    let manager = TransferManager::<u32>::new(1);
    let watcher = manager
        .transfer(
            "k",
            |_ctx| async { Ok(7) },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    let transfer = watcher.transfer().clone();
    assert_eq!(within(5, "done", transfer.wait()).await.unwrap(), 7);
    watcher.release().await;
    within(5, "released", transfer.released()).await;
    assert!(!transfer.is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_watcher_cancels_the_transfer_and_silences_it_at_once() {
    let manager = TransferManager::<()>::new(1);
    let recording = RecordingOutput::new();
    let ready = CancellationToken::new();
    let job_ready = ready.clone();
    let watcher = manager
        .transfer(
            "id1",
            move |ctx| count_until_cancelled(ctx, job_ready),
            output(&recording),
        )
        .await;
    ready.cancel();
    within(5, "first record", recording.wait_for_records(1)).await;
    let transfer = watcher.transfer().clone();
    drop(watcher);
    recording.close();
    within(5, "released after drop", transfer.released()).await;
    assert!(transfer.is_cancelled());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(recording.late_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_work_ends_its_transfer_with_aborted_and_frees_its_slot() {
    let manager = TransferManager::<()>::new(1);
    let watcher = manager
        .transfer(
            "boom",
            |_ctx: TransferContext| async { panic!("work panicked (expected by this test)") },
            Arc::new(haul_xfer::DiscardOutput),
        )
        .await;
    let outcome = within(5, "done", watcher.transfer().wait()).await;
    assert!(matches!(outcome, Err(Error::Aborted)), "{outcome:?}");
    assert_eq!(manager.slot_usage(), (0, 0));
    assert_eq!(manager.in_flight(), 0);
    watcher.release().await;
}

/// An output that takes `delay` to take each record (a terminal that
/// renders slowly). Outputs must not block for long; this one only dawdles.
struct SlowOutput {
    delay: Duration,
    written: Mutex<Vec<Progress>>,
}

impl ProgressOutput for SlowOutput {
    fn write(&self, progress: Progress) {
        std::thread::sleep(self.delay);
        self.written.lock().unwrap().push(progress);
    }
}

const RECORDS: u64 = 200;

/// Writes `RECORDS` "Downloading" records about 1 ms apart once `start` fires.
async fn download_quickly(ctx: TransferContext, start: CancellationToken) -> Result<(), Error> {
    start.cancelled().await;
    for i in 0..RECORDS {
        ctx.progress().write(downloading("k", i, RECORDS));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn final_record() -> Progress {
    downloading("k", RECORDS - 1, RECORDS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_skips_to_the_latest_record_and_does_not_slow_the_transfer() {
    let manager = TransferManager::<()>::new(1);
    let fast = RecordingOutput::new();
    // Queueing every record would take RECORDS * 25 ms = 5 s.
    let slow = Arc::new(SlowOutput {
        delay: Duration::from_millis(25),
        written: Mutex::new(Vec::new()),
    });
    let start = CancellationToken::new();

    let job_start = start.clone();
    let watcher = manager
        .transfer(
            "k",
            move |ctx| download_quickly(ctx, job_start),
            output(&fast),
        )
        .await;
    let transfer = watcher.transfer().clone();
    let slow_watcher = transfer.watch(Arc::clone(&slow) as Arc<dyn ProgressOutput>);

    let started = Instant::now();
    start.cancel();
    within(10, "transfer done", transfer.done()).await;
    let elapsed = started.elapsed();
    within(5, "slow watcher delivered", slow_watcher.delivered()).await;
    slow_watcher.release().await;
    watcher.release().await;

    assert!(
        elapsed < Duration::from_millis(2500),
        "the slow watcher held the transfer up: {elapsed:?}"
    );
    let slow_saw: Vec<u64> = slow
        .written
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.counts().map(|b| b.current).unwrap())
        .collect();
    assert_eq!(
        slow_saw.last(),
        Some(&(RECORDS - 1)),
        "the slow watcher gets the final record"
    );
    assert!(
        slow_saw.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {slow_saw:?}"
    );
    assert!(
        slow_saw.len() < RECORDS as usize / 2,
        "a slow watcher gets the latest record, not a backlog: {} of {RECORDS}",
        slow_saw.len()
    );
    assert_eq!(fast.records().last(), Some(&final_record()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_whose_reader_never_reads_does_not_slow_the_transfer() {
    let manager = TransferManager::<()>::new(1);
    let (never_read, mut unread) = ChannelOutput::new();
    let start = CancellationToken::new();
    let job_start = start.clone();
    let watcher = manager
        .transfer(
            "k",
            move |ctx| download_quickly(ctx, job_start),
            Arc::new(never_read),
        )
        .await;
    let started = Instant::now();
    start.cancel();
    within(10, "transfer done", watcher.transfer().done()).await;
    let elapsed = started.elapsed();
    watcher.release().await;
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");

    let mut last = None;
    while let Ok(record) = unread.try_recv() {
        last = Some(record);
    }
    assert_eq!(
        last,
        Some(final_record()),
        "the final record is waiting for the reader"
    );
}

/// Records like [`RecordingOutput`], but takes `delay` per record and says
/// when a write has begun.
struct DawdlingOutput {
    delay: Duration,
    began: tokio::sync::Notify,
    recording: Arc<RecordingOutput>,
}

impl ProgressOutput for DawdlingOutput {
    fn write(&self, progress: Progress) {
        self.began.notify_one();
        std::thread::sleep(self.delay);
        self.recording.write(progress);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_waits_until_the_watcher_has_written_its_last_record() {
    let manager = TransferManager::<()>::new(1);
    let recording = RecordingOutput::new();
    let dawdling = Arc::new(DawdlingOutput {
        delay: Duration::from_millis(50),
        began: tokio::sync::Notify::new(),
        recording: Arc::clone(&recording),
    });
    let second_step = CancellationToken::new();
    let second_written = CancellationToken::new();

    let (step, written) = (second_step.clone(), second_written.clone());
    let watcher = manager
        .transfer(
            "k",
            move |ctx: TransferContext| async move {
                ctx.progress().write(downloading("k", 1, 2));
                step.cancelled().await;
                ctx.progress().write(downloading("k", 2, 2));
                written.cancel();
                ctx.cancelled().await;
                Err(Error::Cancelled)
            },
            Arc::clone(&dawdling) as Arc<dyn ProgressOutput>,
        )
        .await;
    // The watcher is busy writing record 1 when record 2 arrives and the
    // watcher is released.
    within(5, "record 1 being written", dawdling.began.notified()).await;
    second_step.cancel();
    second_written.cancelled().await;
    watcher.release().await;
    recording.close();

    let currents: Vec<_> = recording
        .records()
        .iter()
        .map(|p| p.counts().map(|b| b.current))
        .collect();
    assert_eq!(
        currents,
        [Some(1), Some(2)],
        "release flushes the latest record before returning"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        recording.late_writes(),
        0,
        "nothing is written after release returns"
    );
}
