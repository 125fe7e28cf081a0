//! One deduplicated unit of work and the watchers attached to it.
//!
//! # What a watcher sees
//!
//! A [`Transfer`] is watched by one or more [`Watcher`]s, each with its own
//! [`ProgressOutput`]. For a watcher attached while the transfer runs:
//!
//! 1. its first record is the transfer's latest record, if the transfer has
//!    written any (so a second pull joining a half-done download sees the
//!    current "Downloading 30/40 MB" at once);
//! 2. then records in the order the transfer wrote them, possibly with gaps:
//!    a watcher that is slow to take a record is handed the latest one when
//!    it is ready, never a backlog (a slow watcher never slows the transfer
//!    or the other watchers);
//! 3. never the same record twice;
//! 4. if it is still attached when the transfer finishes, the transfer's
//!    final record is always its last one;
//! 5. nothing after [`Watcher::release`] has returned (release waits for the
//!    watcher's delivery task to write the latest record, if it had not, and
//!    exit) or after the watcher was dropped.
//!
//! A watcher attached after the transfer finished receives nothing.
//!
//! # Lifetime
//!
//! - **Done** ([`Transfer::done`]) fires when the transfer's work has
//!   returned, successfully or not; its [`result`](Transfer::result) is then
//!   available to every holder of the handle.
//! - **Cancelled** ([`Transfer::is_cancelled`]): the transfer runs in its own
//!   cancellation scope (a fresh `CancellationToken`, never derived from a
//!   caller's). It is cancelled only when its last watcher is released while
//!   the transfer's work is still running. One caller's cancellation
//!   therefore never stops a transfer another caller is watching.
//! - **Released** ([`Transfer::released`]) fires when the transfer has no
//!   watchers left *and* its manager has stopped tracking it (which happens
//!   right after it is done). Whoever holds resources on the transfer's
//!   behalf (a layer reference) lets them go then.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::broadcast::{Broadcast, Delivery};
use crate::error::Error;
use crate::progress::ProgressOutput;
use crate::signal::Signal;
use crate::sync::lock;

