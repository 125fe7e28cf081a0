//! Retrying failed attempts with a visible countdown.
//!
//! The rules (Docker since v24.0):
//!
//! - attempts are numbered from 1; after a failed attempt `n`, the loop
//!   gives up if `n >= max_attempts` (so `max_attempts = 1` means no retry,
//!   and 0 is treated as 1) or if the error is not retryable
//!   ([`Error::is_retryable`]: anything marked do-not-retry, a cancellation,
//!   a registration failure), or if the transfer was cancelled;
//! - otherwise it waits `5 * n` ticks (a tick is one second in production:
//!   5, 10, 15, 20 s with the default 5 attempts), writing one
//!   [`Status::Retrying`] record per tick, counting down to 1 second
//!   (no record for 0);
//! - if the transfer is cancelled during the wait, the loop ends with
//!   [`Error::CancelledDuringRetryDelay`].
//!
//! The error of the last attempt is returned unchanged.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Operation};
use crate::progress::{ProgressOutput, Status};

/// How often to try, and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (default 5; 0 acts as 1).
    pub max_attempts: u32,
    /// Length of one countdown step (default one second). Tests use a
    /// millisecond so a retry costs a few milliseconds.
    pub tick: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            tick: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The policy with countdown steps of `tick`.
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Countdown steps to wait after failed attempt `attempt` (1-based).
    pub fn delay_ticks(&self, attempt: u32) -> u32 {
        attempt.saturating_mul(5)
    }

    /// Runs `attempt_fn` until it succeeds or the rules above say stop.
    /// Countdown records go to `output` under `id`. The download and upload
    /// managers run each transfer so; work outside them (a v1 image push,
    /// say) uses it to retry with the same budget and countdown.
    pub async fn run<T, F, Fut>(
        &self,
        operation: Operation,
        id: &str,
        cancel: &CancellationToken,
        output: &dyn ProgressOutput,
        mut attempt_fn: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            let err = match attempt_fn().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if cancel.is_cancelled() {
                return Err(err);
            }
            if !err.is_retryable() || attempt >= self.max_attempts {
                tracing::warn!(%operation, %id, attempt, error = %err, "{operation} failed, giving up");
                return Err(err);
            }
            tracing::info!(
                "{operation} of {id} failed (attempt {attempt} of {}), retrying: {err}",
                self.max_attempts
            );
            self.count_down(operation, id, cancel, output, self.delay_ticks(attempt))
                .await?;
            attempt += 1;
        }
    }

    async fn count_down(
        &self,
        operation: Operation,
        id: &str,
        cancel: &CancellationToken,
        output: &dyn ProgressOutput,
        ticks: u32,
    ) -> Result<(), Error> {
        for remaining in (1..=ticks).rev() {
            output.status(
                id,
                Status::Retrying {
                    seconds: remaining.into(),
                },
            );
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::CancelledDuringRetryDelay(operation)),
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ChannelOutput;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy::default().with_tick(Duration::from_millis(1))
    }

    #[tokio::test]
    async fn counts_down_once_per_tick_with_a_singular_last_second() {
        let (out, mut rx) = ChannelOutput::new();
        let calls = AtomicU32::new(0);
        let result = fast()
            .run(
                Operation::Download,
                "l1",
                &CancellationToken::new(),
                &out,
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(Error::failed("flaky")),
                        _ => Ok(42),
                    }
                },
            )
            .await;
        assert_eq!(result.unwrap(), 42);
        let mut messages = Vec::new();
        while let Ok(p) = rx.try_recv() {
            messages.push(p.as_status().cloned());
        }
        let countdown: Vec<_> = (1..=5)
            .rev()
            .map(|seconds| Some(Status::Retrying { seconds }))
            .collect();
        assert_eq!(messages, countdown);
    }

    #[tokio::test(start_paused = true)]
    async fn default_policy_waits_5_10_15_20_seconds_then_gives_up_after_5_attempts() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = RetryPolicy::default()
            .run(
                Operation::Upload,
                "l1",
                &CancellationToken::new(),
                &crate::DiscardOutput,
                || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    Err(Error::failed(format!("attempt {n}")))
                },
            )
            .await;
        assert_eq!(result.unwrap_err().to_string(), "attempt 5");
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(started.elapsed(), Duration::from_secs(5 + 10 + 15 + 20));
    }

    #[tokio::test]
    async fn one_attempt_means_no_retry_and_zero_acts_as_one() {
        for max in [0, 1] {
            let calls = AtomicU32::new(0);
            let policy = fast().with_max_attempts(max);
            let result: Result<(), _> = policy
                .run(
                    Operation::Download,
                    "l1",
                    &CancellationToken::new(),
                    &crate::DiscardOutput,
                    || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err(Error::failed("boom"))
                    },
                )
                .await;
            assert!(result.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "max_attempts = {max}");
        }
    }

    #[tokio::test]
    async fn do_not_retry_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast()
            .run(
                Operation::Download,
                "l1",
                &CancellationToken::new(),
                &crate::DiscardOutput,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Error::do_not_retry("digest mismatch"))
                },
            )
            .await;
        assert_eq!(result.unwrap_err().to_string(), "digest mismatch");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_during_the_delay_ends_the_loop() {
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                cancel.cancel();
            })
        };
        let result: Result<(), _> = RetryPolicy::default()
            .run(
                Operation::Download,
                "l1",
                &cancel,
                &crate::DiscardOutput,
                || async { Err(Error::failed("flaky")) },
            )
            .await;
        canceller.await.unwrap();
        assert_eq!(
            result.unwrap_err().to_string(),
            "download cancelled during retry delay"
        );
    }
}
