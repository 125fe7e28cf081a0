//! `haul copy SRC DST`: between registries, streamed; `oci:` and
//! `docker-archive:` endpoints go through a temporary store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use haul_dist::archive::{self, LoadOptions};
use haul_dist::oci::{Platform, Reference};
use haul_dist::registry::RegistryClient;
use haul_dist::store::Store;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::{Copier, CopyOptions, PullOptions, Puller, Pusher};

use crate::cli::Cli;
use crate::render;
use crate::settings;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An image in a registry (`docker://REF` or a bare reference).
    Registry(Reference),
    /// An OCI image layout directory, with an optional tag.
    Oci { dir: PathBuf, tag: Option<String> },
    /// A docker-archive tar file.
    DockerArchive(PathBuf),
}

/// Parses `docker://REF`, `REF`, `oci:DIR[:TAG]` or `docker-archive:FILE`.
pub fn parse_endpoint(text: &str) -> anyhow::Result<Endpoint> {
    if let Some(rest) = text.strip_prefix("oci:") {
        let (dir, tag) = match rest.split_once(':') {
            Some((dir, tag)) => (dir, Some(tag.to_string())),
            None => (rest, None),
        };
        if dir.is_empty() {
            bail!("{text:?}: the OCI layout directory is missing");
        }
        return Ok(Endpoint::Oci {
            dir: PathBuf::from(dir),
            tag,
        });
    }
    if let Some(file) = text.strip_prefix("docker-archive:") {
        if file.is_empty() {
            bail!("{text:?}: the archive file is missing");
        }
        return Ok(Endpoint::DockerArchive(PathBuf::from(file)));
    }
    let reference = text.strip_prefix("docker://").unwrap_or(text);
    Ok(Endpoint::Registry(
        Reference::parse(reference).with_context(|| format!("invalid reference {reference:?}"))?,
    ))
}

/// Runs `haul copy`.
pub fn run(cli: &Cli, source: &str, destination: &str, all_platforms: bool) -> anyhow::Result<()> {
    let source = parse_endpoint(source)?;
    let destination = parse_endpoint(destination)?;
    let platform = cli
        .global
        .platform
        .as_deref()
        .map(|p| Platform::parse(p).with_context(|| format!("invalid platform {p:?}")))
        .transpose()?;
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
        let output: Arc<dyn ProgressOutput> = Arc::new(output);
        let result = match (&source, &destination) {
            (Endpoint::Registry(from), Endpoint::Registry(to)) => {
                let copier = Copier::new(client, &settings::push_settings(cli));
                let options = CopyOptions {
                    platform,
                    all_platforms,
                };
                copier
                    .copy(from, to, &options, output, settings::cancel_on_interrupt())
                    .await
                    .map(|report| Some(to.with_digest(report.digest)))
                    .map_err(anyhow::Error::from)
            }
            _ => via_temporary_store(cli, client, &source, &destination, platform, output).await,
        };
        let _ = renderer.await;
        let done = result.with_context(|| {
            format!(
                "failed to copy {} to {}",
                shown(&source),
                shown(&destination)
            )
        })?;
        match done {
            Some(reference) if cli.global.quiet => crate::outln!("{reference}"),
            _ if kind == render::RenderKind::Json => {
                let digest = done
                    .as_ref()
                    .and_then(|r| r.digest())
                    .map(|d| d.to_string());
                crate::outln!(
                    "{}",
                    render::json::result_line(serde_json::json!({
                        "Source": shown(&source),
                        "Destination": shown(&destination),
                        "Digest": digest,
                    }))
                );
            }
            _ => {}
        }
        Ok(())
    })
}

/// How an endpoint is named in messages.
fn shown(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Registry(r) => r.familiar(),
        Endpoint::Oci {
            dir,
            tag: Some(tag),
        } => format!("oci:{}:{tag}", dir.display()),
        Endpoint::Oci { dir, tag: None } => format!("oci:{}", dir.display()),
        Endpoint::DockerArchive(file) => format!("docker-archive:{}", file.display()),
    }
}

