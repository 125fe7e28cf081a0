//! The `haul` command.

// The command line is the one place that writes to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod archive;
mod cli;
mod config_file;
mod copy;
mod local;
mod login;
mod out;
mod pull;
mod push;
mod referrers;
mod render;
mod serve;
mod settings;
mod sync;
mod sync_layout;
mod sync_plan;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // clap exits with code 2 on usage errors and 0 for --help / --version.
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let result = run(&cli);
    if let Err(err) = &result {
        // A command that reported its failures itself (rmi) adds nothing.
        if !err.is::<Reported>() {
            let sentence = error_sentence(err);
            if streams_json(&cli) {
                outln!("{}", render::json::error_line(&sentence));
            }
            eprintln!("haul: {sentence}");
        }
    }
    // A server stopped by a signal has shut down gracefully: a success.
    let interrupted =
        settings::interrupted_exit_code().filter(|_| !matches!(cli.command, Command::Serve { .. }));
    match (interrupted, result) {
        // Ctrl-C: 130 as shells report it, once the command has cleaned up.
        (Some(code), _) => ExitCode::from(code),
        (None, Ok(())) => ExitCode::SUCCESS,
        (None, Err(_)) => ExitCode::from(1),
    }
}

/// Whether the command's stdout is a stream of JSON messages
/// (`--progress json` on pull, push and copy), which failures join too.
fn streams_json(cli: &Cli) -> bool {
    let streaming = matches!(
        cli.command,
        Command::Pull { .. } | Command::Push { .. } | Command::Copy { .. }
    );
    streaming && settings::json_output(cli)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    settings::load_config_file(cli)?;
    match &cli.command {
        Command::Version => {
            crate::outln!(
                "haul {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("HAUL_COMMIT")
            );
            Ok(())
        }
        Command::Completion { shell } => {
            // Rendered first: clap_complete panics on a failed write.
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "haul", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
        Command::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Login {
            registry,
            username,
            password,
            password_stdin,
        } => settings::runtime()?.block_on(login::login(
            settings::client_config(cli),
            registry.as_deref(),
            username.as_deref(),
            password.as_deref(),
            *password_stdin,
        )),
        Command::Logout { registry } => {
            login::logout(&settings::client_config(cli), registry.as_deref())
        }
        Command::Pull {
            references,
            all_platforms,
            no_unpack,
            referrers,
            rate_limit_floor,
            inflate_threads,
            ..
        } => pull::run(
            cli,
            references,
            &pull::PullArgs {
                all_platforms: *all_platforms,
                no_unpack: *no_unpack,
                referrers: referrers.options()?,
                rate_limit_floor: *rate_limit_floor,
                inflate_threads: *inflate_threads,
            },
        ),
        Command::Push {
            reference,
            referrers,
            ..
        } => push::run(cli, reference, &referrers.options()?),
        Command::Copy {
            source,
            destination,
            all_platforms,
            referrers,
            rate_limit_floor,
            ..
        } => copy::run(
            cli,
            source,
            destination,
            *all_platforms,
            referrers,
            *rate_limit_floor,
        ),
        Command::Sync(command) => sync::run(cli, command),
        Command::Referrers(command) => referrers::list(cli, command),
        Command::Inspect { reference } if reference.starts_with("docker://") => {
            referrers::inspect_remote(cli, reference)
        }
        Command::Images {
            filter,
            digests,
            format,
        } => local::images(
            &settings::open_store(cli)?,
            &local::ImagesOptions {
                filter: filter.as_deref(),
                digests: *digests,
                quiet: cli.global.quiet,
                format: *format,
            },
        ),
        Command::Inspect { reference } => local::inspect(
            &settings::open_store(cli)?,
            reference,
            settings::platform(cli)?.as_ref(),
        ),
        Command::Tag { source, target } => local::tag(
            &settings::open_store(cli)?,
            source,
            target,
            settings::platform(cli)?.as_ref(),
        ),
        Command::Rmi { references, force } => {
            local::rmi(&settings::open_store(cli)?, references, *force)
        }
        Command::Gc => local::gc(&settings::open_store(cli)?),
        Command::Export {
            reference,
            directory,
            output,
        } => {
            let store = settings::open_store(cli)?;
            let platform = settings::platform(cli)?;
            match (directory, output) {
                (Some(directory), _) => {
                    local::export(&store, reference, platform.as_ref(), directory)
                }
                (None, Some(output)) => {
                    local::export_tar(&store, reference, platform.as_ref(), output)
                }
                (None, None) => unreachable!("clap requires DIR or --output"),
            }
        }
        Command::Save {
            references,
            output,
            format,
            referrers,
        } => archive::save(cli, references, output.as_deref(), *format, *referrers),
        Command::Load { input } => archive::load(cli, input.as_deref()),
        Command::Serve {
            listen,
            tls_cert,
            tls_key,
            prefer_registries,
            upstreams,
            tag_ttl,
            no_store,
            auth_htpasswd,
            auth_token_file,
        } => serve::run(
            cli,
            serve::ServeArgs {
                listen: *listen,
                tls_cert: tls_cert.as_deref(),
                tls_key: tls_key.as_deref(),
                prefer_registries,
                upstreams,
                tag_ttl: std::time::Duration::from_secs(*tag_ttl),
                no_store: *no_store,
                auth: match (auth_htpasswd, auth_token_file) {
                    (Some(path), _) => Some(haul_serve::ClientAuth::Htpasswd(path.clone())),
                    (None, Some(path)) => Some(haul_serve::ClientAuth::TokenFile(path.clone())),
                    (None, None) => None,
                },
            },
        ),
        // Every command is implemented; kept for commands added to `cli.rs`.
        #[allow(unreachable_patterns)]
        other => anyhow::bail!("`haul {}` is not available in this build yet", other.name()),
    }
}

/// Joins an error and its causes into one readable line, leaving out a
/// cause whose text its parent already includes.
/// A failure the command has already reported on stderr (e.g. `rmi` of
/// several images, where each failure gets its own line): exit 1, print
/// nothing more.
#[derive(Debug)]
pub(crate) struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the errors above")
    }
}

impl std::error::Error for Reported {}

pub(crate) fn error_sentence(err: &anyhow::Error) -> String {
    let mut sentence = String::new();
    let mut last_len = 0;
    for cause in err.chain() {
        let text = cause.to_string();
        if sentence.contains(&text) {
            continue;
        }
        let last = &sentence[sentence.len() - last_len..];
        if !last.is_empty() && text.starts_with(last) {
            // The cause repeats its context and says more: say it once.
            sentence.truncate(sentence.len() - last_len);
        } else if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&text);
        last_len = text.len();
    }
    sentence
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAUL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
