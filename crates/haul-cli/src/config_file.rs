//! The config file: per-registry mirrors, insecure hosts, CA files and
//! client certificates, and defaults of the transfer settings.
//!
//! Read from `--config FILE`, else `$HAUL_CONFIG`, else
//! `$XDG_CONFIG_HOME/haul/config.toml` (`~/.config/haul/config.toml`), else
//! `/etc/haul/config.toml`; a file named by `--config` or `$HAUL_CONFIG`
//! must exist, the others are used when present. Flags override the file.
//!
//! ```toml
//! max-concurrent-downloads = 6
//! max-concurrent-uploads = 5
//! max-download-attempts = 3
//! inflate-threads = 4
//! insecure-registries = ["registry.lan:5000"]
//! ca-files = ["/etc/ssl/team-ca.pem"]
//!
//! [registry."docker.io"]
//! mirrors = ["https://mirror.example", "http://127.0.0.1:5001"]
//!
//! [registry."registry.lan:5000"]
//! insecure = true
//! ca = ["/etc/haul/registry-lan-ca.pem"]
//! client-cert = "/etc/haul/client.cert"
//! client-key = "/etc/haul/client.key"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Default of `--max-concurrent-downloads`.
    pub max_concurrent_downloads: Option<usize>,
    /// Default of `--max-concurrent-uploads`.
    pub max_concurrent_uploads: Option<usize>,
    /// Default of `--max-download-attempts`.
    pub max_download_attempts: Option<u32>,
    /// Default of `haul pull --inflate-threads`.
    pub inflate_threads: Option<usize>,
    /// Registries reached over plain HTTP or unverified TLS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// CA files trusted for every registry.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// Settings per registry (`host[:port]`, `docker.io` for Docker Hub).
    #[serde(default)]
    pub registry: BTreeMap<String, RegistrySection>,
}

/// `[registry."HOST"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RegistrySection {
    /// Mirror base URLs, tried in order for reads, then the registry; each
    /// request carries `?ns=HOST`.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Reach it over plain HTTP or unverified TLS.
    #[serde(default)]
    pub insecure: bool,
    /// CA files trusted for it.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// Client certificate (PEM) shown to it.
    pub client_cert: Option<PathBuf>,
    /// The key of `client-cert` (PEM).
    pub client_key: Option<PathBuf>,
}

/// Where the config file is, and whether it must exist.
fn location(flag: Option<&Path>) -> Option<(PathBuf, bool)> {
    if let Some(path) = flag {
        return Some((path.to_path_buf(), true));
    }
    if let Some(path) = std::env::var_os("HAUL_CONFIG").filter(|v| !v.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let user = haul_dist::registry::user_config_dir().map(|d| d.join("haul/config.toml"));
    user.filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from("/etc/haul/config.toml")))
        .map(|p| (p, false))
}

/// Reads the config file (`--config` given as `flag`); an empty one when
/// there is none.
pub(crate) fn load(flag: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let Some((path, required)) = location(flag) else {
        return Ok(ConfigFile::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(ConfigFile::default())
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the config file {}", path.display()))
        }
    };
    let file: ConfigFile =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    for (host, section) in &file.registry {
        if section.client_cert.is_some() != section.client_key.is_some() {
            anyhow::bail!(
                "invalid config file {}: registry {host} needs both client-cert and client-key",
                path.display()
            );
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config_file.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let file: ConfigFile = toml::from_str(&example).unwrap();
        assert_eq!(file.max_concurrent_downloads, Some(6));
        assert_eq!(file.inflate_threads, Some(4));
        assert_eq!(file.registry["docker.io"].mirrors.len(), 2);
        let lan = &file.registry["registry.lan:5000"];
        assert!(lan.insecure);
        assert_eq!(
            lan.client_key.as_deref(),
            Some(Path::new("/etc/haul/client.key"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("max-downloads = 3").is_err());
        assert!(toml::from_str::<ConfigFile>("[registry.\"a\"]\nmirror = []").is_err());
    }
}
