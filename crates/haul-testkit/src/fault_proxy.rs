//! A fault-injecting HTTP/1.1 proxy for registry client tests.
//!
//! [`FaultProxy`] listens on 127.0.0.1 (ephemeral port) in front of a real
//! registry (plain HTTP upstream) and forwards requests and responses
//! streamed, never buffering whole bodies, keeping the client's `Host` header
//! (so the upload `Location`s the registry builds point back at the proxy)
//! and every end-to-end header. Per [`Rule`] it injects the faults a real
//! registry never shows ([`Fault`]): dropped connections, error statuses,
//! stalls, an ignored `Range`, redirects to a separate "storage host",
//! corrupted bytes. It counts what it forwards ([`RequestRecord`]) so a test
//! can assert how many bytes a client fetched or sent again.
//!
//! The proxy runs on its own thread with its own tokio runtime, so blocking
//! tests and `#[tokio::test]` tests can use it alike; dropping it stops that
//! thread and closes every connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, IoContext, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which requests a [`Rule`] applies to: an optional method and a pattern
/// tested against the request's path with its query, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    method: Option<String>,
    path: PathPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathPattern {
    Any,
    Contains(String),
    EndsWith(String),
}

impl Match {
    /// Every request.
    pub fn any() -> Self {
        Self {
            method: None,
            path: PathPattern::Any,
        }
    }

    /// Requests whose path (with query) contains `needle`.
    pub fn path_contains(needle: impl Into<String>) -> Self {
        Self {
            method: None,
            path: PathPattern::Contains(needle.into()),
        }
    }

    /// Requests whose path (with query) ends with `suffix`.
    pub fn path_ends_with(suffix: impl Into<String>) -> Self {
        Self {
            method: None,
            path: PathPattern::EndsWith(suffix.into()),
        }
    }

    /// Restricts the match to one method (compared case-insensitively).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Whether a request with this method and path (with query) matches.
    pub fn matches(&self, method: &str, path_and_query: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match &self.path {
            PathPattern::Any => true,
            PathPattern::Contains(needle) => path_and_query.contains(needle.as_str()),
            PathPattern::EndsWith(suffix) => path_and_query.ends_with(suffix.as_str()),
        };
        method_ok && path_ok
    }
}

/// A fault the proxy injects into a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward the response headers and the first `n` body bytes, then close
    /// the connection: the client sees an incomplete body. A body of at most
    /// `n` bytes goes through whole.
    DropAfterBytes(u64),
    /// Answer this status instead of forwarding (the request body is read and
    /// discarded; the upstream never sees the request).
    Status {
        /// The status code, e.g. 500, 503 or 429.
        code: u16,
        /// A `Retry-After` header, in seconds.
        retry_after: Option<u64>,
        /// The response body (sent as `application/json` when it starts with
        /// `{`, as `text/plain` otherwise).
        body: String,
    },
    /// Send the first `after_bytes` body bytes, then nothing for `duration`
    /// with the connection open, then the rest (`close: false`) or close the
    /// connection (`close: true`). For client read timeouts.
    Stall {
        /// Body bytes sent before the stall.
        after_bytes: u64,
        /// How long nothing is sent.
        duration: Duration,
        /// Close the connection after the stall instead of going on.
        close: bool,
    },
    /// Remove the request's `Range` header before forwarding, so the
    /// registry answers 200 with the whole blob.
    IgnoreRange,
    /// Answer `307 Temporary Redirect` to the proxy's storage host, which
    /// records the follow-up request's headers and serves it by fetching the
    /// original URL from the upstream with the original request's headers.
    RedirectBlob,
    /// Send the first `after_bytes` body bytes, then nothing until `gate`
    /// is opened (with the connection open), then the rest. For tests that
    /// need one transfer held at a known point while others go on.
    Hold {
        /// Body bytes sent before the hold.
        after_bytes: u64,
        /// Opening it lets every response it holds go on.
        gate: Gate,
    },
    /// Hold the request before forwarding it (its body unread) until the
    /// gate opens: the client waits for an answer that has not begun, as
    /// with a registry busy writing a blob. Then it is forwarded as usual.
    HoldRequest(Gate),
    /// Forward the first `n` bytes of the request body to the upstream,
    /// then cut both connections without an answer: the registry sees its
    /// client vanish mid-upload, the client a connection reset while
    /// sending. A body of at most `n` bytes goes through whole.
    DropRequestAfterBytes(u64),
    /// Hold the request for `duration` before forwarding it (the client
    /// waits on an open connection; a client gone meanwhile leaves the
    /// upstream untouched).
    DelayRequest(Duration),
    /// Forward the response body with the byte at `offset` XORed with `0xff`.
    FlipByte {
        /// Offset of the corrupted byte in the response body.
        offset: u64,
    },
}

