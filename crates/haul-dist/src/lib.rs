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
mod blob_upload;
mod copy;
mod copy_blob;
mod error;
mod inflate_threads;
mod layer_fetch;
mod oci_types;
mod own_blobs;
mod pull;
mod pull_layer;
mod push;
mod push_compress;
mod resolve;
mod schema1;
mod store_layers;
mod unpack_follow;
mod v1_pull;
mod v1_push;

pub use blob_upload::Chunking;
pub use copy::{
    filter_referrers, is_referrer_tag, Copier, CopyOptions, CopyReport, CopyStats, CopySurvey,
    SurveyedBlob,
};
pub use error::{Error, Result};
pub use pull::{PullOptions, PullReport, PullSettings, Puller};
pub use push::{PushReport, PushSettings, Pusher};
pub use push_compress::PushCompression;
pub use resolve::{fetch_manifest, manifest_reference, resolve, Resolved};
pub use store_layers::{PulledLayer, StoreLayer, StoreLayers};
pub use unpack_follow::Unpacking;
pub use v1_pull::V1Puller;
pub use v1_push::{V1PushReport, V1Pusher};

pub use tokio_util::sync::CancellationToken;

pub use haul_oci as oci;
pub use haul_registry as registry;
pub use haul_store as store;
pub use haul_xfer as xfer;
