//! What the global options mean for the libraries: where the store is,
//! how the registry client and the transfer managers are set up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use haul_dist::oci::Platform;
use haul_dist::registry::ClientConfig;
use haul_dist::store::Store;
use haul_dist::xfer::Status;
use haul_dist::{PullSettings, PushCompression, PushSettings};

use crate::cli::{Cli, Command, LayerCompression, Protocol};
use crate::config_file::ConfigFile;

/// Whether results (and failures) are written as JSON lines:
/// `--progress json`, with or without `-q` (which drops the progress).
pub(crate) fn json_output(cli: &Cli) -> bool {
    cli.global.progress == crate::cli::ProgressMode::Json
}

/// The `--platform` asked for, parsed.
pub(crate) fn platform(cli: &Cli) -> anyhow::Result<Option<Platform>> {
    cli.global
        .platform
        .as_deref()
        .map(|p| Platform::parse(p).with_context(|| format!("invalid platform {p:?}")))
        .transpose()
}

/// The store root: `--root`, else `$HAUL_ROOT` (clap reads both), else
/// `$XDG_DATA_HOME/haul`, else `~/.local/share/haul`.
pub(crate) fn store_root(cli: &Cli) -> anyhow::Result<PathBuf> {
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
pub(crate) fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let root = store_root(cli)?;
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    Ok(match env_number("HAUL_LOCK_TIMEOUT_SECS") {
        Some(secs) => store.with_lock_timeout(Some(Duration::from_secs(secs))),
        None => store,
    })
}

/// The config file, read once per process by [`load_config_file`].
static CONFIG_FILE: std::sync::OnceLock<ConfigFile> = std::sync::OnceLock::new();

/// Reads the config file (`--config`, `$HAUL_CONFIG`, the usual places);
/// called once before any command runs.
pub(crate) fn load_config_file(cli: &Cli) -> anyhow::Result<()> {
    let file = crate::config_file::load(cli.global.config.as_deref())?;
    let _ = CONFIG_FILE.set(file);
    Ok(())
}

fn config_file() -> &'static ConfigFile {
    CONFIG_FILE.get_or_init(ConfigFile::default)
}

/// Registry client settings from the global options over the config
/// file's. The hidden `HAUL_READ_TIMEOUT_SECS` shortens the read timeout
/// (for tests).
pub(crate) fn client_config(cli: &Cli) -> ClientConfig {
    let defaults = ClientConfig::default();
    let file = config_file();
    let mut insecure_registries = cli.global.insecure_registries.clone();
    insecure_registries.extend(file.insecure_registries.iter().cloned());
    let mut config = ClientConfig {
        extra_ca_files: cli
            .global
            .ca_files
            .iter()
            .chain(&file.ca_files)
            .cloned()
            .collect(),
        read_timeout: env_number("HAUL_READ_TIMEOUT_SECS")
            .map_or(defaults.read_timeout, Duration::from_secs),
        ..defaults
    };
    for (host, section) in &file.registry {
        if section.insecure {
            insecure_registries.push(host.clone());
        }
        if !section.mirrors.is_empty() {
            config.mirrors.insert(host.clone(), section.mirrors.clone());
        }
        if !section.ca.is_empty() {
            config
                .registry_ca_files
                .insert(host.clone(), section.ca.clone());
        }
        if let (Some(cert), Some(key)) = (&section.client_cert, &section.client_key) {
            config
                .client_certificates
                .insert(host.clone(), (cert.clone(), key.clone()));
        }
    }
    config.insecure_registries = insecure_registries;
    config
}

/// Transfer settings of a pull. The hidden `HAUL_RETRY_TICK_MS` shortens
/// the one-second step of the retry countdown (for tests).
pub(crate) fn pull_settings(cli: &Cli, unpack: bool) -> PullSettings {
    let defaults = PullSettings::default();
    PullSettings {
        max_concurrent_downloads: cli
            .global
            .max_concurrent_downloads
            .or(config_file().max_concurrent_downloads)
            .unwrap_or(defaults.max_concurrent_downloads),
        max_download_attempts: cli
            .global
            .max_download_attempts
            .or(config_file().max_download_attempts)
            .unwrap_or(defaults.max_download_attempts),
        retry_tick: env_number("HAUL_RETRY_TICK_MS")
            .map_or(defaults.retry_tick, Duration::from_millis),
        unpack,
        expansion: haul_dist::store::ExpansionLimit {
            ratio: cli.global.max_layer_expansion,
            ..defaults.expansion
        },
        protocol: protocol(cli),
        ..defaults
    }
}

