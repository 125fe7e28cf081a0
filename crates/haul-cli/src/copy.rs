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
use haul_dist::xfer::{ChannelOutput, Event, Message, Progress, ProgressOutput};
use haul_dist::{Copier, CopyOptions, PullOptions, Puller, Pusher};

use crate::cli::Cli;
use crate::render;
use crate::settings;

/// One side of a copy, in skopeo's transport syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// An image in a registry (`docker://REF` or a bare reference).
    Registry(Reference),
    /// An OCI image layout directory (`oci:DIR[:REF]`).
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// A tag or full reference naming the image (its `ref.name`).
        name: Option<String>,
    },
    /// A tar of an OCI image layout (`oci-archive:FILE[:REF]`).
    OciArchive {
        /// The tar file.
        file: PathBuf,
        /// As for [`Endpoint::Oci`].
        name: Option<String>,
    },
    /// A docker-archive tar (`docker-archive:FILE[:REF]`).
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// The image inside (`NAME:TAG`, or `@N` for the N-th), or for a
        /// destination the name to write.
        name: Option<String>,
    },
}

/// skopeo's transports that haul does not offer, refused by name so that
/// `dir:/tmp/x` never becomes a registry lookup.
const UNSUPPORTED_TRANSPORTS: [&str; 6] = [
    "containers-storage",
    "dir",
    "docker-daemon",
    "ostree",
    "sif",
    "tarball",
];

/// Splits `PATH[:NAME]` at its first `:`, as skopeo does (so a path holds
/// no `:`), refusing an empty path.
fn path_and_name(text: &str, rest: &str, what: &str) -> anyhow::Result<(PathBuf, Option<String>)> {
    let (path, name) = match rest.split_once(':') {
        Some((path, name)) if !name.is_empty() => (path, Some(name.to_string())),
        Some((path, _)) => (path, None),
        None => (rest, None),
    };
    if path.is_empty() {
        bail!("{text:?}: the {what} is missing");
    }
    Ok((PathBuf::from(path), name))
}

/// Parses `docker://REF`, `REF`, `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`
/// or `docker-archive:FILE[:REF]`, and refuses the transports haul lacks.
pub(crate) fn parse_endpoint(text: &str) -> anyhow::Result<Endpoint> {
    if let Some(rest) = text.strip_prefix("oci:") {
        let (dir, name) = path_and_name(text, rest, "OCI layout directory")?;
        return Ok(Endpoint::Oci { dir, name });
    }
    if let Some(rest) = text.strip_prefix("oci-archive:") {
        let (file, name) = path_and_name(text, rest, "archive file")?;
        return Ok(Endpoint::OciArchive { file, name });
    }
    if let Some(rest) = text.strip_prefix("docker-archive:") {
        let (file, name) = path_and_name(text, rest, "archive file")?;
        return Ok(Endpoint::DockerArchive { file, name });
    }
    if let Some((transport, _)) = text.split_once(':') {
        if UNSUPPORTED_TRANSPORTS.contains(&transport) {
            bail!(
                "{text:?}: haul does not support the {transport}: transport; use docker://, oci:, \
                 oci-archive: or docker-archive:"
            );
        }
    }
    let reference = text.strip_prefix("docker://").unwrap_or(text);
    Ok(Endpoint::Registry(
        Reference::parse(reference).with_context(|| format!("invalid reference {reference:?}"))?,
    ))
}

/// Runs `haul copy`.
pub(crate) fn run(
    cli: &Cli,
    source: &str,
    destination: &str,
    all_platforms: bool,
    referrers: &crate::referrers::ReferrerArgs,
    rate_limit_floor: u64,
) -> anyhow::Result<()> {
    let source = parse_endpoint(source)?;
    let destination = parse_endpoint(destination)?;
    check_before_moving(&source, &destination, all_platforms)?;
    let registries = matches!(
        (&source, &destination),
        (Endpoint::Registry(_), Endpoint::Registry(_))
    );
    if referrers.any() && !registries {
        bail!(
            "--referrers, --digest-tags and --referrers-filter copy between registries only \
             (docker:// on both sides); for a layout, `haul pull --referrers REF` then \
             `haul save --format oci --referrers REF -o DIR`"
        );
    }
    let platform = settings::platform(cli)?;
    // Progress (and the quota countdown) go to one renderer, started below.
    let (output, receiver) = ChannelOutput::new();
    let output: Arc<dyn ProgressOutput> = Arc::new(output);
    let mut config = settings::client_config(cli);
    let tick = settings::push_settings(cli).retry_tick;
    config.rate_limit = settings::quota_policy(rate_limit_floor, tick, &output);
    let client = RegistryClient::new(config)?;
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );
    settings::runtime()?.block_on(async {
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let result = match (&source, &destination) {
            (Endpoint::Registry(from), Endpoint::Registry(to)) => {
                let copier = Copier::new(client, &settings::push_settings(cli));
                let mut options = CopyOptions {
                    platform,
                    all_platforms,
                    ..CopyOptions::default()
                };
                referrers.apply(&mut options, false)?;
                copier
                    .copy(from, to, &options, output, settings::cancel_on_interrupt())
                    .await
                    .map(|report| Some(to.with_digest(report.digest)))
                    .map_err(anyhow::Error::from)
            }
            _ => {
                // The scratch store's pull is not a pull into the user's
                // store: its "Status: Downloaded newer image" line would lie.
                let output: Arc<dyn ProgressOutput> = match &destination {
                    Endpoint::Registry(_) => output,
                    _ => Arc::new(WithoutPullStatus(output)),
                };
                via_temporary_store(cli, client, &source, &destination, platform, output).await
            }
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
            _ if settings::json_output(cli) => {
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
            Some(reference) if cli.global.quiet => crate::outln!("{reference}"),
            None if !cli.global.quiet => {
                crate::outln!("Wrote {} to {}", shown(&source), shown(&destination))
            }
            _ => {}
        }
        Ok(())
    })
}

