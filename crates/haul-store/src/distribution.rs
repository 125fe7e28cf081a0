//! Distribution metadata: which blob digests, in which repositories, a diff
//! ID is known under (`distribution/diffid/ALG/HEX.json`), and the reverse,
//! which diff ID a blob unpacks to (`distribution/blob/ALG/HEX.json`).
//!
//! Pull records a source for each layer it fetched or found; push records
//! where it uploaded. A later pull asks [`Store::diff_id_for_blob`] to say
//! "Already exists" before downloading; a push asks
//! [`Store::distribution_sources`] for a blob it can mount from another
//! repository of the same registry instead of uploading.

use std::path::PathBuf;

use haul_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{create_dirs, json_bytes, read_json, write_atomic_batch};
use crate::Store;

/// Most sources remembered per diff ID; the oldest are forgotten first.
const MAX_SOURCES: usize = 64;

/// One place a layer is known to exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DistributionSource {
    /// The blob digest (compressed form) in that repository.
    pub digest: Digest,
    /// `registry/repository`, e.g. `docker.io/library/alpine`.
    pub repository: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SourcesFile {
    sources: Vec<DistributionSource>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlobFile {
    diff_id: Digest,
}

impl Store {
    fn diff_id_path(&self, diff_id: &Digest) -> PathBuf {
        self.distribution_dir()
            .join("diffid")
            .join(diff_id.algorithm().as_str())
            .join(format!("{}.json", diff_id.hex()))
    }

    fn blob_meta_path(&self, blob: &Digest) -> PathBuf {
        self.distribution_dir()
            .join("blob")
            .join(blob.algorithm().as_str())
            .join(format!("{}.json", blob.hex()))
    }

    /// Records that `diff_id` is available as blob `blob_digest` in
    /// `repository` (`registry/repository`). The most recent record of a
    /// pair moves to the end of the list.
    pub fn add_distribution_source(
        &self,
        diff_id: &Digest,
        blob_digest: &Digest,
        repository: &str,
    ) -> Result<()> {
        self.add_distribution_sources(&[(diff_id.clone(), blob_digest.clone())], repository)
    }

    /// [`Store::add_distribution_source`] for every `(diff_id, blob)` pair
    /// (an image's layers), under one lock and with one batch of writes
    /// (two syncs of the filesystem, none when nothing changed).
    pub fn add_distribution_sources(
        &self,
        layers: &[(Digest, Digest)],
        repository: &str,
    ) -> Result<()> {
        let _lock = self.lock_metadata()?;
        let mut writes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for (diff_id, blob_digest) in layers {
            let source = DistributionSource {
                digest: blob_digest.clone(),
                repository: repository.to_owned(),
            };
            let path = self.diff_id_path(diff_id);
            // An earlier pair of this batch may have changed the file.
            let pending = writes.iter().position(|(p, _)| p == &path);
            let mut file: SourcesFile = match pending {
                Some(i) => serde_json::from_slice(&writes[i].1).unwrap_or_default(),
                None => read_json(&path)?.unwrap_or_default(),
            };
            if file.sources.last() != Some(&source) {
                file.sources.retain(|s| s != &source);
                file.sources.push(source);
                if file.sources.len() > MAX_SOURCES {
                    let excess = file.sources.len() - MAX_SOURCES;
                    file.sources.drain(..excess);
                }
                if let Some(dir) = path.parent() {
                    create_dirs(dir)?;
                }
                let bytes = json_bytes(&path, &file)?;
                match pending {
                    Some(i) => writes[i].1 = bytes,
                    None => writes.push((path, bytes)),
                }
            }
            let blob_path = self.blob_meta_path(blob_digest);
            let known: Option<BlobFile> = match writes.iter().find(|(p, _)| p == &blob_path) {
                Some((_, bytes)) => serde_json::from_slice(bytes).ok(),
                None => read_json(&blob_path)?,
            };
            if known.as_ref().map(|b| &b.diff_id) != Some(diff_id) {
                if let Some(dir) = blob_path.parent() {
                    create_dirs(dir)?;
                }
                let record = BlobFile {
                    diff_id: diff_id.clone(),
                };
                let bytes = json_bytes(&blob_path, &record)?;
                match writes.iter().position(|(p, _)| p == &blob_path) {
                    Some(i) => writes[i].1 = bytes,
                    None => writes.push((blob_path, bytes)),
                }
            }
        }
        write_atomic_batch(&self.tmp_dir(), &writes)
    }

    /// Where `diff_id` is known to exist, oldest record first.
    pub fn distribution_sources(&self, diff_id: &Digest) -> Result<Vec<DistributionSource>> {
        Ok(read_json::<SourcesFile>(&self.diff_id_path(diff_id))?
            .unwrap_or_default()
            .sources)
    }

    /// The diff ID blob `blob_digest` is known to unpack to.
    pub fn diff_id_for_blob(&self, blob_digest: &Digest) -> Result<Option<Digest>> {
        Ok(read_json::<BlobFile>(&self.blob_meta_path(blob_digest))?.map(|b| b.diff_id))
    }

    /// Forgets everything about `diff_id` and the blobs it was known as
    /// (gc). Callers hold the store lock.
    pub(crate) fn forget_diff_id(&self, diff_id: &Digest) -> Result<()> {
        for source in self.distribution_sources(diff_id)? {
            let blob_path = self.blob_meta_path(&source.digest);
            let known: Option<BlobFile> = read_json(&blob_path).unwrap_or(None);
            if known.is_some_and(|b| &b.diff_id == diff_id) {
                crate::fsutil::remove_file_if_exists(&blob_path)?;
            }
        }
        crate::fsutil::remove_file_if_exists(&self.diff_id_path(diff_id))
    }

    /// Every diff ID with distribution metadata.
    pub(crate) fn distribution_diff_ids(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for algorithm in [haul_oci::Algorithm::Sha256, haul_oci::Algorithm::Sha512] {
            let dir = self
                .distribution_dir()
                .join("diffid")
                .join(algorithm.as_str());
            if !dir.is_dir() {
                continue;
            }
            for name in crate::sorted_names(&dir)? {
                let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if let Ok(d) = Digest::new(algorithm, hex) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
