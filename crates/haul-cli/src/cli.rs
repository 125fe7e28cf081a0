//! The command-line surface of `haul`: global options and commands, as laid
//! out in DESIGN.md ("The command"). Parsing only; running lives elsewhere.
//!
//! Doc comments here are clap's help text, written in usage syntax
//! (`oci:DIR[:TAG]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// haul moves container images between registries and a local store.
#[derive(Debug, Parser)]
#[command(name = "haul", version, about, long_about = None, disable_version_flag = false)]
pub(crate) struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub global: GlobalOptions,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// Live bars on a terminal, plain lines otherwise.
    Auto,
    /// Live per-layer lines with bars (Docker style).
    Tty,
    /// One line per state change, no control codes (for CI logs).
    Plain,
    /// One JSON object per event, in Docker's JSON message format.
    Json,
}

/// Which registry protocol `pull` and `push` speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// The OCI distribution API (Docker registry v2).
    V2,
    /// The legacy Docker registry v1 protocol.
    V1,
    /// v2 when the registry answers `/v2/`, else v1 (as Docker 1.x fell back).
    Auto,
}

/// Options shared by all commands.
#[derive(Debug, Args)]
pub(crate) struct GlobalOptions {
    /// Root directory of the local store [default: $HAUL_ROOT, else
    /// $XDG_DATA_HOME/haul, else ~/.local/share/haul]
    #[arg(long, global = true, env = "HAUL_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// How to show progress.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Print only the final result (image reference or digest).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Platform to select from a multi-platform image (OS/ARCH[/VARIANT]).
    #[arg(long, global = true, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,

    /// Registry to reach over plain HTTP or with an unverified certificate
    /// (may be repeated).
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,

    /// Extra CA certificate (PEM file) to trust for every registry (may be
    /// repeated); per-registry CAs go in certs.d or the config file.
    #[arg(long = "ca-file", global = true, value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,

    /// How many layers to download at once (0 = unlimited) [default: the
    /// config file's, else 3]
    #[arg(long, global = true, value_name = "N")]
    pub max_concurrent_downloads: Option<usize>,

    /// How many layers to upload at once (0 = unlimited) [default: the
    /// config file's, else 5]
    #[arg(long, global = true, value_name = "N")]
    pub max_concurrent_uploads: Option<usize>,

    /// How many times to try a layer download before giving up [default:
    /// the config file's, else 5]
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_download_attempts: Option<u32>,

    /// Config file [default: $HAUL_CONFIG, else
    /// $XDG_CONFIG_HOME/haul/config.toml, else /etc/haul/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Most bytes a layer may unpack to per byte of its compressed blob,
    /// against decompression bombs (64 MiB always allowed, 64 GiB never
    /// exceeded).
    #[arg(long, global = true, default_value_t = 100, value_name = "RATIO",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_layer_expansion: u64,

