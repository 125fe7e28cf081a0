//! Referrers on the command line: the `--referrers` flags of `copy` and
//! `sync`, `haul referrers REF`, and `haul inspect docker://REF` (a
//! remote image shown without pulling it, as `skopeo inspect` does).

use anyhow::{bail, Context};
use haul_dist::oci::{Digest, Manifest, Platform, Reference};
use haul_dist::registry::{RegistryClient, Repository};
use haul_dist::{fetch_manifest, manifest_reference, CopyOptions};
use serde_json::json;

use crate::cli::Cli;
use crate::settings;

/// Which attached artifacts a copy, pull or push brings along.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ReferrerArgs {
    /// Also move the referrers (signatures, SBOMs, attestations) of every
    /// manifest moved, and their referrers, by digest.
    #[arg(long)]
    pub referrers: bool,
    /// Also move cosign's digest tags (`sha256-HEX.sig`, `.att`, `.sbom`).
    #[arg(long)]
    pub digest_tags: bool,
    /// Move only referrers of this artifact type (may be repeated);
    /// implies --referrers.
    #[arg(long, value_name = "artifactType=TYPE")]
    pub referrers_filter: Vec<String>,
}

impl ReferrerArgs {
    /// Whether any of the flags asks for more than the image.
    pub(crate) fn any(&self) -> bool {
        self.referrers || self.digest_tags || !self.referrers_filter.is_empty()
    }

    /// Fills the referrer fields of `options`; `default_on` (sync) copies
    /// referrers even without --referrers.
    pub(crate) fn apply(&self, options: &mut CopyOptions, default_on: bool) -> anyhow::Result<()> {
        options.referrers = default_on || self.referrers || !self.referrers_filter.is_empty();
        options.digest_tags = self.digest_tags;
        options.referrers_filter = parse_filters(&self.referrers_filter)?;
        Ok(())
    }
}

impl ReferrerArgs {
    /// What `pull` and `push` bring along.
    pub(crate) fn options(&self) -> anyhow::Result<haul_dist::ReferrerOptions> {
        Ok(haul_dist::ReferrerOptions {
            referrers: self.referrers || !self.referrers_filter.is_empty(),
            digest_tags: self.digest_tags,
            filter: parse_filters(&self.referrers_filter)?,
        })
    }
}

/// `artifactType=TYPE` -> `TYPE`.
fn parse_filters(filters: &[String]) -> anyhow::Result<Vec<String>> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some(("artifactType", t)) if !t.is_empty() => Ok(t.to_string()),
            _ => bail!("--referrers-filter takes artifactType=TYPE, not {f:?}"),
        })
        .collect()
}

/// Output format of `haul referrers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReferrersFormat {
    /// A table: digest, artifact type, media type, size.
    Table,
    /// One JSON array of the referrers' descriptors.
    Json,
}

/// The arguments of `haul referrers`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReferrersCommand {
    /// The image in a registry ([docker://]REF).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Only referrers of this artifact type (one that declares none, or
    /// the empty-JSON type, is judged by its config and layer types).
    #[arg(long, value_name = "TYPE")]
    pub artifact_type: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReferrersFormat::Table)]
    pub format: ReferrersFormat,
}

fn remote_reference(text: &str) -> anyhow::Result<Reference> {
    let text = text.strip_prefix("docker://").unwrap_or(text);
    Reference::parse(text).with_context(|| format!("invalid reference {text:?}"))
}

/// The digest `reference` names in `repo` (a digest as given; a tag
/// resolved with `HEAD`, else `GET`).
async fn subject_digest(repo: &Repository, reference: &Reference) -> anyhow::Result<Digest> {
    if let Some(d) = reference.digest() {
        return Ok(d.clone());
    }
    let name = manifest_reference(reference);
    if let Ok(Some(info)) = repo.head_manifest(&name).await {
        return Ok(info.digest);
    }
    Ok(fetch_manifest(repo, &name).await?.digest().clone())
}

