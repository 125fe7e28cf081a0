//! A small blocking HTTP client for tests (ureq with rustls/ring).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

/// Builds a ureq agent that trusts the PEM certificates in `extra_ca_pem`
/// (and nothing else when given; the webpki roots otherwise). No proxy, 30 s
/// timeout, redirects not followed.
pub fn http_agent(extra_ca_pem: Option<&[u8]>) -> Result<ureq::Agent> {
    let builder = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0);
    let builder = match extra_ca_pem {
        Some(pem) => builder.tls_config(rustls_client_config(pem)?),
        None => builder,
    };
    Ok(builder.build())
}

/// A rustls client configuration (ring provider) trusting exactly the PEM
/// certificates in `ca_pem`.
pub fn rustls_client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| Error::Crypto(format!("bad CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Crypto(format!("CA not accepted: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Crypto(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends a request and returns the response whatever its status (ureq 2
/// treats 4xx/5xx as errors); only transport failures are errors.
pub fn send(request: ureq::Request) -> Result<ureq::Response> {
    match request.call() {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(ureq::Error::Transport(t)) => Err(Error::Http(t.to_string())),
    }
}

/// Like [`send`], with a request body.
pub fn send_bytes(request: ureq::Request, body: &[u8]) -> Result<ureq::Response> {
    match request.send_bytes(body) {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(ureq::Error::Transport(t)) => Err(Error::Http(t.to_string())),
    }
}
