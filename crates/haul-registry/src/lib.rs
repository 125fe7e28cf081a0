//! HTTP client for container registries: the OCI distribution API (Docker
//! registry HTTP API v2), and in the [`v1`] module the legacy Docker
//! registry v1 protocol for registries that predate it.
//!
//! A [`RegistryClient`] holds what is learnt per registry: whether it speaks
//! HTTPS or (loopback and insecure registries only) plain HTTP and whether
//! it speaks v2 at all (one `GET /v2/` per registry for the life of the
//! client, without credentials; a 404 means v1), the auth challenge it
//! sent, the bearer tokens it issued (cached per scope until they expire,
//! fetched again after a 401, also in the middle of a chunked upload). A
//! [`Repository`] handle then reads and writes manifests, tags, referrers
//! and blobs; reads try the registry's mirrors first, each request to a
//! mirror carrying containerd's `?ns=REGISTRY`.
//!
//! Guarantees:
//! - credentials go only in answer to a challenge: Basic ones to the
//!   registry after it asked for Basic auth, to the token realm it named
//!   after a Bearer challenge; never to a probe, and redirects to other
//!   hosts (blob storage) carry none; no error or log line contains a secret
//!   (`-vv` request logs show `<redacted>` for secret headers);
//! - a registry that cannot be reached (refused, unknown host, TLS failure)
//!   is not retried; the error names the host and the cause, and for TLS
//!   how to trust the certificate or that the server speaks plain HTTP;
//! - everything read into memory has a size limit (manifests 4 MiB); blobs
//!   are streams, verified against their digest as they pass;
//! - transient failures (connection errors, 5xx, 408, 429 with
//!   `Retry-After`) are retried per [`RetryPolicy`], each retry logged at
//!   info level; a "does it exist" check that keeps failing is an error,
//!   never "absent".

pub mod auth;
mod blob;
mod client;
mod config;
mod error;
pub mod ratelimit;
mod referrers;
mod repository;
mod send;
mod tls;
mod transport;
mod upload;
pub mod v1;

pub use blob::{BlobBody, ByteStream};
pub use client::RegistryClient;
pub use config::{user_config_dir, ClientConfig, RetryPolicy};
pub use error::{Error, Result};
pub use referrers::fallback_tag;
pub use repository::{FetchedManifest, ManifestInfo, Repository, MANIFEST_LIMIT};
pub use upload::{
    BlobSource, FileSource, MountOutcome, ResumableUpload, SessionObserver, UploadSession,
};
