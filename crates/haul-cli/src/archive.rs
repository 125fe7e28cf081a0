//! `haul save REF... -o PATH [--format docker|oci]` and `haul load -i PATH`.
//!
//! The formats, what is verified and how images are named are described in
//! `haul_dist::archive`. Like `docker save`, save prints nothing; like
//! `docker load`, load prints `Loaded image: REF` for every reference it
//! sets.

use std::path::Path;

use anyhow::Context;
use haul_dist::archive::{self, LoadOptions};
use haul_dist::oci::{Platform, Reference};

use crate::cli::{ArchiveFormat, Cli};
use crate::settings;

/// Runs `haul save`.
pub fn save(
    cli: &Cli,
    references: &[String],
    output: &Path,
    format: ArchiveFormat,
) -> anyhow::Result<()> {
    let references = references
        .iter()
        .map(|r| Reference::parse(r).with_context(|| format!("invalid reference {r:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = settings::open_store(cli)?;
    let saved = match format {
        ArchiveFormat::Docker => archive::save_docker_archive(&store, &references, output),
        ArchiveFormat::Oci => archive::save_oci_layout(&store, &references, output),
    };
    match saved {
        Ok(_) => Ok(()),
        // Says all there is to say.
        Err(err @ archive::Error::NoSuchImage(_)) => Err(err.into()),
        Err(err) => {
            Err(anyhow::Error::new(err).context(format!("cannot save to {}", output.display())))
        }
    }
}

/// Runs `haul load`.
pub fn load(cli: &Cli, input: &Path) -> anyhow::Result<()> {
    let platform = cli
        .global
        .platform
        .as_deref()
        .map(|p| Platform::parse(p).with_context(|| format!("invalid platform {p:?}")))
        .transpose()?;
    let store = settings::open_store(cli)?;
    let options = LoadOptions {
        platform,
        ..LoadOptions::default()
    };
    let report = archive::load(&store, input, &options).map_err(|err| {
        let shown = input.display();
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