/// Copies to or from `oci:` and `docker-archive:` through a store in a
/// temporary directory (never the user's): the source is pulled (blobs
/// only) or loaded into it, then pushed or saved from it.
async fn via_temporary_store(
    cli: &Cli,
    client: RegistryClient,
    source: &Endpoint,
    destination: &Endpoint,
    platform: Option<Platform>,
    output: Arc<dyn ProgressOutput>,
) -> anyhow::Result<Option<Reference>> {
    let scratch = tempfile::Builder::new().prefix("haul-copy-").tempdir()?;
    let store = Store::open(scratch.path())?;
    let cancel = settings::cancel_on_interrupt();
    // 1. The source into the scratch store, under one reference.
    let image = match source {
        Endpoint::Registry(from) => {
            let puller = Puller::new(
                client.clone(),
                store.clone(),
                &settings::pull_settings(cli, false),
            );
            let options = PullOptions {
                platform: platform.clone(),
                all_platforms: false,
            };
            puller
                .pull(from, &options, Arc::clone(&output), cancel.clone())
                .await?;
            from.clone()
        }
        Endpoint::Oci { dir, tag } => load_one(&store, dir, tag.as_deref(), platform.clone())?,
        Endpoint::DockerArchive(file) => load_one(&store, file, None, platform.clone())?,
    };
    // 2. From there to the destination.
    match destination {
        Endpoint::Registry(to) => {
            let record = store
                .resolve(&image)?
                .with_context(|| format!("{} vanished from the scratch store", image.familiar()))?;
            store.tag(to, &record.id)?;
            let pusher = Pusher::new(client, store.clone(), &settings::push_settings(cli));
            let report = pusher.push(to, output, cancel).await?;
            Ok(Some(to.with_digest(report.digest)))
        }
        Endpoint::Oci { dir, tag } => {
            let named = match tag {
                Some(tag) => {
                    let renamed = image.without_digest().with_tag(tag)?;
                    let record = store
                        .resolve(&image)?
                        .context("the copied image vanished")?;
                    store.tag(&renamed, &record.id)?;
                    renamed
                }
                None => image,
            };
            drop(output);
            archive::save_oci_layout(&store, std::slice::from_ref(&named), dir)?;
            Ok(None)
        }
        Endpoint::DockerArchive(file) => {
            drop(output);
            archive::save_docker_archive(&store, std::slice::from_ref(&image), file)?;
            Ok(None)
        }
    }
}

/// Loads an archive or layout into `store` and returns the reference of
/// the image `tag` names (or its only image).
fn load_one(
    store: &Store,
    input: &Path,
    tag: Option<&str>,
    platform: Option<Platform>,
) -> anyhow::Result<Reference> {
    let options = LoadOptions {
        platform,
        ..LoadOptions::default()
    };
    let report = archive::load(store, input, &options)?;
    let references: Vec<&Reference> = report
        .images
        .iter()
        .flat_map(|i| i.references.iter().map(|(r, _)| r))
        .collect();
    let chosen = match tag {
        Some(tag) => references.iter().find(|r| r.tag() == Some(tag)),
        None if report.images.len() == 1 => references.first(),
        None => bail!(
            "{} holds several images: name one with :TAG",
            input.display()
        ),
    };
    chosen.map(|r| (*r).clone()).with_context(|| {
        format!(
            "{} has no image tagged {}",
            input.display(),
            tag.unwrap_or("")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_skopeo_transports() {
        assert_eq!(
            parse_endpoint("docker://alpine").unwrap(),
            Endpoint::Registry(Reference::parse("alpine").unwrap())
        );
        assert_eq!(
            parse_endpoint("127.0.0.1:5000/a:1").unwrap(),
            Endpoint::Registry(Reference::parse("127.0.0.1:5000/a:1").unwrap())
        );
        assert_eq!(
            parse_endpoint("oci:/tmp/x:v1").unwrap(),
            Endpoint::Oci {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse_endpoint("oci:rel").unwrap(),
            Endpoint::Oci {
                dir: "rel".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_endpoint("docker-archive:/tmp/a.tar").unwrap(),
            Endpoint::DockerArchive("/tmp/a.tar".into())
        );
        assert!(parse_endpoint("oci:").is_err());
        assert!(parse_endpoint("docker://library/UPPER").is_err());
    }
}
