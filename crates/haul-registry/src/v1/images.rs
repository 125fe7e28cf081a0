//! Endpoint calls: images (json, layer, checksum, ancestry) and tags.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use reqwest::header::{CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use url::Url;

use super::index::V1Session;
use super::{error_message, header, Op, Subject};
use crate::blob::BlobBody;
use crate::client::{read_limited, read_small_body, transport_error};
use crate::error::{Error, Result};

/// Most bytes of an image JSON or ancestry read into memory.
const JSON_LIMIT: usize = 4 * 1024 * 1024;

/// An image's v1 JSON as an endpoint serves it.
#[derive(Debug, Clone)]
pub struct ImageJson {
    /// The JSON, byte for byte as stored.
    pub bytes: Bytes,
    /// The layer's size in bytes (`X-Docker-Size`), when given.
    pub layer_size: Option<u64>,
    /// The payload checksum (`X-Docker-Checksum-Payload` or
    /// `X-Docker-Checksum`), when given.
    pub checksum: Option<String>,
}

/// What `PUT .../json` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The JSON is stored; the layer and checksum are to follow.
    Stored,
    /// The registry has the complete image ("Image already exists").
    AlreadyExists,
}

impl V1Session {
    fn image_op(&self, id: &str, action: &str, resendable: bool) -> Op {
        Op {
            subject: Subject::Image {
                repository: self.repository.clone(),
                id: id.to_string(),
            },
            action: format!("{action} of v1 image {id}"),
            resendable,
        }
    }

    fn url(&self, endpoint: &Url, path: &str) -> Result<Url> {
        endpoint
            .join(path)
            .map_err(|e| Error::Config(format!("endpoint {endpoint}: {e}")))
    }

