//! Where the serving certificate comes from, decided once at start: PEM files (mounted from a Secret, e.g. by
//! cert-manager) polled for changes, or self-managed in the cluster (a Secret every replica watches, written
//! by the replica holding the Lease). Each source fills the same certificate store and knows which background
//! work keeps it current.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Settings;
use super::cluster::{self, Target};
use super::store::{CertStore, StoreError};
use crate::config::SelfManaged;
use crate::metrics::Metrics;

/// Why the certificate source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The certificate files did not load.
    #[error("cannot load the certificate files")]
    LoadFiles(#[source] StoreError),
    #[error(
        "self-managed certificates need the pod's namespace: set POD_NAMESPACE or run in a pod"
    )]
    /// No namespace to keep self-managed certificates in.
    NoNamespace,
}

/// Where the serving certificate comes from.
pub enum CertSource {
    /// A certificate and key file, re-read every `interval`.
    Files {
        /// The store handshakes read.
        store: Arc<CertStore>,
        /// The bytes loaded at start, so only later changes count as reloads.
        loaded: Vec<Vec<u8>>,
        /// How often the files are read.
        interval: Duration,
    },
    /// Issued, rotated and injected by the replicas themselves.
    SelfManaged(Box<InCluster>),
}

/// Self-managed certificates: the Secret, the Lease and the webhook configuration.
pub struct InCluster {
    store: Arc<CertStore>,
    client: kube::Client,
    target: Target,
    settings: Settings,
}

impl CertSource {
    /// Loads the pair now: a server with a missing or broken certificate does not start.
    pub fn files(cert: &Path, key: &Path, interval: Duration) -> Result<Self, SourceError> {
        let (store, loaded) = CertStore::load(cert, key).map_err(SourceError::LoadFiles)?;
        Ok(Self::Files {
            store,
            loaded,
            interval,
        })
    }

    /// Starts empty: the server is not ready until the first certificate arrives from the Secret.
    pub fn self_managed(managed: &SelfManaged, client: kube::Client) -> Result<Self, SourceError> {
        let target = target(managed)?;
        Ok(Self::SelfManaged(Box::new(InCluster {
            store: CertStore::empty(),
            settings: settings(managed, &target),
            client,
            target,
        })))
    }

    /// The store handshakes read.
    pub fn store(&self) -> &Arc<CertStore> {
        match self {
            Self::Files { store, .. } => store,
            Self::SelfManaged(cluster) => &cluster.store,
        }
    }

    /// Spawns what keeps the store current, until `stop`.
    pub fn start(self, metrics: Arc<Metrics>, stop: CancellationToken) {
        match self {
            Self::Files {
                store,
                loaded,
                interval,
            } => {
                if let Some(expiry) = store.expiry() {
                    metrics.certificate_expiry.set(expiry);
                }
                tokio::spawn(crate::watch::reload(store, loaded, metrics, interval, stop));
            }
            Self::SelfManaged(cluster) => {
                let InCluster {
                    store,
                    client,
                    target,
                    settings,
                } = *cluster;
                tokio::spawn(cluster::follow(
                    client.clone(),
                    target.clone(),
                    store,
                    metrics,
                    stop.clone(),
                ));
                tokio::spawn(cluster::manage(client, target, settings, stop));
            }
        }
    }
}

/// Where the self-managed certificate lives: the pod's namespace (POD_NAMESPACE, else the service account's),
/// and who this replica is (POD_NAME, else the host name).
fn target(managed: &SelfManaged) -> Result<Target, SourceError> {
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .ok_or(SourceError::NoNamespace)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id()));
    Ok(Target {
        secret: managed.tls_secret.clone(),
        lease: format!("{}-certificates", managed.service),
        webhook_configuration: managed.webhook_configuration.clone(),
        identity,
        check_interval: managed.check_interval,
        lease_duration: managed.lease_duration,
        namespace,
    })
}

/// What the certificates are issued for: the Service's DNS names in the pod's namespace, plus extra names.
fn settings(managed: &SelfManaged, target: &Target) -> Settings {
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
    Settings {
        ca_validity: managed.ca_validity,
        cert_validity: managed.cert_validity,
        overlap: managed.ca_overlap,
        dns_names,
        ip_addresses,
    }
}
