//! What the global options mean for the libraries: where the store is,
//! how the registry client and the transfer managers are set up.

use std::path::PathBuf;

use anyhow::Context;
use haul_dist::registry::ClientConfig;
use haul_dist::store::Store;
use haul_dist::PullSettings;

use crate::cli::Cli;

/// The store root: `--root`, else `$HAUL_ROOT` (clap reads both), else
/// `$XDG_DATA_HOME/haul`, else `~/.local/share/haul`.
pub fn store_root(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(root) = &cli.global.root {
        return Ok(root.clone());
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("haul"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find the store: set --root, HAUL_ROOT or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/haul"))
}

/// Opens the store.
pub fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let root = store_root(cli)?;
    Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
}

/// Registry client settings from the global options.
pub fn client_config(cli: &Cli) -> ClientConfig {
    ClientConfig {
        insecure_registries: cli.global.insecure_registries.clone(),
        ..ClientConfig::default()
    }
}

/// Transfer settings of a pull.
pub fn pull_settings(cli: &Cli, unpack: bool) -> PullSettings {
    PullSettings {
        max_concurrent_downloads: cli.global.max_concurrent_downloads,
        max_download_attempts: cli.global.max_download_attempts,
        unpack,
        ..PullSettings::default()
    }
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