impl Fault {
    /// [`Fault::Status`] with no `Retry-After` and an empty body.
    pub fn status(code: u16) -> Self {
        Fault::Status {
            code,
            retry_after: None,
            body: String::new(),
        }
    }

    /// `429 Too Many Requests` with `Retry-After: retry_after_secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Fault::Status {
            code: 429,
            retry_after: Some(retry_after_secs),
            body: String::new(),
        }
    }

    /// [`Fault::Stall`] that goes on sending after the stall.
    pub fn stall(after_bytes: u64, duration: Duration) -> Self {
        Fault::Stall {
            after_bytes,
            duration,
            close: false,
        }
    }
}

/// A gate for [`Fault::Hold`]: closed when made, opened once for good.
/// Clones share the gate.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// Opens the gate: held responses go on, and later ones are not held.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    fn opened(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut open = self.0.subscribe();
        async move {
            let _ = open.wait_for(|open| *open).await;
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// A fault for the requests a [`Match`] selects, at most `times` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    matcher: Match,
    fault: Fault,
    times: Option<usize>,
    skip: usize,
}

impl Rule {
    /// A rule applying `fault` to every request `matcher` selects.
    pub fn new(matcher: Match, fault: Fault) -> Self {
        Self {
            matcher,
            fault,
            times: None,
            skip: 0,
        }
    }

