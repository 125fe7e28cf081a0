//! The transfer manager's own overhead: transfers per second with trivial
//! work, and progress records per second fanned out to many watchers.
//!
//! Run with `cargo bench -p haul-xfer`; each benchmark measures for about two
//! seconds.

// A program of its own: it prints its results.
// criterion_group! makes an undocumented public function.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use haul_xfer::{
    Counts, DiscardOutput, Progress, ProgressOutput, Status, TransferContext, TransferManager,
};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn discard() -> Arc<dyn ProgressOutput> {
    Arc::new(DiscardOutput)
}

async fn trivial(ctx: TransferContext) -> Result<u64, haul_xfer::Error> {
    ctx.acquire_slot().await?;
    Ok(1)
}

fn transfers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("transfers");
    group.throughput(Throughput::Elements(1));

    group.bench_function("one_at_a_time", |b| {
        let manager = TransferManager::<u64>::new(3);
        let mut key = 0u64;
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    key += 1;
                    let watcher = manager.transfer(key.to_string(), trivial, discard()).await;
                    watcher.transfer().done().await;
                    watcher.release().await;
                }
                start.elapsed()
            })
        });
    });

    const BATCH: u64 = 1000;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("batch_of_1000_limit_3", |b| {
        let manager = TransferManager::<u64>::new(3);
        let mut key = 0u64;
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut watchers = Vec::with_capacity(BATCH as usize);
                    for _ in 0..BATCH {
                        key += 1;
                        watchers.push(manager.transfer(key.to_string(), trivial, discard()).await);
                    }
                    for watcher in watchers {
                        watcher.transfer().done().await;
                        watcher.release().await;
                    }
                }
                start.elapsed()
            })
        });
    });

    group.bench_function("batch_of_1000_joining_one_key", |b| {
        let manager = TransferManager::<u64>::new(3);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let gate = tokio_util::sync::CancellationToken::new();
                let start = Instant::now();
                for _ in 0..iters {
                    let mut watchers = Vec::with_capacity(BATCH as usize);
                    for _ in 0..BATCH {
                        let gate = gate.clone();
                        let work = move |_ctx: TransferContext| async move {
                            gate.cancelled().await;
                            Ok(1)
                        };
                        watchers.push(manager.transfer("shared", work, discard()).await);
                    }
                    gate.cancel();
                    for watcher in watchers {
                        watcher.transfer().done().await;
                        watcher.release().await;
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Counts what reaches it.
struct CountingOutput(AtomicU64);

impl ProgressOutput for CountingOutput {
    fn write(&self, _progress: Progress) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn progress_fan_out(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("progress");
    const RECORDS: u64 = 1000;
    const WATCHERS: usize = 100;
    group.throughput(Throughput::Elements(RECORDS));
    let delivered = Arc::new(CountingOutput(AtomicU64::new(0)));
    let published = Arc::new(AtomicU64::new(0));

    group.bench_function("1000_records_to_100_watchers", |b| {
        let manager = TransferManager::<()>::new(0);
        let mut key = 0u64;
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    key += 1;
                    let go = tokio_util::sync::CancellationToken::new();
                    let (job_go, job_published) = (go.clone(), Arc::clone(&published));
                    let work = move |ctx: TransferContext| async move {
                        job_go.cancelled().await;
                        for i in 0..RECORDS {
                            ctx.progress().write(Progress::status(
                                "layer",
                                Status::Downloading(Counts::of(i, RECORDS)),
                            ));
                            job_published.fetch_add(1, Ordering::Relaxed);
                            // Records come from I/O in real life: let others run.
                            tokio::task::yield_now().await;
                        }
                        Ok(())
                    };
                    let first = manager
                        .transfer(
                            key.to_string(),
                            work,
                            Arc::clone(&delivered) as Arc<dyn ProgressOutput>,
                        )
                        .await;
                    let mut watchers = vec![];
                    for _ in 1..WATCHERS {
                        watchers.push(
                            first
                                .transfer()
                                .watch(Arc::clone(&delivered) as Arc<dyn ProgressOutput>),
                        );
                    }
                    watchers.push(first);
                    // Measured: publishing every record and delivering the
                    // final one to all watchers.
                    let start = Instant::now();
                    go.cancel();
                    for watcher in &watchers {
                        watcher.delivered().await;
                    }
                    elapsed += start.elapsed();
                    for watcher in watchers {
                        watcher.release().await;
                    }
                }
                elapsed
            })
        });
    });
    group.finish();

    let published = published.load(Ordering::Relaxed);
    let delivered = delivered.0.load(Ordering::Relaxed);
    println!(
        "progress fan-out: {published} records published, {delivered} deliveries to watchers \
         ({:.1} per record across {WATCHERS} watchers; the rest were coalesced)",
        delivered as f64 / published.max(1) as f64
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = transfers, progress_fan_out
}
criterion_main!(benches);
