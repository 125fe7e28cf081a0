//! Optional client authentication: HTTP basic against an htpasswd file of
//! bcrypt entries (`htpasswd -B`, as distribution reads them), or one
//! fixed bearer token. A request without valid credentials is answered
//! `401` with an `UNAUTHORIZED` error and a `WWW-Authenticate` challenge
//! (so docker-style clients send their stored credentials); every path is
//! protected, `/metrics` included.
//!
//! A bcrypt check costs milliseconds, so a pair that verified once is
//! remembered (by its SHA-256) for the life of the server.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use haul_oci::Digest;

use crate::api::Shared;
use crate::error::{ApiError, Error, ErrorCode, Result};

/// Which credentials clients must present.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// HTTP basic, checked against this htpasswd file (bcrypt entries).
    Htpasswd(PathBuf),
    /// `Authorization: Bearer TOKEN`, the token read from this file (its
    /// first line).
    TokenFile(PathBuf),
}

/// Loaded credentials and the pairs already verified.
pub(crate) struct Authenticator {
    kind: Kind,
    verified: Mutex<HashSet<Digest>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

enum Kind {
    Basic(HashMap<String, String>),
    Bearer(String),
}

impl Authenticator {
    /// Reads the file `auth` names.
    pub(crate) fn load(auth: &ClientAuth) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| Error::Auth {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let kind = match auth {
            ClientAuth::Htpasswd(path) => {
                let mut users = HashMap::new();
                for line in read(path)?.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((user, hash)) = line.split_once(':') else {
                        continue;
                    };
                    if !hash.starts_with("$2") {
                        return Err(Error::Auth {
                            path: path.clone(),
                            reason: format!(
                                "user {user:?} has no bcrypt hash (make entries with htpasswd -B)"
                            ),
                        });
                    }
                    users.insert(user.to_owned(), hash.to_owned());
                }
                if users.is_empty() {
                    return Err(Error::Auth {
                        path: path.clone(),
                        reason: "names no user".into(),
                    });
                }
                Kind::Basic(users)
            }
            ClientAuth::TokenFile(path) => {
                let token = read(path)?.lines().next().unwrap_or("").trim().to_owned();
                if token.is_empty() {
                    return Err(Error::Auth {
                        path: path.clone(),
                        reason: "holds no token".into(),
                    });
                }
                Kind::Bearer(token)
            }
        };
        Ok(Authenticator {
            kind,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether an `Authorization` header value is valid.
    fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        match &self.kind {
            Kind::Bearer(token) => value
                .strip_prefix("Bearer ")
                .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())),
            Kind::Basic(users) => {
                let Some(encoded) = value.strip_prefix("Basic ") else {
                    return false;
                };
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
                else {
                    return false;
                };
                let key = Digest::sha256_of(&decoded);
                let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if verified.contains(&key) {
                    return true;
                }
                let Ok(text) = String::from_utf8(decoded) else {
                    return false;
                };
                let Some((user, password)) = text.split_once(':') else {
                    return false;
                };
                let ok = users
                    .get(user)
                    .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false));
                if ok {
                    verified.insert(key);
                }
                ok
            }
        }
    }

    fn challenge(&self) -> &'static str {
        match self.kind {
            Kind::Basic(_) => "Basic realm=\"haul serve\"",
            Kind::Bearer(_) => "Bearer realm=\"haul serve\"",
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests without valid credentials when authentication is on.
pub(crate) async fn require_auth(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // bcrypt is slow: verify off the async workers.
    let allowed = match authorization.map(str::to_owned) {
        None => false,
        Some(value) => {
            let state = std::sync::Arc::clone(&state);
            tokio::task::spawn_blocking(move || {
                state
                    .auth
                    .as_ref()
                    .is_some_and(|auth| auth.allows(Some(&value)))
            })
            .await
            .unwrap_or(false)
        }
    };
    if allowed {
        return next.run(request).await;
    }
    let mut response =
        ApiError::new(ErrorCode::Unauthorized, "authentication required").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(auth.challenge()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn basic_credentials_are_checked_against_bcrypt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pass", 4).unwrap();
        std::fs::write(&path, format!("user:{hash}\n")).unwrap();
        let auth = Authenticator::load(&ClientAuth::Htpasswd(path)).unwrap();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(auth.allows(Some(&basic("user:pass"))));
        assert!(auth.allows(Some(&basic("user:pass"))), "remembered");
        assert!(!auth.allows(Some(&basic("user:wrong"))));
        assert!(!auth.allows(Some(&basic("other:pass"))));
        assert!(!auth.allows(Some("Bearer pass")));
        assert!(!auth.allows(None));
    }

    #[test]
    fn plain_text_htpasswd_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "user:{SHA}abc\n").unwrap();
        let err = Authenticator::load(&ClientAuth::Htpasswd(path)).unwrap_err();
        assert!(err.to_string().contains("htpasswd -B"), "{err}");
    }
}
