//! The one referrer walk every flow shares (copy, sync, pull, push, save):
//! from a set of subjects, the referrers that a [`ReferrerSource`] lists,
//! kept or dropped by an artifact-type filter, then their referrers in
//! turn, depth first, each once. Where they come from (a registry, the
//! local store) and where they go is the caller's business.

use std::collections::HashSet;

use haul_oci::{Descriptor, Digest, ParsedManifest};

use crate::error::Result;

/// Deepest chain of referrers of referrers followed.
pub(crate) const REFERRER_DEPTH: usize = 8;
/// Suffixes of cosign's digest tags.
pub(crate) const DIGEST_TAG_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Which referrers a flow brings along.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferrerOptions {
    /// Bring the referrers of every manifest moved, and theirs.
    pub referrers: bool,
    /// Also bring cosign's `sha256-HEX.sig`, `.att` and `.sbom` tags.
    pub digest_tags: bool,
    /// Only referrers of these artifact types (empty: all of them).
    pub filter: Vec<String>,
}

impl ReferrerOptions {
    /// Whether nothing but the image is asked for.
    pub fn is_empty(&self) -> bool {
        !self.referrers && !self.digest_tags && self.filter.is_empty()
    }
}

/// Where referrers are listed and read.
pub(crate) trait ReferrerSource {
    /// The referrers of `subject`, as descriptors.
    async fn list(&self, subject: &Digest) -> Result<Vec<Descriptor>>;
    /// The manifest `digest` (to judge one that declares no artifact type).
    async fn manifest(&self, digest: &Digest) -> Result<ParsedManifest>;
}

/// One referrer the walk found.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The manifest it refers to.
    pub subject: Digest,
    /// Its digest.
    pub digest: Digest,
    /// As the source listed it.
    pub descriptor: Descriptor,
}

/// The referrers of `subjects` (every level) that `filter` keeps, each
/// once, a referrer before its own referrers.
pub(crate) async fn walk<S: ReferrerSource>(
    source: &S,
    subjects: &[Digest],
    filter: &[String],
) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    for subject in subjects {
        walk_from(source, subject, filter, 0, &mut seen, &mut found).await?;
    }
    Ok(found)
}

async fn walk_from<S: ReferrerSource>(
    source: &S,
    subject: &Digest,
    filter: &[String],
    depth: usize,
    seen: &mut HashSet<Digest>,
    found: &mut Vec<Found>,
) -> Result<()> {
    if depth >= REFERRER_DEPTH {
        return Ok(());
    }
    for descriptor in source.list(subject).await? {
        let digest = Digest::try_from(descriptor.digest())?;
        if seen.contains(&digest) || !selected(source, &descriptor, &digest, filter).await? {
            continue;
        }
        seen.insert(digest.clone());
        found.push(Found {
            subject: subject.clone(),
            digest: digest.clone(),
            descriptor,
        });
        Box::pin(walk_from(source, &digest, filter, depth + 1, seen, found)).await?;
    }
    Ok(())
}

/// Whether the referrer `descriptor` passes `filter`.
pub(crate) async fn selected<S: ReferrerSource>(
    source: &S,
    descriptor: &Descriptor,
    digest: &Digest,
    filter: &[String],
) -> Result<bool> {
    if filter.is_empty() {
        return Ok(true);
    }
    Ok(match declared_match(descriptor, filter) {
        Some(matches) => matches,
        None => read_match(&source.manifest(digest).await?, filter),
    })
}

/// Whether a referrer's declared artifact type is one of `types`; `None`
/// when it declares none or the empty-JSON type (cosign writes that), so
/// that the manifest itself must say what it is.
fn declared_match(descriptor: &Descriptor, types: &[String]) -> Option<bool> {
    let declared = descriptor.artifact_type().as_ref()?.to_string();
    (declared != haul_oci::media_type::OCI_EMPTY).then(|| types.contains(&declared))
}

/// Whether what `manifest` says it is (see [`artifact_types`]) is one of `types`.
fn read_match(manifest: &ParsedManifest, types: &[String]) -> bool {
    artifact_types(manifest).iter().any(|t| types.contains(t))
}

