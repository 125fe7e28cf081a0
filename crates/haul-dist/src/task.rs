//! Running blocking store work off the async runtime.

use crate::error::{Error, Result};

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("a worker thread failed: {e}"))
}
