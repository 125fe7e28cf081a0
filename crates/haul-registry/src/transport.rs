//! What a failed connection means, in words a user can act on.
//!
//! reqwest reports a refused connection, a failed DNS lookup and a TLS
//! handshake that met plain HTTP all as "error sending request"; the cause
//! sits deep in the error's source chain. [`classify`] finds it, and
//! [`transport_error`] turns it into an [`Error::Transport`] whose message
//! names the cause (and, for TLS, what to do), and which is retryable only
//! when trying again can help.

use std::io::ErrorKind;

use crate::error::Error;

/// Why a request found no server to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing listens on the port.
    Refused,
    /// The host name does not resolve.
    UnknownHost,
    /// A TLS handshake got a plain-HTTP answer.
    PlainHttpAnswer,
    /// The server's certificate is not trusted (or not valid for the host).
    Certificate,
    /// Any other TLS failure.
    Tls,
    /// Connecting or reading timed out.
    Timeout,
    /// Anything else (a reset connection, a broken body...).
    Other,
}

impl Failure {
    /// Whether the same request may succeed a moment later.
    pub(crate) fn is_transient(self) -> bool {
        matches!(self, Failure::Timeout | Failure::Other)
    }
}

/// The full text of an error and its sources, each once.
pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Why `e` failed. Judged from the causes only: the error's own text
/// holds the URL, whose host name may contain any word.
pub(crate) fn classify(e: &reqwest::Error) -> Failure {
    let text = std::error::Error::source(e)
        .map(chain_text)
        .unwrap_or_default();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == ErrorKind::ConnectionRefused {
                return Failure::Refused;
            }
        }
        source = s.source();
    }
    if text.contains("dns error") || text.contains("failed to lookup address") {
        Failure::UnknownHost
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        Failure::PlainHttpAnswer
    } else if text.contains("certificate") || text.contains("InvalidCertificate") {
        Failure::Certificate
    } else if text.contains("tls") || text.contains("TLS") || text.contains("handshake") {
        Failure::Tls
    } else if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other
    }
}

const REFUSED: &str = "connection refused";
const UNKNOWN_HOST: &str = "unknown host";

/// Whether `err` is a [`transport_error`] of a host that cannot be
/// reached at all (refused, unknown): another scheme will not help.
pub(crate) fn is_unreachable(err: &Error) -> bool {
    matches!(err, Error::Transport { message, .. }
        if message.starts_with(REFUSED) || message.starts_with(UNKNOWN_HOST))
}

/// The host part of `host[:port]`.
fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    }
}

/// The certificate problem rustls named, in words.
fn certificate_problem(text: &str) -> String {
    let known = [
        (
            "CaUsedAsEndEntity",
            "a self-signed CA certificate not trusted for this host",
        ),
        ("UnknownIssuer", "signed by an unknown authority"),
        ("NotValidForName", "not valid for this host name"),
        ("Expired", "expired"),
        ("NotValidYet", "not valid yet"),
        ("Revoked", "revoked"),
    ];
    if let Some((_, words)) = known.iter().find(|(name, _)| text.contains(name)) {
        return words.to_string();
    }
    let Some(at) = text.find("invalid peer certificate: ") else {
        return "unknown problem".into();
    };
    let rest = &text[at + "invalid peer certificate: ".len()..];
    rest.split([':', '\n'])
        .next()
        .unwrap_or(rest)
        .trim()
        .to_string()
}

