//! The fault proxy against a small upstream of its own (tiny_http): every
//! fault really happens, and the counters match what went over the wire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haul_testkit::fault_proxy::{Fault, FaultProxy, Match, Rule};

const BLOB_SIZE: usize = 1024 * 1024;
const BLOB_PATH: &str =
    "/v2/x/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CHUNKED_PATH: &str = "/v2/x/chunked";

fn blob() -> Vec<u8> {
    (0..BLOB_SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body_len: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny registry stand-in: serves [`BLOB_PATH`] (honouring `Range`) with a
/// `Content-Length`, the same bytes chunked at [`CHUNKED_PATH`], and accepts
/// upload requests, recording everything.
struct Upstream {
    server: Arc<tiny_http::Server>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Upstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind upstream"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let blob = Arc::new(blob());
        let thread = {
            let server = server.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let seen = seen.clone();
                    let blob = blob.clone();
                    std::thread::spawn(move || handle(request, &blob, &seen));
                }
            })
        };
        Upstream {
            server,
            seen,
            thread: Some(thread),
        }
    }

    fn authority(&self) -> String {
        self.server.server_addr().to_ip().expect("ip").to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_matching(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.url.contains(path))
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn handle(mut request: tiny_http::Request, blob: &[u8], seen: &Mutex<Vec<Seen>>) {
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_owned(),
                h.value.as_str().to_owned(),
            )
        })
        .collect();
    let method = request.method().as_str().to_owned();
    let url = request.url().to_owned();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        url: url.clone(),
        headers: headers.clone(),
        body_len: body.len(),
    });
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header")
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let result = match (method.as_str(), url.as_str()) {
        ("GET" | "HEAD", BLOB_PATH) => {
            let (status, range) = match find("range").and_then(|r| parse_range(&r, blob.len())) {
                Some((start, end)) => (206, start..end + 1),
                None => (200, 0..blob.len()),
            };
            let mut response = tiny_http::Response::from_data(blob[range.clone()].to_vec())
                .with_status_code(status)
                .with_chunked_threshold(usize::MAX)
                .with_header(header("Content-Type", "application/octet-stream"));
            if status == 206 {
                response = response.with_header(header(
                    "Content-Range",
                    &format!("bytes {}-{}/{}", range.start, range.end - 1, blob.len()),
                ));
            }
            request.respond(response)
        }
        ("GET", CHUNKED_PATH) => request.respond(tiny_http::Response::new(
            tiny_http::StatusCode(200),
            vec![header("Content-Type", "application/octet-stream")],
            std::io::Cursor::new(blob.to_vec()),
            None,
            None,
        )),
        ("POST", "/v2/x/blobs/uploads/") => {
            let host = find("host").unwrap_or_default();
            let location = format!("http://{host}/v2/x/blobs/uploads/u1?_state=s");
            request.respond(
                tiny_http::Response::empty(202)
                    .with_header(header("Location", &location))
                    .with_header(header("Docker-Upload-UUID", "u1")),
            )
        }
        ("PATCH", _) => request.respond(
            tiny_http::Response::empty(202)
                .with_header(header("Range", &format!("0-{}", body.len().max(1) - 1))),
        ),
        ("PUT", _) => request.respond(tiny_http::Response::empty(201)),
        _ => request.respond(tiny_http::Response::empty(404)),
    };
    let _ = result;
}

fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: usize = start.parse().ok()?;
    let end: usize = if end.is_empty() {
        len - 1
    } else {
        end.parse().ok()?
    };
    (start <= end && end < len).then_some((start, end))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build()
}

/// Sends a request and returns the response whatever its status.
fn call(request: ureq::Request) -> ureq::Response {
    match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("transport error: {e}"),
    }
}

fn body_of(response: ureq::Response) -> Vec<u8> {
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .expect("read body");
    body
}

/// A raw HTTP/1.1 exchange: writes `head` (plus an empty line) and reads until
/// the server closes. Returns the response head and the raw bytes after it.
fn raw_exchange(authority: &str, head: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server closes the connection (no read timeout)");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    (head, raw[split + 4..].to_vec())
}

fn start() -> (Upstream, FaultProxy) {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(&upstream.authority()).expect("start proxy");
    (upstream, proxy)
}

