//! The `haul` command.

mod cli;
mod login;
mod render;

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
        } => runtime()?.block_on(login::login(
            client_config(cli),
            registry.as_deref(),
            username.as_deref(),
            password.as_deref(),
            *password_stdin,
        )),
        Command::Logout { registry } => login::logout(&client_config(cli), registry.as_deref()),
        other => anyhow::bail!("`haul {}` is not available in this build yet", other.name()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Registry client settings from the global options.
fn client_config(cli: &Cli) -> haul_dist::registry::ClientConfig {
    haul_dist::registry::ClientConfig {
        insecure_registries: cli.global.insecure_registries.clone(),
        ..Default::default()
    }
}

/// Joins an error and its causes into one readable line.
fn error_sentence(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAUL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