    /// Lets the first `n` matching requests through untouched before the
    /// fault applies (to hit, say, the third chunk of an upload).
    pub fn after(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// Applies the fault to the first `n` matching requests only; the rule is
    /// spent after that.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Same as `times(1)`.
    pub fn once(self) -> Self {
        self.times(1)
    }
}

/// What the proxy saw of one request (a snapshot; counters of a request
/// still streaming go on growing in later snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request method.
    pub method: String,
    /// The path with its query, as the client sent it.
    pub path: String,
    /// The request headers as the client sent them (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The fault applied, if a rule matched.
    pub fault: Option<Fault>,
    /// The status sent to the client (0 while none was).
    pub status: u16,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes handed to the connection for the client (for an
    /// aborted response: exactly the bytes sent before the abort).
    pub response_bytes: u64,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A request the storage host received (see [`Fault::RedirectBlob`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRequest {
    /// The request method.
    pub method: String,
    /// The path with its query, as the client sent it.
    pub path: String,
    /// The request headers as the client sent them (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The status sent to the client (0 while none was).
    pub status: u16,
    /// Response body bytes handed to the connection for the client.
    pub response_bytes: u64,
}

impl StorageRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A fault-injecting proxy on 127.0.0.1 in front of a plain-HTTP upstream,
/// plus the loopback "storage host" that [`Fault::RedirectBlob`] redirects
/// to. Stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    storage_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("storage_addr", &self.storage_addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream_authority` (`host:port`, an
    /// `http://` prefix is tolerated), with no rules.
    pub fn start(upstream_authority: &str) -> Result<FaultProxy> {
        let authority = upstream_authority
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let upstream = authority
            .to_socket_addrs()
            .ctx(|| format!("resolving fault proxy upstream `{authority}`"))?
            .min_by_key(|a| a.is_ipv6())
            .ok_or_else(|| Error::Http(format!("upstream `{authority}` has no address")))?;

        let bind = |what: &str| -> Result<(std::net::TcpListener, SocketAddr)> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .ctx(|| format!("binding the fault proxy's {what} listener"))?;
            listener
                .set_nonblocking(true)
                .ctx(|| format!("configuring the fault proxy's {what} listener"))?;
            let addr = listener
                .local_addr()
                .ctx(|| format!("reading the fault proxy's {what} address"))?;
            Ok((listener, addr))
        };
        let (proxy_listener, addr) = bind("proxy")?;
        let (storage_listener, storage_addr) = bind("storage")?;

        let shared = Arc::new(Shared {
            upstream,
            storage_authority: storage_addr.to_string(),
            rules: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            storage_records: Mutex::new(Vec::new()),
            redirects: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });

        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                run(
                    thread_shared,
                    proxy_listener,
                    storage_listener,
                    shutdown_rx,
                    ready_tx,
                )
            })
            .ctx(|| "spawning the fault proxy thread".to_owned())?;

        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("fault proxy thread ended during start")));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e).ctx(|| "starting the fault proxy".to_owned());
        }

        Ok(FaultProxy {
            addr,
            storage_addr,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The proxy's `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The storage host's `127.0.0.1:PORT` (see [`Fault::RedirectBlob`]).
    pub fn storage_authority(&self) -> String {
        self.storage_addr.to_string()
    }

    /// The upstream address requests are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Adds a rule after the existing ones. For each request the first rule
    /// that matches and is not spent applies (one fault per request).
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push(ActiveRule {
            rule,
            used: 0,
            skipped: 0,
        });
    }

    /// Removes every rule: from now on requests are forwarded unchanged.
    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
    }

    /// How many requests each rule was applied to, in the order added.
    pub fn rule_uses(&self) -> Vec<usize> {
        lock(&self.shared.rules).iter().map(|r| r.used).collect()
    }

    /// A snapshot of every request received since start or the last
    /// [`reset_counters`](Self::reset_counters), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.records)
            .iter()
            .map(|c| c.request_record())
            .collect()
    }

    /// How many recorded requests have this method (`"*"`: any) and a path
    /// (with query) containing `path_substring`.
    pub fn count_matching(&self, method: &str, path_substring: &str) -> usize {
        self.matching(method, path_substring).count()
    }

    /// Response body bytes sent to the client for the matching requests (see
    /// [`count_matching`](Self::count_matching)).
    pub fn response_bytes_matching(&self, method: &str, path_substring: &str) -> u64 {
        self.matching(method, path_substring)
            .map(|r| r.response_bytes)
            .sum()
    }

    /// Request body bytes received from the client for the matching requests
    /// (see [`count_matching`](Self::count_matching)).
    pub fn request_bytes_matching(&self, method: &str, path_substring: &str) -> u64 {
        self.matching(method, path_substring)
            .map(|r| r.request_bytes)
            .sum()
    }

    /// Forgets the recorded requests of the proxy and of the storage host.
    /// Rules and their use counts are kept.
    pub fn reset_counters(&self) {
        lock(&self.shared.records).clear();
        lock(&self.shared.storage_records).clear();
    }

    /// A snapshot of the requests the storage host received, in arrival order.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        lock(&self.shared.storage_records)
            .iter()
            .map(|c| c.storage_request())
            .collect()
    }

    fn matching<'a>(
        &self,
        method: &'a str,
        path_substring: &'a str,
    ) -> impl Iterator<Item = RequestRecord> + 'a {
        self.requests().into_iter().filter(move |r| {
            (method == "*" || r.method.eq_ignore_ascii_case(method))
                && r.path.contains(path_substring)
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy thread: its own current-thread runtime serving both listeners
/// until shutdown; dropping the runtime then cancels every connection task.
fn run(
    shared: Arc<Shared>,
    proxy_listener: std::net::TcpListener,
    storage_listener: std::net::TcpListener,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    ready: mpsc::Sender<io::Result<()>>,
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
        let listeners = TcpListener::from_std(proxy_listener)
            .and_then(|p| TcpListener::from_std(storage_listener).map(|s| (p, s)));
        let (proxy_listener, storage_listener) = match listeners {
            Ok(pair) => pair,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));

        let proxy_shared = shared.clone();
        let proxy = serve(proxy_listener, move |conn, req| {
            handle_proxy(proxy_shared.clone(), conn, req)
        });
        let storage = serve(storage_listener, move |conn, req| {
            handle_storage(shared.clone(), conn.abort, req)
        });
        tokio::select! {
            _ = shutdown => {}
            _ = proxy => {}
            _ = storage => {}
        }
    });
    drop(runtime);
}