/// An [`Error::Transport`] for a failed request to `registry`, saying why
/// in words and retryable only when the failure is transient. The
/// message never holds a credential (reqwest's text carries at most the
/// URL, and credentials travel in headers).
pub(crate) fn transport_error(registry: &str, e: &reqwest::Error) -> Error {
    let failure = classify(e);
    let text = chain_text(e);
    let message = match failure {
        Failure::Refused => format!("{REFUSED} (is a registry listening there?)"),
        Failure::UnknownHost => {
            // The host looked up (registry-1.docker.io for docker.io).
            let looked_up = e.url().and_then(|u| u.host_str().map(str::to_string));
            let host = looked_up.unwrap_or_else(|| host_of(registry).to_string());
            format!("{UNKNOWN_HOST} {host} (DNS lookup failed)")
        }
        Failure::PlainHttpAnswer => format!(
            "the server gave an HTTP response to an HTTPS client; if {registry} is a \
             plain-HTTP registry, pass --insecure-registry {registry}"
        ),
        Failure::Certificate => format!(
            "its TLS certificate is not trusted ({}); to trust it, put its CA certificate \
             in /etc/docker/certs.d/{registry}/ca.crt or $XDG_CONFIG_HOME/haul/certs.d/{registry}/ca.crt, \
             or pass --ca-file FILE, or --insecure-registry {registry} to skip verification",
            certificate_problem(&text)
        ),
        Failure::Tls => format!("TLS handshake failed: {text}"),
        Failure::Timeout => format!("timed out: {text}"),
        Failure::Other => text,
    };
    Error::Transport {
        registry: registry.to_string(),
        message,
        retryable: failure.is_transient()
            && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()),
    }
}

/// Header names whose values are secrets and never shown.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-docker-token",
];

/// A one-line description of a request for the debug log (`-vv`):
/// method, URL and headers, with the value of every header that carries
/// a secret replaced by `<redacted>`.
pub(crate) fn describe_request(request: &reqwest::Request) -> String {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let secret = SECRET_HEADERS.contains(&name.as_str());
            let value = if secret {
                "<redacted>".into()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            format!("{name}: {value}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{} {} [{headers}]", request.method(), request.url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_requests_hide_secret_header_values() {
        let request = reqwest::Client::new()
            .get("http://127.0.0.1:1/v2/")
            .header("Authorization", "Basic dXNlcjpzZWNyZXQ=")
            .header("Accept", "application/json")
            .build()
            .unwrap();
        let text = describe_request(&request);
        assert!(text.contains("authorization: <redacted>"), "{text}");
        assert!(text.contains("accept: application/json"), "{text}");
        assert!(!text.contains("dXNlcjpzZWNyZXQ"), "{text}");
    }

    /// A TLS handshake with a real plain-HTTP registry: the sentence says
    /// what happened and how to reach it.
    #[tokio::test]
    async fn tls_meeting_plain_http_says_so_and_suggests_insecure_registry() {
        if haul_testkit::peers::require_docker_registry().is_none() {
            return;
        }
        let registry = haul_testkit::Registry::start(haul_testkit::RegistryConfig::no_auth())
            .expect("the test registry starts");
        let err = reqwest::Client::builder()
            .use_rustls_tls()
            .build()
            .unwrap()
            .get(format!("https://{}/v2/", registry.host()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(classify(&err), Failure::PlainHttpAnswer, "{err:?}");
        let text = transport_error("registry.example:5000", &err).to_string();
        assert!(
            text.contains("HTTP response to an HTTPS client")
                && text.contains("--insecure-registry registry.example:5000"),
            "{text}"
        );
        assert!(!transport_error("r", &err).is_retryable());
    }

    #[tokio::test]
    async fn refused_connections_are_named_and_not_retryable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reqwest::get(format!("http://127.0.0.1:{port}/v2/"))
            .await
            .unwrap_err();
        assert_eq!(classify(&err), Failure::Refused);
        let err = transport_error(&format!("127.0.0.1:{port}"), &err);
        assert!(is_unreachable(&err), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_of("registry.invalid:5000"), "registry.invalid");
        assert_eq!(host_of("registry.invalid"), "registry.invalid");
        assert_eq!(host_of("[::1]:5000"), "[::1]");
    }

    #[test]
    fn the_certificate_problem_is_picked_out() {
        assert_eq!(
            certificate_problem("error sending request: invalid peer certificate: UnknownIssuer"),
            "signed by an unknown authority"
        );
        assert_eq!(
            certificate_problem("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))"),
            "a self-signed CA certificate not trusted for this host"
        );
        assert_eq!(
            certificate_problem("invalid peer certificate: BadEncoding"),
            "BadEncoding"
        );
    }
}
