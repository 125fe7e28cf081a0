//! How many threads inflate one gzip layer.
//!
//! A layer unpacks on two threads already (the inflate, and the diffID
//! hash plus file writes behind its read-ahead), so a big gzip layer is
//! inflated in parallel ([`haul_store::ParallelGzipReader`]) only with
//! cores nobody else uses: by default, the cores minus the unpacker
//! thread of this layer and the two threads of every other layer
//! inflating at that moment ([`InflateBudget::begin`] counts them), at
//! least 1. One thread means the sequential reader. On a 2-core machine
//! that is always 1: there the unpacker needs the second core, and a
//! second decoder thread made a pull slower, not faster (see
//! scripts/bench-pull's inflate rows).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The inflate threads of every layer of a puller's pulls.
#[derive(Debug)]
pub(crate) struct InflateBudget {
    /// `--inflate-threads`: 0 = the free cores, else that many.
    setting: usize,
    cores: usize,
    /// Layers inflating now.
    inflating: AtomicUsize,
}

impl InflateBudget {
    /// A budget for `setting` threads per layer (0 = the free cores).
    pub(crate) fn new(setting: usize) -> Arc<Self> {
        Self::with_cores(setting, crate::available_cores())
    }

    fn with_cores(setting: usize, cores: usize) -> Arc<Self> {
        Arc::new(Self {
            setting,
            cores,
            inflating: AtomicUsize::new(0),
        })
    }

    /// A layer starts inflating: its share of threads, counted until the
    /// returned turn is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InflateTurn {
        let others = self.inflating.fetch_add(1, Ordering::AcqRel);
        let threads = match self.setting {
            0 => free_cores(self.cores, others),
            n => n,
        };
        InflateTurn {
            budget: Arc::clone(self),
            threads,
        }
    }
}

/// Decoder threads for a layer when `others` layers inflate besides it:
/// what the cores leave after its own unpacker thread and two threads
/// for each other layer; at least 1.
fn free_cores(cores: usize, others: usize) -> usize {
    cores.saturating_sub(1 + 2 * others).max(1)
}

/// One layer's inflate, counted in its [`InflateBudget`] while it lives.
#[derive(Debug)]
pub(crate) struct InflateTurn {
    budget: Arc<InflateBudget>,
    threads: usize,
}

impl InflateTurn {
    /// Decoder threads this layer may use (1: inflate sequentially).
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for InflateTurn {
    fn drop(&mut self) {
        self.budget.inflating.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_cores_shrink_with_every_layer_inflating() {
        let budget = InflateBudget::with_cores(0, 8);
        let first = budget.begin();
        assert_eq!(first.threads(), 7, "alone: all but its unpacker's core");
        let second = budget.begin();
        assert_eq!(second.threads(), 5);
        let more: Vec<InflateTurn> = (0..4).map(|_| budget.begin()).collect();
        assert_eq!(more.last().unwrap().threads(), 1, "never below one");
        drop(more);
        drop(second);
        assert_eq!(
            budget.begin().threads(),
            5,
            "finished layers give theirs back"
        );
    }

    #[test]
    fn two_cores_leave_one_thread_and_a_setting_wins() {
        assert_eq!(InflateBudget::with_cores(0, 2).begin().threads(), 1);
        assert_eq!(InflateBudget::with_cores(0, 1).begin().threads(), 1);
        let fixed = InflateBudget::with_cores(3, 2);
        let _a = fixed.begin();
        assert_eq!(fixed.begin().threads(), 3);
    }
}
