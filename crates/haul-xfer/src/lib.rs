//! haul's transfer manager, and the download and upload managers built on
//! it: a Rust re-imagining of Docker's `distribution/xfer`.
//!
//! The crate is generic: it knows nothing of HTTP, files or terminals. The
//! pull and push flows describe layers through [`DownloadDescriptor`] and
//! [`UploadDescriptor`], the local store registers layers through
//! [`LayerStore`], and everything a user might see comes out as
//! [`Progress`] records on a [`ProgressOutput`].
//!
//! # The model
//!
//! A **transfer** ([`Transfer`]) is one deduplicated piece of work under a
//! key, run by a [`TransferManager`]:
//!
//! - asking for a key already in flight **joins** it: the work runs once,
//!   and the new caller gets its own [`Watcher`];
//! - at most `limit` transfers hold a **slot** at once (0 = unlimited);
//!   the others queue in FIFO order and report "Waiting". A download gives
//!   its slot back before it unpacks, so the limit bounds network work;
//! - every watcher sees the transfer's **progress**: first the latest
//!   record, then newer ones (a slow watcher skips to the latest rather than
//!   falling behind or holding the transfer up), always ending with the
//!   final one, and nothing once it is released
//!   (the [`transfer`] module details this);
//! - a transfer is **cancelled only when its last watcher leaves**: it runs
//!   in its own cancellation scope, so one caller's Ctrl-C never stops a
//!   layer another pull is waiting for;
//! - failed attempts are **retried** per [`RetryPolicy`]: 5 attempts with
//!   5, 10, 15, 20 s pauses shown as a [`Status::Retrying`] countdown,
//!   except for errors marked [`Error::DoNotRetry`].
//!
//! [`DownloadManager`] pulls an image's layers in parallel and registers
//! them in order (see [`Status`] for the stages: already exists or pulling
//! fs layer, waiting, downloading, extracting, pull complete).
//! [`UploadManager`] pushes layers in parallel (preparing, waiting, then the
//! descriptor's own pushing, pushed, layer already exists, mounted from).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use haul_xfer::{Counts, ChannelOutput, Progress, ProgressOutput, Status, TransferManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let manager = TransferManager::<u64>::new(3);
//! let (output, mut records) = ChannelOutput::new();
//! let output: Arc<dyn ProgressOutput> = Arc::new(output);
//!
//! let work = |ctx: haul_xfer::TransferContext| async move {
//!     ctx.acquire_slot().await?;
//!     ctx.progress().write(Progress::status("blob", Status::Downloading(Counts::of(10, 10))));
//!     Ok(10)
//! };
//! let watcher = manager.transfer("blob", work, Arc::clone(&output)).await;
//! // A second request for the same key joins the first; its work never runs.
//! let joined = manager
//!     .transfer("blob", |_| async { unreachable!("deduplicated") }, output)
//!     .await;
//!
//! assert_eq!(watcher.transfer().wait().await.unwrap(), 10);
//! joined.release().await;
//! watcher.release().await;
//! assert_eq!(records.recv().await.unwrap().counts(), Some(Counts::of(10, 10)));
//! # }
//! ```

mod broadcast;
mod cancel_reader;
pub mod download;
mod error;
mod ids;
mod manager;
pub mod progress;
mod progress_reader;
mod retry;
mod signal;
mod slots;
mod sync;
pub mod transfer;
pub mod upload;

pub use download::{
    DownloadDescriptor, DownloadManager, Layer, LayerBlob, LayerStore, LayerStream,
    RegisteredLayer, Registration, ReleaseHandle,
};
pub use error::{Error, Operation, SharedError};
pub use ids::{ChainId, DiffId};
pub use manager::{TransferContext, TransferManager};
pub use progress::{
    short_id, ChannelOutput, Counts, DiscardOutput, Event, Message, Moved, Progress,
    ProgressOutput, Status,
};
pub use progress_reader::ProgressReader;
pub use retry::RetryPolicy;
pub use transfer::{Transfer, Watcher};
pub use upload::{RemoteDescriptor, UploadDescriptor, UploadManager};
