//! A byte stream that fails as soon as a cancellation token fires, so a
//! layer store busy unpacking stops at its next read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Reads from `inner` until `cancel` fires; from then on every read fails.
pub(crate) struct CancelAwareReader<R> {
    inner: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> CancelAwareReader<R> {
    pub(crate) fn new(inner: R, cancel: &CancellationToken) -> Self {
        CancelAwareReader {
            inner,
            cancelled: Box::pin(cancel.clone().cancelled_owned()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CancelAwareReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::other("layer registration cancelled")));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_through_until_cancelled_then_fails() {
        let cancel = CancellationToken::new();
        let data = [1u8, 2, 3, 4];
        let mut reader = CancelAwareReader::new(&data[..], &cancel);
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).await.unwrap();
        cancel.cancel();
        let err = reader.read(&mut two).await.unwrap_err();
        assert_eq!(err.to_string(), "layer registration cancelled");
    }
}