/// Progress without the pull's closing `Status:` line.
struct WithoutPullStatus(Arc<dyn ProgressOutput>);

impl ProgressOutput for WithoutPullStatus {
    fn write(&self, progress: Progress) {
        if let Event::Message(Message::PullFinished { .. }) = progress.event {
            return;
        }
        self.0.write(progress);
    }
}

/// Refuses, before a byte moves, what the copy could not finish: every
/// platform with a non-registry end (the scratch store holds one image),
/// and an OCI layout destination named by more than a tag.
fn check_before_moving(
    source: &Endpoint,
    destination: &Endpoint,
    all_platforms: bool,
) -> anyhow::Result<()> {
    let registries = matches!(
        (source, destination),
        (Endpoint::Registry(_), Endpoint::Registry(_))
    );
    if all_platforms && !registries {
        bail!(
            "--all-platforms copies between registries only (docker:// on both sides); an oci:, \
             oci-archive: or docker-archive: end takes one platform (choose it with --platform)"
        );
    }
    if let Endpoint::Oci {
        name: Some(name), ..
    }
    | Endpoint::OciArchive {
        name: Some(name), ..
    } = destination
    {
        if name.contains(['/', ':', '@']) {
            bail!("an OCI layout destination is named by a tag (oci:DIR:TAG), not {name:?}");
        }
    }
    Ok(())
}

/// How an endpoint is named in messages.
fn shown(endpoint: &Endpoint) -> String {
    let with_name = |transport: &str, path: &Path, name: &Option<String>| match name {
        Some(name) => format!("{transport}:{}:{name}", path.display()),
        None => format!("{transport}:{}", path.display()),
    };
    match endpoint {
        Endpoint::Registry(r) => r.familiar(),
        Endpoint::Oci { dir, name } => with_name("oci", dir, name),
        Endpoint::OciArchive { file, name } => with_name("oci-archive", file, name),
        Endpoint::DockerArchive { file, name } => with_name("docker-archive", file, name),
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
                ..PullOptions::default()
            };
            puller
                .pull(from, &options, Arc::clone(&output), cancel.clone())
                .await?;
            from.clone()
        }
        Endpoint::Oci { dir: path, name }
        | Endpoint::OciArchive { file: path, name }
        | Endpoint::DockerArchive { file: path, name } => {
            load_one(&store, path, name.as_deref(), platform.clone())?
        }
    };
    // 2. From there to the destination. An OCI layout gets OCI media types,
    // as skopeo writes it (skopeo 1.9 and umoci read nothing else there).
    let as_skopeo = archive::OciSaveOptions {
        platform: None,
        oci_media_types: true,
        referrers: false,
    };
    match destination {
        Endpoint::Registry(to) => {
            let resolved = store
                .resolve(&image)?
                .with_context(|| format!("{} vanished from the scratch store", image.familiar()))?;
            store.tag(to, &resolved.target())?;
            let pusher = Pusher::new(client, store.clone(), &settings::push_settings(cli));
            let report = pusher.push(to, output, cancel).await?;
            Ok(report.manifest().map(|r| to.with_digest(r.digest.clone())))
        }
        Endpoint::Oci { dir, name } => {
            let named = rename(&store, &image, name.as_deref())?;
            drop(output);
            archive::save_oci_layout_with(&store, std::slice::from_ref(&named), &as_skopeo, dir)?;
            Ok(None)
        }
        Endpoint::OciArchive { file, name } => {
            let named = rename(&store, &image, name.as_deref())?;
            drop(output);
            // save_oci_layout writes a tar for a `.tar` name: write one
            // beside the target, then put it in place.
            let parent = match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let spool = tempfile::Builder::new()
                .prefix(".haul-copy-")
                .tempdir_in(parent)
                .with_context(|| format!("cannot write {}", file.display()))?;
            let tar = spool.path().join("layout.tar");
            archive::save_oci_layout_with(&store, std::slice::from_ref(&named), &as_skopeo, &tar)?;
            if std::fs::metadata(file).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
                // A device or pipe is written into, never renamed over.
                let mut device = std::fs::OpenOptions::new().write(true).open(file)?;
                std::io::copy(&mut std::fs::File::open(&tar)?, &mut device)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                return Ok(None);
            }
            std::fs::rename(&tar, file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            Ok(None)
        }
        Endpoint::DockerArchive { file, name } => {
            let named = rename(&store, &image, name.as_deref())?;
            drop(output);
            archive::save_docker_archive(&store, std::slice::from_ref(&named), file)?;
            Ok(None)
        }
    }
}

