//! `haul sync`: mirror sets of images (with their referrers) from
//! registries into a registry prefix, through one transfer manager, so a
//! blob that many images share moves once.
//!
//! Sources come from the command line (`haul sync --to HOST/PREFIX
//! SOURCE...`) or from a TOML file (`--file`, see [`SyncFile`]). A source
//! `HOST/REPO:TAG` (or `@DIGEST`) is copied to `HOST2/PREFIX/REPO:TAG`; a
//! repository with `--all-tags` brings every tag that the include and
//! exclude patterns let through (referrer and cosign tags are left to the
//! referrers they belong to).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use haul_dist::oci::Reference;
use haul_dist::registry::ratelimit::{RateLimitPause, RateLimitPolicy};
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{ChannelOutput, ProgressOutput};
use haul_dist::{is_referrer_tag, Copier, CopyOptions, CopyStats};
use regex::Regex;
use serde::Deserialize;

use crate::cli::Cli;
use crate::referrers::ReferrerArgs;
use crate::{render, settings};

/// Images synced at once (each moves its blobs through the shared upload
/// manager, which bounds the uploads themselves).
const IMAGES_AT_ONCE: usize = 4;

/// The arguments of `haul sync`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SyncCommand {
    /// Images ([docker://]HOST/REPO[:TAG|@DIGEST]) or, with --all-tags,
    /// repositories to mirror.
    #[arg(value_name = "SOURCE", required_unless_present = "file")]
    pub sources: Vec<String>,
    /// Target registry and optional prefix: HOST[:PORT][/PREFIX].
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

/// A sync file: `[[sync]]` tables, each a set of images.
///
/// ```toml
/// [[sync]]
/// source = "registry.example/team/app"   # a repository, or a reference
/// tags = ["1.0", "1.1"]                  # or: all-tags = true
/// include = ["^1\\."]                    # with all-tags
/// exclude = ["-rc"]
/// semver = ">=1.0, <2"                   # with all-tags
/// to = "mirror.example:5000/mirror"
/// all-platforms = true
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncFile {
    sync: Vec<SyncSet>,
}

/// One `[[sync]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SyncSet {
    source: String,
    to: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    all_tags: bool,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    semver: Option<String>,
    #[serde(default)]
    all_platforms: bool,
}

/// One image to copy.
#[derive(Debug, Clone)]
struct Job {
    source: Reference,
    target: Reference,
    all_platforms: bool,
}

/// Where images go: a registry and a path prefix.
#[derive(Debug, Clone)]
struct Target {
    registry: String,
    prefix: String,
}

