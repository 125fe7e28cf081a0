//! The transfer manager: deduplication by key, and the concurrency limit.
//!
//! [`TransferManager::transfer`] runs a piece of work under a key, once:
//!
//! - **Deduplication.** While a transfer for a key is in flight, asking for
//!   the key again attaches a new [`Watcher`] to it; the work is not started
//!   a second time. If the transfer in flight has been cancelled (all its
//!   watchers left), the request waits for it to finish and then starts a
//!   fresh one, so a caller never joins a dying transfer and two pieces of
//!   work for one key never run at once.
//! - **Concurrency limit.** Each transfer asks for a slot. With `limit`
//!   slots held (0 means unlimited), new transfers queue in FIFO order; their
//!   work sees [`TransferContext::has_slot`] false, typically reports
//!   "Waiting", and waits in [`TransferContext::acquire_slot`]. A transfer
//!   gives its slot back when its work returns, or earlier with
//!   [`TransferContext::release_slot`] (a download does, before it unpacks
//!   a layer, so the limit bounds network work only). A freed slot goes to
//!   the head of the queue. [`TransferManager::set_concurrency`] changes the
//!   limit at run time, with immediate effect.
//! - **Progress** written by the work to [`TransferContext::progress`] goes
//!   to every watcher, as described in [`crate::transfer`].
//! - **Cancellation.** The work gets its own cancellation scope
//!   ([`TransferContext::cancellation_token`]) that fires only when the last
//!   watcher is released before the transfer is done. The work must pass
//!   that token, not a caller's, to its I/O.
//!
//! When the work returns, the manager gives the slot back (if the work had
//! not), then in one step records the result, fires `done` and forgets the
//! key, then closes the transfer, which fires `released` once no watcher is
//! left.
//!
//! The manager uses no timers: every wait is on a signal.
//!
//! # Differences from Docker's transfer manager
//!
//! - Raising the limit starts queued transfers at once, in queue order
//!   (Docker only stored the value: new transfers could then overtake
//!   queued ones); lowering it applies as running transfers end (Docker
//!   kept handing slots over one for one while a queue existed).
//! - A transfer cancelled while queued leaves the queue at once
//!   ([`TransferContext::acquire_slot`] returns [`Error::Cancelled`]);
//!   Docker kept it queued until its turn came.
//! - A transfer's slot is given back before `done` fires, so whoever sees
//!   a transfer done also sees its slot free.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::broadcast::Broadcast;
use crate::error::Error;
use crate::progress::ProgressOutput;
use crate::signal::Signal;
use crate::slots::{SlotTicket, Slots};
use crate::sync::lock;
use crate::transfer::{Transfer, Watcher};

/// Runs keyed, deduplicated transfers under a concurrency limit; see the
/// module docs. Cheap to clone: clones share transfers and slots.
pub struct TransferManager<T> {
    shared: Arc<ManagerShared<T>>,
}

impl<T> Clone for TransferManager<T> {
    fn clone(&self) -> Self {
        TransferManager {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for TransferManager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (active, queued) = self.shared.slots.usage();
        f.debug_struct("TransferManager")
            .field("limit", &self.shared.slots.limit())
            .field("active", &active)
            .field("queued", &queued)
            .finish()
    }
}

struct ManagerShared<T> {
    transfers: Mutex<HashMap<String, Transfer<T>>>,
    slots: Arc<Slots>,
}

impl<T: Clone + Send + Sync + 'static> TransferManager<T> {
    /// A manager allowing `concurrency` transfers to hold a slot at once
    /// (0 = unlimited).
    pub fn new(concurrency: usize) -> Self {
        TransferManager {
            shared: Arc::new(ManagerShared {
                transfers: Mutex::new(HashMap::new()),
                slots: Arc::new(Slots::new(concurrency)),
            }),
        }
    }

    /// Changes the limit (0 = unlimited). Raising it starts queued
    /// transfers at once, in queue order; lowering it stops no running
    /// transfer, and no queued one starts until fewer than the new limit
    /// hold a slot.
    pub fn set_concurrency(&self, concurrency: usize) {
        self.shared.slots.set_limit(concurrency);
    }

    /// The current limit (0 = unlimited).
    pub fn concurrency(&self) -> usize {
        self.shared.slots.limit()
    }

    /// How many transfers hold a slot and how many wait for one.
    pub fn slot_usage(&self) -> (usize, usize) {
        self.shared.slots.usage()
    }

