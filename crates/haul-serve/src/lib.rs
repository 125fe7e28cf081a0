//! `haul serve`: the local store served read-only over the OCI
//! distribution API (Docker registry HTTP API v2).
//!
//! - `GET /v2/`: `200 {}`.
//! - `GET`/`HEAD /v2/NAME/manifests/TAG|DIGEST`: the exact stored bytes,
//!   with `Docker-Content-Digest`, `Content-Type` (the stored media type)
//!   and `Content-Length`. A tag serves the index it was pulled through
//!   when the store holds that index whole, else its platform manifest
//!   (see the `store_view` module).
//! - `GET`/`HEAD /v2/NAME/blobs/DIGEST`: streamed from disk, with one
//!   `Range` honoured (`206`, `Content-Range`; `416` past the end).
//! - `GET /v2/NAME/tags/list`, `GET /v2/_catalog`: sorted, paginated by
//!   `n` and `last`, the next page named by `Link`.
//! - `GET /v2/NAME/referrers/DIGEST`: an index of the stored manifests
//!   whose `subject` is `DIGEST` (empty when none).
//! - every write: `405` with an `UNSUPPORTED` error body.
//! - `GET /metrics`: counters in the Prometheus text format.
//!
//! Repository names are the store's references without their registry
//! (`/v2/team/app/...` for `127.0.0.1:5000/team/app`), or with
//! containerd's `?ns=REGISTRY` the repository of that registry; see
//! the `names` module. Errors are OCI error bodies
//! (`{"errors":[{"code":"MANIFEST_UNKNOWN",...}]}`).
//!
//! With [`ServeOptions::upstream`] the server is a pull-through mirror:
//! what the store lacks is fetched from the upstream registry, each blob
//! once however many clients ask at the same time, and streamed to all of
//! them while it arrives (see the `upstream` module).
//!
//! Optionally over TLS ([`ServeOptions::tls`]) and only for clients with
//! credentials ([`ServeOptions::auth`]: basic against an htpasswd file, or
//! a fixed bearer token).
//!
//! The server never prints: one log line per request goes to `tracing`
//! at `info`.
//!
//! ```no_run
//! # async fn run() -> Result<(), haul_serve::Error> {
//! let store = haul_store::Store::open("/var/lib/haul")?;
//! let server = haul_serve::Server::bind(store, haul_serve::ServeOptions::default()).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server.run(shutdown).await?;
//! # Ok(()) }
//! ```

mod api;
mod auth;
mod blobs;
mod error;
mod follow;
mod listing;
mod manifests;
mod metrics;
mod names;
mod range;
mod server;
mod store_view;
mod upstream;

pub use auth::ClientAuth;
pub use error::{ApiError, Error, ErrorCode, Result};
pub use metrics::Metrics;
pub use server::{ServeOptions, Server, TlsIdentity};
pub use tokio_util::sync::CancellationToken;
pub use upstream::UpstreamOptions;
