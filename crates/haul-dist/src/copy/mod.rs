//! `copy`: an image from one registry to another, streamed. Blobs go in
//! parallel through the upload manager (deduplicated, retried); a blob the
//! target has is skipped, one on the same registry is mounted, the others
//! stream from source to target without touching the disk. Manifests keep
//! their exact bytes, so the copy's digest is the source's.
//!
//! One [`Copier`] may serve many copies (a sync): they share its upload
//! manager and what it learnt, so a blob that several images share is
//! moved to the target registry once and mounted into the other
//! repositories, and a manifest is read from the source once per digest.
//! With [`CopyOptions::referrers`] the manifests that name a copied
//! manifest as their `subject` (signatures, SBOMs) come along too.

pub(crate) mod blob;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use haul_oci::{Digest, Manifest, ParsedManifest, Platform, Reference};
use haul_registry::{RegistryClient, Repository};
use haul_store::Store;
use haul_xfer::{Message, Moved, ProgressOutput, RetryPolicy, UploadManager};
use tokio_util::sync::CancellationToken;

use crate::copy::blob::{Claim, CopyBlob, Placed, Placements, Tally};
use crate::error::{Error, Result};
use crate::pull::resolve::{fetch_manifest, manifest_reference};
use crate::push::upload::Chunking;
use crate::push::PushSettings;
use crate::referrers::DIGEST_TAG_SUFFIXES;

pub use crate::copy::blob::CopyStats;

/// What to copy of a reference.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// The platform to take from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Copy the whole index with every platform.
    pub all_platforms: bool,
    /// Also copy the referrers of every copied manifest, and theirs.
    pub referrers: bool,
    /// Also copy cosign's `sha256-HEX.sig`, `.att` and `.sbom` tags.
    pub digest_tags: bool,
    /// Copy only referrers of these artifact types (empty: all of them).
    pub referrers_filter: Vec<String>,
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Digest of what the target reference now names.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The referrers copied with it (every level), in copy order.
    pub referrers: Vec<Digest>,
    /// Cosign digest tags copied with it.
    pub digest_tags: Vec<String>,
    /// How this copy's blobs reached the target (a blob that another
    /// copy of the run moved for it counts as that copy placed it).
    pub stats: CopyStats,
}

/// What a copy would do, from [`Copier::survey`].
#[derive(Debug, Clone)]
pub struct CopySurvey {
    /// The digest the target reference would name.
    pub digest: Digest,
    /// Distinct blobs of the image (every platform copied).
    pub blobs: Vec<SurveyedBlob>,
    /// Referrers that would come along (every level).
    pub referrers: Vec<Digest>,
}

/// One blob of a [`CopySurvey`].
#[derive(Debug, Clone)]
pub struct SurveyedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Whether the target repository has it already.
    pub present: bool,
}

/// A value made once per run, which later askers wait for.
type Once<T> = Arc<tokio::sync::OnceCell<T>>;

/// Copies images between registries.
pub struct Copier {
    client: RegistryClient,
    uploads: UploadManager,
    chunking: Chunking,
    placements: Placements,
    /// Manifests read from a source in this run, by digest (read once
    /// even when several copies ask at the same time).
    manifests: Mutex<HashMap<Digest, Once<ParsedManifest>>>,
    /// Manifests put by digest in this run, per `registry/repository`.
    put_manifests: Mutex<HashMap<(String, Digest), Once<()>>>,
    /// Tag lists of source repositories, read once per run.
    tags: tokio::sync::Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// Where upload sessions are recorded, so that a killed run's uploads
    /// continue in the next one.
    store: Option<Store>,
    totals: Tally,
}

impl Copier {
    /// A copier using `client` for both sides.
    pub fn new(client: RegistryClient, settings: &PushSettings) -> Self {
        let uploads = UploadManager::new()
            .with_concurrency(settings.max_concurrent_uploads)
            .with_retry_policy(RetryPolicy::default().with_tick(settings.retry_tick));
        Self {
            client,
            uploads,
            chunking: settings.chunking,
            placements: Placements::default(),
            manifests: Mutex::new(HashMap::new()),
            put_manifests: Mutex::new(HashMap::new()),
            tags: tokio::sync::Mutex::new(HashMap::new()),
            store: None,
            totals: Tally::default(),
        }
    }

