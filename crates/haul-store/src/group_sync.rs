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
//!
//! Every sync goes through one directory handle, opened with the store.
//! Linux reports a failed writeback to the syncfs of each open file once,
//! and only to files opened before the failure was first reported; a
//! handle opened later (as the early writeback's are, see
//! [`crate::writeback`]) would miss it. And once a sync has failed, every
//! caller it was run for fails, even if a later sync succeeds: the
//! kernel reports the failure only once, and the pages may be lost.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{IoContext, Result};

/// Shared syncfs calls for one store's filesystem.
#[derive(Debug)]
pub(crate) struct GroupSync {
    /// The store's root, opened once (see the module's doc).
    root: File,
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
    /// The latest syncs that failed (at most [`FAILURES_KEPT`]): their
    /// numbers, and what each failed with.
    failures: Vec<(u64, io::ErrorKind, String)>,
}

/// How many failed syncs are remembered for callers still to wake.
const FAILURES_KEPT: usize = 16;

impl GroupSync {
    /// Syncs of the filesystem holding the directory `root`.
    pub(crate) fn open(root: &Path) -> Result<GroupSync> {
        Ok(GroupSync {
            root: File::open(root).at(root)?,
            state: Mutex::default(),
            finished: Condvar::new(),
        })
    }

    /// Returns once everything written to the filesystem before this call
    /// is on disk (or with the error of a sync that was to make it so);
    /// `path`, on it, names the writes in an error.
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
                // The first sync that started after the writes decides.
                return match state.failures.iter().find(|(n, ..)| *n == ticket.0) {
                    Some((_, kind, message)) => Err(io::Error::new(
                        *kind,
                        format!("syncing the store's filesystem failed: {message}"),
                    ))
                    .at(path),
                    None => Ok(()),
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
            let outcome = rustix::fs::syncfs(&self.root).map_err(io::Error::from);
            state = self.lock();
            state.running = false;
            state.ended += 1;
            if let Err(e) = outcome {
                let number = state.ended;
                if state.failures.len() == FAILURES_KEPT {
                    state.failures.remove(0);
                }
                state.failures.push((number, e.kind(), e.to_string()));
            }
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
        let group = GroupSync::open(dir.path()).unwrap();
        group.sync(dir.path()).unwrap();
        group.sync(dir.path()).unwrap();
        let state = group.lock();
        assert_eq!((state.started, state.ended, state.running), (2, 2, false));
    }

    #[test]
    fn callers_arriving_together_share_syncs_and_each_waits_for_one_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::open(dir.path()).unwrap());
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
        let group = GroupSync::open(dir.path()).unwrap();
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
    fn a_failed_sync_fails_the_tickets_it_ran_for_even_after_a_later_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::open(dir.path()).unwrap();
        let before = group.ticket();
        group.sync(dir.path()).unwrap();
        let covered = group.ticket();
        // As if the next sync had failed (syncfs fails only on a disk
        // error), then one more succeeded.
        {
            let mut state = group.lock();
            state.started += 1;
            state.ended += 1;
            let number = state.ended;
            state
                .failures
                .push((number, io::ErrorKind::Other, "EIO".into()));
        }
        group.sync(dir.path()).unwrap();
        let err = group.sync_for(covered, dir.path()).unwrap_err().to_string();
        assert!(err.contains("EIO"), "{err}");
        // Writes before the failed sync, covered by one that succeeded.
        group.sync_for(before, dir.path()).unwrap();
        // Writes after it: fine.
        group.sync(dir.path()).unwrap();
    }

    #[test]
    fn a_store_root_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = GroupSync::open(&gone).unwrap_err().to_string();
        assert!(err.contains("gone"), "{err}");
    }
}