#[test]
fn forwards_unchanged_and_counts() {
    let (upstream, proxy) = start();
    let agent = agent();

    let response = call(
        agent
            .get(&format!("{}{BLOB_PATH}", proxy.url()))
            .set("X-Test", "kept"),
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.header("Content-Length"),
        Some(BLOB_SIZE.to_string().as_str())
    );
    assert_eq!(body_of(response), blob());

    let head = call(agent.head(&format!("{}{BLOB_PATH}", proxy.url())));
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(BLOB_SIZE.to_string().as_str())
    );
    assert!(body_of(head).is_empty());

    let chunked = call(agent.get(&format!("{}{CHUNKED_PATH}", proxy.url())));
    assert_eq!(chunked.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(body_of(chunked), blob());

    let seen = upstream.seen_matching("GET", BLOB_PATH);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some(proxy.authority().as_str()));
    assert_eq!(seen[0].header("x-test"), Some("kept"));

    assert_eq!(proxy.count_matching("GET", "/blobs/"), 1);
    assert_eq!(proxy.count_matching("HEAD", "/blobs/"), 1);
    assert_eq!(proxy.count_matching("*", "/v2/x/"), 3);
    assert_eq!(
        proxy.response_bytes_matching("GET", "/blobs/"),
        BLOB_SIZE as u64
    );
    assert_eq!(proxy.response_bytes_matching("HEAD", "/blobs/"), 0);
    assert_eq!(
        proxy.response_bytes_matching("GET", CHUNKED_PATH),
        BLOB_SIZE as u64
    );
    let records = proxy.requests();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].method, "GET");
    assert_eq!(records[0].path, BLOB_PATH);
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].fault, None);
    assert_eq!(records[0].header("x-test"), Some("kept"));

    proxy.reset_counters();
    assert!(proxy.requests().is_empty());
    assert_eq!(proxy.count_matching("*", ""), 0);
}

#[test]
fn upload_bodies_are_forwarded_and_counted_and_host_is_kept() {
    let (upstream, proxy) = start();
    let agent = agent();

    let started = call(agent.post(&format!("{}/v2/x/blobs/uploads/", proxy.url())));
    assert_eq!(started.status(), 202);
    let location = started.header("Location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("{}/v2/x/blobs/uploads/u1", proxy.url())),
        "the registry built {location} from the client's Host"
    );

    // A chunked PATCH (ureq streams a reader with Transfer-Encoding: chunked).
    let chunk = vec![7u8; 300 * 1024];
    let patched = agent
        .request("PATCH", &location)
        .send(std::io::Cursor::new(chunk.clone()))
        .expect("PATCH");
    assert_eq!(patched.status(), 202);

    // A PUT with a Content-Length body.
    let put = agent
        .put(&format!("{location}&digest=sha256:abc"))
        .send_bytes(&[1u8; 12_345])
        .expect("PUT");
    assert_eq!(put.status(), 201);

    let patch_seen = upstream.seen_matching("PATCH", "/uploads/u1");
    assert_eq!(patch_seen.len(), 1);
    assert_eq!(patch_seen[0].body_len, chunk.len());
    assert_eq!(patch_seen[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        upstream.seen_matching("PUT", "/uploads/u1")[0].body_len,
        12_345
    );

    assert_eq!(
        proxy.request_bytes_matching("PATCH", "/uploads/"),
        chunk.len() as u64
    );
    assert_eq!(proxy.request_bytes_matching("PUT", "/uploads/"), 12_345);
    assert_eq!(
        proxy.request_bytes_matching("PUT", "digest=sha256:abc"),
        12_345
    );
    assert_eq!(proxy.request_bytes_matching("POST", "/uploads/"), 0);
}

#[test]
fn drop_after_bytes_cuts_the_body_and_closes() {
    let (_upstream, proxy) = start();
    proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/sha256:").method("GET"),
            Fault::DropAfterBytes(1000),
        )
        .times(1),
    );

    // Keep-alive request: only an aborted connection ends the read.
    let (head, body) = raw_exchange(
        &proxy.authority(),
        &format!("GET {BLOB_PATH} HTTP/1.1\r\nHost: {}", proxy.authority()),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {BLOB_SIZE}")),
        "{head}"
    );
    assert_eq!(body, &blob()[..1000]);
    assert_eq!(proxy.response_bytes_matching("GET", "/blobs/"), 1000);
    assert_eq!(proxy.rule_uses(), vec![1]);

    // The rule is spent: the next request is whole.
    let response = call(agent().get(&format!("{}{BLOB_PATH}", proxy.url())));
    assert_eq!(body_of(response), blob());
    assert_eq!(
        proxy.response_bytes_matching("GET", "/blobs/"),
        1000 + BLOB_SIZE as u64
    );
}