    /// Records upload sessions in `store` (`ROOT/uploads/`), and continues
    /// the sessions an earlier, killed run recorded there.
    pub fn with_upload_records(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Names repositories of the target registries that this run writes
    /// to: a blob missing from one is looked for in the others (where a
    /// killed run may have put it) and mounted from there.
    pub fn expect_targets<'a>(&self, targets: impl IntoIterator<Item = &'a Reference>) {
        for target in targets {
            self.placements
                .expect_repository(target.registry(), target.repository());
        }
    }

    /// How the blobs `blobs` (of one copy) reached `to` in this run.
    fn stats_of(&self, to: &Repository, blobs: &[(Digest, u64)]) -> CopyStats {
        let target = format!("{}/{}", to.registry(), to.name());
        let tally = Tally::default();
        let mut seen = HashSet::new();
        for (digest, size) in blobs {
            if seen.insert(digest) {
                let placed = self
                    .placements
                    .outcome(&target, digest)
                    .unwrap_or(Placed::Skipped);
                tally.add(placed, *size);
            }
        }
        tally.snapshot()
    }

    /// What every copy of this copier moved so far.
    pub fn totals(&self) -> CopyStats {
        self.totals.snapshot()
    }

    /// Copies `source` to `target`.
    #[tracing::instrument(name = "copy", skip_all, fields(from = %source, to = %target))]
    pub async fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        options: &CopyOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<CopyReport> {
        let from = self.client.repository_for(source)?;
        let to = self.client.repository_for(target)?;
        self.placements
            .expect_repository(target.registry(), target.repository());
        output.message(
            "",
            Message::Copying {
                source: source.familiar(),
                target: target.familiar(),
            },
        );
        let placed = Mutex::new(Vec::new());
        let tree = self.tree(&from, source, options).await?;
        let job = Job {
            from: &from,
            to: &to,
            output: &output,
            cancel: &cancel,
            placed: &placed,
        };
        self.copy_blobs(&job, &tree.images).await?;
        for child in &tree.children {
            self.put_by_digest(&to, child).await?;
        }
        let name = target
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| tree.top.digest().to_string());
        let digest = to
            .put_manifest(
                &name,
                tree.top.media_type(),
                Bytes::copy_from_slice(tree.top.bytes()),
            )
            .await?;
        output.message(
            "",
            Message::ManifestPushed {
                tag: Some(name.clone()),
                digest: digest.to_string(),
                size: tree.top.size() as u64,
            },
        );
        let mut subjects: Vec<Digest> = vec![tree.top.digest().clone()];
        subjects.extend(tree.children.iter().map(|c| c.digest().clone()));
        let referrers = if options.referrers {
            self.copy_referrers(&job, &subjects, options).await?
        } else {
            Vec::new()
        };
        let mut digest_tags = Vec::new();
        if options.digest_tags {
            for subject in &subjects {
                self.copy_digest_tags(&job, subject, &mut digest_tags)
                    .await?;
            }
        }
        let blobs = lock(&placed).clone();
        Ok(CopyReport {
            digest,
            size: tree.top.size(),
            referrers,
            digest_tags,
            stats: self.stats_of(&to, &blobs),
        })
    }

    /// What [`Copier::copy`] would move, without moving anything: the
    /// manifests are read from the source, the blobs asked for on the
    /// target (`HEAD`).
    pub async fn survey(
        &self,
        source: &Reference,
        target: &Reference,
        options: &CopyOptions,
    ) -> Result<CopySurvey> {
        let from = self.client.repository_for(source)?;
        let to = self.client.repository_for(target)?;
        let tree = self.tree(&from, source, options).await?;
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        for image in &tree.images {
            for (digest, size, _) in image_blobs(image)? {
                if seen.insert(digest.clone()) {
                    let present = to.head_blob(&digest).await?.is_some();
                    blobs.push(SurveyedBlob {
                        digest,
                        size,
                        present,
                    });
                }
            }
        }
        let mut referrers = Vec::new();
        if options.referrers {
            let subjects: Vec<Digest> = std::iter::once(tree.top.digest().clone())
                .chain(tree.children.iter().map(|c| c.digest().clone()))
                .collect();
            let source = CopySource {
                copier: self,
                repo: &from,
            };
            for found in
                crate::referrers::walk(&source, &subjects, &options.referrers_filter).await?
            {
                referrers.push(found.digest);
            }
        }
        Ok(CopySurvey {
            digest: tree.top.digest().clone(),
            blobs,
            referrers,
        })
    }

    /// The manifests of `source` to copy: the top one, the platform
    /// manifests an index brings (all, or the chosen one alone).
    async fn tree(
        &self,
        from: &Repository,
        source: &Reference,
        options: &CopyOptions,
    ) -> Result<Tree> {
        let top = self.manifest(from, &manifest_reference(source)).await?;
        match top.manifest() {
            Manifest::Image(_) => Ok(Tree {
                images: vec![top.clone()],
                children: Vec::new(),
                top,
            }),
            Manifest::Index(index) if options.all_platforms => {
                let mut children = Vec::new();
                for entry in index.manifests() {
                    let child = self.manifest(from, entry.digest().as_ref()).await?;
                    if !matches!(child.manifest(), Manifest::Image(_)) {
                        return Err(Error::Unsupported {
                            reference: source.to_string(),
                            message: format!(
                                "the index entry {} is not an image manifest",
                                entry.digest()
                            ),
                        });
                    }
                    children.push(child);
                }
                Ok(Tree {
                    images: children.clone(),
                    children,
                    top,
                })
            }
            Manifest::Index(index) => {
                let wanted = options.platform.clone().unwrap_or_else(Platform::host);
                let entry = haul_oci::select_manifest(index, &wanted)?;
                let chosen = self.manifest(from, entry.digest().as_ref()).await?;
                Ok(Tree {
                    images: vec![chosen.clone()],
                    children: Vec::new(),
                    top: chosen,
                })
            }
            Manifest::Schema1(_) => Err(Error::Unsupported {
                reference: source.to_string(),
                message: "Docker schema 1 manifests cannot be copied".into(),
            }),
        }
    }

    /// A manifest of `repo`: by digest from this run's cache when it was
    /// read before (a digest names the same bytes everywhere), else from
    /// the registry. A tag is resolved with `HEAD` first (which rate
    /// limited registries do not count), so a known digest costs no `GET`.
    async fn manifest(&self, repo: &Repository, reference: &str) -> Result<ParsedManifest> {
        let digest = match Digest::parse(reference) {
            Ok(d) => Some(d),
            Err(_) => match repo.head_manifest(reference).await {
                Ok(info) => info.map(|i| i.digest),
                Err(e) => {
                    tracing::debug!("HEAD of {reference} failed, asking with GET: {e}");
                    None
                }
            },
        };
        let Some(digest) = digest else {
            let parsed = fetch_manifest(repo, reference).await?;
            let cell = self.manifest_cell(parsed.digest());
            let _ = cell.set(parsed.clone());
            return Ok(parsed);
        };
        let cell = self.manifest_cell(&digest);
        // The digest a HEAD gave is fetched by digest: verified.
        let parsed = cell
            .get_or_try_init(|| fetch_manifest(repo, digest.as_str()))
            .await?;
        Ok(parsed.clone())
    }

    fn manifest_cell(&self, digest: &Digest) -> Once<ParsedManifest> {
        Arc::clone(lock(&self.manifests).entry(digest.clone()).or_default())
    }

    /// The configs and layers of `images` (image manifests) onto the
    /// target, all through one call of the upload manager (in parallel up
    /// to its limit, a blob that several share once).
    async fn copy_blobs(&self, job: &Job<'_>, images: &[ParsedManifest]) -> Result<()> {
        let target = format!("{}/{}", job.to.registry(), job.to.name());
        // Blobs this copy can move now, and those another copy of the run
        // is placing in another repository of the registry (their
        // transfers start once that is done, and then mount).
        let mut descriptors = Vec::new();
        let mut followers = Vec::new();
        let mut blobs = Vec::new();
        for image in images {
            blobs.extend(image_blobs(image)?);
        }
        for (digest, size, media_type) in blobs {
            lock(job.placed).push((digest.clone(), size));
            let upload = match &self.store {
                Some(store) => crate::push::recorded_upload(store, &target, &digest),
                None => haul_registry::ResumableUpload::new(),
            };
            let claim = self.placements.claim(job.to.registry(), &target, &digest);
            let blob = Arc::new(CopyBlob {
                from: job.from.clone(),
                to: job.to.clone(),
                target: target.clone(),
                digest,
                size,
                media_type,
                chunking: self.chunking,
                upload,
                placements: self.placements.clone(),
                totals: self.totals.clone(),
                store: self.store.clone(),
                claim: Mutex::new(None),
            });
            match claim {
                Claim::First(held) => {
                    *lock(&blob.claim) = Some(held);
                    descriptors.push(blob);
                }
                Claim::Join => descriptors.push(blob),
                follow @ Claim::Follow(_) => followers.push((follow, blob)),
            }
        }
        let now = async {
            self.uploads
                .upload(job.cancel, &descriptors, Arc::clone(job.output))
                .await?;
            Ok::<_, Error>(())
        };
        // Each follower's transfer starts once the copy it waits for is
        // done with that blob.
        let after_others =
            futures::future::try_join_all(followers.into_iter().map(|(claim, blob)| async move {
                claim.wait(job.cancel).await?;
                self.uploads
                    .upload(job.cancel, &[blob], Arc::clone(job.output))
                    .await?;
                Ok::<_, Error>(())
            }));
        futures::future::try_join(now, after_others).await?;
        Ok(())
    }

    /// Copies the referrers of `subjects` (and theirs) that `options`
    /// wants, by digest, a referrer before its own; pushing each onto the
    /// target lists it there (the registry's referrers API, else the
    /// fallback tag).
    async fn copy_referrers(
        &self,
        job: &Job<'_>,
        subjects: &[Digest],
        options: &CopyOptions,
    ) -> Result<Vec<Digest>> {
        let source = CopySource {
            copier: self,
            repo: job.from,
        };
        let found = crate::referrers::walk(&source, subjects, &options.referrers_filter).await?;
        let mut copied = Vec::new();
        for referrer in found {
            self.copy_by_digest(job, &referrer.digest, None).await?;
            job.output.message(
                "",
                Message::Referrer {
                    moved: Moved::Copied,
                    digest: referrer.digest.to_string(),
                    subject: referrer.subject.to_string(),
                },
            );
            copied.push(referrer.digest);
        }
        Ok(copied)
    }

    /// Copies the manifest `digest` (an image manifest or an index with
    /// its children) with its blobs, under `tag` or its digest.
    async fn copy_by_digest(
        &self,
        job: &Job<'_>,
        digest: &Digest,
        tag: Option<&str>,
    ) -> Result<()> {
        let manifest = self.manifest(job.from, digest.as_str()).await?;
        match manifest.manifest() {
            Manifest::Image(_) => {
                self.copy_blobs(job, std::slice::from_ref(&manifest))
                    .await?
            }
            Manifest::Index(index) => {
                let mut children = Vec::new();
                for entry in index.manifests() {
                    children.push(self.manifest(job.from, entry.digest().as_ref()).await?);
                }
                let images: Vec<ParsedManifest> = children
                    .iter()
                    .filter(|c| matches!(c.manifest(), Manifest::Image(_)))
                    .cloned()
                    .collect();
                self.copy_blobs(job, &images).await?;
                for child in &children {
                    self.put_by_digest(job.to, child).await?;
                }
            }
            Manifest::Schema1(_) => {
                return Err(Error::Unsupported {
                    reference: digest.to_string(),
                    message: "Docker schema 1 manifests cannot be copied".into(),
                })
            }
        }
        match tag {
            Some(tag) => {
                job.to
                    .put_manifest(
                        tag,
                        manifest.media_type(),
                        Bytes::copy_from_slice(manifest.bytes()),
                    )
                    .await?;
            }
            None => self.put_by_digest(job.to, &manifest).await?,
        }
        Ok(())
    }

    /// Puts `manifest` into `to` by its digest, once per run: copies that
    /// share it (tags of one index, referrers of one subject) wait for the
    /// first. distribution 2.8 rewrites a manifest's link on every PUT, and
    /// an index PUT that checks its entries meanwhile can find one missing.
    async fn put_by_digest(&self, to: &Repository, manifest: &ParsedManifest) -> Result<()> {
        let key = (
            format!("{}/{}", to.registry(), to.name()),
            manifest.digest().clone(),
        );
        let cell = Arc::clone(lock(&self.put_manifests).entry(key).or_default());
        cell.get_or_try_init(|| async {
            to.put_manifest(
                manifest.digest().as_str(),
                manifest.media_type(),
                Bytes::copy_from_slice(manifest.bytes()),
            )
            .await
            .map(|_| ())
        })
        .await?;
        Ok(())
    }

    /// Copies cosign's `ALG-HEX.sig`, `.att` and `.sbom` tags of `subject`.
    async fn copy_digest_tags(
        &self,
        job: &Job<'_>,
        subject: &Digest,
        copied: &mut Vec<String>,
    ) -> Result<()> {
        let tags = self.source_tags(job.from).await?;
        let base = haul_registry::fallback_tag(subject);
        for suffix in DIGEST_TAG_SUFFIXES {
            let tag = format!("{base}.{suffix}");
            if !tags.contains(&tag) || copied.contains(&tag) {
                continue;
            }
            let info = job.from.head_manifest(&tag).await?;
            let Some(info) = info else { continue };
            self.copy_by_digest(job, &info.digest, Some(&tag)).await?;
            job.output.message(
                "",
                Message::AttachedTag {
                    moved: Moved::Copied,
                    tag: tag.clone(),
                },
            );
            copied.push(tag);
        }
        Ok(())
    }

    async fn source_tags(&self, repo: &Repository) -> Result<Arc<HashSet<String>>> {
        let key = format!("{}/{}", repo.registry(), repo.name());
        let mut tags = self.tags.lock().await;
        if let Some(known) = tags.get(&key) {
            return Ok(Arc::clone(known));
        }
        let listed = match repo.tags(None).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let listed = Arc::new(listed.into_iter().collect::<HashSet<_>>());
        tags.insert(key, Arc::clone(&listed));
        Ok(listed)
    }
}

