//! Progress events as typed data, and where they go.
//!
//! The library never prints, and it chooses no wording. Everything a user
//! might want to see (a layer waiting, downloading 12 of 40 MB, retrying in
//! 5 seconds, complete) is a [`Progress`] record written to a
//! [`ProgressOutput`]: an `id` (the short layer id for per-layer lines) and
//! an [`Event`], either a [`Status`] of that id or a whole-line [`Message`].
//! The command line decides how records look (haul's CLI keeps Docker's
//! words: "Pulling fs layer", "Retrying in 5 seconds", ...). A renderer keeps
//! one line per id and replaces it with each new status for that id.
//!
//! Outputs are called from the transfer manager's watcher tasks (see
//! [`crate::transfer`]) and from the download and upload managers' calling
//! task. They must not block: a slow output delays only the watcher it
//! belongs to, but a blocked one holds that watcher's `release` forever.

use std::sync::Arc;

use tokio::sync::mpsc;

/// How far a counted stage is: bytes (or units) done, and the total when
/// known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Done so far.
    pub current: u64,
    /// In all; `None` when unknown.
    pub total: Option<u64>,
}

impl Counts {
    /// `current` of `total`; a `total` of 0 means unknown.
    pub fn of(current: u64, total: u64) -> Self {
        Counts {
            current,
            total: (total > 0).then_some(total),
        }
    }
}

/// The state of one id's line: a layer's stage in a pull or a push.
///
/// The stages of a pull, in order: [`PullingFsLayer`](Self::PullingFsLayer)
/// (or [`AlreadyExists`](Self::AlreadyExists)), [`Waiting`](Self::Waiting),
/// [`Downloading`](Self::Downloading), [`VerifyingChecksum`](Self::VerifyingChecksum),
/// [`DownloadComplete`](Self::DownloadComplete), [`Extracting`](Self::Extracting),
/// [`PullComplete`](Self::PullComplete); of a push: [`Preparing`](Self::Preparing),
/// [`Waiting`](Self::Waiting), [`Pushing`](Self::Pushing), then
/// [`Pushed`](Self::Pushed), [`LayerAlreadyExists`](Self::LayerAlreadyExists) or
/// [`MountedFrom`](Self::MountedFrom). [`Retrying`](Self::Retrying) counts
/// down between two attempts of either.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// A layer the pull needs was asked for.
    PullingFsLayer,
    /// The layer is present; nothing to fetch.
    AlreadyExists,
    /// Queued for a slot (network, or unpacking).
    Waiting,
    /// Bytes arriving.
    Downloading(Counts),
    /// The last byte arrived; its digest is being checked.
    VerifyingChecksum,
    /// The blob is whole and verified.
    DownloadComplete,
    /// The layer is being unpacked: bytes of the blob consumed.
    Extracting(Counts),
    /// The layer is registered in the store.
    PullComplete,
    /// A failed attempt; the next starts in `seconds`.
    Retrying {
        /// Seconds left before the next attempt (never 0).
        seconds: u64,
    },
    /// A layer the push needs was asked for.
    Preparing,
    /// Bytes leaving.
    Pushing(Counts),
    /// The registry has the uploaded blob.
    Pushed,
    /// The registry had the blob already.
    LayerAlreadyExists,
    /// The registry linked the blob from another of its repositories.
    MountedFrom {
        /// The repository it came from.
        repository: String,
    },
    /// v1 pull: the tag's image was found and its chain is being asked for.
    PullingImage {
        /// The tag pulled.
        tag: String,
        /// The repository it is in.
        repository: String,
    },
    /// v1 pull: the image's ancestry is being fetched.
    PullingDependentLayers,
    /// v1 pull: an image's JSON is being fetched.
    PullingMetadata,
    /// v1 push: the image's upload starts.
    PushingImage,
    /// v1 push: the registry had the image.
    ImageAlreadyPushed,
    /// v1 push: the image is uploaded.
    ImageSuccessfullyPushed,
    /// A registry's pull quota is under the floor; waiting for it to refill.
    RateLimited {
        /// Pulls the registry says are left.
        remaining: u64,
        /// Pulls the window allows.
        limit: u64,
        /// Seconds left in the pause.
        seconds: u64,
    },
    /// The pause for a registry's quota is over.
    RateLimitOver,
}

impl Status {
    /// The byte counts of a counted stage ([`Downloading`](Self::Downloading),
    /// [`Extracting`](Self::Extracting), [`Pushing`](Self::Pushing)).
    pub fn counts(&self) -> Option<Counts> {
        match self {
            Status::Downloading(bytes) | Status::Extracting(bytes) | Status::Pushing(bytes) => {
                Some(*bytes)
            }
            _ => None,
        }
    }

    /// Whether two statuses are the same stage, counts aside: a renderer
    /// shows a change of stage, and may coalesce new counts of one stage.
    pub fn same_stage(&self, other: &Status) -> bool {
        match (self.counts(), other.counts()) {
            (Some(_), Some(_)) => std::mem::discriminant(self) == std::mem::discriminant(other),
            _ => self == other,
        }
    }
}

