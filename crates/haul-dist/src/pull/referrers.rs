//! `pull --referrers`: the referrers of pulled manifests (and theirs) into
//! the local store, with their exact bytes, so their digests stay the
//! registry's. Every blob goes through the store's ingest (streamed,
//! verified, resumable); a referrer's record is written once all of its
//! blobs are present, so a failure leaves no record naming a missing blob.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use haul_oci::{Digest, Manifest, ParsedManifest};
use haul_registry::Repository;
use haul_store::{Store, StoredReferrer};
use haul_xfer::{short_id, Counts, Message, Moved, ProgressOutput, Status};
use tokio_util::sync::CancellationToken;

use crate::error::is_retryable;
use crate::error::{Error, Result};
use crate::pull::layer_fetch::{fetch_layer, LayerBlobInfo};
use crate::referrers::{
    manifest_blobs, walk, ReferrerOptions, ReferrerSource, RegistryReferrers, DIGEST_TAG_SUFFIXES,
};
use crate::task::blocking;

/// What [`pull_referrers`] brought.
#[derive(Debug, Default)]
pub(crate) struct PulledReferrers {
    /// Referrers recorded (every level), a referrer before its own.
    pub digests: Vec<Digest>,
    /// Cosign digest tags recorded.
    pub digest_tags: Vec<String>,
    /// Bytes that crossed the network.
    pub transferred: u64,
}

/// One pull's referrer work: the registry it reads, the store it fills.
pub(crate) struct ReferrerPull<'a> {
    pub repo: &'a Repository,
    pub store: &'a Store,
    pub attempts: u32,
    pub output: &'a Arc<dyn ProgressOutput>,
    pub cancel: &'a CancellationToken,
}

