//! Progress events as plain data, and where they go.
//!
//! The library never prints. Everything a user might want to see (a layer's
//! "Waiting", its "Downloading 12/40 MB", "Retrying in 5 seconds", "Pull
//! complete") is a [`Progress`] record written to a [`ProgressOutput`]; the
//! command line decides how records look. Records are keyed by an `id` (the
//! short layer id for per-layer lines): a renderer keeps one line per id and
//! replaces it with each new record for that id.
//!
//! Outputs are called from the transfer manager's watcher tasks (see
//! [`crate::transfer`]) and from the download and upload managers' calling
//! task. They must not block: a slow output delays only the watcher it
//! belongs to, but a blocked one holds that watcher's `release` forever.

use std::sync::Arc;

use tokio::sync::mpsc;

/// One progress event: either a whole message line ([`Progress::message`]
/// is set) or a status for `id` with optional byte counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// What the record is about: a layer's short id, a tag, or empty.
    pub id: String,
    /// The status, e.g. "Downloading", "Pull complete"; empty for a message.
    pub action: String,
    /// Bytes (or units) done so far, when counted.
    pub current: Option<u64>,
    /// Bytes (or units) in all, when known.
    pub total: Option<u64>,
    /// A whole line of text instead of a status, e.g. "Pulling from library/alpine".
    pub message: Option<String>,
}

impl Progress {
    /// A status without counts: `{id}: {action}`.
    pub fn action(id: impl Into<String>, action: impl Into<String>) -> Self {
        Progress {
            id: id.into(),
            action: action.into(),
            ..Progress::default()
        }
    }

    /// A status with counts; a `total` of 0 means unknown and is left out.
    pub fn counts(
        id: impl Into<String>,
        action: impl Into<String>,
        current: u64,
        total: u64,
    ) -> Self {
        Progress {
            id: id.into(),
            action: action.into(),
            current: Some(current),
            total: (total > 0).then_some(total),
            message: None,
        }
    }

    /// A whole message line about `id`.
    pub fn message(id: impl Into<String>, message: impl Into<String>) -> Self {
        Progress {
            id: id.into(),
            message: Some(message.into()),
            ..Progress::default()
        }
    }
}

/// Where progress records go.
///
/// Execution model: the managers push records into the output as they
/// happen; the output never pulls. `write` is called from Tokio tasks (a
/// transfer's watcher task, or the task running `download`/`upload`), one
/// call at a time per watcher but possibly concurrently across watchers of
/// the same output, so implementations must be `Sync` and must not block:
/// queue or drop, never wait for a reader. There is no error path: an output
/// that cannot deliver (its reader went away) drops the record.
///
/// Implement only `write`; the other methods are shorthands built on it.
pub trait ProgressOutput: Send + Sync {
    /// Delivers one record. Must return promptly.
    fn write(&self, progress: Progress);

    /// Writes a status without counts, e.g. `update("68e2c75dc5c7", "Waiting")`.
    fn update(&self, id: &str, action: &str) {
        self.write(Progress::action(id, action));
    }

    /// Writes a whole message line about `id`.
    fn message(&self, id: &str, message: &str) {
        self.write(Progress::message(id, message));
    }
}

impl<T: ProgressOutput + ?Sized> ProgressOutput for Arc<T> {
    fn write(&self, progress: Progress) {
        (**self).write(progress);
    }
}

impl<T: ProgressOutput + ?Sized> ProgressOutput for &T {
    fn write(&self, progress: Progress) {
        (**self).write(progress);
    }
}

/// Sends every record on an unbounded channel; the renderer reads the other
/// end. Never blocks; records written after the receiver is dropped are
/// discarded.
#[derive(Debug, Clone)]
pub struct ChannelOutput {
    sender: mpsc::UnboundedSender<Progress>,
}

impl ChannelOutput {
    /// A new output and the receiver of its records.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Progress>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (ChannelOutput { sender }, receiver)
    }

    /// An output writing into an existing channel.
    pub fn from_sender(sender: mpsc::UnboundedSender<Progress>) -> Self {
        ChannelOutput { sender }
    }
}

impl ProgressOutput for ChannelOutput {
    fn write(&self, progress: Progress) {
        // A closed channel means nobody renders any more: dropping is right.
        let _ = self.sender.send(progress);
    }
}

/// Discards every record (for `-q`, and for callers that do not render).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardOutput;

impl ProgressOutput for DiscardOutput {
    fn write(&self, _progress: Progress) {}
}

/// Shortens a digest for display the way Docker does: drops everything up
/// to the first `:` and keeps at most 12 characters
/// (`sha256:68e2c75dc5c78ea9…` becomes `68e2c75dc5c7`).
pub fn short_id(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, rest)| rest);
    match hex.char_indices().nth(12) {
        Some((end, _)) => &hex[..end],
        None => hex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_drops_the_algorithm_and_keeps_twelve_characters() {
        assert_eq!(
            short_id("sha256:68e2c75dc5c78ea9240689c60d7599766c213ae210434c53af18470ae8c53ec1"),
            "68e2c75dc5c7"
        );
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("v1:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn counts_with_zero_total_leave_the_total_unknown() {
        let p = Progress::counts("id", "Downloading", 5, 0);
        assert_eq!(p.current, Some(5));
        assert_eq!(p.total, None);
    }

    #[tokio::test]
    async fn channel_output_delivers_in_order_and_survives_a_dropped_receiver() {
        let (out, mut rx) = ChannelOutput::new();
        out.update("a", "Waiting");
        out.message("", "hello");
        assert_eq!(rx.recv().await, Some(Progress::action("a", "Waiting")));
        assert_eq!(rx.recv().await, Some(Progress::message("", "hello")));
        drop(rx);
        out.update("a", "late"); // must not panic
    }
}
