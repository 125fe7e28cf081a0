//! One repository of a registry: manifests, tags and referrers. Blob
//! downloads live in `blob.rs`, uploads in `upload.rs`.

use std::sync::Arc;

use bytes::Bytes;
use haul_oci::{media_type, Digest};
use oci_spec::image::{Descriptor, ImageIndex};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK};
use reqwest::{Method, StatusCode};

use crate::client::{read_limited, Host, Operation, RegistryClient, Subject};
use crate::error::{Error, Result};

/// Largest manifest read into memory (the OCI recommendation, as haul-oci).
pub const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;
/// Largest page of a tag list read into memory.
const TAG_PAGE_LIMIT: usize = 4 * 1024 * 1024;

/// A repository of a registry, with the mirrors to read it from.
#[derive(Clone)]
pub struct Repository {
    pub(crate) client: RegistryClient,
    pub(crate) host: Arc<Host>,
    pub(crate) mirrors: Vec<Arc<Host>>,
    pub(crate) name: String,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({}/{})", self.host.name, self.name)
    }
}

/// A manifest as the registry sent it: the exact bytes (digests are
/// computed over them), the media type it declared and the digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes received.
    pub bytes: Bytes,
    /// The `Content-Type` the registry declared (may be generic).
    pub media_type: Option<String>,
    /// The digest of `bytes`, checked against what was asked for.
    pub digest: Digest,
}

/// What a `HEAD` on a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

impl Repository {
    pub(crate) fn new(
        client: RegistryClient,
        host: Arc<Host>,
        mirrors: Vec<Arc<Host>>,
        name: String,
    ) -> Self {
        Self {
            client,
            host,
            mirrors,
            name,
        }
    }

    /// The repository path (without the registry).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry host (`host[:port]`) as references name it.
    pub fn registry(&self) -> &str {
        &self.host.name
    }

    /// The client this repository belongs to.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Whether reads go to mirrors before the registry itself.
    pub fn has_mirrors(&self) -> bool {
        !self.mirrors.is_empty()
    }

