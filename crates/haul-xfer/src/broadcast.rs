//! Fan-out of one transfer's progress to its watchers.
//!
//! The transfer writes into a single "latest record" cell (a
//! [`tokio::sync::watch`] channel); writing replaces the cell's content and
//! wakes every watcher, and never waits for any of them. Each watcher has its
//! own delivery task that copies the cell to the watcher's output whenever it
//! changed since the task last looked. A watcher that is slow therefore
//! skips intermediate counts (it sees the latest one when it gets round to
//! it) but never holds the transfer up, and never sees a record twice or out
//! of order.
//!
//! Status changes are not skipped: a record whose id, stage or message
//! differs from the one before it is also kept in a short log (the last
//! [`CHANGES_KEPT`]), and a watcher writes every logged change it has not
//! written before the latest record. So every watcher sees each stage
//! ("Downloading", "Verifying Checksum", "Download complete",
//! "Extracting", ...) even when they follow each other at once; only
//! byte-count updates of one stage are coalesced. A new watcher starts at
//! the latest record, not at the log's beginning.
//!
//! The cell also carries the "finished" flag, set once the transfer's work
//! has returned. A delivery task that sees it writes the final record (unless
//! it already wrote exactly that one) and exits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::progress::{Event, Progress, ProgressOutput};
use crate::signal::Signal;
use crate::sync::lock;

/// Status changes a slow watcher can still catch up on.
pub(crate) const CHANGES_KEPT: usize = 64;

/// The content of the "latest record" cell.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latest {
    /// Number of records written so far; identifies `record`.
    seq: u64,
    record: Option<Progress>,
    finished: bool,
    /// The last status changes, oldest first, with their numbers.
    changes: VecDeque<(u64, Progress)>,
}

impl Latest {
    /// What a watcher that has written up to `written` should write now,
    /// in order: the changes it missed, then the latest record.
    fn unwritten(&self, written: u64) -> Vec<(u64, Progress)> {
        let mut batch: Vec<(u64, Progress)> = self
            .changes
            .iter()
            .filter(|(seq, _)| *seq > written)
            .cloned()
            .collect();
        if self.seq > written && batch.last().map(|(seq, _)| *seq) != Some(self.seq) {
            if let Some(record) = &self.record {
                batch.push((self.seq, record.clone()));
            }
        }
        batch
    }
}

/// Whether `next` is a new status rather than new counts of the same one.
fn is_change(previous: Option<&Progress>, next: &Progress) -> bool {
    previous.is_none_or(|p| {
        p.id != next.id
            || match (&p.event, &next.event) {
                (Event::Status(before), Event::Status(after)) => !before.same_stage(after),
                (before, after) => before != after,
            }
    })
}

/// One transfer's progress cell; also the transfer's [`ProgressOutput`].
#[derive(Debug)]
pub(crate) struct Broadcast {
    latest: watch::Sender<Latest>,
}

impl Broadcast {
    pub(crate) fn new() -> Self {
        let (latest, _) = watch::channel(Latest::default());
        Broadcast { latest }
    }

    /// Marks the transfer finished; later writes are ignored.
    pub(crate) fn finish(&self) {
        self.latest.send_modify(|latest| latest.finished = true);
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.latest.borrow().finished
    }

    /// Starts a delivery task copying this transfer's records to `output`.
    /// Its first write is the latest record, if there is one.
    pub(crate) fn deliver_to(&self, output: Arc<dyn ProgressOutput>) -> Delivery {
        let delivery = Delivery {
            stop: CancellationToken::new(),
            gate: Arc::new(Gate {
                open: Mutex::new(true),
            }),
            exited: Signal::new(),
        };
        // A new watcher starts at the latest record.
        let start = self.latest.borrow().seq.saturating_sub(1);
        let task = deliver(
            self.latest.subscribe(),
            start,
            output,
            delivery.stop.clone(),
            Arc::clone(&delivery.gate),
            ExitGuard(delivery.exited.clone()),
        );
        tokio::spawn(task);
        delivery
    }
}

impl ProgressOutput for Broadcast {
    fn write(&self, progress: Progress) {
        self.latest.send_if_modified(|latest| {
            if latest.finished {
                return false;
            }
            latest.seq += 1;
            if is_change(latest.record.as_ref(), &progress) {
                if latest.changes.len() == CHANGES_KEPT {
                    latest.changes.pop_front();
                }
                latest.changes.push_back((latest.seq, progress.clone()));
            }
            latest.record = Some(progress);
            true
        });
    }
}

/// The handle a watcher keeps on its delivery task.
#[derive(Debug)]
pub(crate) struct Delivery {
    stop: CancellationToken,
    gate: Arc<Gate>,
    exited: Signal,
}

impl Delivery {
    /// Asks the task to write the latest record (if new to it) and exit,
    /// and waits until it has.
    pub(crate) async fn stop_and_flush(self) {
        self.stop.cancel();
        self.exited.wait().await;
    }

    /// Stops the task without waiting: once this returns, the task never
    /// writes again (a write in progress is finished first).
    pub(crate) fn stop_now(&self) {
        self.gate.close();
        self.stop.cancel();
    }

    /// Resolves once the task has exited.
    pub(crate) async fn exited(&self) {
        self.exited.wait().await;
    }
}

/// Lets a watcher shut its output synchronously (from `Drop`), even while
/// its delivery task is between two writes.
#[derive(Debug)]
struct Gate {
    open: Mutex<bool>,
}

impl Gate {
    /// Writes `record` unless the gate is closed; returns whether it was open.
    fn write(&self, output: &dyn ProgressOutput, record: Progress) -> bool {
        let open = lock(&self.open);
        if *open {
            output.write(record);
        }
        *open
    }

    fn close(&self) {
        *lock(&self.open) = false;
    }
}

/// Fires the exit signal however the task ends (return, panic in an output,
/// or runtime shutdown).
struct ExitGuard(Signal);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.fire();
    }
}

async fn deliver(
    mut latest: watch::Receiver<Latest>,
    start: u64,
    output: Arc<dyn ProgressOutput>,
    stop: CancellationToken,
    gate: Arc<Gate>,
    _exit: ExitGuard,
) {
    let mut written_seq = start;
    let mut stopping = false;
    loop {
        let (unwritten, finished) = {
            let latest = latest.borrow_and_update();
            (latest.unwritten(written_seq), latest.finished)
        };
        for (seq, record) in unwritten {
            if !gate.write(&*output, record) {
                return;
            }
            written_seq = seq;
        }
        if finished || stopping {
            return;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => stopping = true,
            changed = latest.changed() => {
                if changed.is_err() {
                    // Every handle on the transfer is gone: nothing more can come.
                    stopping = true;
                }
            }
        }
    }
}
