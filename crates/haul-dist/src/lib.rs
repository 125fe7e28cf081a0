//! Pull, push and copy: the flows that join the transfer manager
//! (`haul-xfer`), the registry client (`haul-registry`) and the local store
//! (`haul-store`).
//!
//! An embedder needs only this crate: the other three are re-exported
//! ([`oci`], [`registry`], [`store`], [`xfer`]), and so is the
//! [`CancellationToken`] every flow takes. Progress arrives on a
//! [`xfer::ProgressOutput`] of the caller's; nothing here prints.
//!
//! ```no_run
//! use std::sync::Arc;
//! use haul_dist::{CancellationToken, PullOptions, PullSettings, Puller};
//! use haul_dist::{oci::Reference, registry::{ClientConfig, RegistryClient}, store::Store};
//!
//! # async fn pull() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RegistryClient::new(ClientConfig::default())?;
//! let puller = Puller::new(client, Store::open("/var/lib/app/images")?, &PullSettings::default());
//! let reference = Reference::parse("127.0.0.1:5000/library/app:1.0")?;
//! let report = puller
//!     .pull(&reference, &PullOptions::default(), Arc::new(haul_dist::xfer::DiscardOutput),
//!           CancellationToken::new())
//!     .await?;
//! println!("stored {} as {}", report.reference, report.digest);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/` holds runnable programs: `pull` (into a store), `copy`
//! (registry to registry with a progress callback) and `progress` (a custom
//! [`xfer::ProgressOutput`]).

pub mod archive;
mod copy;
mod error;
mod oci_types;
mod protocol;
mod pull;
mod push;
mod referrers;
mod task;

pub use copy::{
    filter_referrers, is_referrer_tag, Copier, CopyOptions, CopyReport, CopyStats, CopySurvey,
    SurveyedBlob,
};
pub use error::{Error, Result};
pub use protocol::Protocol;
pub use pull::resolve::{fetch_manifest, manifest_reference, resolve, Resolved};
pub use pull::store_layers::{PulledLayer, StoreLayer, StoreLayers};
pub use pull::unpack_follow::Unpacking;
pub use pull::v1::V1Puller;
pub use pull::{PullOptions, PullReport, PullSettings, Puller};
pub use push::compress::PushCompression;
pub use push::upload::Chunking;
pub use push::v1::{V1PushReport, V1Pusher};
pub use push::{PushReport, PushSettings, Pushed, Pusher};
pub use referrers::ReferrerOptions;

pub use tokio_util::sync::CancellationToken;

/// The cores this process may use (its CPU affinity and cgroup quota
/// included), asked once: std reads several `/proc` and `/sys` files on
/// every call, and a short command (a second pull) would otherwise ask
/// half a dozen times.
pub fn available_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub use haul_oci as oci;
pub use haul_registry as registry;
pub use haul_store as store;
pub use haul_xfer as xfer;