    /// Hosts to read from: the mirrors in order, then the registry.
    pub(crate) fn read_hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.mirrors.iter().chain(std::iter::once(&self.host))
    }

    pub(crate) fn pull_scope(&self) -> Vec<String> {
        vec![crate::auth::repository_scope(&self.name, &["pull"])]
    }

    pub(crate) fn push_scope(&self) -> Vec<String> {
        vec![crate::auth::repository_scope(&self.name, &["pull", "push"])]
    }

    pub(crate) fn manifest_op(
        &self,
        reference: &str,
        action: &str,
        scopes: Vec<String>,
    ) -> Operation {
        Operation {
            subject: Subject::Manifest {
                repository: self.name.clone(),
                reference: reference.to_string(),
            },
            action: format!("{action} manifest {reference}"),
            scopes,
            resendable: true,
            resend_after_transport_error: true,
        }
    }

    fn manifest_path(&self, reference: &str) -> String {
        format!("v2/{}/manifests/{reference}", self.name)
    }

    /// Fetches a manifest by tag or digest, with the Accept list of every
    /// manifest type haul reads, verifying its digest: against the digest
    /// asked for, else against `Docker-Content-Digest` when sent.
    pub async fn get_manifest(&self, reference: &str) -> Result<FetchedManifest> {
        let mut last_error = None;
        for host in self.read_hosts() {
            match self.get_manifest_on(host, reference).await {
                Ok(m) => return Ok(m),
                Err(e) if !Arc::ptr_eq(host, &self.host) => {
                    tracing::info!(mirror = %host.name, "mirror failed, trying the next: {e}");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no host to read from".into())))
    }

    async fn get_manifest_on(&self, host: &Host, reference: &str) -> Result<FetchedManifest> {
        let op = self.manifest_op(reference, "GET", self.pull_scope());
        let url = host.url(&self.manifest_path(reference)).await?;
        let accept = media_type::manifest_accept_header();
        // A manifest GET counts against a registry's pull quota.
        host.await_quota().await;
        let resp = host
            .send(&op, &|http| {
                Ok(http.get(url.clone()).header(ACCEPT, accept.as_str()))
            })
            .await?;
        host.note_quota(resp.headers());
        if !resp.status().is_success() {
            return Err(host.status_error(&op, resp).await);
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let declared = header_str(resp.headers(), "docker-content-digest");
        let what = format!("manifest {reference} of {}/{}", host.name, self.name);
        let bytes = read_limited(resp, MANIFEST_LIMIT, &host.name, &what).await?;
        let expected = match Digest::parse(reference) {
            Ok(d) => Some(d),
            Err(_) => declared.as_deref().and_then(|d| Digest::parse(d).ok()),
        };
        // A signed schema 1 manifest is known by its payload's digest.
        let signed_schema1 = media_type.as_deref().is_some_and(media_type::is_schema1)
            && bytes.windows(12).any(|w| w == b"\"signatures\"");
        let hashed = if signed_schema1 {
            haul_oci::manifest::signed_payload(&bytes)?
        } else {
            bytes.clone()
        };
        let digest = match &expected {
            Some(e) => Digest::of(e.algorithm(), &hashed),
            None => Digest::sha256_of(&hashed),
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(Error::DigestMismatch {
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(FetchedManifest {
            bytes: Bytes::from(bytes),
            media_type,
            digest,
        })
    }

    /// Asks for a manifest's digest, type and size without its body.
    /// `Ok(None)` means the registry says it does not exist.
    pub async fn head_manifest(&self, reference: &str) -> Result<Option<ManifestInfo>> {
        let op = self.manifest_op(reference, "HEAD", self.pull_scope());
        let url = self.host.url(&self.manifest_path(reference)).await?;
        let accept = media_type::manifest_accept_header();
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http.head(url.clone()).header(ACCEPT, accept.as_str()))
            })
            .await?;
        self.host.note_quota(resp.headers());
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest =
                    header_str(resp.headers(), "docker-content-digest").ok_or_else(|| {
                        Error::Protocol {
                            registry: self.host.name.clone(),
                            message: format!(
                                "HEAD manifest {reference} without Docker-Content-Digest"
                            ),
                        }
                    })?;
                Ok(Some(ManifestInfo {
                    digest: Digest::parse(&digest)?,
                    media_type: header_str(resp.headers(), CONTENT_TYPE.as_str()),
                    size: header_str(resp.headers(), CONTENT_LENGTH.as_str())
                        .and_then(|v| v.parse().ok()),
                }))
            }
            _ => Err(self.host.status_error(&op, resp).await),
        }
    }

    /// Uploads a manifest under a tag or digest, exactly as given (so its
    /// digest does not change), and returns the digest the registry reports
    /// after checking it equals the digest of the bytes. A manifest with a
    /// `subject` is also listed in the referrers fallback tag when the
    /// registry does not process subjects itself.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        let digest = Digest::sha256_of(&bytes);
        let op = self.manifest_op(reference, "PUT", self.push_scope());
        let url = self.host.url(&self.manifest_path(reference)).await?;
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.host.status_error(&op, resp).await);
        }
        if let Some(reported) = header_str(resp.headers(), "docker-content-digest") {
            if reported != digest.as_str() {
                return Err(Error::DigestMismatch {
                    what: format!(
                        "manifest {reference} pushed to {}/{}",
                        self.host.name, self.name
                    ),
                    expected: digest.to_string(),
                    actual: reported,
                });
            }
        }
        let subject_handled = resp.headers().contains_key("oci-subject");
        if !subject_handled {
            if let Some(subject) = subject_of(&bytes) {
                crate::referrers::add_to_fallback(self, &subject, media_type, &bytes, &digest)
                    .await?;
            }
        }
        Ok(digest)
    }

    /// Deletes a manifest by digest (the registry must allow deletes).
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let reference = digest.to_string();
        let op = self.manifest_op(
            &reference,
            "DELETE",
            vec![crate::auth::repository_scope(&self.name, &["delete"])],
        );
        let url = self.host.url(&self.manifest_path(&reference)).await?;
        let resp = self
            .host
            .send(&op, &|http| Ok(http.delete(url.clone())))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.host.status_error(&op, resp).await)
        }
    }

    /// Every tag of the repository, following `Link` pagination; `page_size`
    /// asks the registry for pages of that many tags.
    pub async fn tags(&self, page_size: Option<u32>) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let op = Operation {
            subject: Subject::Repository {
                repository: self.name.clone(),
            },
            action: "GET tags".into(),
            scopes: self.pull_scope(),
            resendable: true,
            resend_after_transport_error: true,
        };
        let mut url = self
            .host
            .url(&format!("v2/{}/tags/list", self.name))
            .await?;
        if let Some(n) = page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let mut all = Vec::new();
        // A registry that keeps sending the same page must not loop us forever.
        for _ in 0..100_000 {
            let resp = self
                .host
                .send(&op, &|http| Ok(http.request(Method::GET, url.clone())))
                .await?;
            if !resp.status().is_success() {
                return Err(self.host.status_error(&op, resp).await);
            }
            let next = next_link(resp.headers());
            let body = read_limited(resp, TAG_PAGE_LIMIT, &self.host.name, "tag list").await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
                registry: self.host.name.clone(),
                message: format!("unreadable tag list: {e}"),
            })?;
            all.extend(page.tags.unwrap_or_default());
            match next {
                Some(link) => {
                    let next_url = self.host.resolve(&link).await?;
                    if next_url == url {
                        break;
                    }
                    url = next_url;
                }
                None => break,
            }
        }
        Ok(all)
    }

    /// The manifests that name `subject` as their subject, through the
    /// referrers API or, where the registry lacks it, the tag schema
    /// fallback (`sha256-HEX`). `artifact_type` filters the result.
    pub async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        crate::referrers::list(self, subject, artifact_type).await
    }
}

