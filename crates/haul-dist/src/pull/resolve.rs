//! From a reference to the image manifests to pull: fetch what the tag or
//! digest names; for an index, pick the platform (or take them all).

use haul_oci::{parse_manifest, Digest, Manifest, ParsedManifest, Platform, Reference};
use haul_registry::Repository;
use haul_store::{Store, MANIFEST_LIMIT};

use crate::error::{Error, Result};

/// What a reference resolved to.
#[derive(Debug)]
pub struct Resolved {
    /// The manifest the reference names (an index or an image manifest).
    pub top: ParsedManifest,
    /// The image manifests to pull, with the platform the index gave them.
    pub images: Vec<(ParsedManifest, Option<Platform>)>,
}

impl Resolved {
    /// The index, when the reference named one.
    pub fn index(&self) -> Option<&ParsedManifest> {
        self.top.manifest().is_index().then_some(&self.top)
    }
}

/// The tag or digest to ask the registry for.
pub fn manifest_reference(reference: &Reference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => haul_oci::reference::DEFAULT_TAG.to_string(),
    }
}

/// Fetches and parses one manifest.
pub async fn fetch_manifest(repo: &Repository, reference: &str) -> Result<ParsedManifest> {
    let fetched = repo.get_manifest(reference).await?;
    let parsed = parse_manifest(fetched.bytes.to_vec(), fetched.media_type.as_deref())?;
    Ok(parsed)
}

/// Resolves `reference` in `repo`: for an index, the manifest for
/// `platform` (default: this machine's), or every platform with `all`.
///
/// With a `store` (the pull passes one for a reference pulled before),
/// manifests it already holds are read from it: the reference is asked
/// with `HEAD` (which rate-limited registries do not count) and, when the
/// store has the manifest the answer names, no `GET` is sent, so pulling
/// an image that is up to date costs no pull quota. Without mirrors only:
/// a `HEAD` goes to the registry itself, which a mirrored setup may not
/// reach. Any failure on that path falls back to the `GET`.
pub async fn resolve(
    repo: &Repository,
    reference: &Reference,
    platform: Option<&Platform>,
    all: bool,
    store: Option<&Store>,
) -> Result<Resolved> {
    let store = store.filter(|_| !repo.has_mirrors());
    let wanted = manifest_reference(reference);
    let local_top = match store {
        Some(store) => local_by_head(repo, &wanted, store).await,
        None => None,
    };
    let top = match local_top {
        Some(parsed) => parsed,
        None => fetch_manifest(repo, &wanted).await?,
    };
    let images = match top.manifest() {
        Manifest::Image(_) => vec![(top.clone(), None)],
        Manifest::Index(index) => {
            let chosen: Vec<_> = if all {
                index
                    .manifests()
                    .iter()
                    .filter(|d| {
                        d.platform()
                            .as_ref()
                            .is_none_or(|p| !Platform::from_oci(p).is_unknown())
                    })
                    .collect()
            } else {
                let wanted = platform.cloned().unwrap_or_else(Platform::host);
                vec![haul_oci::select_manifest(index, &wanted)?]
            };
            let mut images = Vec::with_capacity(chosen.len());
            for descriptor in chosen {
                let digest = descriptor.digest().as_ref();
                let local = match (store, Digest::parse(digest)) {
                    (Some(store), Ok(digest)) => local_manifest(store, &digest, None).await,
                    _ => None,
                };
                let image = match local {
                    Some(parsed) => parsed,
                    None => fetch_manifest(repo, digest).await?,
                };
                if !matches!(image.manifest(), Manifest::Image(_)) {
                    return Err(Error::Unsupported {
                        reference: reference.to_string(),
                        message: format!(
                            "the index entry {} is not an image manifest",
                            descriptor.digest()
                        ),
                    });
                }
                let platform = descriptor.platform().as_ref().map(Platform::from_oci);
                images.push((image, platform));
            }
            images
        }
        Manifest::Schema1(_) => vec![(top.clone(), None)],
    };
    Ok(Resolved { top, images })
}

/// The manifest `reference` names, from `store`, when a `HEAD` says which
/// one it is and the store holds it.
async fn local_by_head(
    repo: &Repository,
    reference: &str,
    store: &Store,
) -> Option<ParsedManifest> {
    let info = match repo.head_manifest(reference).await {
        Ok(info) => info?,
        Err(e) => {
            tracing::debug!("HEAD of {reference} failed, asking with GET: {e}");
            return None;
        }
    };
    local_manifest(store, &info.digest, info.media_type).await
}

/// Manifest `digest` from `store`, if it holds it and its bytes hash to
/// that digest.
async fn local_manifest(
    store: &Store,
    digest: &Digest,
    media_type: Option<String>,
) -> Option<ParsedManifest> {
    let (store, wanted) = (store.clone(), digest.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        store
            .has_blob(&wanted)
            .then(|| store.read_blob_limited(&wanted, MANIFEST_LIMIT).ok())
            .flatten()
    })
    .await
    .ok()??;
    let parsed = parse_manifest(bytes, media_type.as_deref()).ok()?;
    (parsed.digest() == digest).then_some(parsed)
}
