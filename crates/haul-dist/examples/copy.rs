//! Copies an image from one registry to another with a progress callback:
//! any closure can receive the transfer manager's progress records.
//!
//! ```sh
//! cargo run -p haul-dist --example copy -- 127.0.0.1:5000/app:1.0 127.0.0.1:5001/app:1.0
//! ```

// A program of its own: it prints its results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::xfer::{Progress, ProgressOutput};
use haul_dist::{CancellationToken, Copier, CopyOptions, PushSettings};

/// Adapts a closure to [`ProgressOutput`]. `write` is called from the
/// transfer tasks and must return promptly.
struct Callback<F>(F);

impl<F: Fn(Progress) + Send + Sync> ProgressOutput for Callback<F> {
    fn write(&self, progress: Progress) {
        (self.0)(progress);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(source), Some(target)) = (args.next(), args.next()) else {
        return Err("usage: copy SOURCE TARGET".into());
    };
    let source = Reference::parse(&source)?;
    let target = Reference::parse(&target)?;
    let client = RegistryClient::new(ClientConfig::default())?;
    let copier = Copier::new(client, &PushSettings::default());

    let progress = Callback(|record: Progress| eprintln!("{record:?}"));
    let report = copier
        .copy(
            &source,
            &target,
            &CopyOptions::default(),
            Arc::new(progress),
            CancellationToken::new(),
        )
        .await?;
    println!("{target}: {} ({} bytes)", report.digest, report.size);
    Ok(())
}
