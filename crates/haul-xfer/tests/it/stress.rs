//! A randomized stress test of the transfer manager: hundreds of requests
//! over a few keys, watchers joining and leaving at random, random failures
//! and cancellations. The plan comes from a seeded RNG (set
//! `HAUL_XFER_STRESS_SEED` to replay another); timing is left to the
//! scheduler.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{downloading, stage, within, Gauge, RecordingOutput};
use haul_xfer::{Error, ProgressOutput, Status, TransferContext, TransferManager, Watcher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REQUESTS: usize = 400;
const KEYS: usize = 5;
const LIMIT: usize = 3;

/// What one request does, drawn up front from the seeded RNG.
#[derive(Debug, Clone)]
struct Plan {
    key: usize,
    start_after: Duration,
    /// How the request leaves its watcher.
    leave: Leave,
    /// Extra watchers attached with `watch()`, each leaving after a delay.
    extra_watchers: Vec<Duration>,
    /// If this request's work runs: how many progress steps, how long each.
    steps: u32,
    step: Duration,
    fails: bool,
}

#[derive(Debug, Clone)]
enum Leave {
    /// Stays until the transfer is done, then releases.
    AtTheEnd,
    /// Releases after a while, done or not (may cancel the transfer).
    ReleaseAfter(Duration),
    /// Drops the watcher after a while instead of releasing it.
    DropAfter(Duration),
}

fn plan(rng: &mut StdRng) -> Plan {
    let leave = match rng.gen_range(0..3) {
        0 => Leave::AtTheEnd,
        1 => Leave::ReleaseAfter(Duration::from_micros(rng.gen_range(0..8000))),
        _ => Leave::DropAfter(Duration::from_micros(rng.gen_range(0..8000))),
    };
    let extra_watchers = (0..rng.gen_range(0..3))
        .map(|_| Duration::from_micros(rng.gen_range(0..8000)))
        .collect();
    Plan {
        key: rng.gen_range(0..KEYS),
        start_after: Duration::from_micros(rng.gen_range(0..300_000)),
        leave,
        extra_watchers,
        steps: rng.gen_range(0..6),
        step: Duration::from_micros(rng.gen_range(0..3000)),
        fails: rng.gen_bool(0.2),
    }
}

/// What the test counts while the requests run.
#[derive(Default)]
struct Observations {
    running_per_key: [AtomicUsize; KEYS],
    overlapping_work: AtomicUsize,
    works_started: AtomicUsize,
    works_ended: AtomicUsize,
    works_cancelled: AtomicUsize,
    works_failed: AtomicUsize,
    slot_holders: Gauge,
    outputs: Mutex<Vec<Arc<RecordingOutput>>>,
}

/// The work of a transfer: wait for a slot, write `plan.steps` records,
/// then a final "Pull complete" (finished) or "Retrying in 1 second"
/// (failed) record.
async fn work(ctx: TransferContext, plan: Plan, seen: Arc<Observations>) -> Result<u64, Error> {
    let key = plan.key;
    let id = format!("k{key}");
    let result = async {
        if !ctx.has_slot() {
            ctx.progress().status(&id, Status::Waiting);
        }
        ctx.acquire_slot().await?;
        let (_slot, _) = seen.slot_holders.enter();
        for i in 0..plan.steps {
            tokio::select! {
                _ = ctx.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(plan.step) => {
                    ctx.progress().write(downloading(&id, u64::from(i), u64::from(plan.steps)));
                }
            }
        }
        if plan.fails {
            ctx.progress().status(&id, Status::Retrying { seconds: 1 });
            Err(Error::failed("random failure"))
        } else {
            ctx.progress().status(&id, Status::PullComplete);
            Ok(key as u64)
        }
    }
    .await;
    match &result {
        Err(Error::Cancelled) => seen.works_cancelled.fetch_add(1, Ordering::SeqCst),
        Err(_) => seen.works_failed.fetch_add(1, Ordering::SeqCst),
        Ok(_) => 0,
    };
    seen.running_per_key[key].fetch_sub(1, Ordering::SeqCst);
    seen.works_ended.fetch_add(1, Ordering::SeqCst);
    result
}

async fn leave_after(
    watcher: Watcher<u64>,
    output: &RecordingOutput,
    delay: Duration,
    drop_it: bool,
) {
    tokio::time::sleep(delay).await;
    if drop_it {
        drop(watcher);
    } else {
        watcher.release().await;
    }
    output.close();
}

async fn request(manager: TransferManager<u64>, plan: Plan, seen: Arc<Observations>) {
    tokio::time::sleep(plan.start_after).await;
    let output = RecordingOutput::new();
    seen.outputs.lock().unwrap().push(Arc::clone(&output));

    let work_plan = plan.clone();
    let work_seen = Arc::clone(&seen);
    let start = move |ctx| {
        work_seen.works_started.fetch_add(1, Ordering::SeqCst);
        if work_seen.running_per_key[work_plan.key].fetch_add(1, Ordering::SeqCst) != 0 {
            work_seen.overlapping_work.fetch_add(1, Ordering::SeqCst);
        }
        work(ctx, work_plan, work_seen)
    };
    let watcher = manager
        .transfer(
            format!("k{}", plan.key),
            start,
            Arc::clone(&output) as Arc<dyn ProgressOutput>,
        )
        .await;
    let transfer = watcher.transfer().clone();

    let extras = plan.extra_watchers.iter().map(|delay| {
        let extra_output = RecordingOutput::new();
        seen.outputs.lock().unwrap().push(Arc::clone(&extra_output));
        let extra = transfer.watch(Arc::clone(&extra_output) as Arc<dyn ProgressOutput>);
        async move { leave_after(extra, &extra_output, *delay, false).await }
    });
    let extras = futures::future::join_all(extras.collect::<Vec<_>>());

    let mine = async {
        match plan.leave {
            Leave::AtTheEnd => {
                let outcome = transfer.wait().await;
                assert!(
                    !matches!(outcome, Err(Error::Cancelled)),
                    "a transfer was cancelled while watched to the end"
                );
                watcher.release().await;
                output.close();
                let last = output
                    .records()
                    .pop()
                    .expect("a watcher kept to the end gets the final record");
                assert!(
                    stage(&last) == "Pull complete" || stage(&last) == "Retrying in 1 second",
                    "last record {last:?} is not the final one"
                );
            }
            Leave::ReleaseAfter(delay) => leave_after(watcher, &output, delay, false).await,
            Leave::DropAfter(delay) => leave_after(watcher, &output, delay, true).await,
        }
    };
    futures::future::join(mine, extras).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_keep_every_guarantee() {
    let seed = std::env::var("HAUL_XFER_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6861_756c);
    let mut rng = StdRng::seed_from_u64(seed);
    let plans: Vec<Plan> = (0..REQUESTS).map(|_| plan(&mut rng)).collect();
    let manager = TransferManager::<u64>::new(LIMIT);
    let seen = Arc::new(Observations::default());

    let requests: Vec<_> = plans
        .into_iter()
        .map(|plan| tokio::spawn(request(manager.clone(), plan, Arc::clone(&seen))))
        .collect();
    within(60, &format!("every request ends (seed {seed})"), async {
        for request in requests {
            request.await.expect("request task panicked");
        }
    })
    .await;
    within(10, &format!("every transfer ends (seed {seed})"), async {
        while manager.in_flight() > 0
            || seen.works_ended.load(Ordering::SeqCst) < seen.works_started.load(Ordering::SeqCst)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // Late writes would land now.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let started = seen.works_started.load(Ordering::SeqCst);
    assert!(started >= KEYS, "seed {seed}: only {started} transfers ran");
    assert!(
        started < REQUESTS,
        "seed {seed}: no request was deduplicated"
    );
    let cancelled = seen.works_cancelled.load(Ordering::SeqCst);
    let failed = seen.works_failed.load(Ordering::SeqCst);
    eprintln!("seed {seed}: {started} transfers for {REQUESTS} requests, {cancelled} cancelled, {failed} failed");
    assert!(
        cancelled > 0 && failed > 0,
        "seed {seed}: {cancelled} cancelled, {failed} failed: not random enough"
    );
    assert_eq!(
        seen.overlapping_work.load(Ordering::SeqCst),
        0,
        "seed {seed}: one key's work ran twice at once"
    );
    assert!(
        seen.slot_holders.max_seen() <= LIMIT,
        "seed {seed}: {} held a slot at once",
        seen.slot_holders.max_seen()
    );
    assert_eq!(
        seen.slot_holders.max_seen(),
        LIMIT,
        "seed {seed}: the limit was never reached"
    );
    assert_eq!(manager.slot_usage(), (0, 0), "seed {seed}: slots leaked");
    let late: usize = seen
        .outputs
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.late_writes())
        .sum();
    assert_eq!(late, 0, "seed {seed}: records written after release");
}
