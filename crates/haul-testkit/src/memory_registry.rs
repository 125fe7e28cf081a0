//! A small in-memory OCI distribution registry on 127.0.0.1, for what the
//! real one (distribution 2.8) cannot show: the OCI 1.1 referrers API
//! (`GET /v2/NAME/referrers/DIGEST`, with `artifactType` filtering), the
//! `OCI-Subject` answer to a manifest `PUT` with a `subject`, and
//! `RateLimit-Limit` / `RateLimit-Remaining` headers on manifest reads.
//!
//! It speaks the subset of the distribution API haul uses: `/v2/`, blob
//! `HEAD`/`GET`, uploads (`POST`, `PATCH`, `PUT`, status `GET`, `DELETE`,
//! cross-repository mount), manifests `HEAD`/`GET`/`PUT` by tag or
//! digest, tag lists. Blobs are one pool shared by every repository (a
//! mount always succeeds for a known blob). Every request is recorded for
//! the test to count. Request bodies are read whole: test data only.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

use crate::error::{Error, IoContext, Result};

/// How the registry behaves.
#[derive(Debug, Clone)]
pub struct MemoryRegistryConfig {
    /// Answer the referrers API (else 404, as registries without it).
    pub referrers_api: bool,
    /// Send `OCI-Subject` after a `PUT` of a manifest with a subject.
    pub oci_subject: bool,
    /// Send `RateLimit-Limit: N;w=3600` and a `RateLimit-Remaining` that
    /// counts manifest `GET`s down (`HEAD`s do not count, as Docker Hub).
    pub rate_limit: Option<u64>,
    /// With `rate_limit`, also send `RateLimit-Reset: SECONDS`.
    pub rate_limit_reset: Option<u64>,
}

impl Default for MemoryRegistryConfig {
    fn default() -> Self {
        Self {
            referrers_api: true,
            oci_subject: true,
            rate_limit: None,
            rate_limit_reset: None,
        }
    }
}

/// One request the registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRequest {
    /// The method.
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Bytes>,
    /// repository -> reference (tag or digest) -> (media type, bytes).
    manifests: HashMap<String, BTreeMap<String, (String, Bytes)>>,
    uploads: HashMap<String, Vec<u8>>,
    requests: Vec<MemoryRequest>,
    manifest_gets: u64,
}

struct Shared {
    config: MemoryRegistryConfig,
    state: Mutex<State>,
    next_upload: AtomicU64,
}

/// The running registry; dropping it stops it.
pub struct MemoryRegistry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl MemoryRegistry {
    /// Starts a registry on an ephemeral port of 127.0.0.1.
    pub fn start(config: MemoryRegistryConfig) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .ctx(|| "binding the memory registry".to_owned())?;
        listener
            .set_nonblocking(true)
            .ctx(|| "configuring the memory registry listener".to_owned())?;
        let addr = listener
            .local_addr()
            .ctx(|| "reading the memory registry address".to_owned())?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            next_upload: AtomicU64::new(1),
        });
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("memory-registry-{}", addr.port()))
            .spawn(move || run(thread_shared, listener, shutdown_rx, ready_tx))
            .ctx(|| "spawning the memory registry thread".to_owned())?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).ctx(|| "starting the memory registry".to_owned()),
            Err(_) => return Err(Error::Http("the memory registry thread ended".into())),
        }
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<MemoryRequest> {
        lock(&self.shared.state).requests.clone()
    }

    /// How many requests had `method` and a path containing `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        lock(&self.shared.state)
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(needle))
            .count()
    }

    /// The tags of `repository` (digest references left out).
    pub fn tags(&self, repository: &str) -> Vec<String> {
        lock(&self.shared.state)
            .manifests
            .get(repository)
            .map(|m| {
                m.keys()
                    .filter(|r| !r.starts_with("sha256:"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bytes of manifest `reference` of `repository`, if present.
    pub fn manifest(&self, repository: &str, reference: &str) -> Option<Vec<u8>> {
        lock(&self.shared.state)
            .manifests
            .get(repository)
            .and_then(|m| m.get(reference))
            .map(|(_, b)| b.to_vec())
    }

    /// How many manifest `GET`s were answered (what a quota counts).
    pub fn manifest_gets(&self) -> u64 {
        lock(&self.shared.state).manifest_gets
    }

    /// Whether the blob pool holds `digest`.
    pub fn has_blob(&self, digest: &str) -> bool {
        lock(&self.shared.state).blobs.contains_key(digest)
    }
}

impl Drop for MemoryRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    ready: mpsc::Sender<std::io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = accept => {}
        }
    });
    drop(runtime);
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode) -> hyper::http::response::Builder {
    Response::builder()
        .status(status)
        .header("docker-distribution-api-version", "registry/2.0")
}

