//! The one send loop of the registry client, for v2 and v1 requests alike.
//!
//! A request is built afresh for each attempt (a body cannot be sent
//! twice), sent, and judged by the caller's `attempt` function: a response
//! to hand back, a failure another attempt may cure (a connection that
//! broke, 5xx, 408, 429, with the server's `Retry-After` if it gave one),
//! or an immediate resend that costs no attempt (a fresh token after a
//! 401). Failures are retried with the client's [`RetryPolicy`]: backoff
//! doubling from its base delay, `Retry-After` honoured up to its bound,
//! at most `max_attempts` in all, and never for a request that cannot be
//! resent.

use std::future::Future;
use std::time::Duration;

use reqwest::{Response, StatusCode};

use crate::config::RetryPolicy;
use crate::error::{Error, Result};

/// What one attempt of a request came to.
pub(crate) enum Attempt {
    /// An answer for the caller to judge (any status but the retryable ones).
    Answered(Response),
    /// A failure another attempt may cure, after `retry_after` when the
    /// server named a delay.
    Failed {
        failure: Error,
        retry_after: Option<Duration>,
    },
    /// Send again at once, without counting an attempt.
    Resend,
}

/// Whether an answer with `status` is worth another attempt.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// How one request is retried.
pub(crate) struct SendPolicy<'a> {
    /// The registry, for the log.
    pub registry: &'a str,
    /// What the request does, for the log ("GET manifest 1.0 of app").
    pub action: &'a str,
    pub retry: &'a RetryPolicy,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Whether the request may be sent more than once.
    pub resendable: bool,
}

/// Runs `attempt` until it answers, or fails in a way the policy does not
/// retry; see the module docs.
pub(crate) async fn send_with_retries<F, Fut>(
    policy: SendPolicy<'_>,
    mut attempt: F,
) -> Result<Response>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let mut number = 1;
    loop {
        let (failure, retry_after) = match attempt().await? {
            Attempt::Answered(response) => return Ok(response),
            Attempt::Resend => continue,
            Attempt::Failed {
                failure,
                retry_after,
            } => (failure, retry_after),
        };
        if !failure.is_retryable() || !policy.resendable || number >= policy.max_attempts {
            return Err(failure);
        }
        let delay = policy.retry.delay(number, retry_after);
        tracing::info!(
            registry = %policy.registry,
            "{} failed (attempt {number} of {}): {failure}; retrying in {delay:?}",
            policy.action,
            policy.max_attempts,
        );
        tokio::time::sleep(delay).await;
        number += 1;
    }
}
