//! The referrers API (`GET /v2/NAME/referrers/DIGEST`) and its tag schema
//! fallback for registries without it: an index tagged `ALG-HEX` listing
//! the manifests whose subject is `ALG:HEX`, kept up to date by pushers.

use bytes::Bytes;
use haul_oci::Digest;
use oci_spec::image::{Descriptor, DescriptorBuilder, ImageIndex, MediaType};
use reqwest::header::ACCEPT;
use reqwest::StatusCode;

use crate::client::{read_limited, Operation, Subject};
use crate::error::{Error, Result};
use crate::repository::{empty_index, Repository, MANIFEST_LIMIT};

/// The fallback tag of a subject digest: `sha256:abc` -> `sha256-abc`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.hex())
}

pub(crate) async fn list(
    repo: &Repository,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Vec<Descriptor>> {
    let host = &repo.host;
    let op = Operation {
        subject: Subject::Manifest {
            repository: repo.name.clone(),
            reference: subject.to_string(),
        },
        action: format!("GET referrers of {subject}"),
        scopes: repo.pull_scope(),
        resendable: true,
        resend_after_transport_error: true,
    };
    let mut url = host
        .url(&format!("v2/{}/referrers/{subject}", repo.name))
        .await?;
    if let Some(t) = artifact_type {
        url.query_pairs_mut().append_pair("artifactType", t);
    }
    let resp = host
        .send(&op, &|http| {
            Ok(http
                .get(url.clone())
                .header(ACCEPT, haul_oci::media_type::OCI_INDEX))
        })
        .await?;
    let index = match resp.status() {
        s if s.is_success() => {
            let filtered = resp.headers().contains_key("oci-filters-applied");
            let body = read_limited(resp, MANIFEST_LIMIT, &host.name, "referrers index").await?;
            let index = parse_index(&body, &host.name)?;
            if filtered {
                return Ok(index.manifests().clone());
            }
            index
        }
        // No referrers API here: read the fallback tag instead.
        StatusCode::NOT_FOUND => match fallback_index(repo, subject).await? {
            Some(index) => index,
            None => return Ok(Vec::new()),
        },
        _ => return Err(host.status_error(&op, resp).await),
    };
    Ok(index
        .manifests()
        .iter()
        .filter(|d| {
            artifact_type.is_none_or(|t| {
                d.artifact_type().as_ref().map(|a| a.to_string()).as_deref() == Some(t)
            })
        })
        .cloned()
        .collect())
}

async fn fallback_index(repo: &Repository, subject: &Digest) -> Result<Option<ImageIndex>> {
    let tag = fallback_tag(subject);
    // Most manifests have no referrers: a HEAD (which pull quotas do not
    // count) says so without a GET.
    if repo.head_manifest(&tag).await?.is_none() {
        return Ok(None);
    }
    match repo.get_manifest(&tag).await {
        Ok(m) => Ok(Some(parse_index(&m.bytes, &repo.host.name)?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_index(body: &[u8], registry: &str) -> Result<ImageIndex> {
    serde_json::from_slice(body).map_err(|e| Error::Protocol {
        registry: registry.to_string(),
        message: format!("unreadable referrers index: {e}"),
    })
}

/// Lists a just-pushed manifest in its subject's fallback index.
pub(crate) async fn add_to_fallback(
    repo: &Repository,
    subject: &Descriptor,
    media_type: &str,
    manifest: &[u8],
    digest: &Digest,
) -> Result<()> {
    let subject_digest = Digest::parse(subject.digest().as_ref())?;
    // Two referrers of one subject pushed at once must not both read the
    // old index and each write it back with only their own entry.
    let lock = repo.client.fallback_lock(&format!(
        "{}/{}@{subject_digest}",
        repo.host.name, repo.name
    ));
    let _serialised = lock.lock().await;
    let mut index = fallback_index(repo, &subject_digest)
        .await?
        .unwrap_or_else(empty_index);
    if index
        .manifests()
        .iter()
        .any(|d| d.digest().as_ref() == digest.as_str())
    {
        return Ok(());
    }
    let parsed: serde_json::Value = serde_json::from_slice(manifest).unwrap_or_default();
    let artifact_type = parsed
        .get("artifactType")
        .and_then(|v| v.as_str())
        .or_else(|| {
            parsed
                .get("config")
                .and_then(|c| c.get("mediaType"))
                .and_then(|v| v.as_str())
        })
        .map(str::to_string);
    let mut builder = DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest.to_oci())
        .size(manifest.len() as u64);
    if let Some(t) = artifact_type {
        builder = builder.artifact_type(MediaType::from(t.as_str()));
    }
    if let Some(annotations) = parsed.get("annotations").and_then(|a| {
        serde_json::from_value::<std::collections::HashMap<String, String>>(a.clone()).ok()
    }) {
        builder = builder.annotations(annotations);
    }
    let descriptor = builder.build().map_err(|e| Error::Protocol {
        registry: repo.host.name.clone(),
        message: format!("cannot describe referrer: {e}"),
    })?;
    let mut manifests = index.manifests().clone();
    manifests.push(descriptor);
    index.set_manifests(manifests);
    let body = serde_json::to_vec(&index).map_err(|e| Error::Config(e.to_string()))?;
    let op_tag = fallback_tag(&subject_digest);
    // Through the plain PUT: an index has no subject, so this cannot recurse.
    Box::pin(repo.put_manifest(&op_tag, haul_oci::media_type::OCI_INDEX, Bytes::from(body)))
        .await?;
    Ok(())
}
