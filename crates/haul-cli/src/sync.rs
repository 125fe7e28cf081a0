//! `haul sync`: mirror sets of images (with their referrers) from
//! registries into a registry prefix, through one transfer manager, so a
//! blob that many images share moves once.
//!
//! Sources come from the command line (`haul sync --to HOST/PREFIX
//! SOURCE...`) or from a TOML file (`--file`, see `crate::sync_plan`). A source
//! `HOST/REPO:TAG` (or `@DIGEST`) is copied to `HOST2/PREFIX/REPO:TAG`; a
//! repository with `--all-tags` brings every tag that the include and
//! exclude patterns let through (referrer and cosign tags are left to the
//! referrers they belong to).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::StreamExt;
use haul_dist::oci::Reference;
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, Message, ProgressOutput};
use haul_dist::{Copier, CopyOptions, CopyStats};

use crate::cli::Cli;
use crate::referrers::ReferrerArgs;
use crate::sync_plan::{expand, source_sets, Job, Target};
use crate::{render, settings};

/// Images synced at once (each moves its blobs through the shared upload
/// manager, which bounds the uploads themselves).
const IMAGES_AT_ONCE: usize = 16;

/// The arguments of `haul sync`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SyncCommand {
    /// Images (HOST/REPO:TAG or HOST/REPO@DIGEST, docker:// optional) or,
    /// with --all-tags, repositories to mirror; or OCI layouts (oci:DIR) to
    /// put into a registry.
    #[arg(value_name = "SOURCE", required_unless_present = "file")]
    pub sources: Vec<String>,
    /// Target registry, with a port and a path prefix if wanted
    /// (HOST:PORT/PREFIX); or an OCI layout directory (oci:DIR).
    #[arg(
        long,
        value_name = "REGISTRY[/PREFIX]",
        required_unless_present = "file"
    )]
    pub to: Option<String>,
    /// A TOML file of sync sets (instead of SOURCE and --to).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["sources", "to"])]
    pub file: Option<PathBuf>,
    /// Each SOURCE is a repository: mirror all of its tags.
    #[arg(long)]
    pub all_tags: bool,
    /// With --all-tags, only tags matching this regular expression (may be
    /// repeated; anchor it with ^...$ to match whole tags).
    #[arg(long, value_name = "REGEX")]
    pub include: Vec<String>,
    /// With --all-tags, leave out tags matching this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// With --all-tags, only tags that are semantic versions (a leading
    /// `v` allowed) in this range, e.g. ">=1.2, <2".
    #[arg(long, value_name = "RANGE")]
    pub semver: Option<String>,
    /// Mirror every platform of multi-platform images.
    #[arg(long)]
    pub all_platforms: bool,
    /// List what would be copied, and what the target has, moving nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Pause (with a countdown) before a manifest read when a registry
    /// reports fewer pulls left than this (RateLimit-Remaining); 0: never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub rate_limit_floor: u64,
    /// Do not copy referrers (signatures, SBOMs), which sync copies by default.
    #[arg(long, conflicts_with = "referrers_filter")]
    pub no_referrers: bool,
    /// Referrer options.
    #[command(flatten)]
    pub referrer_args: ReferrerArgs,
}

