//! A byte stream that reports how far it has been read.
//!
//! [`ProgressReader`] wraps an [`AsyncRead`] and writes counted statuses
//! ([`Status::Downloading`], [`Status::Extracting`], [`Status::Pushing`])
//! of one id to a [`ProgressOutput`]:
//!
//! - after more than `min(512 KiB, 1% of size)` bytes have been read since
//!   the last record (512 KiB when the size is unknown),
//! - but at most one record per 100 ms, except the last one: at end of
//!   stream, on a read error, or when `current` reaches the size;
//! - and, when the reader is dropped after it stopped short of the size
//!   without an error (a decompressor that does not read a trailer, say), a
//!   final record with `current = total`, so a bar does not stay at 99%.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use crate::progress::{Counts, Progress, ProgressOutput, Status};

/// Largest number of bytes between two records.
const MAX_BYTES_BETWEEN_UPDATES: u64 = 512 * 1024;
/// Shortest time between two records (the last one is always written).
const MIN_TIME_BETWEEN_UPDATES: Duration = Duration::from_millis(100);

/// An [`AsyncRead`] adapter that reports read progress; see the module docs.
pub struct ProgressReader<R> {
    inner: R,
    output: Arc<dyn ProgressOutput>,
    id: String,
    stage: fn(Counts) -> Status,
    size: u64,
    current: u64,
    reported: u64,
    last_record_at: Option<Instant>,
    last_written: Option<u64>,
    failed: bool,
}

impl<R> ProgressReader<R> {
    /// Wraps `inner`, whose length is `size` bytes (0 if unknown), reporting
    /// `stage(counts)` of `id` to `output` (e.g. `Status::Downloading`).
    pub fn new(
        inner: R,
        output: Arc<dyn ProgressOutput>,
        id: impl Into<String>,
        stage: fn(Counts) -> Status,
        size: u64,
    ) -> Self {
        ProgressReader {
            inner,
            output,
            id: id.into(),
            stage,
            size,
            current: 0,
            reported: 0,
            last_record_at: None,
            last_written: None,
            failed: false,
        }
    }

    /// Counts read so far.
    pub fn bytes_read(&self) -> u64 {
        self.current
    }

    fn bytes_between_updates(&self) -> u64 {
        if self.size > 0 {
            MAX_BYTES_BETWEEN_UPDATES.min(self.size / 100)
        } else {
            MAX_BYTES_BETWEEN_UPDATES
        }
    }

    fn report(&mut self, last: bool) {
        if self.last_written == Some(self.current) {
            return;
        }
        let now = Instant::now();
        let rate_allows = self
            .last_record_at
            .is_none_or(|at| now.duration_since(at) >= MIN_TIME_BETWEEN_UPDATES);
        if last || self.current == self.size || rate_allows {
            self.output.write(Progress::status(
                self.id.clone(),
                (self.stage)(Counts::of(self.current, self.size)),
            ));
            self.last_record_at = Some(now);
            self.last_written = Some(self.current);
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        let read = (buf.filled().len() - before) as u64;
        this.current += read;
        let at_end = result.is_ok() && read == 0 && had_room;
        if result.is_err() {
            this.failed = true;
        }
        if this.current - this.reported > this.bytes_between_updates() || at_end || this.failed {
            this.report(at_end || this.failed);
            this.reported = this.current;
        }
        Poll::Ready(result)
    }
}

impl<R> Drop for ProgressReader<R> {
    fn drop(&mut self) {
        if !self.failed && self.current < self.size {
            self.current = self.size;
            self.report(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ChannelOutput;
    use tokio::io::AsyncReadExt;

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Vec<Progress> {
        let mut records = Vec::new();
        while let Ok(p) = rx.try_recv() {
            records.push(p);
        }
        records
    }

    #[tokio::test(start_paused = true)]
    async fn reports_every_percent_but_at_most_every_100ms_and_always_the_end() {
        let (out, mut rx) = ChannelOutput::new();
        let data = vec![7u8; 10_000];
        let mut reader =
            ProgressReader::new(&data[..], Arc::new(out), "l1", Status::Downloading, 10_000);
        let mut chunk = [0u8; 150];
        // Read everything without time passing: one record for the first
        // step over 1% (100 bytes), then the rate limit holds the rest back
        // until the end-of-stream record.
        while reader.read(&mut chunk).await.unwrap() > 0 {}
        let records = drain(&mut rx);
        let currents: Vec<_> = records
            .iter()
            .map(|p| p.counts().unwrap().current)
            .collect();
        assert_eq!(
            currents.first(),
            Some(&150),
            "first record after 1%: {currents:?}"
        );
        assert_eq!(
            currents.last(),
            Some(&10_000),
            "last record at the end: {currents:?}"
        );
        assert!(currents.len() <= 3, "rate limit ignored: {currents:?}");
        assert!(records.iter().all(
            |p| matches!(p.as_status(), Some(Status::Downloading(b)) if b.total == Some(10_000))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn with_time_passing_reports_each_step_over_the_threshold() {
        let (out, mut rx) = ChannelOutput::new();
        let data = vec![1u8; 1000];
        let mut reader = ProgressReader::new(&data[..], Arc::new(out), "l1", Status::Pushing, 1000);
        let mut chunk = [0u8; 11];
        loop {
            tokio::time::advance(Duration::from_millis(150)).await;
            if reader.read(&mut chunk).await.unwrap() == 0 {
                break;
            }
        }
        let currents: Vec<_> = drain(&mut rx)
            .iter()
            .map(|p| p.counts().unwrap().current)
            .collect();
        // 1% of 1000 is 10 bytes: every 11-byte read is over the threshold.
        assert_eq!(currents.len(), 1000 / 11 + 1, "{currents:?}");
        assert!(currents.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(currents.last(), Some(&1000));
    }

    #[tokio::test]
    async fn unknown_size_reports_every_512_kib() {
        let (out, mut rx) = ChannelOutput::new();
        let data = vec![0u8; 2 * 1024 * 1024];
        let mut reader =
            ProgressReader::new(&data[..], Arc::new(out), "l1", Status::Downloading, 0);
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).await.unwrap();
        let records = drain(&mut rx);
        assert!(records.iter().all(|p| p.counts().unwrap().total.is_none()));
        assert_eq!(
            records.last().unwrap().counts().unwrap().current,
            2 * 1024 * 1024
        );
    }

    #[tokio::test]
    async fn dropping_a_reader_that_stopped_short_completes_the_bar() {
        let (out, mut rx) = ChannelOutput::new();
        let data = [0u8; 100];
        let mut reader =
            ProgressReader::new(&data[..], Arc::new(out), "l1", Status::Extracting, 100);
        let mut chunk = [0u8; 10];
        reader.read_exact(&mut chunk).await.unwrap();
        drop(reader);
        let last = drain(&mut rx).pop().unwrap();
        assert_eq!(
            last.as_status(),
            Some(&Status::Extracting(Counts::of(100, 100)))
        );
    }
}
