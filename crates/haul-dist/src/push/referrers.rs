//! `push --referrers`: the referrers the store keeps for pushed manifests
//! (and theirs), pushed after their subject with their exact bytes. The
//! registry client's `put_manifest` does the rest, as for a copy: a
//! registry that answers `OCI-Subject` lists the referrer itself, any
//! other gets the `sha256-HEX` fallback index rewritten (serialised per
//! subject).

use std::sync::Arc;

use bytes::Bytes;
use haul_oci::Digest;
use haul_registry::{FileSource, Repository};
use haul_store::{Store, StoredReferrer};
use haul_xfer::{Message, Moved, ProgressOutput};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::push::upload::{upload_blob, Chunking};
use crate::referrers::{walk, ReferrerOptions, StoreReferrers};
use crate::task::blocking;

/// What [`ReferrerPush::run`] pushed.
#[derive(Debug, Default)]
pub(crate) struct PushedReferrers {
    /// Referrers pushed (every level), a referrer before its own.
    pub digests: Vec<Digest>,
    /// Cosign digest tags pushed.
    pub digest_tags: Vec<String>,
}

/// One push's referrer work: the store it reads, the repository it fills.
pub(crate) struct ReferrerPush<'a> {
    pub repo: &'a Repository,
    pub store: &'a Store,
    pub chunking: Chunking,
    pub output: &'a Arc<dyn ProgressOutput>,
    pub cancel: &'a CancellationToken,
}

impl ReferrerPush<'_> {
    /// Pushes the stored referrers of `subjects` that `options` asks for.
    pub(crate) async fn run(
        &self,
        subjects: &[Digest],
        options: &ReferrerOptions,
    ) -> Result<PushedReferrers> {
        let mut pushed = PushedReferrers::default();
        if options.referrers || !options.filter.is_empty() {
            let source = StoreReferrers {
                store: self.store.clone(),
            };
            for found in walk(&source, subjects, &options.filter).await? {
                let record = self.record(&found.subject, &found.digest).await?;
                self.push_one(&found.subject, &record, None).await?;
                pushed.digests.push(found.digest);
            }
        }
        if options.digest_tags {
            for subject in subjects {
                let stored = {
                    let store = self.store.clone();
                    let subject = subject.clone();
                    blocking(move || Ok(store.referrers(&subject)?)).await?
                };
                for record in stored {
                    let Some(tag) = record.tag.clone() else {
                        continue;
                    };
                    if pushed.digest_tags.contains(&tag) {
                        continue;
                    }
                    self.push_one(subject, &record, Some(&tag)).await?;
                    pushed.digest_tags.push(tag);
                }
            }
        }
        Ok(pushed)
    }

    async fn record(&self, subject: &Digest, digest: &Digest) -> Result<StoredReferrer> {
        let store = self.store.clone();
        let (subject, digest) = (subject.clone(), digest.clone());
        blocking(move || {
            store
                .referrers(&subject)?
                .into_iter()
                .find(|r| r.digest == digest)
                .ok_or_else(|| Error::Internal(format!("the record of {digest} vanished")))
        })
        .await
    }

    /// The blobs of `record`, then (for an index) its manifests, then the
    /// referrer itself under its digest or `tag`.
    async fn push_one(
        &self,
        subject: &Digest,
        record: &StoredReferrer,
        tag: Option<&str>,
    ) -> Result<()> {
        let result = async {
            for blob in &record.blobs {
                self.push_blob(blob).await?;
            }
            let mut manifests = Vec::new();
            for digest in &record.manifests {
                let bytes = self.read_small(digest).await?;
                manifests.push(haul_oci::parse_manifest(bytes, None)?);
            }
            for manifest in manifests {
                self.repo
                    .put_manifest(
                        manifest.digest().as_str(),
                        manifest.media_type(),
                        Bytes::copy_from_slice(manifest.bytes()),
                    )
                    .await?;
            }
            let bytes = self.read_small(&record.digest).await?;
            let name = tag.map_or_else(|| record.digest.to_string(), str::to_string);
            let digest = self
                .repo
                .put_manifest(&name, &record.media_type, Bytes::from(bytes))
                .await?;
            if digest != record.digest {
                return Err(Error::Inconsistent {
                    reference: name,
                    message: format!(
                        "the registry stored manifest {digest}, not the local {}",
                        record.digest
                    ),
                });
            }
            let what = match tag {
                Some(tag) => Message::AttachedTag {
                    moved: Moved::Pushed,
                    tag: tag.to_string(),
                },
                None => Message::Referrer {
                    moved: Moved::Pushed,
                    digest: record.digest.to_string(),
                    subject: subject.to_string(),
                },
            };
            self.output.message("", what);
            Ok(())
        }
        .await;
        result.map_err(|source| Error::Referrer {
            referrer: record.digest.clone(),
            subject: subject.clone(),
            source: Box::new(source),
        })
    }

    async fn read_small(&self, digest: &Digest) -> Result<Vec<u8>> {
        let store = self.store.clone();
        let digest = digest.clone();
        blocking(move || Ok(store.read_blob_limited(&digest, crate::pull::CONFIG_LIMIT)?)).await
    }

    /// One stored blob onto the target, unless it has it already.
    async fn push_blob(&self, digest: &Digest) -> Result<()> {
        if self.repo.head_blob(digest).await?.is_some() {
            return Ok(());
        }
        let size = {
            let store = self.store.clone();
            let digest = digest.clone();
            blocking(move || Ok(store.blob_size(&digest)?)).await?
        };
        let source = FileSource(self.store.blob_path(digest));
        upload_blob(
            self.repo,
            digest,
            size,
            &source,
            &haul_registry::ResumableUpload::new(),
            self.chunking,
            self.cancel,
        )
        .await
    }
}
