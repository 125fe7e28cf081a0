//! `haul copy SRC DST`: between registries, streamed; `oci:` and
//! `docker-archive:` endpoints go through a temporary store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use haul_dist::oci::{Platform, Reference};
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::{Copier, CopyOptions};

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
    let (Endpoint::Registry(from), Endpoint::Registry(to)) = (&source, &destination) else {
        bail!("copying to or from oci: and docker-archive: is not available in this build yet");
    };
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
    let options = CopyOptions {
        platform,
        all_platforms,
    };
    settings::runtime()?.block_on(async {
        let copier = Copier::new(client, &settings::push_settings(cli));
        let (output, receiver) = ChannelOutput::new();
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let output: Arc<dyn ProgressOutput> = Arc::new(output);
        let result = copier
            .copy(from, to, &options, output, settings::cancel_on_interrupt())
            .await;
        let _ = renderer.await;
        let report = result
            .with_context(|| format!("failed to copy {} to {}", from.familiar(), to.familiar()))?;
        if cli.global.quiet {
            println!("{}", to.with_digest(report.digest));
        }
        Ok(())
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
