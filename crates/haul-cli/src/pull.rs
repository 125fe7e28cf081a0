//! `haul pull REF...`: several references share one puller (and so one
//! transfer manager): a layer common to them moves once.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use haul_dist::oci::Reference;
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::{PullOptions, Puller, V1Puller};

use crate::cli::{Cli, Protocol};
use crate::render;
use crate::settings;

/// Runs `haul pull`.
pub(crate) fn run(
    cli: &Cli,
    references: &[String],
    all_platforms: bool,
    no_unpack: bool,
    protocol: Protocol,
    inflate_threads: Option<usize>,
) -> anyhow::Result<()> {
    let references = references
        .iter()
        .map(|r| Reference::parse(r).with_context(|| format!("invalid reference {r:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let platform = settings::platform(cli)?;
    let store = settings::open_store(cli)?;
    let client = RegistryClient::new(settings::client_config(cli))?;
    let runtime = settings::runtime()?;
    let options = PullOptions {
        platform,
        all_platforms,
    };
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );

    runtime.block_on(async {
        let mut pull_settings = settings::pull_settings(cli, !no_unpack);
        pull_settings.inflate_threads = settings::inflate_threads(inflate_threads);
        let v1_puller = V1Puller::new(client.clone(), store.clone(), &pull_settings);
        let puller = Puller::new(client.clone(), store, &pull_settings);
        let (output, receiver) = ChannelOutput::new();
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let cancel = settings::cancel_on_interrupt();
        let output: Arc<dyn ProgressOutput> = Arc::new(output);
        let pulls = references.iter().map(|reference| {
            let output = Arc::clone(&output);
            let (puller, v1_puller, client) = (&puller, &v1_puller, &client);
            let options = &options;
            let cancel = cancel.clone();
            async move {
                let v1 = crate::protocol::use_v1(client, reference.registry(), protocol, &output)
                    .await
                    .map_err(|e| anyhow::Error::from(haul_dist::Error::Registry(e)));
                match v1 {
                    Ok(true) => v1_puller
                        .pull(reference, output, cancel)
                        .await
                        .map_err(anyhow::Error::from),
                    Ok(false) => puller
                        .pull(reference, options, output, cancel)
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                }
            }
        });
        let results = futures::future::join_all(pulls).await;
        drop(output);
        // The renderer ends once the last sender is gone.
        let _ = renderer.await;

        let mut failures = Vec::new();
        for (reference, result) in references.iter().zip(results) {
            if let Ok(report) = &result {
                for warning in &report.warnings {
                    eprintln!("warning: {warning}");
                }
            }
            match result {
                Ok(report) if settings::json_output(cli) => crate::outln!(
                    "{}",
                    render::json::result_line(serde_json::json!({
                        "Reference": report.reference.to_string(),
                        "Digest": report.digest.to_string(),
                        "UpToDate": report.up_to_date,
                    }))
                ),
                Ok(report) => crate::outln!("{}", report.reference),
                Err(err) => failures.push(format!(
                    "failed to pull {reference}: {}",
                    crate::error_sentence(&err)
                )),
            }
        }
        match failures.len() {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!(failures.join("; "))),
        }
    })
}