#[test]
fn drop_after_many_bytes_sends_exactly_those_bytes() {
    let (_upstream, proxy) = start();
    let n = 700_001;
    proxy.add_rule(Rule::new(Match::any(), Fault::DropAfterBytes(n)));

    // Read slowly at first so the proxy's socket buffer fills up.
    let mut stream = TcpStream::connect(proxy.authority()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {BLOB_PATH} HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.authority()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("closed by the proxy");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(raw.len() - split, n as usize);
    assert_eq!(&raw[split..], &blob()[..n as usize]);
    assert_eq!(proxy.requests()[0].response_bytes, n);

    // ureq sees a failed read.
    let response = call(agent().get(&format!("{}{BLOB_PATH}", proxy.url())));
    let mut body = Vec::new();
    assert!(response.into_reader().read_to_end(&mut body).is_err());
    assert_eq!(body.len() as u64, n);
}

#[test]
fn drop_after_bytes_on_a_chunked_body() {
    let (_upstream, proxy) = start();
    proxy.add_rule(Rule::new(
        Match::path_ends_with("/chunked"),
        Fault::DropAfterBytes(50_000),
    ));
    let (head, raw) = raw_exchange(
        &proxy.authority(),
        &format!("GET {CHUNKED_PATH} HTTP/1.1\r\nHost: x"),
    );
    assert!(head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert!(raw.len() < 60_000);
    assert!(!raw.ends_with(b"0\r\n\r\n"), "no last chunk");
    assert_eq!(proxy.response_bytes_matching("GET", "/chunked"), 50_000);

    let response = call(agent().get(&format!("{}{CHUNKED_PATH}", proxy.url())));
    let mut body = Vec::new();
    assert!(response.into_reader().read_to_end(&mut body).is_err());
}

#[test]
fn status_429_with_retry_after_twice_then_success() {
    let (upstream, proxy) = start();
    proxy.add_rule(
        Rule::new(
            Match::path_contains("/blobs/").method("get"),
            Fault::too_many_requests(1),
        )
        .times(2),
    );
    let agent = agent();
    let url = format!("{}{BLOB_PATH}", proxy.url());
    for _ in 0..2 {
        let response = call(agent.get(&url));
        assert_eq!(response.status(), 429);
        assert_eq!(response.header("Retry-After"), Some("1"));
    }
    let response = call(agent.get(&url));
    assert_eq!(response.status(), 200);
    assert_eq!(body_of(response), blob());

    assert_eq!(upstream.seen_matching("GET", BLOB_PATH).len(), 1);
    assert_eq!(proxy.count_matching("GET", BLOB_PATH), 3);
    let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200]);
    assert_eq!(proxy.rule_uses(), vec![2]);
}

#[test]
fn status_with_body_on_an_upload_never_reaches_upstream() {
    let (upstream, proxy) = start();
    let json = r#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#;
    proxy.add_rule(Rule::new(
        Match::path_contains("/uploads/").method("PATCH"),
        Fault::Status {
            code: 503,
            retry_after: None,
            body: json.to_owned(),
        },
    ));
    let response = match agent()
        .request("PATCH", &format!("{}/v2/x/blobs/uploads/u1", proxy.url()))
        .send_bytes(&[9u8; 100_000])
    {
        Err(ureq::Error::Status(503, response)) => response,
        other => panic!("expected 503, got {other:?}"),
    };
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.header("Retry-After"), None);
    assert_eq!(response.into_string().unwrap(), json);
    assert!(upstream.seen().is_empty());
    assert_eq!(proxy.request_bytes_matching("PATCH", "/uploads/"), 100_000);
    assert_eq!(
        proxy.response_bytes_matching("PATCH", "/uploads/"),
        json.len() as u64
    );

    proxy.clear_rules();
    let response = agent()
        .request("PATCH", &format!("{}/v2/x/blobs/uploads/u1", proxy.url()))
        .send_bytes(&[9u8; 10])
        .expect("forwarded once the rules are cleared");
    assert_eq!(response.status(), 202);
}