/// The `--protocol` of `pull` and `push`; v2 for every other command.
fn protocol(cli: &Cli) -> haul_dist::Protocol {
    match &cli.command {
        Command::Pull { protocol, .. } | Command::Push { protocol, .. } => match protocol {
            Protocol::V2 => haul_dist::Protocol::V2,
            Protocol::V1 => haul_dist::Protocol::V1,
            Protocol::Auto => haul_dist::Protocol::Auto,
        },
        _ => haul_dist::Protocol::V2,
    }
}

/// Threads inflating one big gzip layer: the flag, else the config
/// file's, else 0 (the free cores).
pub(crate) fn inflate_threads(flag: Option<usize>) -> usize {
    flag.or(config_file().inflate_threads).unwrap_or(0)
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
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(haul_dist::available_cores())
        .enable_all()
        .build()?)
}

/// Transfer settings of a push (and copy). The hidden
/// `HAUL_PUSH_CHUNK_BYTES` sends blobs above that size in chunks of that
/// size (for tests).
pub(crate) fn push_settings(cli: &Cli) -> PushSettings {
    let defaults = PushSettings::default();
    PushSettings {
        max_concurrent_uploads: cli
            .global
            .max_concurrent_uploads
            .or(config_file().max_concurrent_uploads)
            .unwrap_or(defaults.max_concurrent_uploads),
        retry_tick: env_number("HAUL_RETRY_TICK_MS")
            .map_or(defaults.retry_tick, Duration::from_millis),
        chunking: env_number("HAUL_PUSH_CHUNK_BYTES").map_or(defaults.chunking, |n| {
            haul_dist::Chunking {
                above: n,
                size: n as usize,
            }
        }),
        compression: match &cli.command {
            Command::Push { compression, .. } | Command::Copy { compression, .. } => compression
                .map(|c| match c {
                    LayerCompression::Gzip => PushCompression::Gzip,
                    LayerCompression::Zstd => PushCompression::Zstd,
                }),
            _ => None,
        },
        protocol: protocol(cli),
    }
}

/// Set once Ctrl-C (SIGINT) or SIGTERM arrived.
static INTERRUPTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The exit code of an interrupted command, after the cleanup its
/// cancellation does: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, as
/// shells report death by those signals; `None` when not interrupted.
pub(crate) fn interrupted_exit_code() -> Option<u8> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        signal => Some(128 + signal),
    }
}

/// A token cancelled by the first Ctrl-C (SIGINT) or SIGTERM; a second one
/// ends the process at once.
pub(crate) fn cancel_on_interrupt() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => 2,
            _ = term.recv() => 15,
        };
        INTERRUPTED.store(signal, std::sync::atomic::Ordering::SeqCst);
        token.cancel();
        // A second interrupt ends the process at once (exit 130, as a
        // shell reports an interrupted command), whatever is still
        // winding down.
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("haul: interrupted again; stopping at once");
        std::process::exit(128 + i32::from(signal));
    });
    cancel
}

/// Pauses under `floor` pulls left, counting down on `output`.
pub(crate) fn quota_policy(
    floor: u64,
    tick: std::time::Duration,
    output: &std::sync::Arc<dyn haul_dist::xfer::ProgressOutput>,
) -> haul_dist::registry::ratelimit::RateLimitPolicy {
    // Weak: the renderer ends when the sync drops its output.
    let output = std::sync::Arc::downgrade(output);
    let observer = move |pause: &haul_dist::registry::ratelimit::RateLimitPause| {
        let Some(output) = output.upgrade() else {
            return;
        };
        let id = format!("quota {}", pause.registry);
        if pause.seconds_left == 0 {
            output.status(&id, Status::RateLimitOver);
        } else {
            output.status(
                &id,
                Status::RateLimited {
                    remaining: pause.remaining,
                    limit: pause.limit,
                    seconds: pause.seconds_left,
                },
            );
        }
    };
    haul_dist::registry::ratelimit::RateLimitPolicy {
        floor,
        tick,
        observer: Some(std::sync::Arc::new(observer)),
        ..haul_dist::registry::ratelimit::RateLimitPolicy::default()
    }
}
