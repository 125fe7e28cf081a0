//! Test support for haul: real peers for every test.
//!
//! - [`Registry`]: the real `docker-registry` (distribution 2.8) on
//!   127.0.0.1 with no auth, htpasswd auth or bearer-token auth (through the
//!   testkit's [`TokenServer`]), optionally over TLS with a generated CA.
//! - [`MemoryRegistry`]: a small in-memory registry for what distribution
//!   2.8 lacks: the OCI 1.1 referrers API, `OCI-Subject`, rate-limit headers.
//! - [`ImageBuilder`]: deterministic test images written as OCI layouts,
//!   with the expected root filesystem to compare against.
//! - [`skopeo`] and [`umoci`]: independent peers to put images into a
//!   registry, read them back and unpack them.
//! - [`peers`]: [`require_peer!`] skips (or, under `CI=true`, fails) a test
//!   whose peer binary is missing.

pub mod error;
pub mod fault_proxy;
pub mod htpasswd;
pub mod http;
pub mod image;
pub mod memory_registry;
pub mod peers;
pub mod registry;
pub mod skopeo;
pub mod tls;
pub mod token_server;
pub mod umoci;
pub mod v1_registry;

pub use error::{Error, Result};
pub use fault_proxy::{Fault, FaultProxy, Gate, Match, RequestRecord, Rule, StorageRequest};
pub use htpasswd::Credentials;
pub use image::{
    sample_image, sample_platform_images, write_oci_index_layout, BlobRef, BuiltImage, BuiltIndex,
    BuiltLayer, Compression, Content, Entry, FsNode, ImageBuilder, LayerSpec, Platform, Rootfs,
};
pub use memory_registry::{MemoryRegistry, MemoryRegistryConfig, MemoryRequest};
pub use peers::require_binary;
pub use registry::{AuthMode, Registry, RegistryConfig, TokenOptions};
pub use token_server::{Access, Grant, TokenServer, TokenServerConfig};

/// The ureq version the testkit's HTTP helpers use.
pub use ureq;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn peers_can_be_shared_between_threads() {
        assert_send_sync::<crate::Registry>();
        assert_send_sync::<crate::TokenServer>();
        assert_send_sync::<crate::ImageBuilder>();
    }
}