/// Accepts connections forever, serving each with hyper's HTTP/1.1 server.
async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Conn, Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            abort: Arc::new(AtomicBool::new(false)),
            sever: Arc::new(AtomicBool::new(false)),
        };
        let io = TokioIo::new(AbortableIo {
            inner: stream,
            abort: conn.abort.clone(),
            sever: conn.sever.clone(),
        });
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(conn.clone(), req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The flags of one client connection (see [`AbortableIo`]).
#[derive(Clone)]
struct Conn {
    abort: Arc<AtomicBool>,
    sever: Arc<AtomicBool>,
}

struct Shared {
    upstream: SocketAddr,
    storage_authority: String,
    rules: Mutex<Vec<ActiveRule>>,
    records: Mutex<Vec<Arc<Cell>>>,
    storage_records: Mutex<Vec<Arc<Cell>>>,
    redirects: Mutex<HashMap<String, StoredRequest>>,
    next_id: AtomicU64,
}

impl Shared {
    /// The fault of the first live rule matching, counting the use.
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let rule = rules.iter_mut().find(|r| {
            r.rule.times.is_none_or(|t| r.used < t) && r.rule.matcher.matches(method, path)
        })?;
        if rule.skipped < rule.rule.skip {
            rule.skipped += 1;
            return None;
        }
        rule.used += 1;
        Some(rule.rule.fault.clone())
    }
}

struct ActiveRule {
    rule: Rule,
    used: usize,
    /// Matching requests let through before the rule applies.
    skipped: usize,
}

/// The original request of a [`Fault::RedirectBlob`], kept for the storage
/// host.
#[derive(Clone)]
struct StoredRequest {
    uri: Uri,
    headers: HeaderMap,
}

/// A live record; counters are updated while bodies stream.
struct Cell {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    fault: Option<Fault>,
    status: AtomicU16,
    request_bytes: Arc<AtomicU64>,
    response_bytes: Arc<AtomicU64>,
}

impl Cell {
    fn new(req: &Request<Incoming>, fault: Option<Fault>) -> Self {
        let headers = req
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Self {
            method: req.method().as_str().to_owned(),
            path: path_and_query(req.uri()).to_owned(),
            headers,
            fault,
            status: AtomicU16::new(0),
            request_bytes: Arc::new(AtomicU64::new(0)),
            response_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn request_record(&self) -> RequestRecord {
        RequestRecord {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            fault: self.fault.clone(),
            status: self.status.load(Ordering::SeqCst),
            request_bytes: self.request_bytes.load(Ordering::SeqCst),
            response_bytes: self.response_bytes.load(Ordering::SeqCst),
        }
    }

    fn storage_request(&self) -> StorageRequest {
        StorageRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            status: self.status.load(Ordering::SeqCst),
            response_bytes: self.response_bytes.load(Ordering::SeqCst),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

async fn handle_proxy(
    shared: Arc<Shared>,
    conn: Conn,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let fault = shared.take_fault(req.method().as_str(), path_and_query(req.uri()));
    let cell = Arc::new(Cell::new(&req, fault.clone()));
    lock(&shared.records).push(cell.clone());

    let (mut parts, body) = req.into_parts();
    let (response, mode) = match fault {
        Some(Fault::Status {
            code,
            retry_after,
            body: text,
        }) => {
            drain(body, &cell.request_bytes).await;
            (status_response(code, retry_after, text), BodyMode::Pass)
        }
        Some(Fault::RedirectBlob) => {
            drain(body, &cell.request_bytes).await;
            let id = format!("blob-{}", shared.next_id.fetch_add(1, Ordering::SeqCst));
            let location = format!("http://{}/{id}", shared.storage_authority);
            lock(&shared.redirects).insert(
                id,
                StoredRequest {
                    uri: parts.uri,
                    headers: parts.headers,
                },
            );
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, value);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            (response, BodyMode::Pass)
        }
        fault => {
            if let Some(Fault::HoldRequest(gate)) = &fault {
                gate.opened().await;
            }
            if fault == Some(Fault::IgnoreRange) {
                parts.headers.remove(header::RANGE);
            }
            if let Some(Fault::DelayRequest(duration)) = &fault {
                tokio::time::sleep(*duration).await;
            }
            let cut_after = match &fault {
                Some(Fault::DropRequestAfterBytes(n)) => Some(*n),
                _ => None,
            };
            let body = CountingBody {
                inner: body,
                counter: cell.request_bytes.clone(),
                cut_after,
                forwarded: 0,
                pending_cut: false,
            }
            .boxed_unsync();
            let response = forward(
                shared.upstream,
                parts.method,
                &parts.uri,
                parts.headers,
                body,
            )
            .await;
            let cut = cut_after.is_some_and(|n| cell.request_bytes.load(Ordering::SeqCst) > n);
            if cut {
                // The client must see its connection die, not an answer.
                conn.sever.store(true, Ordering::SeqCst);
            }
            (
                response.unwrap_or_else(bad_gateway),
                BodyMode::from_fault(fault.as_ref()),
            )
        }
    };
    finish(response, mode, &cell, conn.abort)
}

async fn handle_storage(
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let cell = Arc::new(Cell::new(&req, None));
    lock(&shared.storage_records).push(cell.clone());

    let id = req.uri().path().trim_start_matches('/').to_owned();
    let stored = lock(&shared.redirects).get(&id).cloned();
    let (parts, body) = req.into_parts();
    drain(body, &cell.request_bytes).await;
    let response = match stored {
        None => simple_response(StatusCode::NOT_FOUND, "unknown storage object\n"),
        Some(stored) => {
            let mut headers = stored.headers;
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::TRANSFER_ENCODING);
            if let Some(range) = parts.headers.get(header::RANGE) {
                headers.insert(header::RANGE, range.clone());
            }
            forward(shared.upstream, parts.method, &stored.uri, headers, empty())
                .await
                .unwrap_or_else(bad_gateway)
        }
    };
    finish(response, BodyMode::Pass, &cell, abort)
}

/// Records the status and wraps the body in the counting, fault-injecting
/// [`FaultBody`].
fn finish<B>(
    response: Response<B>,
    mode: BodyMode,
    cell: &Cell,
    abort: Arc<AtomicBool>,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    cell.status
        .store(response.status().as_u16(), Ordering::SeqCst);
    response.map(|inner| {
        FaultBody {
            inner,
            mode,
            sent: 0,
            pending: None,
            aborting: false,
            abort,
            counter: cell.response_bytes.clone(),
        }
        .boxed_unsync()
    })
}

/// Sends one request upstream on a fresh connection; the response body
/// streams from that connection, which closes when the body is done or
/// dropped.
async fn forward(
    upstream: SocketAddr,
    method: Method,
    uri: &Uri,
    mut headers: HeaderMap,
    body: ProxyBody,
) -> std::result::Result<Response<ProxyBody>, String> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to upstream {upstream}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("upstream handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });

    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    if !headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(&upstream.to_string()) {
            headers.insert(header::HOST, host);
        }
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = path_and_query(uri)
        .parse()
        .map_err(|e| format!("bad request target: {e}"))?;
    *request.headers_mut() = headers;

    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("upstream request: {e}"))?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed_unsync(),
    ))
}

