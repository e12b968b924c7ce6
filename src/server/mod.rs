//! `secure-defaults serve`: loads the policy and certificate, binds the webhook and admin listeners, keeps the
//! policy, certificate and namespace cache live, and drains on shutdown.

pub mod admin;
pub mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::namespaces::{NamespaceError, Namespaces};
use crate::policy::{self, PolicyError, store::PolicyStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start without a valid policy")]
    LoadPolicy(#[source] PolicyError),
    #[error("cannot start without a valid serving certificate")]
    LoadCertificate(#[source] tls::TlsError),
    #[error("cannot watch namespaces")]
    WatchNamespaces(#[source] NamespaceError),
    #[error("cannot listen on {addr} (webhook)")]
    BindWebhook {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (admin)")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server whose listeners are bound and whose policy and certificate are loaded.
pub struct Server {
    config: Config,
    webhook: TcpListener,
    admin: TcpListener,
    app: Arc<serve::App>,
    health: Arc<admin::Health>,
    certs: Arc<tls::CertStore>,
    acceptor: tokio_rustls::TlsAcceptor,
    loaded_policy: Vec<u8>,
    loaded_certs: Vec<Vec<u8>>,
    background: CancellationToken,
}

impl Server {
    /// Everything that can fail at start fails here, with the reason, before the server reports ready.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let metrics = Arc::new(Metrics::new());
        let loaded_policy = std::fs::read(&config.policy).map_err(|source| {
            ServeError::LoadPolicy(PolicyError::ReadPolicy {
                path: config.policy.clone(),
                source,
            })
        })?;
        let policy =
            policy::parse(&loaded_policy, &config.policy).map_err(ServeError::LoadPolicy)?;
        metrics.policy_generation.set(1);
        let (certs, loaded_certs) = tls::CertStore::load(&config.tls_cert, &config.tls_key)
            .map_err(ServeError::LoadCertificate)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(
            certs.server_config().map_err(ServeError::LoadCertificate)?,
        );

        let background = CancellationToken::new();
        let namespaces = if config.namespace_lookups {
            Namespaces::connect(
                config.namespace_lookup_timeout,
                metrics.clone(),
                background.clone(),
            )
            .await
            .map_err(ServeError::WatchNamespaces)?
        } else {
            tracing::warn!(
                "namespace lookups are off: the webhook's namespaceSelector alone decides which namespaces are served, and label-selected policy entries never match"
            );
            Namespaces::Disabled
        };
        let webhook =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::BindWebhook {
                    addr: config.listen,
                    source,
                })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| ServeError::BindAdmin {
                addr: config.admin_listen,
                source,
            })?;
        let app = Arc::new(serve::App {
            policy: PolicyStore::new(policy),
            namespaces: namespaces.clone(),
            metrics,
            request_timeout: config.request_timeout,
        });
        let health = Arc::new(admin::Health {
            namespaces,
            shutting_down: false.into(),
        });
        Ok(Self {
            config,
            webhook,
            admin,
            app,
            health,
            certs,
            acceptor,
            loaded_policy,
            loaded_certs,
            background,
        })
    }

    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.app.metrics.clone()
    }

    /// Serves until `shutdown` completes; then readiness turns false, the server keeps answering for the drain
    /// period (the API server keeps using open connections until the endpoint is gone), stops accepting, and
    /// finishes in-flight requests within the shutdown timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            config,
            webhook,
            admin,
            app,
            health,
            certs,
            acceptor,
            loaded_policy,
            loaded_certs,
            background,
        } = self;
        let interval = config.reload_interval;
        tokio::spawn(policy::reload::run(
            config.policy.clone(),
            loaded_policy,
            app.policy.clone(),
            app.metrics.clone(),
            interval,
            background.clone(),
        ));
        tokio::spawn(certs.reload(
            loaded_certs,
            app.metrics.clone(),
            interval,
            background.clone(),
        ));
        tokio::spawn(admin::serve(
            admin,
            health.clone(),
            app.metrics.clone(),
            background.clone(),
        ));

        let stop_serving = CancellationToken::new();
        let limits = serve::Limits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections.get(),
            shutdown_timeout: config.shutdown_timeout,
        };
        tracing::info!(webhook = %config.listen, admin = %config.admin_listen, policy = %config.policy.display(), "serving");
        let serving = tokio::spawn(serve::serve(
            webhook,
            acceptor,
            app,
            limits,
            stop_serving.clone(),
        ));

        shutdown.await;
        health.shutting_down.store(true, Ordering::Release);
        tracing::info!(drain = ?config.drain, "shutdown requested; not ready, still serving during the drain period");
        tokio::time::sleep(config.drain).await;
        stop_serving.cancel();
        if let Err(error) = serving.await {
            tracing::error!(%error, "webhook server task failed");
        }
        background.cancel();
        tracing::info!("stopped");
    }
}
