//! A one-shot, level-triggered signal: once fired it stays fired, and every
//! waiter, present or future, sees it.

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A one-shot signal any number of tasks can wait on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signal(CancellationToken);

impl Signal {
    pub(crate) fn new() -> Self {
        Signal(CancellationToken::new())
    }

    /// Fires the signal; firing again does nothing.
    pub(crate) fn fire(&self) {
        self.0.cancel();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub(crate) async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Like [`Signal::wait`], but the future owns what it needs.
    pub(crate) fn wait_owned(&self) -> WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }
}