/// Removes the connection-level headers (and those `Connection` names); the
/// framing headers stay, hyper re-frames bodies accordingly.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            headers.remove(name);
        }
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn status_response(code: u16, retry_after: Option<u64>, text: String) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if text.trim_start().starts_with('{') {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = simple_response(status, text);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn simple_response(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let text = text.into();
    let mut response = Response::new(
        Full::new(text.clone())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    response
}

fn bad_gateway(message: String) -> Response<ProxyBody> {
    simple_response(StatusCode::BAD_GATEWAY, format!("fault proxy: {message}\n"))
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// Reads and discards a request body, counting it.
async fn drain(mut body: Incoming, counter: &AtomicU64) {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }
}

/// A request body passed through while counting its bytes (every byte
/// received from the client), cut with an error after `cut_after` bytes
/// went upstream.
struct CountingBody {
    inner: Incoming,
    counter: Arc<AtomicU64>,
    cut_after: Option<u64>,
    forwarded: u64,
    pending_cut: bool,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        if self.pending_cut {
            return Poll::Ready(Some(Err("fault proxy: request cut on purpose".into())));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        self.counter.fetch_add(data.len() as u64, Ordering::SeqCst);
        if let Some(n) = self.cut_after {
            let room = n.saturating_sub(self.forwarded);
            if data.len() as u64 > room {
                data.truncate(room as usize);
                self.pending_cut = true;
            }
        }
        self.forwarded += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`FaultBody`] does to the bytes it passes on.
enum BodyMode {
    Pass,
    DropAfter(u64),
    Stall {
        after: u64,
        pause: Pause,
        close: bool,
        state: StallState,
    },
    Flip(u64),
}

/// What a stalled body waits for.
enum Pause {
    For(Duration),
    Until(Gate),
}

impl Pause {
    fn start(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match self {
            Pause::For(duration) => Box::pin(tokio::time::sleep(*duration)),
            Pause::Until(gate) => Box::pin(gate.opened()),
        }
    }
}

enum StallState {
    Waiting,
    Sleeping(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl BodyMode {
    fn from_fault(fault: Option<&Fault>) -> Self {
        match fault {
            Some(Fault::DropAfterBytes(n)) => BodyMode::DropAfter(*n),
            Some(Fault::Stall {
                after_bytes,
                duration,
                close,
            }) => BodyMode::Stall {
                after: *after_bytes,
                pause: Pause::For(*duration),
                close: *close,
                state: StallState::Waiting,
            },
            Some(Fault::Hold { after_bytes, gate }) => BodyMode::Stall {
                after: *after_bytes,
                pause: Pause::Until(gate.clone()),
                close: false,
                state: StallState::Waiting,
            },
            Some(Fault::FlipByte { offset }) => BodyMode::Flip(*offset),
            _ => BodyMode::Pass,
        }
    }
}

/// A response body passed to the client, counted, with the body faults
/// applied.
///
/// Closing the connection: returning an error from the body would make hyper
/// drop the connection with the bytes it buffered unsent. Instead the body
/// raises the connection's `abort` flag and stays pending; hyper then flushes
/// what it buffered and [`AbortableIo`] fails the flush after the last byte,
/// which closes the connection exactly after the bytes counted.
struct FaultBody<B> {
    inner: B,
    mode: BodyMode,
    sent: u64,
    pending: Option<Bytes>,
    aborting: bool,
    abort: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
}

impl<B> FaultBody<B> {
    fn start_abort(&mut self) {
        self.aborting = true;
        self.abort.store(true, Ordering::SeqCst);
    }
}

impl<B> Body for FaultBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.aborting {
                // The connection closes once hyper has flushed; see above.
                return Poll::Pending;
            }
            if let BodyMode::Stall { close, state, .. } = &mut this.mode {
                if let StallState::Sleeping(sleep) = state {
                    ready!(sleep.as_mut().poll(cx));
                    *state = StallState::Done;
                    if *close {
                        this.start_abort();
                        continue;
                    }
                }
            }
            if let BodyMode::DropAfter(n) = this.mode {
                if this.sent >= n {
                    this.start_abort();
                    continue;
                }
            }

            let mut data = match this.pending.take() {
                Some(data) => data,
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                },
            };
            if data.is_empty() {
                continue;
            }

            let limit = match &mut this.mode {
                BodyMode::DropAfter(n) => Some(*n - this.sent),
                BodyMode::Stall {
                    after,
                    pause,
                    state,
                    ..
                } => match state {
                    StallState::Waiting if this.sent >= *after => {
                        *state = StallState::Sleeping(pause.start());
                        this.pending = Some(data);
                        continue;
                    }
                    StallState::Waiting => Some(*after - this.sent),
                    _ => None,
                },
                _ => None,
            };
            if let Some(limit) = limit {
                if (data.len() as u64) > limit {
                    this.pending = Some(data.split_off(limit as usize));
                }
            }
            let len = data.len() as u64;
            if let BodyMode::Flip(offset) = this.mode {
                if offset >= this.sent && offset < this.sent + len {
                    let mut bytes = data.to_vec();
                    bytes[(offset - this.sent) as usize] ^= 0xff;
                    data = Bytes::from(bytes);
                }
            }
            this.sent += len;
            this.counter.fetch_add(len, Ordering::SeqCst);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.aborting && self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sent == 0 && self.pending.is_none() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

/// The client connection's socket; once `abort` is raised, a flush (which
/// hyper only does after writing out everything it buffered) fails, so hyper
/// closes the connection right after the bytes already handed to it.
///
/// Once `sever` is raised, every read and write fails at once: the
/// connection closes with nothing more sent.
struct AbortableIo {
    inner: TcpStream,
    abort: Arc<AtomicBool>,
    sever: Arc<AtomicBool>,
}

fn severed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "fault proxy: connection cut on purpose",
    )
}

impl AsyncRead for AbortableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.sever.load(Ordering::SeqCst) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.sever.load(Ordering::SeqCst) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.sever.load(Ordering::SeqCst) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if self.abort.load(Ordering::SeqCst) {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault proxy: connection dropped on purpose",
            )))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
