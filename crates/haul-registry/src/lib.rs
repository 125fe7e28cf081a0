//! HTTP client for container registries: the OCI distribution API (Docker
//! registry HTTP API v2). The legacy v1 protocol will sit beside it as its
//! own module.
//!
//! A [`RegistryClient`] holds what is learnt per registry: whether it speaks
//! HTTPS or (loopback and insecure registries only) plain HTTP, the auth
//! challenge it sent, the bearer tokens it issued (cached per scope until
//! they expire, fetched again after a 401, also in the middle of a chunked
//! upload). A [`Repository`] handle then reads and writes manifests, tags,
//! referrers and blobs.
//!
//! Guarantees:
//! - credentials go only to the registry they belong to and to the token
//!   realm it names; redirects to other hosts (blob storage) carry none, and
//!   no error or log line contains a secret;
//! - everything read into memory has a size limit (manifests 4 MiB); blobs
//!   are streams, verified against their digest as they pass;
//! - transient failures (connection errors, 5xx, 408, 429 with
//!   `Retry-After`) are retried per [`RetryPolicy`], each retry logged at
//!   debug level; a "does it exist" check that keeps failing is an error,
//!   never "absent".

pub mod auth;
mod blob;
mod client;
mod config;
mod error;
mod referrers;
mod repository;
mod tls;
mod upload;
pub mod v1;

pub use blob::{BlobBody, ByteStream};
pub use client::RegistryClient;
pub use config::{ClientConfig, RetryPolicy};
pub use error::{Error, Result};
pub use referrers::fallback_tag;
pub use repository::{FetchedManifest, ManifestInfo, Repository, MANIFEST_LIMIT};
pub use upload::{
    BlobSource, FileSource, MountOutcome, ResumableUpload, SessionObserver, UploadSession,
};
