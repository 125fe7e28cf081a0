//! Pulls an image into a local store, the way `haul pull` does.
//!
//! ```sh
//! cargo run -p haul-dist --example pull -- 127.0.0.1:5000/library/app:1.0 /tmp/store
//! ```
//!
//! Progress is discarded; the report says what was stored.

// A program of its own: it prints its results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::DiscardOutput;
use haul_dist::{CancellationToken, PullOptions, PullSettings, Puller};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(reference), Some(root)) = (args.next(), args.next()) else {
        return Err("usage: pull REFERENCE STORE_DIR".into());
    };
    let reference = Reference::parse(&reference)?;
    let client = RegistryClient::new(ClientConfig::default())?;
    let store = Store::open(&root)?;
    let puller = Puller::new(client, store, &PullSettings::default());

    let report = puller
        .pull(
            &reference,
            &PullOptions::default(),
            Arc::new(DiscardOutput),
            CancellationToken::new(),
        )
        .await?;
    println!(
        "{}: {} ({} image(s), {} layer bytes fetched{})",
        report.reference,
        report.digest,
        report.images.len(),
        report.transferred,
        if report.up_to_date {
            ", up to date"
        } else {
            ""
        }
    );
    Ok(())
}