    /// How many transfers are tracked (started and not yet done).
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.transfers).len()
    }

    /// Runs `work` under `key`, or joins the transfer already in flight for
    /// `key`, and returns a watcher writing that transfer's progress to
    /// `output`.
    ///
    /// If a new transfer is started, `work` is called once, on this task,
    /// with the transfer's context (its slot is already granted if one was
    /// free: `has_slot()` is true inside `work` then); the future it
    /// returns is spawned on the current Tokio runtime. If the key's
    /// transfer is joined, `work` is dropped uncalled. If the key's transfer
    /// has been cancelled, this waits for it to finish and starts afresh.
    ///
    /// The work should return promptly once its cancellation token fires.
    /// If it panics, the transfer finishes with [`Error::Aborted`].
    pub async fn transfer<F, Fut>(
        &self,
        key: impl Into<String>,
        work: F,
        output: Arc<dyn ProgressOutput>,
    ) -> Watcher<T>
    where
        F: FnOnce(TransferContext) -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let key = key.into();
        loop {
            let dying = {
                let mut transfers = lock(&self.shared.transfers);
                match transfers.get(&key) {
                    Some(existing) => match existing.watch_unless_cancelled(Arc::clone(&output)) {
                        Some(watcher) => return watcher,
                        None => existing.done_signal().clone(),
                    },
                    None => {
                        let ticket = self.shared.slots.request();
                        let transfer = Transfer::new(key.clone());
                        transfers.insert(key.clone(), transfer.clone());
                        let watcher = transfer.watch(Arc::clone(&output));
                        drop(transfers);
                        self.launch(transfer, ticket, work);
                        return watcher;
                    }
                }
            };
            tracing::debug!(%key, "waiting for the cancelled transfer to finish before starting afresh");
            dying.wait().await;
        }
    }

    fn launch<F, Fut>(&self, transfer: Transfer<T>, ticket: Arc<SlotTicket>, work: F)
    where
        F: FnOnce(TransferContext) -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        tracing::debug!(key = %transfer.key(), slot = ticket.is_granted(), "starting transfer");
        let context = TransferContext {
            cancel: transfer.cancellation_token().clone(),
            progress: Arc::clone(transfer.broadcast()),
            slots: Arc::clone(&self.shared.slots),
            ticket: Arc::clone(&ticket),
            released: transfer.released_signal().clone(),
        };
        // Built before `work` runs, so that a panicking `work` still
        // finishes the transfer (from the guard's `Drop`).
        let completion = Completion {
            manager: Arc::clone(&self.shared),
            transfer,
            ticket,
            pending: true,
        };
        let future = work(context);
        tokio::spawn(async move {
            let result = future.await;
            completion.complete(result);
        });
    }
}

/// Finishes a transfer exactly once: with the work's result, or with
/// [`Error::Aborted`] if the work never returned (panic, runtime shutdown).
struct Completion<T> {
    manager: Arc<ManagerShared<T>>,
    transfer: Transfer<T>,
    ticket: Arc<SlotTicket>,
    pending: bool,
}

impl<T> Completion<T> {
    fn complete(mut self, result: Result<T, Error>) {
        self.pending = false;
        self.finish(result);
    }

    fn finish(&self, result: Result<T, Error>) {
        tracing::debug!(key = %self.transfer.key(), ok = result.is_ok(), "transfer finished");
        // The slot first: whoever sees `done` also sees the slot free.
        self.manager.slots.give_back(&self.ticket);
        {
            // Under the manager's lock, so that `transfer()` never finds a
            // finished transfer under the key.
            let mut transfers = lock(&self.manager.transfers);
            self.transfer.finish(result);
            let key = self.transfer.key();
            if transfers
                .get(key)
                .is_some_and(|t| t.same_as(&self.transfer))
            {
                transfers.remove(key);
            }
        }
        self.transfer.close();
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if self.pending {
            self.pending = false;
            self.finish(Err(Error::Aborted));
        }
    }
}

/// What a transfer's work gets from the manager: its cancellation scope,
/// its progress output, and its slot.
pub struct TransferContext {
    cancel: CancellationToken,
    progress: Arc<Broadcast>,
    slots: Arc<Slots>,
    ticket: Arc<SlotTicket>,
    released: Signal,
}

impl std::fmt::Debug for TransferContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferContext")
            .field("cancelled", &self.is_cancelled())
            .field("has_slot", &self.has_slot())
            .finish()
    }
}

impl TransferContext {
    /// The transfer's own cancellation scope: fires when the last watcher
    /// leaves before the transfer is done. Pass this (or a child of it) to
    /// the work's I/O, never a caller's token.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the transfer has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the transfer is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The output every watcher reads. Writing never blocks; a record
    /// written after the work returned is ignored.
    pub fn progress(&self) -> Arc<dyn ProgressOutput> {
        Arc::clone(&self.progress) as Arc<dyn ProgressOutput>
    }

    /// Whether the transfer holds a slot (it may move data).
    pub fn has_slot(&self) -> bool {
        self.ticket.is_granted()
    }

    /// Waits for a slot. Returns [`Error::Cancelled`] if the transfer is
    /// cancelled first; the queued request is then withdrawn when the work
    /// returns, so it takes no slot.
    pub async fn acquire_slot(&self) -> Result<(), Error> {
        tokio::select! {
            biased;
            _ = self.ticket.granted() => Ok(()),
            _ = self.cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// Gives the slot back before the work returns (Docker's "inactive"
    /// signal), so a queued transfer can start. Calling it again, or
    /// returning afterwards, has no further effect on the slots. Called
    /// before the slot was granted, it withdraws the queued request: the
    /// transfer will then never get a slot.
    pub fn release_slot(&self) {
        self.slots.give_back(&self.ticket);
    }

    /// Resolves once the transfer is released (no watchers left and its
    /// manager stopped tracking it). Spawn a task on this to free resources
    /// the transfer's result holds, such as a layer reference.
    pub fn released(&self) -> impl Future<Output = ()> + Send + 'static {
        self.released.wait_owned()
    }
}
