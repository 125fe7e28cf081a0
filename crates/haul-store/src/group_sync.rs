//! Group commit of filesystem syncs: threads that each need "what I wrote
//! is on disk" share syncfs(2) calls instead of each making its own.
//!
//! A pull of 40 small layers used to make 40 syncfs calls, one per layer,
//! each a journal commit and a disk cache flush, several of them waiting
//! on each other. A syncfs covers every write to the filesystem made
//! before it started, so one run for all the threads waiting when it
//! starts is enough. A caller asks for a sync; if none is running, it runs
//! one itself. If one is running, that one may have started before the
//! caller's writes, so the caller waits for the next one, which whoever is
//! waiting first when the running one ends starts, for everyone waiting.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{IoContext, Result};

/// Shared syncfs calls for one store (every caller passes a path on the
/// store's filesystem).
#[derive(Debug, Default)]
pub(crate) struct GroupSync {
    state: Mutex<State>,
    finished: Condvar,
}

/// What a caller's writes need: the number of the first sync that
/// started after them (see [`GroupSync::ticket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncTicket(u64);

#[derive(Debug, Default)]
struct State {
    /// How many syncs have started.
    started: u64,
    /// How many have ended (they run one at a time, in order).
    ended: u64,
    running: bool,
    /// The last sync that ended, if it failed: what it failed with.
    failure: Option<(io::ErrorKind, String)>,
}

impl GroupSync {
    /// Returns once everything written to `path`'s filesystem before this
    /// call is on disk (or with the error of the sync that was to make it
    /// so).
    pub(crate) fn sync(&self, path: &Path) -> Result<()> {
        let ticket = self.ticket();
        self.sync_for(ticket, path)
    }

    /// A ticket for what has been written so far: [`GroupSync::sync_for`]
    /// with it returns once a sync started after this call has ended.
    pub(crate) fn ticket(&self) -> SyncTicket {
        SyncTicket(self.lock().started + 1)
    }

    /// Returns once the writes `ticket` was taken after are on disk,
    /// running a sync for everyone waiting if none runs.
    pub(crate) fn sync_for(&self, ticket: SyncTicket, path: &Path) -> Result<()> {
        let mut state = self.lock();
        loop {
            if state.ended >= ticket.0 {
                return match &state.failure {
                    None => Ok(()),
                    Some((kind, message)) => Err(io::Error::new(*kind, message.clone())).at(path),
                };
            }
            if state.running {
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            drop(state);
            let outcome =
                File::open(path).and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from));
            state = self.lock();
            state.running = false;
            state.ended += 1;
            state.failure = outcome.err().map(|e| (e.kind(), e.to_string()));
            self.finished.notify_all();
        }
    }

    /// How many syncs have started (for tests of the callers).
    #[cfg(test)]
    pub(crate) fn syncs_started(&self) -> u64 {
        self.lock().started
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn one_caller_runs_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::default();
        group.sync(dir.path()).unwrap();
        group.sync(dir.path()).unwrap();
        let state = group.lock();
        assert_eq!((state.started, state.ended, state.running), (2, 2, false));
    }

    #[test]
    fn callers_arriving_together_share_syncs_and_each_waits_for_one_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::default());
        let callers = 16;
        let threads: Vec<_> = (0..callers)
            .map(|_| {
                let group = group.clone();
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let before = group.lock().started;
                    group.sync(&path).unwrap();
                    let after = group.lock().ended;
                    // A sync that started after the call ended before the
                    // call returned.
                    assert!(after > before, "returned on a sync started before it");
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let state = group.lock();
        assert_eq!(state.started, state.ended);
        assert!(state.started >= 1 && state.started <= callers);
    }

    #[test]
    fn a_ticket_already_covered_by_a_later_sync_runs_none() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::default();
        let ticket = group.ticket();
        group.sync(dir.path()).unwrap();
        group.sync_for(ticket, dir.path()).unwrap();
        assert_eq!(group.lock().started, 1);
        // A ticket taken after that sync needs one more.
        let ticket = group.ticket();
        group.sync_for(ticket, dir.path()).unwrap();
        assert_eq!(group.lock().started, 2);
    }

    #[test]
    fn a_failed_sync_fails_its_callers_and_the_next_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::default();
        let gone = dir.path().join("gone");
        let err = group.sync(&gone).unwrap_err().to_string();
        assert!(err.contains("gone"), "{err}");
        group.sync(dir.path()).unwrap();
    }
}