impl ReferrerPull<'_> {
    /// Brings the referrers of `subjects` that `options` asks for.
    pub(crate) async fn run(
        &self,
        subjects: &[Digest],
        options: &ReferrerOptions,
    ) -> Result<PulledReferrers> {
        let source = RegistryReferrers::new(self.repo.clone());
        let transferred = AtomicU64::new(0);
        let mut pulled = PulledReferrers::default();
        if options.referrers || !options.filter.is_empty() {
            for found in walk(&source, subjects, &options.filter).await? {
                let artifact_type = found
                    .descriptor
                    .artifact_type()
                    .as_ref()
                    .map(|t| t.to_string());
                self.store_one(
                    &source,
                    &found.subject,
                    &found.digest,
                    artifact_type,
                    None,
                    &transferred,
                )
                .await?;
                pulled.digests.push(found.digest);
            }
        }
        if options.digest_tags {
            let tags: HashSet<String> = match self.repo.tags(None).await {
                Ok(tags) => tags.into_iter().collect(),
                Err(e) if e.is_not_found() => HashSet::new(),
                Err(e) => return Err(e.into()),
            };
            for subject in subjects {
                let base = haul_registry::fallback_tag(subject);
                for suffix in DIGEST_TAG_SUFFIXES {
                    let tag = format!("{base}.{suffix}");
                    if !tags.contains(&tag) || pulled.digest_tags.contains(&tag) {
                        continue;
                    }
                    let Some(info) = self.repo.head_manifest(&tag).await? else {
                        continue;
                    };
                    self.store_one(
                        &source,
                        subject,
                        &info.digest,
                        None,
                        Some(tag.clone()),
                        &transferred,
                    )
                    .await?;
                    pulled.digest_tags.push(tag);
                }
            }
        }
        pulled.transferred = transferred.load(Ordering::Relaxed);
        Ok(pulled)
    }

    /// Fetches the referrer `digest` of `subject` with every blob it
    /// needs, then records it.
    async fn store_one(
        &self,
        source: &RegistryReferrers,
        subject: &Digest,
        digest: &Digest,
        declared_type: Option<String>,
        tag: Option<String>,
        transferred: &AtomicU64,
    ) -> Result<()> {
        let result = async {
            let manifest = self.manifest(source, digest).await?;
            let mut manifests = vec![manifest.clone()];
            if let Manifest::Index(index) = manifest.manifest() {
                for entry in index.manifests() {
                    let child = Digest::try_from(entry.digest())?;
                    manifests.push(self.manifest(source, &child).await?);
                }
            }
            let mut blobs: Vec<Digest> = Vec::new();
            let mut children = Vec::new();
            for (i, m) in manifests.iter().enumerate() {
                if i > 0 {
                    self.put_bytes(m).await?;
                    children.push(m.digest().clone());
                }
                for (blob, size) in manifest_blobs(m)? {
                    self.fetch_blob(&blob, size, transferred).await?;
                    if !blobs.contains(&blob) {
                        blobs.push(blob);
                    }
                }
            }
            self.put_bytes(&manifest).await?;
            let mut record = record_of(&manifest, declared_type, blobs, tag.clone());
            record.manifests = children;
            let store = self.store.clone();
            let subject_digest = subject.clone();
            blocking(move || Ok(store.add_referrer(&subject_digest, &record)?)).await?;
            let what = match &tag {
                Some(tag) => Message::AttachedTag {
                    moved: Moved::Pulled,
                    tag: tag.clone(),
                },
                None => Message::Referrer {
                    moved: Moved::Pulled,
                    digest: digest.to_string(),
                    subject: subject.to_string(),
                },
            };
            self.output.message("", what);
            Ok(())
        }
        .await;
        result.map_err(|source| Error::Referrer {
            referrer: digest.clone(),
            subject: subject.clone(),
            source: Box::new(source),
        })
    }

    /// The manifest `digest`: from the store when a pull stored it before
    /// (a digest names the same bytes everywhere, and a manifest `GET`
    /// counts against a registry's quota), else from the registry.
    async fn manifest(
        &self,
        source: &RegistryReferrers,
        digest: &Digest,
    ) -> Result<ParsedManifest> {
        let store = self.store.clone();
        let wanted = digest.clone();
        let stored = blocking(move || {
            if !store.has_blob(&wanted) {
                return Ok(None);
            }
            let bytes = store.read_blob_limited(&wanted, crate::pull::CONFIG_LIMIT)?;
            Ok(haul_oci::parse_manifest(bytes, None).ok())
        })
        .await?;
        match stored {
            Some(parsed) if parsed.digest() == digest => Ok(parsed),
            _ => source.manifest(digest).await,
        }
    }

    async fn put_bytes(&self, manifest: &ParsedManifest) -> Result<()> {
        let store = self.store.clone();
        let (bytes, digest) = (manifest.bytes().to_vec(), manifest.digest().clone());
        blocking(move || {
            if !store.has_blob(&digest) {
                store.put_blob_bytes(&bytes, &digest)?;
            }
            Ok(())
        })
        .await
    }

    /// One blob into the store, streamed (a partial resumes), tried at
    /// most `attempts` times.
    async fn fetch_blob(&self, digest: &Digest, size: u64, transferred: &AtomicU64) -> Result<()> {
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let blob = LayerBlobInfo {
            digest: digest.clone(),
            size,
            compression: None,
        };
        let id = short_id(digest.as_str()).to_string();
        let report = |present: u64| {
            self.output
                .status(&id, Status::Downloading(Counts::of(present, size)));
        };
        let mut attempt = 1;
        loop {
            match fetch_layer(
                self.repo,
                self.store,
                &blob,
                None,
                None,
                self.cancel,
                &report,
            )
            .await
            {
                Ok(fetched) => {
                    transferred.fetch_add(fetched.transferred, Ordering::Relaxed);
                    self.output.status(&id, Status::DownloadComplete);
                    return Ok(());
                }
                Err(err) if attempt < self.attempts.max(1) && is_retryable(&err) => attempt += 1,
                Err(err) => return Err(err),
            }
        }
    }
}

/// The store's record of a referrer manifest: its descriptor as a
/// referrers listing gives it (artifact type declared, else its own
/// `artifactType`, else its config's media type, as the fallback index
/// writes it), and the blobs it needs.
pub(crate) fn record_of(
    manifest: &ParsedManifest,
    declared_type: Option<String>,
    blobs: Vec<Digest>,
    tag: Option<String>,
) -> StoredReferrer {
    let value: serde_json::Value = serde_json::from_slice(manifest.bytes()).unwrap_or_default();
    let artifact_type = declared_type.or_else(|| {
        value
            .get("artifactType")
            .or_else(|| value.pointer("/config/mediaType"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    let annotations: BTreeMap<String, String> = value
        .get("annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    StoredReferrer {
        digest: manifest.digest().clone(),
        media_type: manifest.media_type().to_string(),
        size: manifest.size(),
        artifact_type: artifact_type.filter(|_| tag.is_none()),
        annotations,
        blobs,
        manifests: Vec::new(),
        tag,
    }
}
