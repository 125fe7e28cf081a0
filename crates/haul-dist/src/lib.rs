//! Pull, push and copy: the flows that join the transfer manager
//! (`haul-xfer`), the registry client (`haul-registry`) and the local store
//! (`haul-store`).
//!
//! The flows arrive with their own issues; this crate already depends on the
//! crates the design draws it on top of.

pub use haul_registry as registry;
pub use haul_store as store;
pub use haul_xfer as xfer;

/// Everything that can go wrong while moving an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry client failed.
    #[error(transparent)]
    Registry(#[from] haul_registry::Error),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] haul_store::Error),
}