#[test]
fn ignore_range_answers_the_whole_blob() {
    let (upstream, proxy) = start();
    let agent = agent();
    let url = format!("{}{BLOB_PATH}", proxy.url());

    let ranged = call(agent.get(&url).set("Range", "bytes=100-199"));
    assert_eq!(ranged.status(), 206);
    assert_eq!(body_of(ranged), &blob()[100..200]);

    proxy.add_rule(Rule::new(Match::path_contains("/blobs/"), Fault::IgnoreRange).once());
    let whole = call(agent.get(&url).set("Range", "bytes=100-199"));
    assert_eq!(whole.status(), 200);
    assert_eq!(body_of(whole), blob());

    let seen = upstream.seen_matching("GET", BLOB_PATH);
    assert_eq!(seen[0].header("range"), Some("bytes=100-199"));
    assert_eq!(seen[1].header("range"), None);
    // The record shows what the client sent.
    assert_eq!(proxy.requests()[1].header("range"), Some("bytes=100-199"));
    assert_eq!(proxy.requests()[1].fault, Some(Fault::IgnoreRange));
}

#[test]
fn redirect_blob_goes_through_the_storage_host() {
    let (upstream, proxy) = start();
    proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/sha256:").method("GET"),
        Fault::RedirectBlob,
    ));
    let agent = agent();

    let redirect = call(
        agent
            .get(&format!("{}{BLOB_PATH}", proxy.url()))
            .set("Authorization", "Bearer x"),
    );
    assert_eq!(redirect.status(), 307);
    let location = redirect.header("Location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("http://{}/", proxy.storage_authority())),
        "{location}"
    );
    assert!(upstream.seen().is_empty(), "not forwarded");

    // The follow-up, as a careful client sends it: no Authorization.
    let served = call(agent.get(&location));
    assert_eq!(served.status(), 200);
    assert_eq!(body_of(served), blob());

    // A ranged follow-up passes its Range on.
    let ranged = call(agent.get(&location).set("Range", "bytes=10-19"));
    assert_eq!(ranged.status(), 206);
    assert_eq!(body_of(ranged), &blob()[10..20]);

    let storage = proxy.storage_requests();
    assert_eq!(storage.len(), 2);
    assert_eq!(storage[0].method, "GET");
    assert_eq!(storage[0].header("authorization"), None);
    assert_eq!(
        storage[0].header("host"),
        Some(proxy.storage_authority().as_str())
    );
    assert_eq!(storage[0].status, 200);
    assert_eq!(storage[0].response_bytes, BLOB_SIZE as u64);
    assert_eq!(storage[1].header("range"), Some("bytes=10-19"));

    // The storage host fetched with the original request's headers.
    let fetched = upstream.seen_matching("GET", BLOB_PATH);
    assert_eq!(fetched.len(), 2);
    assert_eq!(fetched[0].header("authorization"), Some("Bearer x"));
    assert_eq!(fetched[0].header("host"), Some(proxy.authority().as_str()));

    // The redirect itself is recorded on the proxy side.
    let records = proxy.requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 307);
    assert_eq!(records[0].header("authorization"), Some("Bearer x"));

    let unknown = call(agent.get(&format!("http://{}/nope", proxy.storage_authority())));
    assert_eq!(unknown.status(), 404);
}

#[test]
fn flip_byte_changes_exactly_one_byte() {
    let (_upstream, proxy) = start();
    proxy.add_rule(Rule::new(
        Match::path_contains("/blobs/"),
        Fault::FlipByte { offset: 123_457 },
    ));
    let body = body_of(call(agent().get(&format!("{}{BLOB_PATH}", proxy.url()))));
    let expected = blob();
    assert_eq!(body.len(), expected.len());
    let differing: Vec<usize> = (0..body.len())
        .filter(|&i| body[i] != expected[i])
        .collect();
    assert_eq!(differing, vec![123_457]);
    assert_eq!(body[123_457], expected[123_457] ^ 0xff);
}

