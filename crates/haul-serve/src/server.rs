//! The listening socket and the connections on it: HTTP/1.1 and HTTP/2
//! (h2c, or ALPN over TLS) through hyper, each connection on its own task.
//!
//! Shutdown is graceful: once the shutdown token is cancelled no
//! connection is accepted, idle connections close, and every response in
//! flight is sent to its end before [`Server::run`] returns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::{router, AppState};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store_view::StoreView;

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How `haul serve` listens and answers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (port 0: any free port, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Serve HTTPS with this identity instead of plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// Registries whose repositories win when a requested name is stored
    /// under several registries (see the `names` module).
    pub preferred_registries: Vec<String>,
    /// Pull-through: fetch what the store lacks from these registries.
    pub upstream: Option<crate::upstream::UpstreamOptions>,
    /// Credentials clients must present (none: anyone may read).
    pub auth: Option<crate::auth::ClientAuth>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            tls: None,
            preferred_registries: Vec::new(),
            upstream: None,
            auth: None,
        }
    }
}

/// A bound server, not yet answering.
pub struct Server {
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// Binds the listening socket and loads the TLS identity.
    pub async fn bind(store: haul_store::Store, options: ServeOptions) -> Result<Server> {
        let tls = match &options.tls {
            Some(identity) => Some(load_tls(identity)?),
            None => None,
        };
        let auth = match &options.auth {
            Some(auth) => Some(crate::auth::Authenticator::load(auth)?),
            None => None,
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: options.listen,
                source,
            })?;
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(AppState {
            view: StoreView::new(store),
            metrics: Arc::clone(&metrics),
            preferred_registries: options.preferred_registries.clone(),
            upstream: options.upstream.clone().map(crate::upstream::Upstream::new),
            auth,
        });
        Ok(Server {
            listener,
            router: router(state),
            tls,
            metrics,
        })
    }

    /// The address the socket is bound to (with the port chosen for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The server's counters (what `/metrics` shows).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Answers requests until `shutdown` is cancelled, then finishes the
    /// responses in flight and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let graceful = GracefulShutdown::new();
        let builder = Builder::new(TokioExecutor::new());
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(self.router.clone());
            let builder = builder.clone();
            let watcher = graceful.watcher();
            match &self.tls {
                None => {
                    tokio::spawn(async move {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!("connection from {peer}: {e}");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let stream = match acceptor.accept(stream).await {
                            Ok(stream) => stream,
                            Err(e) => {
                                tracing::info!("TLS handshake with {peer} failed: {e}");
                                return;
                            }
                        };
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!("connection from {peer}: {e}");
                        }
                    });
                }
            }
        }
        drop(self.listener);
        tracing::info!("shutting down: finishing the responses in flight");
        graceful.shutdown().await;
        Ok(())
    }
}

/// Reads the identity's PEM files into a TLS acceptor (HTTP/2 and
/// HTTP/1.1 offered by ALPN).
fn load_tls(identity: &TlsIdentity) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let fail = |path: &Path, reason: String| Error::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&identity.cert)
        .map_err(|e| fail(&identity.cert, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| fail(&identity.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(&identity.cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&identity.key)
        .map_err(|e| fail(&identity.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&identity.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(&identity.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