fn empty(status: StatusCode) -> Answer {
    answer(status)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str) -> Answer {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#);
    answer(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return empty(StatusCode::BAD_REQUEST),
    };
    let response = route(shared, &method, &path, &content_type, body);
    lock(&shared.state).requests.push(MemoryRequest {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    response
}

fn query(path: &str, key: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%2F", "/")
        })
    })
}

fn route(shared: &Shared, method: &Method, full: &str, content_type: &str, body: Bytes) -> Answer {
    let path = full.split('?').next().unwrap_or_default();
    if path == "/v2/" || path == "/v2" {
        return empty(StatusCode::OK);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return empty(StatusCode::NOT_FOUND);
    };
    if let Some((name, tail)) = rest.split_once("/blobs/uploads") {
        let id = tail.trim_start_matches('/');
        return uploads(shared, method, full, name, id, body);
    }
    if let Some((_, digest)) = rest.split_once("/blobs/") {
        return blob(shared, method, digest);
    }
    if let Some((name, reference)) = rest.split_once("/manifests/") {
        return manifest(shared, method, name, reference, content_type, body);
    }
    if let Some((name, digest)) = rest.split_once("/referrers/") {
        if !shared.config.referrers_api {
            return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        }
        return referrers(shared, name, digest, query(full, "artifactType"));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let state = lock(&shared.state);
        let Some(refs) = state.manifests.get(name) else {
            return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        };
        let tags: Vec<&String> = refs.keys().filter(|r| !r.starts_with("sha256:")).collect();
        let body = serde_json::json!({"name": name, "tags": tags}).to_string();
        return answer(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default();
    }
    empty(StatusCode::NOT_FOUND)
}

fn blob(shared: &Shared, method: &Method, digest: &str) -> Answer {
    let state = lock(&shared.state);
    let Some(bytes) = state.blobs.get(digest) else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    };
    let builder = answer(StatusCode::OK)
        .header("content-length", bytes.len())
        .header("docker-content-digest", digest)
        .header("content-type", "application/octet-stream");
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        bytes.clone()
    };
    builder.body(Full::new(body)).unwrap_or_default()
}

