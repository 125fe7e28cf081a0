//! Index calls: the repository's image list, which hands out a token and
//! the endpoints (`PUT` for a push, `GET` for a pull), and the final
//! validation of a push.

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{Auth, Op, Subject, V1Registry};
use crate::error::{Error, Result};

/// One entry of a repository's image list (`[{"id":..,"Tag":..}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The v1 image ID.
    pub id: String,
    /// The tag naming the image, for top images.
    #[serde(rename = "Tag", default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The image's checksum, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// A repository on a v1 registry, as the index handed it out: the token to
/// send and the endpoints holding the images.
#[derive(Debug, Clone)]
pub struct V1Session {
    pub(crate) registry: V1Registry,
    pub(crate) repository: String,
    pub(crate) token: Option<String>,
    pub(crate) endpoints: Vec<Url>,
}

impl V1Registry {
    /// Starts a push: `PUT /v1/repositories/NAME/` with the image list and
    /// `X-Docker-Token: true`. `repository` is the remote name (see
    /// [`super::remote_name`]).
    pub async fn push_index(&self, repository: &str, entries: &[IndexEntry]) -> Result<V1Session> {
        let url = self
            .index_url(&format!("repositories/{repository}/"))
            .await?;
        let body = serde_json::to_vec(entries).map_err(|e| Error::Config(e.to_string()))?;
        let op = Op {
            subject: Subject::Repository(repository.to_string()),
            action: format!("PUT image list of {repository}"),
            resendable: true,
        };
        let resp = self
            .send(&op, Auth::Basic, &|http| {
                Ok(http
                    .put(url.clone())
                    .header("X-Docker-Token", "true")
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()))
            })
            .await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED => self.session(repository, &resp).await,
            _ => Err(self.status_error(&op, resp).await),
        }
    }

    /// Starts a pull: `GET /v1/repositories/NAME/images` with
    /// `X-Docker-Token: true`.
    pub async fn pull_index(&self, repository: &str) -> Result<V1Session> {
        let url = self
            .index_url(&format!("repositories/{repository}/images"))
            .await?;
        let op = Op {
            subject: Subject::Repository(repository.to_string()),
            action: format!("GET image list of {repository}"),
            resendable: true,
        };
        let resp = self
            .send(&op, Auth::Basic, &|http| {
                Ok(http.get(url.clone()).header("X-Docker-Token", "true"))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&op, resp).await);
        }
        self.session(repository, &resp).await
    }

    async fn session(&self, repository: &str, resp: &reqwest::Response) -> Result<V1Session> {
        let tokens: Vec<&str> = resp
            .headers()
            .get_all("X-Docker-Token")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let token = (!tokens.is_empty()).then(|| tokens.join(","));
        let scheme = self.scheme().await?;
        let mut endpoints = Vec::new();
        for value in resp.headers().get_all("X-Docker-Endpoints").iter() {
            let Ok(value) = value.to_str() else { continue };
            for ep in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let url = endpoint_url(&scheme, ep).ok_or_else(|| Error::Protocol {
                    registry: self.name().to_string(),
                    message: format!("unusable endpoint {ep:?} in X-Docker-Endpoints"),
                })?;
                if !endpoints.contains(&url) {
                    endpoints.push(url);
                }
            }
        }
        if endpoints.is_empty() {
            return Err(Error::Protocol {
                registry: self.name().to_string(),
                message: "Index response didn't contain any endpoints".into(),
            });
        }
        Ok(V1Session {
            registry: self.clone(),
            repository: repository.to_string(),
            token,
            endpoints,
        })
    }
}

/// `host:port` (or a full URL) -> `{scheme}://host:port/v1/`.
fn endpoint_url(scheme: &str, endpoint: &str) -> Option<Url> {
    let text = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("{scheme}://{endpoint}")
    };
    let mut url = Url::parse(&text).ok()?;
    url.host_str()?;
    let path = url.path().trim_end_matches('/');
    let path = format!("{}/v1/", path.strip_suffix("/v1").unwrap_or(path));
    url.set_path(&path);
    Some(url)
}

impl V1Session {
    /// The index this session came from.
    pub fn registry(&self) -> &V1Registry {
        &self.registry
    }

    /// The repository (remote name, e.g. `library/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The endpoints to use, in the order the index gave them; each ends in
    /// `/v1/`.
    pub fn endpoints(&self) -> &[Url] {
        &self.endpoints
    }

    /// Whether the index issued a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn auth(&self) -> Auth<'_> {
        Auth::Token(self.token.as_deref())
    }

    /// Ends a push: `PUT /v1/repositories/NAME/images` on the index with
    /// the endpoints used and `entries` (images with checksums; Docker sent
    /// `[]`). The registry answers 204.
    pub async fn validate(&self, entries: &[IndexEntry]) -> Result<()> {
        let url = self
            .registry
            .index_url(&format!("repositories/{}/images", self.repository))
            .await?;
        let endpoints = self
            .endpoints
            .iter()
            .filter_map(crate::client::authority_of)
            .collect::<Vec<_>>()
            .join(",");
        let body = serde_json::to_vec(entries).map_err(|e| Error::Config(e.to_string()))?;
        let op = Op {
            subject: Subject::Repository(self.repository.clone()),
            action: format!("PUT images of {} (validate)", self.repository),
            resendable: true,
        };
        let resp = self
            .registry
            .send(&op, self.auth(), &|http| {
                Ok(http
                    .put(url.clone())
                    .header("X-Docker-Endpoints", endpoints.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()))
            })
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(self.registry.status_error(&op, resp).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_v1_urls_with_the_index_scheme() {
        assert_eq!(
            endpoint_url("http", "127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/v1/"
        );
        assert_eq!(
            endpoint_url("http", "https://reg.example/v1/")
                .unwrap()
                .as_str(),
            "https://reg.example/v1/"
        );
        assert!(endpoint_url("http", "").is_none());
    }

    #[test]
    fn image_lists_serialise_as_docker_sent_them() {
        let entries = vec![
            IndexEntry {
                id: "a".into(),
                tag: None,
                checksum: None,
            },
            IndexEntry {
                id: "b".into(),
                tag: Some("latest".into()),
                checksum: None,
            },
        ];
        assert_eq!(
            serde_json::to_string(&entries).unwrap(),
            r#"[{"id":"a"},{"id":"b","Tag":"latest"}]"#
        );
    }
}