/// A whole line about an image or a repository, not a layer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A pull starts (the record's id is the tag or digest pulled).
    PullingFrom {
        /// The repository pulled from.
        repository: String,
    },
    /// The digest of what a pull resolved.
    Digest {
        /// The manifest (or index) digest.
        digest: String,
    },
    /// A pull ended.
    PullFinished {
        /// The reference, in its familiar form.
        reference: String,
        /// Nothing new was stored.
        up_to_date: bool,
    },
    /// A push starts.
    PushRefersTo {
        /// The repository pushed to, with its registry.
        repository: String,
    },
    /// A manifest was put (the record's id is empty).
    ManifestPushed {
        /// The tag it was put under, if any.
        tag: Option<String>,
        /// Its digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A registry-to-registry copy starts.
    Copying {
        /// The source, in its familiar form.
        source: String,
        /// The target, in its familiar form.
        target: String,
    },
    /// A referrer of a manifest (a signature, an SBOM) moved with it.
    Referrer {
        /// How it moved.
        moved: Moved,
        /// The referrer's digest.
        digest: String,
        /// The subject's digest.
        subject: String,
    },
    /// A tag that goes with a manifest (a cosign `.sig`, say) moved with it.
    AttachedTag {
        /// How it moved.
        moved: Moved,
        /// The tag.
        tag: String,
    },
    /// The legacy v1 protocol is spoken to a registry.
    UsingV1Protocol {
        /// The registry.
        registry: String,
    },
    /// v1 pull: a repository's images are being listed.
    PullingRepository {
        /// The repository, with its registry.
        repository: String,
    },
    /// v1 push starts.
    V1PushRefersTo {
        /// The repository, with its registry.
        repository: String,
    },
    /// v1 push: the image list is sent to the index.
    SendingImageList,
    /// v1 push: images are being sent.
    PushingRepository {
        /// The repository, with its registry.
        repository: String,
    },
    /// v1 push: a registry already had an image.
    V1ImageAlreadyPushed {
        /// The image's short id.
        image: String,
    },
    /// v1 push: a tag is being put.
    PushingTag {
        /// The image's short id.
        image: String,
        /// Where the tag is put.
        url: String,
    },
    /// A line of the caller's own (the library writes none of these).
    Text(String),
}

/// How something attached to a manifest moved, in a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Registry to registry.
    Copied,
    /// Into the local store.
    Pulled,
    /// From the local store.
    Pushed,
}

/// What a record says: a status of its id, or a whole line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The id's line changes to this status.
    Status(Status),
    /// A line printed once.
    Message(Message),
}

/// One progress record: an [`Event`] about `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What the record is about: a layer's short id, a tag, or empty.
    pub id: String,
    /// What happened.
    pub event: Event,
}

impl Progress {
    /// A status of `id`.
    pub fn status(id: impl Into<String>, status: Status) -> Self {
        Progress {
            id: id.into(),
            event: Event::Status(status),
        }
    }

    /// A whole line about `id`.
    pub fn message(id: impl Into<String>, message: Message) -> Self {
        Progress {
            id: id.into(),
            event: Event::Message(message),
        }
    }

    /// The status, when the record is one.
    pub fn as_status(&self) -> Option<&Status> {
        match &self.event {
            Event::Status(status) => Some(status),
            Event::Message(_) => None,
        }
    }

    /// The byte counts, when the record is a counted status.
    pub fn counts(&self) -> Option<Counts> {
        self.as_status().and_then(Status::counts)
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

    /// Writes a status of `id`, e.g. `status("68e2c75dc5c7", Status::Waiting)`.
    fn status(&self, id: &str, status: Status) {
        self.write(Progress::status(id, status));
    }

    /// Writes a whole line about `id`.
    fn message(&self, id: &str, message: Message) {
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
    fn bytes_of_a_zero_total_leave_the_total_unknown() {
        let b = Counts::of(5, 0);
        assert_eq!((b.current, b.total), (5, None));
        assert_eq!(Counts::of(5, 9).total, Some(9));
    }

    #[test]
    fn a_stage_is_the_same_whatever_its_counts() {
        let early = Status::Downloading(Counts::of(1, 10));
        let late = Status::Downloading(Counts::of(9, 10));
        assert!(early.same_stage(&late));
        assert!(!early.same_stage(&Status::Extracting(Counts::of(1, 10))));
        assert!(!Status::Retrying { seconds: 5 }.same_stage(&Status::Retrying { seconds: 4 }));
        assert!(Status::Waiting.same_stage(&Status::Waiting));
        assert_eq!(Status::Waiting.counts(), None);
    }

    #[tokio::test]
    async fn channel_output_delivers_in_order_and_survives_a_dropped_receiver() {
        let (out, mut rx) = ChannelOutput::new();
        out.status("a", Status::Waiting);
        out.message("", Message::Text("hello".into()));
        assert_eq!(
            rx.recv().await,
            Some(Progress::status("a", Status::Waiting))
        );
        assert_eq!(
            rx.recv().await,
            Some(Progress::message("", Message::Text("hello".into())))
        );
        drop(rx);
        out.status("a", Status::PullComplete); // must not panic
    }
}
