//! `haul push REF`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use haul_dist::oci::Reference;
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::Pusher;

use crate::cli::Cli;
use crate::render;
use crate::settings;

/// Runs `haul push`.
pub fn run(cli: &Cli, reference: &str) -> anyhow::Result<()> {
    let reference =
        Reference::parse(reference).with_context(|| format!("invalid reference {reference:?}"))?;
    let store = settings::open_store(cli)?;
    let client = RegistryClient::new(settings::client_config(cli))?;
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );
    settings::runtime()?.block_on(async {
        let pusher = Pusher::new(client, store, &settings::push_settings(cli));
        let (output, receiver) = ChannelOutput::new();
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let cancel = settings::cancel_on_interrupt();
        let output: Arc<dyn ProgressOutput> = Arc::new(output);
        let result = pusher.push(&reference, output, cancel.clone()).await;
        let _ = renderer.await;
        let report = result.with_context(|| format!("failed to push {}", reference.familiar()))?;
        if cli.global.quiet {
            println!("{}", reference.with_digest(report.digest));
        }
        Ok(())
    })
}
