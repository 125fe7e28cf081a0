//! From a reference to the image manifests to pull: fetch what the tag or
//! digest names; for an index, pick the platform (or take them all).

use haul_oci::{parse_manifest, Manifest, ParsedManifest, Platform, Reference};
use haul_registry::Repository;

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
pub async fn resolve(
    repo: &Repository,
    reference: &Reference,
    platform: Option<&Platform>,
    all: bool,
) -> Result<Resolved> {
    let top = fetch_manifest(repo, &manifest_reference(reference)).await?;
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
                let image = fetch_manifest(repo, descriptor.digest().as_ref()).await?;
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
