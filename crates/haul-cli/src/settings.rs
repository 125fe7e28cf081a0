//! What the global options mean for the libraries: where the store is,
//! how the registry client and the transfer managers are set up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use haul_dist::registry::ClientConfig;
use haul_dist::store::Store;
use haul_dist::{PullSettings, PushSettings};

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

/// Opens the store. The hidden `HAUL_LOCK_TIMEOUT_SECS` changes how long
/// a lock another haul holds is waited for (default 10 minutes).
pub fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let root = store_root(cli)?;
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    Ok(match env_number("HAUL_LOCK_TIMEOUT_SECS") {
        Some(secs) => store.with_lock_timeout(Some(Duration::from_secs(secs))),
        None => store,
    })
}

/// Registry client settings from the global options. The hidden
/// `HAUL_READ_TIMEOUT_SECS` shortens the read timeout (for tests).
pub fn client_config(cli: &Cli) -> ClientConfig {
    let defaults = ClientConfig::default();
    ClientConfig {
        insecure_registries: cli.global.insecure_registries.clone(),
        read_timeout: env_number("HAUL_READ_TIMEOUT_SECS")
            .map_or(defaults.read_timeout, Duration::from_secs),
        ..defaults
    }
}

/// Transfer settings of a pull. The hidden `HAUL_RETRY_TICK_MS` shortens
/// the one-second step of the retry countdown (for tests).
pub fn pull_settings(cli: &Cli, unpack: bool) -> PullSettings {
    let defaults = PullSettings::default();
    PullSettings {
        max_concurrent_downloads: cli.global.max_concurrent_downloads,
        max_download_attempts: cli.global.max_download_attempts,
        retry_tick: env_number("HAUL_RETRY_TICK_MS")
            .map_or(defaults.retry_tick, Duration::from_millis),
        unpack,
        expansion: haul_dist::store::ExpansionLimit {
            ratio: cli.global.max_layer_expansion,
            ..defaults.expansion
        },
    }
}

/// A positive whole number from a hidden tuning variable; unset, empty,
/// zero or unreadable values leave the default.
fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            if !value.is_empty() {
                tracing::warn!("ignoring {name}={value:?}: not a positive whole number");
            }
            None
        }
    }
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Transfer settings of a push (and copy). The hidden
/// `HAUL_PUSH_CHUNK_BYTES` sends blobs above that size in chunks of that
/// size (for tests).
pub fn push_settings(cli: &Cli) -> PushSettings {
    let defaults = PushSettings::default();
    PushSettings {
        max_concurrent_uploads: cli.global.max_concurrent_uploads,
        retry_tick: env_number("HAUL_RETRY_TICK_MS")
            .map_or(defaults.retry_tick, Duration::from_millis),
        chunking: env_number("HAUL_PUSH_CHUNK_BYTES").map_or(defaults.chunking, |n| {
            haul_dist::Chunking {
                above: n,
                size: n as usize,
            }
        }),
    }
}

/// A token cancelled by Ctrl-C (SIGINT) or SIGTERM.
pub fn cancel_on_interrupt() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
    cancel
}
