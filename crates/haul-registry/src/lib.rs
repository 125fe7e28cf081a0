//! HTTP client for container registries: the OCI distribution API (Docker
//! registry HTTP API v2) and, for old registries, the legacy v1 protocol.
//!
//! The client itself arrives with its own issue; this crate already sits in
//! its place in the dependency graph (`haul-dist -> haul-registry -> haul-oci`).

/// Everything that can go wrong while talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not be reached or the connection broke.
    #[error("cannot reach registry {registry}: {message}")]
    Unreachable {
        /// Host (and port) of the registry.
        registry: String,
        /// What the transport reported.
        message: String,
    },
}