/// The manifests one copy writes.
struct Tree {
    /// What the target reference names.
    top: ParsedManifest,
    /// An index's platform manifests, pushed by digest before it.
    children: Vec<ParsedManifest>,
    /// The image manifests whose blobs move.
    images: Vec<ParsedManifest>,
}

/// The two ends and the reporting of one copy.
struct Job<'a> {
    from: &'a Repository,
    to: &'a Repository,
    output: &'a Arc<dyn ProgressOutput>,
    cancel: &'a CancellationToken,
    /// The blobs the copy placed (digest, size).
    placed: &'a Mutex<Vec<(Digest, u64)>>,
}

/// An image manifest's config and layers (digest, size, media type),
/// config first, then the layers from the top down.
fn image_blobs(image: &ParsedManifest) -> Result<Vec<(Digest, u64, String)>> {
    let manifest = image.manifest();
    manifest
        .config()
        .into_iter()
        .chain(manifest.layers().unwrap_or(&[]).iter().rev())
        .map(|blob| {
            Ok((
                Digest::try_from(blob.digest())?,
                blob.size(),
                blob.media_type().to_string(),
            ))
        })
        .collect()
}

/// The descriptors of `referrers` (of `repo`) whose artifact type is one
/// of `types`. A referrer that declares none, or the empty-JSON type (as
/// some cosign versions write), is read: its own `artifactType`, config
/// and layer media types then decide.
pub async fn filter_referrers(
    repo: &Repository,
    referrers: Vec<haul_oci::Descriptor>,
    types: &[String],
) -> Result<Vec<haul_oci::Descriptor>> {
    let source = crate::referrers::RegistryReferrers::new(repo.clone());
    let mut kept = Vec::new();
    for descriptor in referrers {
        let digest = Digest::try_from(descriptor.digest())?;
        if crate::referrers::selected(&source, &descriptor, &digest, types).await? {
            kept.push(descriptor);
        }
    }
    Ok(kept)
}

