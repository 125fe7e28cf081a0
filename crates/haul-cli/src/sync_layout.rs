//! `haul sync` with an OCI image layout directory at one end, for
//! air-gapped transfer: registry images into `oci:DIR`, and the images of
//! `oci:DIR` back into a registry prefix. Both go through a scratch store
//! (never the user's) and the archive code: one puller (one download
//! manager: a blob shared by several images is fetched once) then one
//! save of every image into the layout; or one load of the layout then one
//! pusher (one upload manager, mounts between the target repositories).
//! One platform per image, and no referrers: a layout holds images only.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use haul_dist::archive::{self, LoadOptions};
use haul_dist::oci::{Platform, Reference};
use haul_dist::registry::RegistryClient;
use haul_dist::store::Store;
use haul_dist::xfer::ProgressOutput;
use haul_dist::{CancellationToken, PullOptions, Puller, Pusher};

use crate::cli::Cli;
use crate::settings;

/// Images pulled or pushed at once.
const AT_ONCE: usize = 4;

/// What a layout sync did.
pub(crate) struct LayoutSync {
    /// Each image: what it was, where it went, its digest there.
    pub images: Vec<(String, String, String)>,
    /// Layer bytes that crossed the network (pulls only).
    pub transferred: u64,
}

/// Pulls `sources` into a scratch store, then writes them all into the
/// layout `dir` (created, or added to) under their full references.
pub(crate) async fn registry_to_layout(
    cli: &Cli,
    client: RegistryClient,
    sources: &[Reference],
    dir: &Path,
    platform: Option<Platform>,
    output: Arc<dyn ProgressOutput>,
    cancel: CancellationToken,
) -> anyhow::Result<LayoutSync> {
    let scratch = tempfile::Builder::new().prefix("haul-sync-").tempdir()?;
    let store = Store::open(scratch.path())?;
    let puller = Puller::new(client, store.clone(), &settings::pull_settings(cli, false));
    let options = PullOptions {
        platform,
        ..PullOptions::default()
    };
    let puller = &puller;
    let results: Vec<_> = futures::stream::iter(sources.iter().cloned())
        .map(|source| {
            let (output, cancel, options) = (Arc::clone(&output), cancel.clone(), options.clone());
            async move {
                let pulled = puller.pull(&source, &options, output, cancel).await;
                (source, pulled)
            }
        })
        .buffered(AT_ONCE)
        .collect()
        .await;
    let mut images = Vec::new();
    let mut transferred = 0;
    for (source, pulled) in results {
        let report = pulled.with_context(|| format!("cannot pull {}", source.familiar()))?;
        transferred += report.transferred;
        images.push((
            source.familiar(),
            format!("oci:{}", dir.display()),
            report
                .images
                .first()
                .map(|i| i.manifest_digest.to_string())
                .unwrap_or_else(|| report.digest.to_string()),
        ));
    }
    drop(output);
    archive::save_oci_layout(&store, sources, dir)
        .with_context(|| format!("cannot write the OCI layout {}", dir.display()))?;
    Ok(LayoutSync {
        images,
        transferred,
    })
}

/// Loads every image of the layout `dir` into a scratch store and pushes
/// each to `place(its reference)`.
pub(crate) async fn layout_to_registry(
    cli: &Cli,
    client: RegistryClient,
    dir: &Path,
    place: &(dyn Fn(&Reference) -> anyhow::Result<Reference> + Sync),
    platform: Option<Platform>,
    output: Arc<dyn ProgressOutput>,
    cancel: CancellationToken,
) -> anyhow::Result<LayoutSync> {
    let scratch = tempfile::Builder::new().prefix("haul-sync-").tempdir()?;
    let store = Store::open(scratch.path())?;
    let options = LoadOptions {
        platform,
        ..LoadOptions::default()
    };
    let loaded = archive::load(&store, dir, &options)
        .with_context(|| format!("cannot read the OCI layout {}", dir.display()))?;
    let mut pushes = Vec::new();
    for image in &loaded.images {
        for (reference, _) in &image.references {
            let target = place(reference)?;
            // The loaded reference's own target: its manifest, or its whole index.
            let source = store
                .target(reference)?
                .unwrap_or_else(|| image.image.target());
            store.tag(&target, &source)?;
            pushes.push((reference.clone(), target));
        }
    }
    let pusher = Pusher::new(client, store.clone(), &settings::push_settings(cli));
    let pusher = &pusher;
    let results: Vec<_> = futures::stream::iter(pushes)
        .map(|(source, target)| {
            let (output, cancel) = (Arc::clone(&output), cancel.clone());
            async move {
                let pushed = pusher.push(&target, output, cancel).await;
                (source, target, pushed)
            }
        })
        .buffered(AT_ONCE)
        .collect()
        .await;
    let mut images = Vec::new();
    for (source, target, pushed) in results {
        let report = pushed.with_context(|| format!("cannot push {}", target.familiar()))?;
        images.push((
            format!("oci:{}:{}", dir.display(), source.familiar()),
            target.familiar(),
            report
                .manifest()
                .map(|r| r.digest.to_string())
                .unwrap_or_default(),
        ));
    }
    Ok(LayoutSync {
        images,
        transferred: 0,
    })
}