/// A handle on one transfer; cheap to clone.
///
/// `T` is what the transfer produces (a registered layer, a remote
/// descriptor); it is cloned for each holder that asks for the result.
pub struct Transfer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Transfer<T> {
    fn clone(&self) -> Self {
        Transfer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for Transfer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("key", &self.shared.key)
            .field("done", &self.is_done())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

struct Shared<T> {
    key: String,
    cancel: CancellationToken,
    broadcast: Arc<Broadcast>,
    done: Signal,
    released: Signal,
    state: Mutex<State<T>>,
}

struct State<T> {
    watchers: usize,
    /// The manager no longer tracks the transfer.
    closed: bool,
    result: Option<Result<T, Error>>,
}

impl<T> Transfer<T> {
    pub(crate) fn new(key: String) -> Self {
        Transfer {
            shared: Arc::new(Shared {
                key,
                cancel: CancellationToken::new(),
                broadcast: Arc::new(Broadcast::new()),
                done: Signal::new(),
                released: Signal::new(),
                state: Mutex::new(State {
                    watchers: 0,
                    closed: false,
                    result: None,
                }),
            }),
        }
    }

    /// The key the transfer was started under.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Attaches a new watcher writing to `output`; see the module docs for
    /// what it receives. Must be called within a Tokio runtime.
    ///
    /// Attaching to a transfer that was cancelled (all watchers left) does
    /// not revive it; the transfer manager never does that, it waits for the
    /// dying transfer to finish and starts a fresh one.
    pub fn watch(&self, output: Arc<dyn ProgressOutput>) -> Watcher<T> {
        let mut state = lock(&self.shared.state);
        self.attach_locked(&mut state, output)
    }

    /// Like [`Transfer::watch`], but refuses (returns `None`) if the
    /// transfer has been cancelled. The check and the attachment are atomic
    /// with respect to the last watcher's release.
    pub(crate) fn watch_unless_cancelled(
        &self,
        output: Arc<dyn ProgressOutput>,
    ) -> Option<Watcher<T>> {
        let mut state = lock(&self.shared.state);
        if self.shared.cancel.is_cancelled() {
            return None;
        }
        Some(self.attach_locked(&mut state, output))
    }

    fn attach_locked(&self, state: &mut State<T>, output: Arc<dyn ProgressOutput>) -> Watcher<T> {
        state.watchers += 1;
        let delivery = if self.shared.broadcast.is_finished() {
            None
        } else {
            Some(self.shared.broadcast.deliver_to(output))
        };
        Watcher {
            transfer: self.clone(),
            delivery,
            attached: true,
        }
    }

    fn detach_watcher(&self) {
        let mut state = lock(&self.shared.state);
        state.watchers -= 1;
        if state.watchers == 0 {
            if state.closed {
                self.shared.released.fire();
            } else if state.result.is_none() {
                // Still running (a finished transfer is about to be closed:
                // there is nothing left to cancel).
                tracing::debug!(key = %self.shared.key, "last watcher left, cancelling transfer");
                self.shared.cancel.cancel();
            }
        }
    }

    /// Records the work's outcome and fires `done`.
    pub(crate) fn finish(&self, result: Result<T, Error>) {
        lock(&self.shared.state).result = Some(result);
        self.shared.broadcast.finish();
        self.shared.done.fire();
    }

    /// Called by the manager once it no longer tracks the transfer.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.shared.state);
        state.closed = true;
        if state.watchers == 0 {
            self.shared.released.fire();
        }
    }

    pub(crate) fn cancellation_token(&self) -> &CancellationToken {
        &self.shared.cancel
    }

    pub(crate) fn broadcast(&self) -> &Arc<Broadcast> {
        &self.shared.broadcast
    }

    pub(crate) fn released_signal(&self) -> &Signal {
        &self.shared.released
    }

    pub(crate) fn done_signal(&self) -> &Signal {
        &self.shared.done
    }

    pub(crate) fn same_as(&self, other: &Transfer<T>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether the work has returned.
    pub fn is_done(&self) -> bool {
        self.shared.done.is_fired()
    }

    /// Resolves once the work has returned.
    pub async fn done(&self) {
        self.shared.done.wait().await;
    }

    /// Whether every watcher has left and the manager stopped tracking it.
    pub fn is_released(&self) -> bool {
        self.shared.released.is_fired()
    }

    /// Resolves once every watcher has left and the manager stopped
    /// tracking the transfer.
    pub async fn released(&self) {
        self.shared.released.wait().await;
    }

    /// Whether the transfer was cancelled (its last watcher left early).
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// How many watchers are attached.
    pub fn watcher_count(&self) -> usize {
        lock(&self.shared.state).watchers
    }
}

impl<T: Clone> Transfer<T> {
    /// The outcome, once the transfer is done.
    pub fn result(&self) -> Option<Result<T, Error>> {
        lock(&self.shared.state).result.clone()
    }

    /// Waits until the transfer is done and returns its outcome.
    pub async fn wait(&self) -> Result<T, Error> {
        self.done().await;
        self.result().unwrap_or(Err(Error::Aborted))
    }
}

/// One consumer's attachment to a [`Transfer`].
///
/// Release it with [`Watcher::release`], which waits until the watcher has
/// written its last record. Dropping it releases it too, without waiting:
/// no record is written after the drop returns, but the latest one may not
/// have been delivered.
///
/// Releasing the last watcher of a running transfer cancels it.
pub struct Watcher<T> {
    transfer: Transfer<T>,
    delivery: Option<Delivery>,
    attached: bool,
}

impl<T> std::fmt::Debug for Watcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("transfer", &self.transfer)
            .finish()
    }
}

impl<T> Watcher<T> {
    /// The transfer being watched.
    pub fn transfer(&self) -> &Transfer<T> {
        &self.transfer
    }

    /// Detaches from the transfer (cancelling it if this was its last
    /// watcher and it is still running), then waits until this watcher's
    /// delivery task has written the latest record, if it had not, and
    /// exited. After this returns the watcher's output is never written to
    /// again.
    ///
    /// The wait is only as long as one output write: outputs must not block.
    pub async fn release(mut self) {
        self.detach();
        if let Some(delivery) = self.delivery.take() {
            delivery.stop_and_flush().await;
        }
    }

    /// Resolves once the transfer is done and this watcher has delivered
    /// its final record (at once for a watcher attached after the end).
    pub async fn delivered(&self) {
        self.transfer.done().await;
        if let Some(delivery) = &self.delivery {
            delivery.exited().await;
        }
    }

    fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            self.transfer.detach_watcher();
        }
    }
}

impl<T> Drop for Watcher<T> {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            delivery.stop_now();
        }
        self.detach();
    }
}