/// A header's value as text, if present and readable.
pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers.get_all(LINK).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        v.split(',').find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let is_next = params
                .split(';')
                .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
            is_next.then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
    })
}

/// The `subject` descriptor of a manifest, if it has one.
fn subject_of(bytes: &[u8]) -> Option<Descriptor> {
    #[derive(serde::Deserialize)]
    struct WithSubject {
        subject: Option<Descriptor>,
    }
    serde_json::from_slice::<WithSubject>(bytes).ok()?.subject
}

/// An empty OCI index, the starting point of a referrers fallback tag.
pub(crate) fn empty_index() -> ImageIndex {
    oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {

        #[test]
        fn link_headers_never_panic(values in proptest::collection::vec("[ -~]{0,80}", 0..3)) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = v.parse() {
                    h.append(LINK, v);
                }
            }
            let _ = next_link(&h);
        }

        #[test]
        fn the_next_link_is_found_among_others(
            target in "/v2/[a-z]{1,8}/tags/list\\?last=[a-z0-9]{1,8}&n=[0-9]{1,3}",
            others in proptest::collection::vec(("/[a-z?=&]{0,20}", "prev|last|first"), 0..3),
            quoted: bool,
            first: bool,
        ) {
            let rel = if quoted { "rel=\"next\"" } else { "rel=next" };
            let mut parts: Vec<String> =
                others.iter().map(|(t, r)| format!("<{t}>; rel=\"{r}\"")).collect();
            let next = format!("<{target}>; {rel}");
            if first { parts.insert(0, next) } else { parts.push(next) }
            let mut h = HeaderMap::new();
            h.insert(LINK, parts.join(", ").parse().unwrap());
            proptest::prop_assert_eq!(next_link(&h), Some(target));
        }
    }

    #[test]
    fn next_link_is_found_in_the_usual_spellings() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            r#"</v2/a/tags/list?last=t9&n=10>; rel="next""#.parse().unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("/v2/a/tags/list?last=t9&n=10")
        );
        h.insert(
            LINK,
            r#"<https://r/x?last=1>; rel="prev", <https://r/y?last=2>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("https://r/y?last=2"));
        h.insert(
            LINK,
            r#"</v2/a/tags/list?last=x>; rel="prev""#.parse().unwrap(),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn subject_is_read_from_a_manifest() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},
            "layers":[],
            "subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270","size":7682}}"#;
        let s = subject_of(m).unwrap();
        assert_eq!(s.size(), 7682);
        assert!(subject_of(br#"{"schemaVersion":2}"#).is_none());
    }
}
