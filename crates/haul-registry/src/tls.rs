//! Building the HTTP client for one registry: TLS trust as Docker users
//! set it up, proxies (never for loopback), timeouts and the User-Agent.
//!
//! Trusted for a registry `HOST[:PORT]`: the system roots, every
//! `--ca-file` ([`ClientConfig::extra_ca_files`]), the CA files configured
//! for it ([`ClientConfig::registry_ca_files`]) and the `*.crt` files of
//! `HOST[:PORT]/` in each certs.d directory ([`ClientConfig::certs_dirs`]:
//! `/etc/docker/certs.d`, then [`ClientConfig::user_certs_dir`]). A `*.cert` + `*.key` pair
//! there (or [`ClientConfig::client_certificates`]) is the client
//! certificate.
//!
//! A certificate the user put there for the host is trusted as the
//! server's own certificate too, even when it is marked `CA:TRUE` (what
//! `openssl req -x509 ... -addext subjectAltName=IP:127.0.0.1` makes):
//! webpki refuses a CA as an end entity (`CaUsedAsEndEntity`), Go's TLS,
//! and so Docker and skopeo, accept it. It must still be valid for the
//! name, and the handshake's signatures are checked as always.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// An HTTP client for the registry at `authority` (`host[:port]`).
/// `insecure` registries are reached without verifying their certificate.
pub(crate) fn http_client(
    config: &ClientConfig,
    authority: &str,
    insecure: bool,
) -> Result<reqwest::Client> {
    let tls = tls_config(config, authority, insecure)?;
    let mut builder = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .use_preconfigured_tls(tls);
    // The proxy variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, with
    // NO_PROXY's exceptions) apply, except to this machine: as with Go's
    // tools, a loopback registry is never reached through a proxy.
    if crate::client::is_loopback(authority) {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("HTTP client for {authority}: {e}")))
}

/// What to trust and present for one registry.
#[derive(Default)]
struct Trust {
    /// CA certificates the user named for this registry (or all).
    user_certs: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key, if any.
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn tls_config(
    config: &ClientConfig,
    authority: &str,
    insecure: bool,
) -> Result<rustls::ClientConfig> {
    let trust = trust_for(config, authority)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Verifier {
        webpki: OnceLock::new(),
        authority: authority.to_string(),
        pinned: trust.user_certs,
        provider: provider.clone(),
        insecure,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS for {authority}: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match trust.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Config(format!("client certificate for {authority}: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Gathers the certificates and client identity configured for `authority`.
fn trust_for(config: &ClientConfig, authority: &str) -> Result<Trust> {
    let mut trust = Trust::default();
    let configured = config
        .registry_ca_files
        .get(authority)
        .into_iter()
        .flatten();
    for file in config.extra_ca_files.iter().chain(configured) {
        trust.user_certs.extend(read_certificates(file)?);
    }
    if let Some((cert, key)) = config.client_certificates.get(authority) {
        trust.identity = Some(read_identity(cert, key)?);
    }
    // Docker looks in certs.d/HOST:PORT; a directory named with ':' replaced
    // is not a thing there, so only the exact authority is used.
    for root in config.certs_dirs() {
        let dir = root.join(authority);
        if !dir.is_dir() {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| io_error(&dir, source))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in &entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => trust.user_certs.extend(read_certificates(path)?),
                Some("cert") if trust.identity.is_none() => {
                    trust.identity = Some(read_identity(path, &path.with_extension("key"))?);
                }
                _ => {}
            }
        }
    }
    Ok(trust)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|s| io_error(path, s))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = read_certificates(cert)?;
    let pem = std::fs::read(key).map_err(|s| io_error(key, s))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::Config(format!("client key {}: {e}", key.display())))?;
    Ok((chain, key))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

static SYSTEM_ROOTS: OnceLock<RootCertStore> = OnceLock::new();

/// The system's trusted roots, read once per process and only when a
/// first TLS certificate is to be verified (a pull from a plain-HTTP
/// registry never reads them). Unreadable system certificates are
/// skipped, as Go and Docker do.
fn system_roots() -> &'static RootCertStore {
    SYSTEM_ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        roots
    })
}

/// webpki's verification, plus the certificates the user trusts for this
/// host accepted as the server's own certificate (see the module docs);
/// or, for an insecure registry, any certificate. The webpki verifier is
/// built on the first handshake (see [`system_roots`]).
#[derive(Debug)]
struct Verifier {
    webpki: OnceLock<std::result::Result<Arc<WebPkiServerVerifier>, String>>,
    authority: String,
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    insecure: bool,
}

impl Verifier {
    fn webpki(&self) -> std::result::Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.webpki
            .get_or_init(|| {
                let mut roots = system_roots().clone();
                for cert in &self.pinned {
                    // A certificate webpki cannot use as an anchor may still be pinned.
                    let _ = roots.add(cert.clone());
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| format!("TLS trust for {}: {e}", self.authority))
            })
            .as_ref()
            .map_err(|message| rustls::Error::General(message.clone()))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(err)
                if self
                    .pinned
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                let (not_before, not_after) =
                    validity(end_entity.as_ref()).ok_or(rustls::CertificateError::BadEncoding)?;
                if now.as_secs() < not_before {
                    return Err(rustls::CertificateError::NotValidYet.into());
                }
                if now.as_secs() > not_after {
                    return Err(rustls::CertificateError::Expired.into());
                }
                tracing::info!("accepting the certificate trusted for {server_name:?} as the server's own ({err})");
                Ok(ServerCertVerified::assertion())
            }
            Err(err) => Err(err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One DER element: its tag, its content and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| (l << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The validity period (`notBefore`, `notAfter`, in Unix seconds) of a
/// DER certificate.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (_, certificate, _) = der_element(der)?;
    let (_, mut tbs, _) = der_element(certificate)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    let mut fields = 0;
    loop {
        let (tag, content, rest) = der_element(tbs)?;
        tbs = rest;
        if tag == 0xa0 {
            continue;
        }
        fields += 1;
        if fields == 4 {
            let (t1, before, rest) = der_element(content)?;
            let (t2, after, _) = der_element(rest)?;
            return Some((der_time(t1, before)?, der_time(t2, after)?));
        }
    }
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in
/// Unix seconds.
fn der_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest): (i64, &str) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let part = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (part(0)?, part(2)?);
    let (hour, minute, second) = (part(4)?, part(6)?, part(8)?);
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_clients_reads_no_system_certificate() {
        // No test of this binary makes a TLS handshake.
        let config = ClientConfig::default();
        for authority in ["127.0.0.1:5000", "registry.example.com", "[::1]:443"] {
            http_client(&config, authority, false).unwrap();
            http_client(&config, authority, true).unwrap();
        }
        assert!(SYSTEM_ROOTS.get().is_none(), "the system roots were read");
    }

    #[test]
    fn certificate_times_are_read_in_both_forms() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x18, b"20000101000000Z"), Some(946_684_800));
        assert_eq!(der_time(0x17, b"240229123456Z"), Some(1_709_210_096));
        assert_eq!(der_time(0x17, b"2402291234Z"), None);
    }

    #[test]
    fn the_validity_of_a_certificate_is_found() {
        let ca = haul_testkit::tls::TestCa::generate("validity test").unwrap();
        let pem = ca.issue_server_cert(&["127.0.0.1"]).unwrap().cert_pem;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (before, after) = validity(der.as_ref()).expect("a validity");
        let now = UnixTime::now().as_secs();
        assert!(before < now && now < after, "{before} {now} {after}");
    }
}
