//! Early writeback: a layer's files start going to disk while the layer is
//! still being unpacked, so that the syncfs that makes it durable at the
//! end has little left to write.
//!
//! The kernel on its own starts writing dirty pages back only once they
//! pass a share of memory (gigabytes on most machines), so without this
//! every byte of a pull would wait for the final sync, after the network
//! and the inflate are done. Here, after every [`WRITEBACK_EVERY`] bytes
//! unpacked, a background thread runs syncfs(2) on the destination's
//! filesystem, at most one at a time per process: the disk then writes
//! while the unpacking thread inflates and creates files, never blocking
//! it. A failure of a background sync is ignored here: the store's own
//! sync before the layer is registered reports it, through a handle
//! opened before any of these (see [`crate::group_sync`]).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Unpacked bytes between two early writebacks.
pub(crate) const WRITEBACK_EVERY: u64 = 32 << 20;

/// Whether a background syncfs is running (one at a time: each covers the
/// whole filesystem, so a second one started meanwhile would add nothing).
static IN_FLIGHT: AtomicBool = AtomicBool::new(false);

/// Counts what one unpack writes and starts a background syncfs of its
/// destination each time another [`WRITEBACK_EVERY`] bytes are written.
#[derive(Debug)]
pub(crate) struct EarlyWriteback<'a> {
    dest: &'a Path,
    written: u64,
    next_at: u64,
    in_flight: &'static AtomicBool,
}

impl<'a> EarlyWriteback<'a> {
    /// Early writeback of the filesystem holding `dest`.
    pub(crate) fn new(dest: &'a Path) -> EarlyWriteback<'a> {
        EarlyWriteback::with_flag(dest, &IN_FLIGHT)
    }

    fn with_flag(dest: &'a Path, in_flight: &'static AtomicBool) -> EarlyWriteback<'a> {
        EarlyWriteback {
            dest,
            written: 0,
            next_at: WRITEBACK_EVERY,
            in_flight,
        }
    }

    /// Records `bytes` more written; may start a background syncfs.
    pub(crate) fn wrote(&mut self, bytes: u64) {
        self.written += bytes;
        if self.written < self.next_at {
            return;
        }
        self.next_at = self.written + WRITEBACK_EVERY;
        let in_flight = self.in_flight;
        if in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = File::open(self.dest).and_then(|dir| {
            std::thread::Builder::new()
                .name("haul-writeback".into())
                .spawn(move || {
                    let _ = rustix::fs::syncfs(&dir);
                    in_flight.store(false, Ordering::Release);
                })
        });
        if started.is_err() {
            in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(flag: &AtomicBool) -> bool {
        for _ in 0..1000 {
            if !flag.load(Ordering::Acquire) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_writeback_starts_at_each_step_and_at_most_one_runs() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let mut writeback = EarlyWriteback::with_flag(dir.path(), &FLAG);
        writeback.wrote(WRITEBACK_EVERY - 1);
        assert!(
            !FLAG.load(Ordering::Acquire),
            "started before the first step"
        );
        // One already running: the step passes without a second one.
        FLAG.store(true, Ordering::Release);
        writeback.wrote(1);
        assert_eq!(writeback.written, WRITEBACK_EVERY);
        assert_eq!(writeback.next_at, 2 * WRITEBACK_EVERY);
        FLAG.store(false, Ordering::Release);
        // Past the next step, one starts and clears the flag when done.
        writeback.wrote(3 * WRITEBACK_EVERY);
        assert_eq!(writeback.next_at, 5 * WRITEBACK_EVERY);
        assert!(settled(&FLAG), "the background sync never finished");
    }

    #[test]
    fn a_missing_destination_starts_nothing_and_leaves_the_flag_clear() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let mut writeback = EarlyWriteback::with_flag(&gone, &FLAG);
        writeback.wrote(WRITEBACK_EVERY);
        assert!(!FLAG.load(Ordering::Acquire));
    }
}
