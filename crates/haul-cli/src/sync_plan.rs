//! Which images a `haul sync` copies, and where: the sources of the
//! command line or of a sync file (see [`SyncFile`]), tag lists, all tags
//! through include / exclude patterns and semver ranges, and the place of
//! each image under the target registry and prefix.

use std::path::Path;

use anyhow::{bail, Context};
use haul_dist::is_referrer_tag;
use haul_dist::oci::Reference;
use haul_dist::registry::RegistryClient;
use regex::Regex;
use serde::Deserialize;

use crate::sync::SyncCommand;

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
pub(crate) struct Job {
    pub(crate) source: Reference,
    pub(crate) target: Reference,
    pub(crate) all_platforms: bool,
}

/// Where images go: a registry and a path prefix.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    registry: String,
    prefix: String,
}

impl Target {
    /// The target of a sync into an OCI layout, whose images keep their
    /// source names: the place it gives is not used.
    pub(crate) fn unused() -> Self {
        Self {
            registry: "localhost".into(),
            prefix: String::new(),
        }
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
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
    pub(crate) fn place(&self, source: &Reference) -> anyhow::Result<Reference> {
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
pub(crate) struct SourceSet {
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

pub(crate) fn source_sets(command: &SyncCommand) -> anyhow::Result<Vec<SourceSet>> {
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
pub(crate) async fn expand(
    client: &RegistryClient,
    sets: &[SourceSet],
) -> anyhow::Result<Vec<Job>> {
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
