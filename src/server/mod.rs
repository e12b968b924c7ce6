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

use crate::certs as self_managed;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::policy::{self, PolicyError, store::PolicyStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start without a valid policy")]
    LoadPolicy(#[source] PolicyError),
    #[error("cannot start without a valid serving certificate")]
    LoadCertificate(#[source] tls::TlsError),
    #[error(
        "no cluster credentials (in-cluster service account or KUBECONFIG); use --no-namespace-lookups for a local trial without a cluster"
    )]
    ConnectCluster(#[source] kube::Error),
    #[error(
        "self-managed certificates need the pod's namespace: set POD_NAMESPACE or run in a pod"
    )]
    NoNamespace,
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
    cert_store: Arc<tls::CertStore>,
    acceptor: tokio_rustls::TlsAcceptor,
    loaded_policy: Vec<u8>,
    loaded_certs: Vec<Vec<u8>>,
    background: CancellationToken,
    client: Option<kube::Client>,
    cert_target: Option<self_managed::cluster::Target>,
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
        let (cert_store, loaded_certs) = if config.self_managed.is_some() {
            (tls::CertStore::empty(), Vec::new())
        } else {
            tls::CertStore::load(&config.tls_cert, &config.tls_key)
                .map_err(ServeError::LoadCertificate)?
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(
            cert_store
                .server_config()
                .map_err(ServeError::LoadCertificate)?,
        );

        let background = CancellationToken::new();
        let client = if config.namespace_lookups || config.self_managed.is_some() {
            Some(
                kube::Client::try_default()
                    .await
                    .map_err(ServeError::ConnectCluster)?,
            )
        } else {
            None
        };
        let cert_target = match &config.self_managed {
            Some(managed) => Some(cert_target(managed)?),
            None => None,
        };
        let namespaces = if let (true, Some(client)) = (config.namespace_lookups, &client) {
            Namespaces::start(
                client.clone(),
                config.namespace_lookup_timeout,
                metrics.clone(),
                background.clone(),
            )
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
            certs: cert_store.clone(),
            shutting_down: false.into(),
        });
        Ok(Self {
            config,
            webhook,
            admin,
            app,
            health,
            cert_store,
            acceptor,
            loaded_policy,
            loaded_certs,
            background,
            client,
            cert_target,
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
            cert_store,
            acceptor,
            loaded_policy,
            loaded_certs,
            background,
            client,
            cert_target,
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
        match (&config.self_managed, client, cert_target) {
            (Some(managed), Some(client), Some(target)) => {
                let settings = cert_settings(managed, &target);
                tokio::spawn(self_managed::cluster::follow(
                    client.clone(),
                    target.clone(),
                    cert_store.clone(),
                    app.metrics.clone(),
                    background.clone(),
                ));
                tokio::spawn(self_managed::cluster::manage(
                    client,
                    target,
                    settings,
                    background.clone(),
                ));
            }
            _ => {
                tokio::spawn(cert_store.reload(
                    loaded_certs,
                    app.metrics.clone(),
                    interval,
                    background.clone(),
                ));
            }
        }
        tokio::spawn(admin::serve(
            admin,
            health.clone(),
            app.metrics.clone(),
            background.clone(),
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
        background.cancel();
        tracing::info!("stopped");
    }
}

/// Where the self-managed certificate lives: the pod's namespace (POD_NAMESPACE, else the service account's),
/// and who this replica is (POD_NAME, else the host name).
fn cert_target(
    managed: &crate::config::SelfManaged,
) -> Result<self_managed::cluster::Target, ServeError> {
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .ok_or(ServeError::NoNamespace)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id()));
    Ok(self_managed::cluster::Target {
        secret: managed.tls_secret.clone(),
        lease: format!("{}-certificates", managed.service),
        webhook_configuration: managed.webhook_configuration.clone(),
        identity,
        check_interval: managed.check_interval,
        lease_duration: managed.lease_duration,
        namespace,
    })
}

fn cert_settings(
    managed: &crate::config::SelfManaged,
    target: &self_managed::cluster::Target,
) -> self_managed::Settings {
    let (svc, ns) = (&managed.service, &target.namespace);
    let mut dns_names = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        svc.clone(),
    ];
    let mut ip_addresses = Vec::new();
    for name in &managed.extra_names {
        match name.parse() {
            Ok(ip) => ip_addresses.push(ip),
            Err(_) => dns_names.push(name.clone()),
        }
    }
    self_managed::Settings {
        ca_validity: managed.ca_validity,
        cert_validity: managed.cert_validity,
        overlap: managed.ca_overlap,
        dns_names,
        ip_addresses,
    }
}
