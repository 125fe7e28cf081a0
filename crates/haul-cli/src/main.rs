//! The `haul` command.

mod archive;
mod cli;
mod copy;
mod local;
mod login;
mod protocol;
mod pull;
mod push;
mod render;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // clap exits with code 2 on usage errors and 0 for --help / --version.
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("haul: {}", error_sentence(&err));
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Version => {
            println!("haul {}", env!("CARGO_PKG_VERSION"));
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
            protocol,
        } => pull::run(cli, references, *all_platforms, *no_unpack, *protocol),
        Command::Push {
            reference,
            protocol,
        } => push::run(cli, reference, *protocol),
        Command::Copy {
            source,
            destination,
            all_platforms,
        } => copy::run(cli, source, destination, *all_platforms),
        Command::Images { format } => local::images(&settings::open_store(cli)?, *format),
        Command::Inspect { reference } => local::inspect(&settings::open_store(cli)?, reference),
        Command::Tag { source, target } => local::tag(&settings::open_store(cli)?, source, target),
        Command::Rmi { references } => local::rmi(&settings::open_store(cli)?, references),
        Command::Gc => local::gc(&settings::open_store(cli)?),
        Command::Export {
            reference,
            directory,
        } => local::export(&settings::open_store(cli)?, reference, directory),
        Command::Save {
            references,
            output,
            format,
        } => archive::save(cli, references, output, *format),
        Command::Load { input } => archive::load(cli, input),
        // Every command is implemented; kept for commands added to `cli.rs`.
        #[allow(unreachable_patterns)]
        other => anyhow::bail!("`haul {}` is not available in this build yet", other.name()),
    }
}

/// Joins an error and its causes into one readable line, leaving out a
/// cause whose text its parent already includes.
pub(crate) fn error_sentence(err: &anyhow::Error) -> String {
    let mut sentence = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if sentence.contains(&text) {
            continue;
        }
        if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&text);
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