/// Runs `haul sync`.
pub(crate) fn run(cli: &Cli, command: &SyncCommand) -> anyhow::Result<()> {
    let layout_target = command.to.as_deref().and_then(|t| t.strip_prefix("oci:"));
    let layout_sources = command.sources.iter().any(|s| s.starts_with("oci:"));
    if layout_target.is_some() || layout_sources {
        return run_layout(cli, command, layout_target.map(Path::new));
    }
    let sets = source_sets(command)?;
    let mut options = CopyOptions {
        platform: settings::platform(cli)?,
        ..CopyOptions::default()
    };
    command
        .referrer_args
        .apply(&mut options, !command.no_referrers)?;
    // Progress (and the quota countdown) go to one renderer, started below.
    let (channel, receiver) = ChannelOutput::new();
    let output: Arc<dyn ProgressOutput> = Arc::new(channel);
    let mut config = settings::client_config(cli);
    let tick = settings::push_settings(cli).retry_tick;
    config.rate_limit = settings::quota_policy(command.rate_limit_floor, tick, &output);
    let client = RegistryClient::new(config)?;
    let runtime = settings::runtime()?;
    let jobs = runtime.block_on(expand(&client, &sets))?;
    if jobs.is_empty() {
        bail!("nothing to sync: no source image (or no tag passed the patterns)");
    }
    // One copier for the whole sync: one upload manager, one view of what
    // the target has, upload sessions recorded for a rerun after a crash.
    let mut copier = Copier::new(client, &settings::push_settings(cli));
    if !command.dry_run {
        copier = copier.with_upload_records(settings::open_store(cli)?);
    }
    copier.expect_targets(jobs.iter().map(|j| &j.target));
    if command.dry_run {
        return runtime.block_on(dry_run(&copier, &jobs, &options));
    }
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );
    runtime.block_on(async {
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let cancel = settings::cancel_on_interrupt();
        let copier = &copier;
        let results: Vec<(Job, anyhow::Result<SyncedImage>)> =
            futures::stream::iter(jobs.iter().cloned())
                .map(|job| {
                    let output = Arc::clone(&output);
                    let cancel = cancel.clone();
                    let mut options = options.clone();
                    options.all_platforms = options.all_platforms || job.all_platforms;
                    async move {
                        let result = copier
                            .copy(
                                &job.source,
                                &job.target,
                                &options,
                                Arc::clone(&output),
                                cancel,
                            )
                            .await;
                        let result = result
                            .map(|report| {
                                let synced = SyncedImage {
                                    digest: report.digest.to_string(),
                                    referrers: report.referrers.len() + report.digest_tags.len(),
                                    stats: report.stats,
                                };
                                output.message("", Message::Text(synced.summary(&job)));
                                synced
                            })
                            .map_err(anyhow::Error::from);
                        (job, result)
                    }
                })
                .buffer_unordered(IMAGES_AT_ONCE)
                .collect()
                .await;
        drop(output);
        let _ = renderer.await;
        finish(cli, copier.totals(), &results)
    })
}