/// What a manifest says it is: its `artifactType`, its config's media
/// type and its layers' media types.
fn artifact_types(manifest: &ParsedManifest) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(manifest.bytes()).unwrap_or_default();
    let mut types = Vec::new();
    if let Some(t) = value.get("artifactType").and_then(|v| v.as_str()) {
        types.push(t.to_string());
    }
    if let Some(t) = value.pointer("/config/mediaType").and_then(|v| v.as_str()) {
        types.push(t.to_string());
    }
    for layer in value
        .get("layers")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(t) = layer.get("mediaType").and_then(|v| v.as_str()) {
            types.push(t.to_string());
        }
    }
    types
}

/// Every blob a referrer manifest needs besides itself: an image
/// manifest's config and layers; for an index, its manifests (and their
/// blobs, which `children` gives).
pub(crate) fn manifest_blobs(manifest: &ParsedManifest) -> Result<Vec<(Digest, u64)>> {
    let m = manifest.manifest();
    let mut blobs = Vec::new();
    for descriptor in m
        .config()
        .into_iter()
        .chain(m.layers().unwrap_or(&[]).iter())
    {
        blobs.push((Digest::try_from(descriptor.digest())?, descriptor.size()));
    }
    Ok(blobs)
}

/// The descriptor of a stored referrer, as a referrers listing gives it.
pub(crate) fn stored_descriptor(referrer: &haul_store::StoredReferrer) -> Result<Descriptor> {
    let mut builder = haul_oci::oci_spec::image::DescriptorBuilder::default()
        .media_type(haul_oci::oci_spec::image::MediaType::from(
            referrer.media_type.as_str(),
        ))
        .digest(referrer.digest.to_oci())
        .size(referrer.size);
    if let Some(t) = &referrer.artifact_type {
        builder = builder.artifact_type(haul_oci::oci_spec::image::MediaType::from(t.as_str()));
    }
    if !referrer.annotations.is_empty() {
        builder = builder.annotations(
            referrer
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    builder.build().map_err(|e| crate::error::Error::Invalid {
        what: format!("referrer {}", referrer.digest),
        reason: e.to_string(),
    })
}

/// Referrers in a registry repository, each manifest read once per walk.
pub(crate) struct RegistryReferrers {
    repo: haul_registry::Repository,
    manifests: std::sync::Mutex<std::collections::HashMap<Digest, ParsedManifest>>,
}

impl RegistryReferrers {
    pub(crate) fn new(repo: haul_registry::Repository) -> Self {
        Self {
            repo,
            manifests: Default::default(),
        }
    }
}

impl ReferrerSource for RegistryReferrers {
    async fn list(&self, subject: &Digest) -> Result<Vec<Descriptor>> {
        Ok(self.repo.referrers(subject, None).await?)
    }

    async fn manifest(&self, digest: &Digest) -> Result<ParsedManifest> {
        let cached = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned();
        if let Some(parsed) = cached {
            return Ok(parsed);
        }
        let parsed = crate::pull::resolve::fetch_manifest(&self.repo, digest.as_str()).await?;
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), parsed.clone());
        Ok(parsed)
    }
}

/// The referrers recorded in a local store.
pub(crate) struct StoreReferrers {
    pub(crate) store: haul_store::Store,
}

impl ReferrerSource for StoreReferrers {
    async fn list(&self, subject: &Digest) -> Result<Vec<Descriptor>> {
        let store = self.store.clone();
        let subject = subject.clone();
        let stored = crate::task::blocking(move || Ok(store.referrers(&subject)?)).await?;
        stored
            .iter()
            .filter(|r| r.tag.is_none())
            .map(stored_descriptor)
            .collect()
    }

    async fn manifest(&self, digest: &Digest) -> Result<ParsedManifest> {
        let store = self.store.clone();
        let digest = digest.clone();
        crate::task::blocking(move || {
            let bytes = store.read_blob_limited(&digest, crate::pull::CONFIG_LIMIT)?;
            Ok(haul_oci::parse_manifest(bytes, None)?)
        })
        .await
    }
}