/// A copy's source repository, read through the copier's manifest cache.
struct CopySource<'a> {
    copier: &'a Copier,
    repo: &'a Repository,
}

impl crate::referrers::ReferrerSource for CopySource<'_> {
    async fn list(&self, subject: &Digest) -> Result<Vec<haul_oci::Descriptor>> {
        Ok(self.repo.referrers(subject, None).await?)
    }

    async fn manifest(&self, digest: &Digest) -> Result<ParsedManifest> {
        self.copier.manifest(self.repo, digest.as_str()).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `tag` is a referrers fallback tag (`sha256-HEX`) or one of
/// cosign's digest tags (`sha256-HEX.sig`, ...): a tag that names an
/// artifact of another manifest, not an image of its own.
pub fn is_referrer_tag(tag: &str) -> bool {
    let Some((algorithm, rest)) = tag.split_once('-') else {
        return false;
    };
    let hex = rest.split_once('.').map_or(rest, |(hex, _)| hex);
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == hex_len && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_tags_are_told_from_image_tags() {
        let hex = "a".repeat(64);
        assert!(is_referrer_tag(&format!("sha256-{hex}")));
        assert!(is_referrer_tag(&format!("sha256-{hex}.sig")));
        assert!(is_referrer_tag(&format!("sha256-{hex}.sbom")));
        assert!(!is_referrer_tag("latest"));
        assert!(!is_referrer_tag("sha256-abc"));
        assert!(!is_referrer_tag(&format!("v1-{hex}")));
    }
}