impl Target {
    /// The target of a sync into an OCI layout, whose images keep their
    /// source names: the place it gives is not used.
    fn unused() -> Self {
        Self {
            registry: "localhost".into(),
            prefix: String::new(),
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        if text.starts_with("oci:") {
            bail!("an OCI layout end (oci:DIR) is given on the command line: --to oci:DIR SOURCE... or --to REGISTRY oci:DIR");
        }
        let text = text.strip_prefix("docker://").unwrap_or(text);
        let text = text.trim_end_matches('/');
        let (registry, prefix) = text.split_once('/').unwrap_or((text, ""));
        let hostlike = registry.contains(['.', ':']) || registry == "localhost";
        if registry.is_empty() || !hostlike {
            bail!("--to takes REGISTRY[/PREFIX] starting with a registry host (HOST:PORT or a dotted name), not {text:?}");
        }
        if prefix.contains([':', '@']) {
            bail!("--to takes a registry and a repository prefix, without tag or digest: {text:?}");
        }
        Ok(Self {
            registry: registry.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `source`'s place under this target: `REGISTRY/PREFIX/REPO` with the
    /// source's tag or digest.
    fn place(&self, source: &Reference) -> anyhow::Result<Reference> {
        let repository = if self.prefix.is_empty() {
            source.repository().to_string()
        } else {
            format!("{}/{}", self.prefix, source.repository())
        };
        let mut text = format!("{}/{repository}", self.registry);
        if let Some(tag) = source.tag() {
            text = format!("{text}:{tag}");
        }
        if let Some(digest) = source.digest() {
            text = format!("{text}@{digest}");
        }
        Reference::parse(&text).with_context(|| format!("invalid target reference {text:?}"))
    }
}

/// A source repository or reference, with how to choose its tags.
struct SourceSet {
    text: String,
    target: Target,
    tags: Vec<String>,
    all_tags: bool,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    semver: Option<semver::VersionReq>,
    all_platforms: bool,
}

/// Parses a semver range for tag selection.
fn version_range(range: Option<&str>) -> anyhow::Result<Option<semver::VersionReq>> {
    range
        .map(|r| {
            semver::VersionReq::parse(r).with_context(|| format!("invalid semver range {r:?}"))
        })
        .transpose()
}

/// Whether `tag` is a version (`1.2.3`, `v1.2.3`, `1.2`, `v1`) in `range`.
fn tag_in_range(tag: &str, range: &semver::VersionReq) -> bool {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    let (core, rest) = match text.find(['-', '+']) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let mut parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    while parts.len() < 3 {
        parts.push("0");
    }
    semver::Version::parse(&format!("{}{rest}", parts.join("."))).is_ok_and(|v| range.matches(&v))
}

fn regexes(patterns: &[String]) -> anyhow::Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| Regex::new(p).with_context(|| format!("invalid regular expression {p:?}")))
        .collect()
}

fn source_sets(command: &SyncCommand) -> anyhow::Result<Vec<SourceSet>> {
    if let Some(file) = &command.file {
        return file_sets(file);
    }
    let patterns =
        !command.include.is_empty() || !command.exclude.is_empty() || command.semver.is_some();
    if patterns && !command.all_tags {
        bail!("--include, --exclude and --semver choose among all tags: add --all-tags");
    }
    let range = version_range(command.semver.as_deref())?;
    let to = command.to.as_deref().unwrap_or_default();
    let target = match to.strip_prefix("oci:") {
        Some(_) => Target::unused(),
        None => Target::parse(to)?,
    };
    let (include, exclude) = (regexes(&command.include)?, regexes(&command.exclude)?);
    Ok(command
        .sources
        .iter()
        .map(|text| SourceSet {
            text: text.clone(),
            target: target.clone(),
            tags: Vec::new(),
            all_tags: command.all_tags,
            include: include.clone(),
            exclude: exclude.clone(),
            semver: range.clone(),
            all_platforms: command.all_platforms,
        })
        .collect())
}

fn file_sets(file: &Path) -> anyhow::Result<Vec<SourceSet>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: SyncFile =
        toml::from_str(&text).with_context(|| format!("invalid sync file {}", file.display()))?;
    parsed
        .sync
        .into_iter()
        .map(|set| {
            let patterns =
                !set.include.is_empty() || !set.exclude.is_empty() || set.semver.is_some();
            if patterns && !set.all_tags {
                bail!(
                    "{}: {}: include, exclude and semver choose among all tags: add all-tags = true",
                    file.display(),
                    set.source
                );
            }
            if set.all_tags && !set.tags.is_empty() {
                bail!(
                    "{}: {}: give tags or all-tags, not both",
                    file.display(),
                    set.source
                );
            }
            Ok(SourceSet {
                target: Target::parse(&set.to)?,
                include: regexes(&set.include)?,
                exclude: regexes(&set.exclude)?,
                semver: version_range(set.semver.as_deref())?,
                text: set.source,
                tags: set.tags,
                all_tags: set.all_tags,
                all_platforms: set.all_platforms,
            })
        })
        .collect()
}

/// The images of every set: a reference as given, a tag list, or every
/// tag the patterns let through.
async fn expand(client: &RegistryClient, sets: &[SourceSet]) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for set in sets {
        let text = set.text.strip_prefix("docker://").unwrap_or(&set.text);
        let raw = Reference::parse_raw(text).with_context(|| format!("invalid source {text:?}"))?;
        let explicit = raw.tag().is_some() || raw.digest().is_some();
        let tags: Vec<String> = if set.all_tags {
            if explicit {
                bail!("with --all-tags a source is a repository, without tag or digest: {text}");
            }
            let repo = client.repository_for(&raw)?;
            let all = repo
                .tags(None)
                .await
                .with_context(|| format!("cannot list the tags of {}", raw.familiar()))?;
            all.into_iter()
                .filter(|t| !is_referrer_tag(t))
                .filter(|t| set.include.is_empty() || set.include.iter().any(|r| r.is_match(t)))
                .filter(|t| !set.exclude.iter().any(|r| r.is_match(t)))
                .filter(|t| set.semver.as_ref().is_none_or(|r| tag_in_range(t, r)))
                .collect()
        } else if !set.tags.is_empty() {
            if explicit {
                bail!("{text}: give the tags in the list or in the source, not both");
            }
            set.tags.clone()
        } else {
            Vec::new()
        };
        let sources = if set.all_tags || !set.tags.is_empty() {
            tags.iter()
                .map(|t| raw.with_tag(t).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            vec![Reference::parse(text)?]
        };
        for source in sources {
            jobs.push(Job {
                target: set.target.place(&source)?,
                source,
                all_platforms: set.all_platforms,
            });
        }
    }
    Ok(jobs)
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
    config.rate_limit = quota_policy(command.rate_limit_floor, tick, &output);
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
                                output.message("", &synced.summary(&job));
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

/// Pauses under `floor` pulls left, counting down on `output`.
fn quota_policy(floor: u64, tick: Duration, output: &Arc<dyn ProgressOutput>) -> RateLimitPolicy {
    // Weak: the renderer ends when the sync drops its output.
    let output = Arc::downgrade(output);
    let observer = move |pause: &RateLimitPause| {
        let Some(output) = output.upgrade() else {
            return;
        };
        let id = format!("quota {}", pause.registry);
        if pause.seconds_left == 0 {
            output.update(&id, "Rate limit: going on");
        } else {
            output.update(
                &id,
                &format!(
                    "Rate limit: {} of {} pulls left, waiting {} s",
                    pause.remaining, pause.limit, pause.seconds_left
                ),
            );
        }
    };
    RateLimitPolicy {
        floor,
        tick,
        observer: Some(Arc::new(observer)),
        ..RateLimitPolicy::default()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_match_semver_ranges_with_a_v_and_short_forms() {
        let range = semver::VersionReq::parse(">=1.2, <2").unwrap();
        for tag in ["1.2.0", "v1.2.3", "1.9", "v1.10.0"] {
            assert!(tag_in_range(tag, &range), "{tag}");
        }
        for tag in [
            "1.1.9",
            "2.0.0",
            "v2",
            "latest",
            "1.2.x",
            "sha256-abc",
            "1..2",
            "1.2.3.4",
        ] {
            assert!(!tag_in_range(tag, &range), "{tag}");
        }
        let pre = semver::VersionReq::parse(">=1.0.0-rc.1").unwrap();
        assert!(tag_in_range("1.0.0-rc.2", &pre));
        assert!(!tag_in_range("1.0.0-rc.2", &range));
    }

    #[test]
    fn targets_are_a_registry_and_a_prefix() {
        let t = Target::parse("127.0.0.1:5000/mirror/x").unwrap();
        let placed = t
            .place(&Reference::parse("example.com/team/app:1.0").unwrap())
            .unwrap();
        assert_eq!(placed.to_string(), "127.0.0.1:5000/mirror/x/team/app:1.0");
        let bare = Target::parse("localhost:5000").unwrap();
        let placed = bare.place(&Reference::parse("alpine").unwrap()).unwrap();
        assert_eq!(placed.to_string(), "localhost:5000/library/alpine:latest");
        assert!(Target::parse("mirror/x").is_err());
        assert!(Target::parse("127.0.0.1:5000/x:1").is_err());
        assert!(Target::parse("oci:/tmp/x").is_err());
    }
}
