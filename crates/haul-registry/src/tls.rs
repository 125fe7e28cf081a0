//! Building the HTTP client for one registry: system roots, the Docker
//! `certs.d` convention (`HOST[:PORT]/*.crt` CAs, `*.cert` + `*.key` client
//! certificates), extra CAs, timeouts and the User-Agent.

use std::path::Path;

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// An HTTP client for the registry at `authority` (`host[:port]`).
/// `insecure` registries are reached without verifying their certificate.
pub(crate) fn http_client(
    config: &ClientConfig,
    authority: &str,
    insecure: bool,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .use_rustls_tls()
        .danger_accept_invalid_certs(insecure);
    for file in &config.extra_ca_files {
        for cert in read_certificates(file)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    // Docker looks in certs.d/HOST:PORT; a directory named with ':' replaced
    // is not a thing there, so only the exact authority is used.
    let dir = config.certs_dir.join(authority);
    if dir.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|source| io_error(&dir, source))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in &entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    for cert in read_certificates(path)? {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                Some("cert") => {
                    let key = path.with_extension("key");
                    let mut pem = std::fs::read(path).map_err(|s| io_error(path, s))?;
                    pem.extend(std::fs::read(&key).map_err(|s| io_error(&key, s))?);
                    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                        Error::Config(format!("client certificate {}: {e}", path.display()))
                    })?;
                    builder = builder.identity(identity);
                }
                _ => {}
            }
        }
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("HTTP client for {authority}: {e}")))
}

fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|s| io_error(path, s))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