    /// Whether `endpoint` has the complete image `id`: `GET images/ID/json`
    /// answering 200. 404, and the Python registry's 400 "Image is being
    /// uploaded" (an earlier push stopped midway), mean it must be pushed;
    /// any other failure, after retries, is an error.
    pub async fn image_exists(&self, endpoint: &Url, id: &str) -> Result<bool> {
        let url = self.url(endpoint, &format!("images/{id}/json"))?;
        let op = self.image_op(id, "GET json", true);
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| Ok(http.get(url.clone())))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(false),
            _ => Err(self.registry.status_error(&op, resp).await),
        }
    }

    /// `GET images/ID/json`: the image's JSON and its layer size.
    pub async fn image_json(&self, endpoint: &Url, id: &str) -> Result<ImageJson> {
        let url = self.url(endpoint, &format!("images/{id}/json"))?;
        let op = self.image_op(id, "GET json", true);
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| Ok(http.get(url.clone())))
            .await?;
        if !resp.status().is_success() {
            return Err(self.registry.status_error(&op, resp).await);
        }
        let layer_size = header(resp.headers(), "X-Docker-Size").and_then(|v| v.parse().ok());
        let checksum = header(resp.headers(), "X-Docker-Checksum-Payload")
            .or_else(|| header(resp.headers(), "X-Docker-Checksum"));
        let bytes = read_limited(resp, JSON_LIMIT, self.registry.name(), "v1 image JSON").await?;
        Ok(ImageJson {
            bytes: Bytes::from(bytes),
            layer_size,
            checksum,
        })
    }

    /// `PUT images/ID/json` with the JSON exactly as the payload checksum
    /// will cover it. A registry that has the complete image answers
    /// [`PutOutcome::AlreadyExists`] (Python: 409 "Image already exists").
    pub async fn put_image_json(
        &self,
        endpoint: &Url,
        id: &str,
        json: Bytes,
    ) -> Result<PutOutcome> {
        let url = self.url(endpoint, &format!("images/{id}/json"))?;
        let op = self.image_op(id, "PUT json", true);
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(json.clone()))
            })
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(PutOutcome::Stored);
        }
        let body = read_small_body(resp, self.registry.name())
            .await
            .unwrap_or_default();
        let message = error_message(&body);
        if message
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("Image already exists"))
        {
            return Ok(PutOutcome::AlreadyExists);
        }
        Err(rebuild_error(self, &op, status, message))
    }

    /// `PUT images/ID/layer`, streamed with chunked transfer encoding. The
    /// JSON must be stored first. Not retried here: the body is one-shot
    /// (the caller retries the image).
    pub async fn put_layer<S>(&self, endpoint: &Url, id: &str, body: S) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let url = self.url(endpoint, &format!("images/{id}/layer"))?;
        let op = self.image_op(id, "PUT layer", false);
        let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(body)));
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                let body = crate::client::lock(&body)
                    .take()
                    .ok_or_else(|| Error::Config("the layer body can be sent once".into()))?;
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(body))
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.registry.status_error(&op, resp).await)
        }
    }

    /// `PUT images/ID/checksum` with `X-Docker-Checksum-Payload` (see
    /// [`super::checksum::payload_checksum`]) and, when given,
    /// `X-Docker-Checksum` (tarsum). A wrong checksum is an error
    /// ([`Error::Status`] 400 with the registry's "Checksum mismatch").
    pub async fn put_checksum(
        &self,
        endpoint: &Url,
        id: &str,
        payload: &str,
        tarsum: Option<&str>,
    ) -> Result<()> {
        let url = self.url(endpoint, &format!("images/{id}/checksum"))?;
        let op = self.image_op(id, "PUT checksum", true);
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                let mut req = http
                    .put(url.clone())
                    .header("X-Docker-Checksum-Payload", payload);
                if let Some(t) = tarsum {
                    req = req.header("X-Docker-Checksum", t);
                }
                Ok(req)
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.registry.status_error(&op, resp).await)
        }
    }

    /// `GET images/ID/ancestry`: the image and its parents, `id` first,
    /// the root last.
    pub async fn ancestry(&self, endpoint: &Url, id: &str) -> Result<Vec<String>> {
        let url = self.url(endpoint, &format!("images/{id}/ancestry"))?;
        let op = self.image_op(id, "GET ancestry", true);
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| Ok(http.get(url.clone())))
            .await?;
        if !resp.status().is_success() {
            return Err(self.registry.status_error(&op, resp).await);
        }
        let body = read_limited(resp, JSON_LIMIT, self.registry.name(), "v1 ancestry").await?;
        let ids: Vec<String> = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            registry: self.registry.name().to_string(),
            message: format!("ancestry of {id} is not a JSON list of IDs: {e}"),
        })?;
        if ids.first().map(String::as_str) != Some(id) {
            return Err(Error::Protocol {
                registry: self.registry.name().to_string(),
                message: format!("ancestry of {id} does not start with it"),
            });
        }
        Ok(ids)
    }

    /// `GET images/ID/layer` from byte `offset` on. A resumed read asks for
    /// the closed range `bytes=OFFSET-(SIZE-1)` (the Python registry
    /// mishandles open ranges) and accepts a `Content-Range` with or without
    /// its `bytes` unit; a registry that ignores `Range` (Node) answers 200
    /// and the body starts at 0 ([`BlobBody::start`]).
    pub async fn open_layer(
        &self,
        endpoint: &Url,
        id: &str,
        offset: u64,
        size: Option<u64>,
    ) -> Result<BlobBody> {
        let url = self.url(endpoint, &format!("images/{id}/layer"))?;
        let op = self.image_op(id, "GET layer", true);
        let range = match size {
            Some(size) if offset > 0 && offset < size => {
                Some(format!("bytes={offset}-{}", size - 1))
            }
            Some(size) if offset > 0 => {
                return Err(Error::Protocol {
                    registry: self.registry.name().to_string(),
                    message: format!("layer of {id}: offset {offset} is past its end ({size})"),
                })
            }
            None if offset > 0 => Some(format!("bytes={offset}-")),
            _ => None,
        };
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                let req = http.get(url.clone());
                Ok(match &range {
                    Some(r) => req.header(RANGE, r.as_str()),
                    None => req,
                })
            })
            .await?;
        let registry = self.registry.name().to_string();
        let (start, total) = match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let (first, total) = crate::blob::checked_range(
                    resp.headers(),
                    offset,
                    &format!("layer of {id}"),
                    &registry,
                )?;
                (first, total.or(size))
            }
            s if s.is_success() => (0, resp.content_length().or(size)),
            _ => return Err(self.registry.status_error(&op, resp).await),
        };
        let stream = resp
            .bytes_stream()
            .map_err(move |e| transport_error(&registry, &e));
        Ok(BlobBody {
            start,
            total,
            stream: Box::pin(stream),
        })
    }

    fn tag_op(&self, tag: Option<&str>, action: &str) -> Op {
        Op {
            subject: match tag {
                Some(t) => Subject::Tag {
                    repository: self.repository.clone(),
                    tag: t.to_string(),
                },
                None => Subject::Repository(self.repository.clone()),
            },
            action: match tag {
                Some(t) => format!("{action} tag {t} of {}", self.repository),
                None => format!("{action} tags of {}", self.repository),
            },
            resendable: true,
        }
    }

    /// `GET repositories/NAME/tags`: every tag and the v1 ID it names.
    pub async fn tags(&self, endpoint: &Url) -> Result<BTreeMap<String, String>> {
        let url = self.url(endpoint, &format!("repositories/{}/tags", self.repository))?;
        let op = self.tag_op(None, "GET");
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| Ok(http.get(url.clone())))
            .await?;
        if !resp.status().is_success() {
            return Err(self.registry.status_error(&op, resp).await);
        }
        let body = read_limited(resp, JSON_LIMIT, self.registry.name(), "v1 tag list").await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol {
            registry: self.registry.name().to_string(),
            message: format!("tags of {} are not a JSON object: {e}", self.repository),
        })
    }

    /// `GET repositories/NAME/tags/TAG`: the v1 ID the tag names.
    pub async fn tag(&self, endpoint: &Url, tag: &str) -> Result<String> {
        let url = self.url(
            endpoint,
            &format!("repositories/{}/tags/{tag}", self.repository),
        )?;
        let op = self.tag_op(Some(tag), "GET");
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| Ok(http.get(url.clone())))
            .await?;
        if !resp.status().is_success() {
            return Err(self.registry.status_error(&op, resp).await);
        }
        let body = read_small_body(resp, self.registry.name()).await?;
        if let Ok(id) = serde_json::from_slice::<String>(&body) {
            return Ok(id);
        }
        // The Node registry answers the bare ID, unquoted.
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(text);
        }
        Err(Error::Protocol {
            registry: self.registry.name().to_string(),
            message: format!(
                "tag {tag} of {} names no image ID: {text:?}",
                self.repository
            ),
        })
    }

    /// `PUT repositories/NAME/tags/TAG` with body `"ID"`.
    pub async fn put_tag(&self, endpoint: &Url, tag: &str, id: &str) -> Result<()> {
        let url = self.url(
            endpoint,
            &format!("repositories/{}/tags/{tag}", self.repository),
        )?;
        let op = self.tag_op(Some(tag), "PUT");
        let body = serde_json::to_vec(id).map_err(|e| Error::Config(e.to_string()))?;
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()))
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.registry.status_error(&op, resp).await)
        }
    }
}

/// The error for an answer whose body was already read.
fn rebuild_error(
    session: &V1Session,
    op: &Op,
    status: StatusCode,
    message: Option<String>,
) -> Error {
    let registry = session.registry.name().to_string();
    match status {
        StatusCode::NOT_FOUND => Error::BlobNotFound {
            repository: format!("{registry}/{}", session.repository),
            digest: match &op.subject {
                Subject::Image { id, .. } => format!("v1 image {id}"),
                _ => String::new(),
            },
            message,
        },
        StatusCode::UNAUTHORIZED => Error::Unauthorized {
            scope: format!("{registry}/{}", session.repository),
            registry,
            message,
        },
        StatusCode::FORBIDDEN => Error::Denied {
            scope: format!("{registry}/{}", session.repository),
            registry,
            message,
        },
        s => Error::Status {
            registry,
            operation: op.action.clone(),
            status: s.as_u16(),
            message,
        },
    }
}
