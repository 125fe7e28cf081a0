//! A throwaway certificate authority and server certificates for TLS peers.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{IoContext, Result};

/// A certificate authority generated for one test run (ECDSA P-256).
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate (and its key) issued by a [`TestCa`].
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// Paths of TLS material written to disk by [`TestCa::write_server_files`].
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// A directory holding only `ca.crt`: usable as skopeo's `--cert-dir`
    /// and as a Docker `certs.d/HOST/` directory.
    pub ca_dir: PathBuf,
    /// The server certificate (PEM).
    pub server_cert: PathBuf,
    /// The server key (PEM).
    pub server_key: PathBuf,
}

impl TestCa {
    /// Generates a new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses,
    /// e.g. `["127.0.0.1", "localhost"]`).
    pub fn issue_server_cert(&self, names: &[&str]) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a TLS client certificate (extended key usage `clientAuth`)
    /// named `common_name`.
    pub fn issue_client_cert(&self, common_name: &str) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA and a fresh server certificate for `names` under `dir`.
    pub fn write_server_files(&self, dir: &Path, names: &[&str]) -> Result<TlsFiles> {
        let server = self.issue_server_cert(names)?;
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).ctx(|| format!("creating {}", ca_dir.display()))?;
        let files = TlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_dir: ca_dir.clone(),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        };
        for (path, text) in [
            (&files.ca_cert, self.cert_pem.as_str()),
            (&ca_dir.join("ca.crt"), self.cert_pem.as_str()),
            (&files.server_cert, server.cert_pem.as_str()),
            (&files.server_key, server.key_pem.as_str()),
        ] {
            std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}