fn uploads(
    shared: &Shared,
    method: &Method,
    full: &str,
    name: &str,
    id: &str,
    body: Bytes,
) -> Answer {
    let mut state = lock(&shared.state);
    let location = |id: &str| format!("/v2/{name}/blobs/uploads/{id}");
    match *method {
        Method::POST => {
            if let Some(digest) = query(full, "mount") {
                if state.blobs.contains_key(&digest) {
                    return answer(StatusCode::CREATED)
                        .header("location", format!("/v2/{name}/blobs/{digest}"))
                        .header("docker-content-digest", digest)
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default();
                }
            }
            let id = shared
                .next_upload
                .fetch_add(1, Ordering::Relaxed)
                .to_string();
            if let Some(digest) = query(full, "digest") {
                if sha256(&body) != digest {
                    return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
                }
                state.blobs.insert(digest.clone(), body);
                return answer(StatusCode::CREATED)
                    .header("location", format!("/v2/{name}/blobs/{digest}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
            }
            state.uploads.insert(id.clone(), Vec::new());
            answer(StatusCode::ACCEPTED)
                .header("location", location(&id))
                .header("range", "0-0")
                .header("docker-upload-uuid", &id)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default()
        }
        Method::DELETE => match state.uploads.remove(id) {
            Some(_) => empty(StatusCode::NO_CONTENT),
            None => error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        },
        Method::PATCH | Method::PUT | Method::GET => {
            let Some(held) = state.uploads.get_mut(id) else {
                return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
            };
            held.extend_from_slice(&body);
            let range = format!("0-{}", held.len().saturating_sub(1));
            if *method != Method::PUT {
                let status = if *method == Method::GET {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::ACCEPTED
                };
                return answer(status)
                    .header("location", location(id))
                    .header("range", range)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
            }
            let Some(digest) = query(full, "digest") else {
                return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
            };
            let Some(bytes) = state.uploads.remove(id) else {
                return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
            };
            if sha256(&bytes) != digest {
                return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
            }
            state.blobs.insert(digest.clone(), Bytes::from(bytes));
            answer(StatusCode::CREATED)
                .header("location", format!("/v2/{name}/blobs/{digest}"))
                .header("docker-content-digest", digest)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default()
        }
        _ => empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

fn manifest(
    shared: &Shared,
    method: &Method,
    name: &str,
    reference: &str,
    content_type: &str,
    body: Bytes,
) -> Answer {
    let mut state = lock(&shared.state);
    if *method == Method::PUT {
        let digest = sha256(&body);
        let subject = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/subject/digest")?.as_str().map(str::to_string));
        let refs = state.manifests.entry(name.to_string()).or_default();
        let entry = (content_type.to_string(), body);
        refs.insert(digest.clone(), entry.clone());
        refs.insert(reference.to_string(), entry);
        let mut builder = answer(StatusCode::CREATED)
            .header("location", format!("/v2/{name}/manifests/{digest}"))
            .header("docker-content-digest", &digest);
        if let Some(subject) = subject.filter(|_| shared.config.oci_subject) {
            builder = builder.header("oci-subject", subject);
        }
        return builder.body(Full::new(Bytes::new())).unwrap_or_default();
    }
    let found = state
        .manifests
        .get(name)
        .and_then(|m| m.get(reference))
        .cloned();
    let Some((media_type, bytes)) = found else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    };
    let mut builder = answer(StatusCode::OK)
        .header("content-type", media_type)
        .header("content-length", bytes.len())
        .header("docker-content-digest", sha256(&bytes));
    if *method == Method::GET {
        state.manifest_gets += 1;
    }
    if let Some(limit) = shared.config.rate_limit {
        let remaining = limit.saturating_sub(state.manifest_gets);
        builder = builder
            .header("ratelimit-limit", format!("{limit};w=3600"))
            .header("ratelimit-remaining", format!("{remaining};w=3600"));
        if let Some(reset) = shared.config.rate_limit_reset {
            builder = builder.header("ratelimit-reset", reset.to_string());
        }
    }
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        bytes
    };
    builder.body(Full::new(body)).unwrap_or_default()
}

fn referrers(shared: &Shared, name: &str, subject: &str, artifact_type: Option<String>) -> Answer {
    let state = lock(&shared.state);
    let mut manifests = Vec::new();
    for (reference, (media_type, bytes)) in state.manifests.get(name).into_iter().flatten() {
        if !reference.starts_with("sha256:") {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            continue;
        };
        if value.pointer("/subject/digest").and_then(|d| d.as_str()) != Some(subject) {
            continue;
        }
        let kind = value
            .get("artifactType")
            .or_else(|| value.pointer("/config/mediaType"))
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        if artifact_type.as_ref().is_some_and(|t| *t != kind) {
            continue;
        }
        let mut descriptor = serde_json::json!({
            "mediaType": media_type,
            "digest": reference,
            "size": bytes.len(),
            "artifactType": kind,
        });
        if let Some(a) = value.get("annotations") {
            descriptor["annotations"] = a.clone();
        }
        manifests.push(descriptor);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut builder =
        answer(StatusCode::OK).header("content-type", "application/vnd.oci.image.index.v1+json");
    if artifact_type.is_some() {
        builder = builder.header("oci-filters-applied", "artifactType");
    }
    builder
        .body(Full::new(Bytes::from(index.to_string())))
        .unwrap_or_default()
}
