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
pub(crate) fn run(
    cli: &Cli,
    reference: &str,
    referrers: &haul_dist::ReferrerOptions,
) -> anyhow::Result<()> {
    let reference =
        Reference::parse(reference).with_context(|| format!("invalid reference {reference:?}"))?;
    if settings::platform(cli)?.is_some() {
        anyhow::bail!(
            "push sends what the reference names; to push one platform, tag it first: \
             haul --platform OS/ARCH tag {} NEWREF",
            reference.familiar()
        );
    }
    let store = settings::open_store(cli)?;
    // A missing image is said before any registry is asked anything.
    if store.resolve(&reference)?.is_none() {
        return Err(anyhow::Error::from(haul_dist::Error::NotLocal(
            reference.familiar(),
        )))
        .with_context(|| format!("failed to push {}", reference.familiar()));
    }
    let client = RegistryClient::new(settings::client_config(cli))?;
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );
    settings::runtime()?.block_on(async {
        let (output, receiver) = ChannelOutput::new();
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let cancel = settings::cancel_on_interrupt();
        let output: Arc<dyn ProgressOutput> = Arc::new(output);
        let pusher = Pusher::new(client, store, &settings::push_settings(cli));
        let result = pusher
            .push_with(&reference, referrers, output, cancel.clone())
            .await
            .map(|pushed| pushed.manifest().map(|r| (r.digest.clone(), r.size)))
            .map_err(anyhow::Error::from);
        let _ = renderer.await;
        let pushed = result.with_context(|| format!("failed to push {}", reference.familiar()))?;
        if settings::json_output(cli) {
            let tag = reference.tag().unwrap_or("latest");
            let aux = match pushed {
                Some((digest, size)) => {
                    serde_json::json!({"Tag": tag, "Digest": digest.to_string(), "Size": size})
                }
                None => serde_json::json!({ "Tag": tag }),
            };
            crate::outln!("{}", render::json::result_line(aux));
        } else if cli.global.quiet {
            match pushed {
                Some((digest, _)) => crate::outln!("{}", reference.with_digest(digest)),
                None => crate::outln!("{reference}"),
            }
        }
        Ok(())
    })
}
