//! `haul serve`: the store as a read-only registry until Ctrl-C or
//! SIGTERM, which end it gracefully (responses in flight finish; exit 0).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use haul_dist::registry::RegistryClient;
use haul_serve::{ServeOptions, Server, TlsIdentity, UpstreamOptions};

use crate::cli::Cli;
use crate::settings;

/// The options of `haul serve`.
pub(crate) struct ServeArgs<'a> {
    pub(crate) listen: SocketAddr,
    pub(crate) tls_cert: Option<&'a Path>,
    pub(crate) tls_key: Option<&'a Path>,
    pub(crate) prefer_registries: &'a [String],
    pub(crate) upstreams: &'a [String],
    pub(crate) tag_ttl: std::time::Duration,
    pub(crate) no_store: bool,
    pub(crate) auth: Option<haul_serve::ClientAuth>,
}

/// Runs `haul serve`.
pub(crate) fn run(cli: &Cli, args: ServeArgs<'_>) -> anyhow::Result<()> {
    let store = settings::open_store(cli)?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let upstream = if args.upstreams.is_empty() {
        None
    } else {
        Some(UpstreamOptions {
            client: RegistryClient::new(settings::client_config(cli))?,
            registries: args.upstreams.to_vec(),
            tag_ttl: args.tag_ttl,
            store: !args.no_store,
        })
    };
    // Repositories of the upstreams win, in their order.
    let mut preferred = args.upstreams.to_vec();
    preferred.extend(args.prefer_registries.iter().cloned());
    let options = ServeOptions {
        listen: args.listen,
        tls,
        preferred_registries: preferred,
        upstream,
        auth: args.auth,
    };
    settings::runtime()?.block_on(async {
        let server = Server::bind(store, options)
            .await
            .context("cannot start the server")?;
        // The first line, for scripts and tests that asked for port 0.
        eprintln!("Listening on {scheme}://{}", server.local_addr());
        let shutdown = settings::cancel_on_interrupt();
        server.run(shutdown).await?;
        eprintln!("haul serve: stopped");
        Ok(())
    })
}