#[test]
fn stall_delays_then_continues() {
    let (_upstream, proxy) = start();
    let pause = Duration::from_millis(600);
    proxy.add_rule(Rule::new(Match::any(), Fault::stall(1000, pause)).once());

    let started = Instant::now();
    let response = call(agent().get(&format!("{}{BLOB_PATH}", proxy.url())));
    let body = body_of(response);
    assert!(started.elapsed() >= pause, "{:?}", started.elapsed());
    assert_eq!(body, blob());
    assert_eq!(
        proxy.response_bytes_matching("GET", "/blobs/"),
        BLOB_SIZE as u64
    );
}

#[test]
fn stall_trips_a_client_read_timeout() {
    let (_upstream, proxy) = start();
    proxy.add_rule(Rule::new(
        Match::any(),
        Fault::stall(5000, Duration::from_secs(2)),
    ));
    let impatient = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_millis(300))
        .build();
    let started = Instant::now();
    let response = call(impatient.get(&format!("{}{BLOB_PATH}", proxy.url())));
    let mut body = Vec::new();
    let error = response
        .into_reader()
        .read_to_end(&mut body)
        .expect_err("the read times out");
    assert!(started.elapsed() < Duration::from_secs(2), "{error}");
    assert_eq!(body.len(), 5000);
}

#[test]
fn stall_then_close() {
    let (_upstream, proxy) = start();
    let pause = Duration::from_millis(400);
    proxy.add_rule(Rule::new(
        Match::any(),
        Fault::Stall {
            after_bytes: 3000,
            duration: pause,
            close: true,
        },
    ));
    let started = Instant::now();
    let (head, body) = raw_exchange(
        &proxy.authority(),
        &format!("GET {BLOB_PATH} HTTP/1.1\r\nHost: x"),
    );
    assert!(started.elapsed() >= pause);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, &blob()[..3000]);
}

#[test]
fn keep_alive_connections_survive_faults_on_others() {
    let (upstream, proxy) = start();
    proxy.add_rule(Rule::new(Match::any(), Fault::status(500)).times(1));
    proxy.add_rule(Rule::new(Match::path_contains("/blobs/"), Fault::DropAfterBytes(10)).once());
    let agent = agent();
    let url = format!("{}{BLOB_PATH}", proxy.url());
    assert_eq!(call(agent.get(&url)).status(), 500);
    let cut = call(agent.get(&url));
    assert!(cut.into_reader().read_to_end(&mut Vec::new()).is_err());
    for _ in 0..3 {
        assert_eq!(body_of(call(agent.get(&url))), blob());
    }
    assert_eq!(proxy.rule_uses(), vec![1, 1]);
    assert_eq!(upstream.seen_matching("GET", BLOB_PATH).len(), 4);
}

#[test]
fn unreachable_upstream_is_a_502() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let proxy = FaultProxy::start(&format!("127.0.0.1:{port}")).unwrap();
    let response = call(agent().get(&format!("{}/v2/", proxy.url())));
    assert_eq!(response.status(), 502);
    assert_eq!(proxy.requests()[0].status, 502);
}

#[test]
fn drop_stops_the_proxy() {
    let (_upstream, proxy) = start();
    let authority = proxy.authority();
    let storage = proxy.storage_authority();
    // A connection in the middle of a stalled response does not hold it up.
    proxy.add_rule(Rule::new(
        Match::any(),
        Fault::stall(0, Duration::from_secs(30)),
    ));
    let mut stream = TcpStream::connect(&authority).unwrap();
    write!(stream, "GET {BLOB_PATH} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(&authority).is_err());
    assert!(TcpStream::connect(&storage).is_err());
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[tokio::test]
async fn usable_from_an_async_test() {
    let (_upstream, proxy) = start();
    proxy.add_rule(Rule::new(Match::any(), Fault::too_many_requests(3)).once());
    let url = format!("{}{BLOB_PATH}", proxy.url());
    let statuses = tokio::task::spawn_blocking(move || {
        let agent = agent();
        [
            call(agent.get(&url)).status(),
            call(agent.get(&url)).status(),
        ]
    })
    .await
    .unwrap();
    assert_eq!(statuses, [429, 200]);
    drop(proxy);
}