/// `haul sync` with an OCI layout at one end (see [`crate::sync_layout`]).
fn run_layout(cli: &Cli, command: &SyncCommand, target_dir: Option<&Path>) -> anyhow::Result<()> {
    let layout_sources: Vec<&str> = command
        .sources
        .iter()
        .filter_map(|s| s.strip_prefix("oci:"))
        .collect();
    if target_dir.is_some() && !layout_sources.is_empty() {
        bail!("sync goes from registries to an OCI layout or from OCI layouts to a registry, not between layouts");
    }
    if !layout_sources.is_empty() && layout_sources.len() != command.sources.len() {
        bail!("a sync from OCI layouts takes only oci:DIR sources");
    }
    if command.all_platforms || command.dry_run || command.referrer_args.any() {
        bail!("with an OCI layout end, sync takes one platform per image (--platform), without --all-platforms, --dry-run or referrer options");
    }
    let platform = settings::platform(cli)?;
    let target = match target_dir {
        Some(_) => None,
        None => Some(Target::parse(command.to.as_deref().unwrap_or_default())?),
    };
    let client = RegistryClient::new(settings::client_config(cli))?;
    let runtime = settings::runtime()?;
    let kind = render::choose(
        cli.global.progress,
        cli.global.quiet,
        std::io::stdout().is_terminal(),
    );
    let sources = match target_dir {
        Some(_) => {
            let sets = source_sets(command)?;
            let jobs = runtime.block_on(expand(&client, &sets))?;
            if jobs.is_empty() {
                bail!("nothing to sync: no source image (or no tag passed the patterns)");
            }
            jobs.into_iter().map(|j| j.source).collect()
        }
        None => Vec::new(),
    };
    let done = runtime.block_on(async {
        let (channel, receiver) = ChannelOutput::new();
        let renderer = tokio::task::spawn_blocking(move || {
            render::render_blocking(kind, receiver, std::io::stdout().lock())
        });
        let output: Arc<dyn ProgressOutput> = Arc::new(channel);
        let cancel = settings::cancel_on_interrupt();
        let result = match (target_dir, &target) {
            (Some(dir), _) => {
                crate::sync_layout::registry_to_layout(
                    cli, client, &sources, dir, platform, output, cancel,
                )
                .await
            }
            (None, None) => unreachable!("a layout target or a registry target"),
            (None, Some(target)) => {
                let place = |r: &Reference| target.place(r);
                let mut all = crate::sync_layout::LayoutSync {
                    images: Vec::new(),
                    transferred: 0,
                };
                let mut result = Ok(());
                for dir in &layout_sources {
                    match crate::sync_layout::layout_to_registry(
                        cli,
                        client.clone(),
                        Path::new(dir),
                        &place,
                        platform.clone(),
                        Arc::clone(&output),
                        cancel.clone(),
                    )
                    .await
                    {
                        Ok(done) => all.images.extend(done.images),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                drop(output);
                result.map(|()| all)
            }
        };
        let _ = renderer.await;
        result
    })?;
    if settings::json_output(cli) {
        crate::outln!(
            "{}",
            render::json::result_line(serde_json::json!({
                "Images": done.images.len(),
                "BytesMoved": done.transferred,
            }))
        );
    } else if !cli.global.quiet {
        for (from, to, digest) in &done.images {
            crate::outln!("Synced {from} to {to}: {digest}");
        }
        crate::outln!("Synced {} images", done.images.len());
    }
    Ok(())
}

/// What one image's copy did.
struct SyncedImage {
    digest: String,
    referrers: usize,
    stats: CopyStats,
}

impl SyncedImage {
    fn summary(&self, job: &Job) -> String {
        let s = &self.stats;
        format!(
            "Synced {} to {}: {}, blobs: {} moved, {} mounted, {} present ({}); {} referrers",
            job.source.familiar(),
            job.target.familiar(),
            self.digest,
            s.blobs_moved,
            s.blobs_mounted,
            s.blobs_skipped,
            render::units::human_size(s.bytes_moved),
            self.referrers,
        )
    }
}

/// The final total, and the failures.
fn finish(
    cli: &Cli,
    totals: CopyStats,
    results: &[(Job, anyhow::Result<SyncedImage>)],
) -> anyhow::Result<()> {
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(job, r)| r.as_ref().err().map(|e| (job, e)))
        .collect();
    let done = results.len() - failed.len();
    if settings::json_output(cli) {
        crate::outln!(
            "{}",
            render::json::result_line(serde_json::json!({
                "Images": done,
                "Failed": failed.len(),
                "BlobsMoved": totals.blobs_moved,
                "BlobsMounted": totals.blobs_mounted,
                "BlobsSkipped": totals.blobs_skipped,
                "BytesMoved": totals.bytes_moved,
            }))
        );
    } else if !cli.global.quiet {
        crate::outln!(
            "Synced {done} images: {} blobs moved ({} bytes), {} mounted, {} already present",
            totals.blobs_moved,
            totals.bytes_moved,
            totals.blobs_mounted,
            totals.blobs_skipped
        );
    }
    if settings::interrupted_exit_code().is_some() && !failed.is_empty() {
        // One line for Ctrl-C, not one "cancelled" per image.
        bail!(
            "sync interrupted: {done} of {} images synced",
            results.len()
        );
    }
    for (job, error) in &failed {
        eprintln!(
            "haul: failed to sync {} to {}: {}",
            job.source.familiar(),
            job.target.familiar(),
            crate::error_sentence(error)
        );
    }
    if !failed.is_empty() {
        return Err(anyhow::Error::new(crate::Reported));
    }
    Ok(())
}

/// `--dry-run`: every image with what would move, nothing moved.
async fn dry_run(copier: &Copier, jobs: &[Job], options: &CopyOptions) -> anyhow::Result<()> {
    let mut distinct = BTreeSet::new();
    let (mut bytes, mut present) = (0u64, 0usize);
    for job in jobs {
        let mut options = options.clone();
        options.all_platforms = options.all_platforms || job.all_platforms;
        let survey = copier
            .survey(&job.source, &job.target, &options)
            .await
            .with_context(|| format!("cannot read {}", job.source.familiar()))?;
        let missing: Vec<_> = survey.blobs.iter().filter(|b| !b.present).collect();
        crate::outln!(
            "Would sync {} to {}: {}, {} blobs, {} missing on the target ({}); {} referrers",
            job.source.familiar(),
            job.target.familiar(),
            survey.digest,
            survey.blobs.len(),
            missing.len(),
            render::units::human_size(missing.iter().map(|b| b.size).sum()),
            survey.referrers.len()
        );
        for blob in survey.blobs {
            if blob.present {
                present += 1;
            } else if distinct.insert(blob.digest.clone()) {
                bytes += blob.size;
            }
        }
    }
    crate::outln!(
        "Would sync {} images: {} distinct blobs to move ({bytes} bytes), {present} already present",
        jobs.len(),
        distinct.len()
    );
    Ok(())
}
