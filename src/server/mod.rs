//! `secure-defaults serve`: loads the policy and certificate, binds the webhook and admin listeners, keeps the
//! policy, certificate and namespace cache live, and drains on shutdown.

pub mod admin;
pub mod client_auth;
pub mod handle;
pub mod policy_reload;
pub mod policy_store;
pub mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::certs::source::{CertSource, SourceError};
use crate::config::Config;
use crate::images::lookup::{Lookup, LookupError};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::policy::{self, PolicyError};
use crate::watch::reload;
use client_auth::{ClientAuthError, ClientCa};
use policy_reload::PolicyFile;
use policy_store::PolicyStore;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The policy did not load.
    #[error("cannot start without a valid policy")]
    LoadPolicy(#[source] PolicyError),
    /// The policy's `images:` section names a credentials or CA file that cannot be read.
    #[error("cannot start: the policy's images section")]
    SetUpImages(#[source] LookupError),
    /// The serving certificate did not load.
    #[error("cannot start without a valid serving certificate")]
    LoadCertificate(#[source] SourceError),
    /// The client CA did not load.
    #[error("cannot start without a valid client CA")]
    LoadClientCa(#[source] ClientAuthError),
    /// The TLS configuration could not be built.
    #[error("cannot set up TLS")]
    SetUpTls(#[source] tls::TlsError),
    #[error(
        "no cluster credentials (in-cluster service account or KUBECONFIG); use --no-namespace-lookups for a local trial without a cluster"
    )]
    /// No cluster credentials.
    ConnectCluster(#[source] kube::Error),
    /// The webhook address could not be bound.
    #[error("cannot listen on {0} (webhook)")]
    BindWebhook(SocketAddr, #[source] std::io::Error),
    /// The admin address could not be bound.
    #[error("cannot listen on {0} (admin)")]
    BindAdmin(SocketAddr, #[source] std::io::Error),
}

/// A server whose listeners are bound and whose policy and certificate are loaded.
pub struct Server {
    config: Config,
    webhook: TcpListener,
    admin: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Arc<handle::App>,
    health: Arc<admin::Health>,
    /// The policy bytes loaded at start, so only later changes count as reloads.
    loaded_policy: Vec<u8>,
    certs: CertSource,
    /// The client CA, if set, and the bytes loaded at start.
    client_ca: Option<(Arc<ClientCa>, Vec<u8>)>,
    /// Stops what runs beside the listeners, the namespace cache among it (started in `bind`, so that it syncs
    /// while the rest starts).
    stop: CancellationToken,
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
        metrics.policy_loaded(&loaded_policy);
        // The certificate files are checked before connecting to the cluster: a broken certificate is the
        // likelier mistake, and is reported as such.
        let (certs, client) = match &config.self_managed {
            None => {
                let files =
                    CertSource::files(&config.tls_cert, &config.tls_key, config.reload_interval)
                        .map_err(ServeError::LoadCertificate)?;
                let client = if config.namespace_lookups {
                    Some(connect().await?)
                } else {
                    None
                };
                (files, client)
            }
            Some(managed) => {
                let client = connect().await?;
                let source = CertSource::self_managed(managed, client.clone())
                    .map_err(ServeError::LoadCertificate)?;
                (source, Some(client))
            }
        };
        let client_ca = config
            .tls_client_ca
            .as_deref()
            .map(ClientCa::load)
            .transpose()
            .map_err(ServeError::LoadClientCa)?;
        let acceptor = tls::acceptor(certs.store(), client_ca.as_ref().map(|(ca, _)| ca))
            .map_err(ServeError::SetUpTls)?;

        let images =
            Lookup::for_policy(policy.images.as_ref(), None).map_err(ServeError::SetUpImages)?;
        let stop = CancellationToken::new();
        let namespaces = if let (true, Some(client)) = (config.namespace_lookups, &client) {
            Namespaces::start(
                client.clone(),
                config.namespace_lookup_timeout,
                metrics.clone(),
                stop.clone(),
            )
        } else {
            tracing::warn!(
                "namespace lookups are off: the webhook's namespaceSelector alone decides which namespaces are served, and label-selected policy entries never match"
            );
            Namespaces::Disabled
        };
        let webhook = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServeError::BindWebhook(config.listen, e))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| ServeError::BindAdmin(config.admin_listen, e))?;
        let app = Arc::new(handle::App {
            policy: PolicyStore::new(policy, images),
            namespaces: namespaces.clone(),
            metrics,
            request_timeout: config.request_timeout,
        });
        let health = Arc::new(admin::Health {
            namespaces,
            certs: certs.store().clone(),
            shutting_down: false.into(),
        });
        Ok(Self {
            webhook,
            admin,
            acceptor,
            app,
            health,
            loaded_policy,
            certs,
            client_ca,
            stop,
            config,
        })
    }

    /// The webhook's bound address.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.local_addr().ok()
    }

    /// The admin endpoint's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serves until `shutdown` completes; then readiness turns false, the server keeps answering for the drain
    /// period (the API server keeps using open connections until the endpoint is gone), stops accepting, and
    /// finishes in-flight requests within the shutdown timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            config,
            webhook,
            admin,
            acceptor,
            app,
            health,
            loaded_policy,
            certs,
            client_ca,
            stop,
        } = self;
        // What keeps the server current until shutdown: the policy file's reload, the client CA's, and the
        // certificate source's work.
        let policy = PolicyFile {
            path: config.policy.clone(),
            store: app.policy.clone(),
        };
        let (metrics, interval) = (&app.metrics, config.reload_interval);
        tokio::spawn(reload(
            policy,
            vec![loaded_policy],
            metrics.clone(),
            interval,
            stop.clone(),
        ));
        if let Some((client_ca, loaded)) = client_ca {
            tokio::spawn(reload(
                client_ca,
                vec![loaded],
                metrics.clone(),
                interval,
                stop.clone(),
            ));
        }
        certs.start(metrics.clone(), stop.clone());
        tokio::spawn(admin::serve(
            admin,
            health.clone(),
            app.metrics.clone(),
            stop.clone(),
        ));

        let stop_serving = CancellationToken::new();
        let limits = serve::Limits {
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
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
        stop.cancel();
        tracing::info!("stopped");
    }
}

async fn connect() -> Result<kube::Client, ServeError> {
    let client = kube::Client::try_default()
        .await
        .map_err(ServeError::ConnectCluster)?;
    log_cluster(&client).await;
    Ok(client)
}

/// Says at start which Kubernetes release serves the cluster and what of it matters here. Never fails the start:
/// the version is information, and the cluster may still be coming up.
async fn log_cluster(client: &kube::Client) {
    let version = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.apiserver_version(),
    )
    .await;
    let info = match version {
        Ok(Ok(info)) => info,
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot read the API server's version");
            return;
        }
        Err(_) => {
            tracing::warn!("the API server did not say its version within 5 s");
            return;
        }
    };
    match crate::compat::Release::parse(&info.major, &info.minor) {
        Some(release) => {
            let features = release.features();
            tracing::info!(
                kube_apiserver = %info.git_version,
                release = %release,
                match_conditions = features.match_conditions,
                validating_admission_policy = features.validating_admission_policy,
                mutating_admission_policy = %features.mutating_admission_policy,
                "cluster detected"
            );
            if !features.validating_admission_policy {
                tracing::warn!(release = %release, "this release has no ValidatingAdmissionPolicy v1: the backstops cannot be installed");
            }
        }
        None => {
            tracing::info!(kube_apiserver = %info.git_version, "cluster detected (release not recognised)")
        }
    }
}
