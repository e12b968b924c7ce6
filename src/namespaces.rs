//! Namespace labels, for opt-in mode and label-selected policy entries: a reflector over namespace metadata
//! (a metadata-only list/watch), with a direct lookup for a namespace the cache has not seen yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use crate::metrics::{LookupLabels, Metrics};
use crate::policy::NamespaceLabels;

type Meta = PartialObjectMeta<Namespace>;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "no cluster credentials (in-cluster service account or KUBECONFIG); use --no-namespace-lookups for a local trial without a cluster"
    )]
    ConnectCluster(#[source] kube::Error),
    #[error("namespace {0:?} is not in the cache and the API server did not answer within {1:?}")]
    LookupTimeout(String, Duration),
    #[error("namespace {0:?} is not in the cache and looking it up failed")]
    Lookup(String, #[source] kube::Error),
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
}

/// Where a namespace's labels came from.
pub enum Labels {
    /// Lookups are off.
    Unknown,
    Cached(Arc<Meta>),
    Fetched(Box<Meta>),
}

impl Labels {
    pub fn as_policy_input(&self) -> NamespaceLabels<'_> {
        let meta = match self {
            Labels::Unknown => return NamespaceLabels::Unknown,
            Labels::Cached(meta) => meta.as_ref(),
            Labels::Fetched(meta) => meta.as_ref(),
        };
        NamespaceLabels::Known(meta.metadata.labels.as_ref().unwrap_or(&NO_LABELS))
    }
}

#[derive(Clone)]
pub enum Namespaces {
    /// Label lookups are switched off (local trials): the webhook's namespaceSelector decides the mode.
    Disabled,
    Cluster(Arc<Cluster>),
}

pub struct Cluster {
    api: Api<Meta>,
    store: Store<Meta>,
    synced: AtomicBool,
    lookup_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Namespaces {
    /// Starts the reflector; it runs until `stop`.
    pub fn start(
        client: kube::Client,
        lookup_timeout: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let api: Api<Meta> = Api::all(client);
        let (store, writer) = reflector::store();
        let cluster = Arc::new(Cluster {
            api: api.clone(),
            store,
            synced: AtomicBool::new(false),
            lookup_timeout,
            metrics,
        });
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(_)) => {}
                        // The watcher retries with backoff; the cache keeps serving what it has.
                        Some(Err(error)) => tracing::warn!(%error, "namespace watch failed; retrying"),
                        None => return,
                    },
                    () = stop.cancelled() => return,
                }
            }
        });
        let waiter = cluster.clone();
        tokio::spawn(async move {
            if waiter.store.wait_until_ready().await.is_ok() {
                waiter.synced.store(true, Ordering::Release);
                tracing::info!(namespaces = waiter.store.len(), "namespace cache synced");
            }
        });
        Namespaces::Cluster(cluster)
    }

    /// True once the cache has listed every namespace (always true when lookups are off).
    pub fn synced(&self) -> bool {
        match self {
            Namespaces::Disabled => true,
            Namespaces::Cluster(c) => c.synced.load(Ordering::Acquire),
        }
    }

    pub async fn labels(&self, name: &str) -> Result<Labels, NamespaceError> {
        let Namespaces::Cluster(c) = self else {
            return Ok(Labels::Unknown);
        };
        if let Some(meta) = c.store.get(&ObjectRef::new(name)) {
            c.count("cache");
            return Ok(Labels::Cached(meta));
        }
        // Created a moment ago, or the cache is still syncing: ask once, briefly.
        let lookup = tokio::time::timeout(c.lookup_timeout, c.api.get_opt(name)).await;
        match lookup {
            Ok(Ok(Some(meta))) => {
                c.count("direct");
                Ok(Labels::Fetched(Box::new(meta)))
            }
            Ok(Ok(None)) => {
                c.count("failed");
                Err(NamespaceError::NotFound(name.to_owned()))
            }
            Ok(Err(e)) => {
                c.count("failed");
                Err(NamespaceError::Lookup(name.to_owned(), e))
            }
            Err(_) => {
                c.count("failed");
                Err(NamespaceError::LookupTimeout(
                    name.to_owned(),
                    c.lookup_timeout,
                ))
            }
        }
    }
}

impl Cluster {
    fn count(&self, source: &'static str) {
        self.metrics
            .namespace_lookups
            .get_or_create(&LookupLabels { source })
            .inc();
    }
}
