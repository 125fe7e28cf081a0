//! `haul pull REF...`: several references share one puller (and so one
//! transfer manager): a layer common to them moves once.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use haul_dist::oci::Reference;
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::{PullOptions, Puller};

use crate::cli::Cli;
use crate::render;
use crate::settings;

/// How `haul pull` was asked to pull.
pub(crate) struct PullArgs {
    pub all_platforms: bool,
    pub no_unpack: bool,
    pub referrers: haul_dist::ReferrerOptions,
    pub rate_limit_floor: u64,
    pub inflate_threads: Option<usize>,
}

/// Runs `haul pull`.
pub(crate) fn run(cli: &Cli, references: &[String], args: &PullArgs) -> anyhow::Result<()> {
    let PullArgs {
        all_platforms,
        no_unpack,
        ..
    } = *args;
    let references = references
        .iter()
        .map(|r| Reference::parse(r).with_context(|| format!("invalid reference {r:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let platform = settings::platform(cli)?;
    let store = settings::open_store(cli)?;
    // Progress (and the quota countdown) go to one renderer, started below.
    let (output, receiver) = ChannelOutput::new();
    let output: Arc<dyn ProgressOutput> = Arc::new(output);
    let mut config = settings::client_config(cli);
    let tick = settings::pull_settings(cli, !no_unpack).retry_tick;
    config.rate_limit = settings::quota_policy(args.rate_limit_floor, tick, &output);
    let client = RegistryClient::new(config)?;
    let runtime = settings::runtime()?;
    let options = PullOptions {
        platform,
        all_platforms,
        referrers: args.referrers.clone(),
    };
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );

    runtime.block_on(async {
        let mut pull_settings = settings::pull_settings(cli, !no_unpack);
        pull_settings.inflate_threads = settings::inflate_threads(args.inflate_threads);
        let puller = Puller::new(client.clone(), store, &pull_settings);
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let cancel = settings::cancel_on_interrupt();
        let pulls = references.iter().map(|reference| {
            let output = Arc::clone(&output);
            let (puller, options, cancel) = (&puller, &options, cancel.clone());
            async move {
                puller
                    .pull(reference, options, output, cancel)
                    .await
                    .map_err(anyhow::Error::from)
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
                Ok(report) if settings::json_output(cli) => {
                    let mut aux = serde_json::json!({
                        "Reference": report.reference.to_string(),
                        "Digest": report.digest.to_string(),
                        "UpToDate": report.up_to_date,
                    });
                    if !args.referrers.is_empty() {
                        aux["Referrers"] = serde_json::json!(report
                            .referrers
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>());
                        aux["DigestTags"] = serde_json::json!(report.digest_tags);
                    }
                    crate::outln!("{}", render::json::result_line(aux))
                }
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