/// The reference to write `image` under at a destination named `name`
/// (tagged so in the scratch store): a tag keeps the image's repository, a
/// full reference replaces it (an OCI layout's name was checked to be a
/// tag before the copy began).
fn rename(store: &Store, image: &Reference, name: Option<&str>) -> anyhow::Result<Reference> {
    let Some(name) = name else {
        return Ok(image.clone());
    };
    let renamed = if name.contains(['/', ':', '@']) {
        Reference::parse(name).with_context(|| format!("invalid reference {name:?}"))?
    } else {
        image.without_digest().with_tag(name)?
    };
    let resolved = store
        .resolve(image)?
        .context("the copied image vanished from the scratch store")?;
    store.tag(&renamed, &resolved.target())?;
    Ok(renamed)
}

/// Loads an archive or layout into `store` and returns the reference of
/// the image `name` picks: a tag, a full reference, `@N` (the N-th image,
/// from 0), or nothing when the input holds one image.
fn load_one(
    store: &Store,
    input: &Path,
    name: Option<&str>,
    platform: Option<Platform>,
) -> anyhow::Result<Reference> {
    let options = LoadOptions {
        platform,
        ..LoadOptions::default()
    };
    let report = archive::load(store, input, &options)?;
    let first_reference = |n: usize| {
        report
            .images
            .get(n)
            .and_then(|i| i.references.first())
            .map(|(r, _)| r)
    };
    let chosen = match name {
        None if report.images.len() == 1 => first_reference(0),
        None => bail!(
            "{} holds {} images: name one with :REF or :@N",
            input.display(),
            report.images.len()
        ),
        Some(name) => match name.strip_prefix('@') {
            Some(index) => {
                let index: usize = index
                    .parse()
                    .with_context(|| format!("{name:?} is not @ followed by a number"))?;
                first_reference(index)
            }
            None => {
                let full = Reference::parse(name)
                    .ok()
                    .filter(|_| name.contains(['/', ':', '@']));
                report
                    .images
                    .iter()
                    .flat_map(|i| i.references.iter().map(|(r, _)| r))
                    .find(|r| match &full {
                        Some(full) => *r == full,
                        None => r.tag() == Some(name),
                    })
            }
        },
    };
    chosen.cloned().with_context(|| {
        format!(
            "{} has no image named {}",
            input.display(),
            name.unwrap_or("")
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
                name: Some("v1".into())
            }
        );
        assert_eq!(
            parse_endpoint("oci:/root/content:127.0.0.1:5000/small:latest").unwrap(),
            Endpoint::Oci {
                dir: "/root/content".into(),
                name: Some("127.0.0.1:5000/small:latest".into())
            }
        );
        assert_eq!(
            parse_endpoint("oci:rel").unwrap(),
            Endpoint::Oci {
                dir: "rel".into(),
                name: None
            }
        );
        assert_eq!(
            parse_endpoint("docker-archive:/tmp/a.tar").unwrap(),
            Endpoint::DockerArchive {
                file: "/tmp/a.tar".into(),
                name: None
            }
        );
        assert_eq!(
            parse_endpoint("docker-archive:/tmp/a.tar:@1").unwrap(),
            Endpoint::DockerArchive {
                file: "/tmp/a.tar".into(),
                name: Some("@1".into())
            }
        );
        assert_eq!(
            parse_endpoint("oci-archive:a.tar:app:1").unwrap(),
            Endpoint::OciArchive {
                file: "a.tar".into(),
                name: Some("app:1".into())
            }
        );
        for unsupported in [
            "dir:/tmp/x",
            "containers-storage:alpine",
            "docker-daemon:a:1",
        ] {
            let err = parse_endpoint(unsupported).unwrap_err().to_string();
            assert!(err.contains("does not support the"), "{unsupported}: {err}");
        }
        assert!(parse_endpoint("oci:").is_err());
        assert!(parse_endpoint("docker://library/UPPER").is_err());
    }
}