/// Runs `haul referrers REF`.
pub(crate) fn list(cli: &Cli, command: &ReferrersCommand) -> anyhow::Result<()> {
    let reference = remote_reference(&command.reference)?;
    let client = RegistryClient::new(settings::client_config(cli))?;
    let found = settings::runtime()?.block_on(async {
        let repo = client.repository_for(&reference)?;
        let subject = subject_digest(&repo, &reference).await?;
        let found = repo.referrers(&subject, None).await?;
        let found = match &command.artifact_type {
            Some(t) => haul_dist::filter_referrers(&repo, found, std::slice::from_ref(t)).await?,
            None => found,
        };
        anyhow::Ok(found)
    });
    let found = found
        .with_context(|| format!("failed to list the referrers of {}", reference.familiar()))?;
    match command.format {
        ReferrersFormat::Json => {
            crate::outln!("{}", serde_json::to_string_pretty(&found)?);
        }
        ReferrersFormat::Table => {
            crate::outln!(
                "{:<71}  {:<44}  {:<44}  SIZE",
                "DIGEST",
                "ARTIFACT TYPE",
                "MEDIA TYPE"
            );
            for d in &found {
                let artifact = d
                    .artifact_type()
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into());
                crate::outln!(
                    "{:<71}  {:<44}  {:<44}  {}",
                    d.digest().to_string(),
                    artifact,
                    d.media_type().to_string(),
                    d.size()
                );
            }
        }
    }
    Ok(())
}

/// Runs `haul inspect docker://REF`: the manifest, config and referrers
/// of a remote image as JSON, with skopeo's keys, nothing pulled.
pub(crate) fn inspect_remote(cli: &Cli, text: &str) -> anyhow::Result<()> {
    let reference = remote_reference(text)?;
    let platform = settings::platform(cli)?;
    let client = RegistryClient::new(settings::client_config(cli))?;
    let out = settings::runtime()?
        .block_on(inspect_json(&client, &reference, platform))
        .with_context(|| format!("failed to inspect {}", reference.familiar()))?;
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn inspect_json(
    client: &RegistryClient,
    reference: &Reference,
    platform: Option<Platform>,
) -> anyhow::Result<serde_json::Value> {
    let repo = client.repository_for(reference)?;
    let top = fetch_manifest(&repo, &manifest_reference(reference)).await?;
    let (image, index) = match top.manifest() {
        Manifest::Index(index) => {
            let wanted = platform.unwrap_or_else(Platform::host);
            let entry = haul_dist::oci::select_manifest(index, &wanted)?;
            let image = fetch_manifest(&repo, entry.digest().as_ref()).await?;
            (image, Some(top.clone()))
        }
        Manifest::Image(_) => (top.clone(), None),
        Manifest::Schema1(_) => bail!("Docker schema 1 manifests cannot be inspected remotely"),
    };
    let manifest: serde_json::Value = serde_json::from_slice(image.bytes())?;
    let config = match image.manifest().config() {
        Some(c) => {
            let digest = Digest::try_from(c.digest())?;
            if c.size() > 8 * 1024 * 1024 {
                bail!("the config {digest} is larger than 8 MiB");
            }
            let bytes = read_small_blob(&repo, &digest).await?;
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        }
        None => serde_json::Value::Null,
    };
    let layers = image.manifest().layers().unwrap_or(&[]);
    let referrers = repo.referrers(top.digest(), None).await?;
    let tags = match repo.tags(None).await {
        Ok(tags) => tags,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let tags: Vec<String> = tags
        .into_iter()
        .filter(|t| !haul_dist::is_referrer_tag(t))
        .collect();
    Ok(json!({
        "Name": reference.without_tag().without_digest().name(),
        "Digest": top.digest().to_string(),
        "MediaType": top.media_type(),
        "RepoTags": tags,
        "Created": config.get("created"),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Variant": config.get("variant"),
        "Labels": config.pointer("/config/Labels"),
        "Env": config.pointer("/config/Env"),
        "Layers": layers.iter().map(|l| l.digest().to_string()).collect::<Vec<_>>(),
        "LayersData": layers.iter().map(|l| json!({
            "MIMEType": l.media_type().to_string(),
            "Digest": l.digest().to_string(),
            "Size": l.size(),
        })).collect::<Vec<_>>(),
        "ManifestDigest": image.digest().to_string(),
        "Manifest": manifest,
        "Index": index.map(|i| serde_json::from_slice::<serde_json::Value>(i.bytes()).ok()),
        "Config": config,
        "Referrers": referrers,
    }))
}

async fn read_small_blob(repo: &Repository, digest: &Digest) -> anyhow::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let mut stream = repo.blob_stream(digest, None);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > 8 * 1024 * 1024 {
            bail!("the blob {digest} is larger than 8 MiB");
        }
    }
    Ok(bytes)
}
