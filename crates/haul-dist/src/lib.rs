//! Pull, push and copy: the flows that join the transfer manager
//! (`haul-xfer`), the registry client (`haul-registry`) and the local store
//! (`haul-store`).

pub mod archive;
mod blob_upload;
mod copy;
mod error;
mod layer_fetch;
mod pull;
mod pull_layer;
mod push;
mod resolve;
mod schema1;
mod store_layers;
mod unpack_follow;
mod v1_pull;
mod v1_push;

pub use blob_upload::Chunking;
pub use copy::{Copier, CopyOptions, CopyReport};
pub use error::{Error, Result};
pub use pull::{PullOptions, PullReport, PullSettings, Puller};
pub use push::{PushReport, PushSettings, Pusher};
pub use resolve::{fetch_manifest, manifest_reference, resolve, Resolved};
pub use store_layers::{PulledLayer, StoreLayer, StoreLayers};
pub use unpack_follow::Unpacking;
pub use v1_pull::V1Puller;
pub use v1_push::{V1PushReport, V1Pusher};

pub use haul_oci as oci;
pub use haul_registry as registry;
pub use haul_store as store;
pub use haul_xfer as xfer;