    /// More log output (-v info, -vv debug, -vvv trace), on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands of haul.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Fetch images from a registry and unpack them into the local store.
    Pull {
        /// Image references (several share one transfer manager).
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
        /// Pull every platform of a multi-platform image.
        #[arg(long)]
        all_platforms: bool,
        /// Keep only the blobs; do not unpack layers.
        #[arg(long)]
        no_unpack: bool,
        /// Registry protocol: v2, the legacy v1, or auto (v2 when the
        /// registry answers /v2/, else v1).
        #[arg(long, value_enum, default_value_t = Protocol::Auto)]
        protocol: Protocol,
        /// Referrers to bring into the store with the image (kept with
        /// it, never listed as images).
        #[command(flatten)]
        referrers: crate::referrers::ReferrerArgs,
        /// Pause (with a countdown) before a manifest read when a registry
        /// reports fewer pulls left than this (RateLimit-Remaining); 0: never.
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate_limit_floor: u64,
        /// Threads inflating one big gzip layer (64 MiB or more compressed);
        /// 1 = never in parallel, 0 = the cores no other layer's unpack
        /// uses [default: the config file's, else 0]
        #[arg(long, value_name = "N")]
        inflate_threads: Option<usize>,
    },
    /// Upload a local image to a registry.
    Push {
        /// The local image reference to push.
        #[arg(value_name = "REF")]
        reference: String,
        /// Registry protocol: v2, the legacy v1, or auto (v2 when the
        /// registry answers /v2/, else v1).
        #[arg(long, value_enum, default_value_t = Protocol::Auto)]
        protocol: Protocol,
        /// Compress plain tar layers so (default: gzip, and only for images
        /// whose manifest haul wrote, e.g. loaded from a docker-archive;
        /// a pulled manifest is pushed with its own digest).
        #[arg(long, value_enum, value_name = "FORMAT")]
        compression: Option<LayerCompression>,
        /// Stored referrers (from pull --referrers or load) to push after
        /// the image.
        #[command(flatten)]
        referrers: crate::referrers::ReferrerArgs,
    },
    /// Copy an image between registries, OCI layouts and docker archives.
    Copy {
        /// Source: [docker://]REF, oci:DIR[:TAG] or docker-archive:FILE.
        source: String,
        /// Destination, in the same forms as the source.
        destination: String,
        /// Copy every platform of a multi-platform image.
        #[arg(long)]
        all_platforms: bool,
        /// Compress plain tar layers pushed to a registry so (default:
        /// gzip, for images whose manifest haul wrote, as from a
        /// docker-archive).
        #[arg(long, value_enum, value_name = "FORMAT")]
        compression: Option<LayerCompression>,
        /// Referrers to bring along.
        #[command(flatten)]
        referrers: crate::referrers::ReferrerArgs,
        /// Pause (with a countdown) before a manifest read when a registry
        /// reports fewer pulls left than this (RateLimit-Remaining); 0: never.
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate_limit_floor: u64,
    },
    /// Mirror sets of images (with their referrers) into a registry,
    /// moving each shared blob once.
    Sync(crate::sync::SyncCommand),
    /// List the referrers (signatures, SBOMs) of an image in a registry.
    Referrers(crate::referrers::ReferrersCommand),
    /// List local images.
    Images {
        /// Only images of this repository (and tag), e.g. `alpine` or
        /// `127.0.0.1:5000/team/app:1.0`.
        #[arg(value_name = "REPOSITORY[:TAG]")]
        filter: Option<String>,
        /// Show the manifest digest of each image.
        #[arg(long)]
        digests: bool,
        /// Output format (`-q` prints image IDs only).
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show an image's manifest digest, config and layers as JSON
    /// (docker://REF: a registry's image, with its referrers, not pulled).
    Inspect {
        /// The local image reference, or docker://REF.
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Give a local image another name.
    Tag {
        /// The existing reference.
        source: String,
        /// The new reference.
        target: String,
    },
    /// Remove a local image reference (and what only it used).
    Rmi {
        /// References or image IDs (full, `sha256:…`, or a unique prefix of
        /// 12+ hex digits) to remove.
        #[arg(required = true, value_name = "IMAGE")]
        references: Vec<String>,
        /// Remove an image named by ID even when several tags or
        /// repositories name it.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove content and layers no reference reaches.
    Gc,
    /// Write an image's flattened root filesystem to a directory, or as a
    /// tar stream with `-o FILE` (`-o -`: standard output).
    Export {
        /// The local image reference or ID.
        #[arg(value_name = "REF")]
        reference: String,
        /// Target directory (new, or empty: `.` and mount points work).
        #[arg(
            value_name = "DIR",
            required_unless_present = "output",
            conflicts_with = "output"
        )]
        directory: Option<PathBuf>,
        /// Write a tar of the root filesystem here instead (`-`: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write images to a docker-archive (docker load compatible) or OCI layout.
    Save {
        /// References to save.
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
        /// Output file or directory [default: standard output, also `-`].
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Archive format.
        #[arg(long, value_enum, default_value_t = ArchiveFormat::Docker)]
        format: ArchiveFormat,
        /// With --format oci: also write the stored referrers of the saved
        /// manifests (listed in index.json without a ref.name, as oras
        /// writes them).
        #[arg(long)]
        referrers: bool,
    },
    /// Import images from a docker-archive or OCI layout (with the
    /// referrers an OCI layout holds for them).
    Load {
        /// Input file or directory [default: standard input, also `-`].
        #[arg(short, long, value_name = "PATH")]
        input: Option<PathBuf>,
    },
    /// Store credentials for a registry after checking them.
    Login {
        /// Registry host[:port] [default: docker.io].
        registry: Option<String>,
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Password (visible to other users of this machine: prefer
        /// --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the credentials stored for a registry.
    Logout {
        /// Registry as HOST or HOST:PORT (default: docker.io).
        registry: Option<String>,
    },
    /// Serve the store read-only as an OCI distribution registry.
    Serve {
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Registry whose repositories win when a requested name is stored
        /// under several registries (may be repeated; in order).
        #[arg(long = "prefer-registry", value_name = "HOST[:PORT]")]
        prefer_registries: Vec<String>,
        /// Pull-through: fetch what the store lacks from this registry (may
        /// be repeated; `?ns=` picks one, else the first is asked).
        #[arg(long = "upstream", value_name = "HOST[:PORT]")]
        upstreams: Vec<String>,
        /// How long a tag fetched from upstream is served before it is
        /// checked again (HEAD), in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        tag_ttl: u64,
        /// With --upstream: keep nothing fetched (a pure proxy).
        #[arg(long, requires = "upstreams")]
        no_store: bool,
        /// Require HTTP basic auth of the users of this htpasswd file
        /// (bcrypt entries: `htpasswd -B`).
        #[arg(long, value_name = "FILE", conflicts_with = "auth_token_file")]
        auth_htpasswd: Option<PathBuf>,
        /// Require `Authorization: Bearer TOKEN`, the token being this
        /// file's first line.
        #[arg(long, value_name = "FILE")]
        auth_token_file: Option<PathBuf>,
    },
    /// Print version information (with the commit it was built from).
    Version,
    /// Print a shell completion script: `haul completion bash > /etc/bash_completion.d/haul`.
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print haul's manual page (roff): `haul manpage | man -l -`.
    Manpage,
}

/// Output format of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ListFormat {
    /// A table like `docker images`.
    Table,
    /// One JSON object per line with Docker's keys (`docker images --format json`).
    Json,
    /// One JSON array of objects with haul's full details (full IDs,
    /// references, platform, sizes in bytes).
    JsonArray,
}

/// How a push compresses plain tar layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LayerCompression {
    /// gzip, as Docker pushes.
    Gzip,
    /// zstd.
    Zstd,
}

/// Format of `save` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ArchiveFormat {
    /// docker-archive, as `docker save` writes.
    Docker,
    /// OCI image layout.
    Oci,
}

impl Command {
    /// The command's name as typed on the command line.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Pull { .. } => "pull",
            Command::Push { .. } => "push",
            Command::Copy { .. } => "copy",
            Command::Sync(_) => "sync",
            Command::Referrers(_) => "referrers",
            Command::Images { .. } => "images",
            Command::Inspect { .. } => "inspect",
            Command::Tag { .. } => "tag",
            Command::Rmi { .. } => "rmi",
            Command::Gc => "gc",
            Command::Export { .. } => "export",
            Command::Save { .. } => "save",
            Command::Load { .. } => "load",
            Command::Login { .. } => "login",
            Command::Logout { .. } => "logout",
            Command::Serve { .. } => "serve",
            Command::Version => "version",
            Command::Completion { .. } => "completion",
            Command::Manpage => "manpage",
        }
    }
}
