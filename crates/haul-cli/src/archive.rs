//! `haul save REF... -o PATH [--format docker|oci]` and `haul load -i PATH`.
//!
//! The formats, what is verified and how images are named are described in
//! `haul_dist::archive`. Like `docker save`, save prints nothing; like
//! `docker load`, load prints `Loaded image: REF` for every reference it
//! sets.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use haul_dist::archive::{self, LoadOptions};
use haul_dist::oci::{Platform, Reference};
use haul_dist::store::Store;

use crate::cli::{ArchiveFormat, Cli};
use crate::settings;

/// Whether a path argument means a standard stream: absent, or `-`.
fn is_standard_stream(path: Option<&Path>) -> bool {
    path.is_none_or(|p| p.as_os_str() == "-")
}

/// Runs `haul save`: to `output`, or (absent or `-`) to standard output,
/// which must not be a terminal.
pub(crate) fn save(
    cli: &Cli,
    references: &[String],
    output: Option<&Path>,
    format: ArchiveFormat,
    referrers: bool,
) -> anyhow::Result<()> {
    if referrers && format != ArchiveFormat::Oci {
        anyhow::bail!("--referrers saves into an OCI layout only (--format oci)");
    }
    let references = references
        .iter()
        .map(|r| Reference::parse(r).with_context(|| format!("invalid reference {r:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = settings::open_store(cli)?;
    let platform = settings::platform(cli)?;
    let to = Destination {
        format,
        platform: platform.as_ref(),
        referrers,
    };
    let Some(output) = output.filter(|_| !is_standard_stream(output)) else {
        return save_to_stdout(&store, &references, &to);
    };
    save_to(&store, &references, output, &to)
}

/// How `save` writes: the format, and the platform `--platform` picks.
struct Destination<'a> {
    format: ArchiveFormat,
    platform: Option<&'a Platform>,
    /// Write the saved manifests' stored referrers too.
    referrers: bool,
}

fn save_to(
    store: &Store,
    references: &[Reference],
    output: &Path,
    to: &Destination<'_>,
) -> anyhow::Result<()> {
    let saved = match to.format {
        ArchiveFormat::Docker => {
            archive::save_docker_archive_for(store, references, to.platform, output)
        }
        ArchiveFormat::Oci => {
            let options = archive::OciSaveOptions {
                platform: to.platform.cloned(),
                oci_media_types: false,
                referrers: to.referrers,
            };
            archive::save_oci_layout_with(store, references, &options, output)
        }
    };
    match saved {
        Ok(_) => Ok(()),
        // Says all there is to say.
        Err(err @ (archive::Error::NoSuchImage(_) | archive::Error::NoLocalPlatform { .. })) => {
            Err(err.into())
        }
        Err(err) => {
            Err(anyhow::Error::new(err).context(format!("cannot save to {}", output.display())))
        }
    }
}

/// `haul save REF > FILE`: the archive is assembled in the store's
/// temporary directory (it is built from verified blobs, never half-sent),
/// then copied to standard output and removed.
fn save_to_stdout(
    store: &Store,
    references: &[Reference],
    to: &Destination<'_>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if stdout.is_terminal() {
        anyhow::bail!(
            "refusing to write an archive to a terminal: give -o FILE or redirect standard output"
        );
    }
    let spool = tempfile::Builder::new()
        .prefix("save-")
        .tempdir_in(store.root().join("tmp"))
        .context("cannot make a temporary directory in the store")?;
    // A `.tar` name makes the OCI layout a tar: a directory cannot go down a pipe.
    let file = spool.path().join("archive.tar");
    save_to(store, references, &file, to)?;
    let mut archive = std::fs::File::open(&file).context("cannot reopen the saved archive")?;
    match std::io::copy(&mut archive, &mut stdout) {
        // The reader went away (`haul save REF | head -c 1`): done.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result
            .map(|_| ())
            .context("cannot write to standard output"),
    }
}

/// Runs `haul load`: from `input`, or (absent or `-`) from standard input,
/// which must not be a terminal.
pub(crate) fn load(cli: &Cli, input: Option<&Path>) -> anyhow::Result<()> {
    let stdin = is_standard_stream(input);
    if stdin && std::io::stdin().is_terminal() {
        anyhow::bail!(
            "requested load from standard input, but it is a terminal: give -i FILE or redirect it"
        );
    }
    let input = if stdin {
        Path::new("/dev/stdin")
    } else {
        input.expect("a path unless standard input")
    };
    let platform = settings::platform(cli)?;
    let store = settings::open_store(cli)?;
    let options = LoadOptions {
        platform,
        ..LoadOptions::default()
    };
    let report = archive::load(&store, input, &options).map_err(|err| {
        let shown = if stdin {
            "standard input".into()
        } else {
            input.display().to_string()
        };
        match err {
            // Already about the input itself: say it once.
            archive::Error::Io { path, source } if path == input => {
                anyhow::anyhow!("cannot load {shown}: {source}")
            }
            archive::Error::NotAnArchive { path, reason } if path == input => {
                anyhow::anyhow!("cannot load {shown}: {reason}")
            }
            other => anyhow::Error::new(other).context(format!("cannot load {shown}")),
        }
    })?;
    for loaded in &report.images {
        for (reference, previous) in &loaded.references {
            let shown = reference.familiar();
            if let Some(previous) = previous {
                crate::outln!(
                    "The image {shown} already exists, renaming the old one with ID {previous} to empty string"
                );
            }
            crate::outln!("Loaded image: {shown}");
        }
    }
    Ok(())
}
