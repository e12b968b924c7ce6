//! Namespace labels, for opt-in mode and label-selected policy entries: a cache of every namespace's name and
//! labels kept by a metadata-only list/watch, with a direct lookup for a namespace the cache does not know and
//! for every namespace while the watch is not healthy.
//!
//! Healthy means: a complete list has been stored since the last watch error. After an error the watch is
//! started over with a fresh list (after a short backoff) rather than resumed, so that the cache is known to
//! be current again only once that list is in; until then a label changed while the API server was away would
//! be invisible to a resumed watch that has nothing new to say, so lookups go to the API server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{LookupSource, Metrics};
use crate::watch::{Outage, Report};

type Meta = PartialObjectMeta<Namespace>;
/// What decisions read of a namespace; the rest of its metadata (managedFields and annotations alone are
/// about 3 KiB per namespace) is dropped as it arrives.
type LabelMap = BTreeMap<String, String>;

/// Why a namespace's labels are not known.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The direct lookup of a namespace the cache lacks timed out.
    #[error("namespace {0:?} is not in the cache and the API server did not answer within {1:?}")]
    LookupTimeout(String, Duration),
    /// The direct lookup failed.
    #[error("namespace {0:?} is not in the cache and looking it up failed")]
    Lookup(String, #[source] kube::Error),
    /// The namespace does not exist.
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
}

/// Where namespace labels come from.
#[derive(Clone)]
pub enum Namespaces {
    /// Label lookups are switched off (local trials): the webhook's namespaceSelector decides the mode.
    Disabled,
    /// The cache, kept by a watch, with direct lookups where it cannot answer.
    Cluster(Arc<Cluster>),
}

/// The namespace cache and its direct lookups.
pub struct Cluster {
    api: Api<Meta>,
    cache: RwLock<HashMap<String, Arc<LabelMap>>>,
    /// A complete list has been stored at least once (readiness).
    synced: AtomicBool,
    /// A complete list has been stored since the last watch error: the cache can be trusted.
    healthy: AtomicBool,
    /// The API server streams the initial list in the watch (WatchList); cleared for good, and a list then a watch
    /// used instead, when it refuses to (the feature gate is off by default in 1.33 and before 1.32).
    streaming: AtomicBool,
    lookup_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Namespaces {
    /// Starts the watch; it runs until `stop`.
    pub fn start(
        client: kube::Client,
        lookup_timeout: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let cluster = Arc::new(Cluster {
            api: Api::all(client),
            cache: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            streaming: AtomicBool::new(true),
            lookup_timeout,
            metrics,
        });
        tokio::spawn(cluster.clone().follow(stop));
        Namespaces::Cluster(cluster)
    }

    /// True once the cache has listed every namespace (always true when lookups are off).
    pub fn synced(&self) -> bool {
        match self {
            Namespaces::Disabled => true,
            Namespaces::Cluster(c) => c.synced.load(Ordering::Acquire),
        }
    }

    /// The labels of namespace `name`: from the cache, or looked up directly while the cache cannot answer;
    /// `None` when lookups are off.
    pub async fn labels(&self, name: &str) -> Result<Option<Arc<LabelMap>>, NamespaceError> {
        let Namespaces::Cluster(c) = self else {
            return Ok(None);
        };
        let cached = c.cached(name);
        if let Some(labels) = &cached
            && c.healthy.load(Ordering::Acquire)
        {
            c.metrics.count_lookup(LookupSource::Cache);
            return Ok(Some(labels.clone()));
        }
        // Created a moment ago, the cache is still syncing, or the watch is not healthy: ask, briefly.
        let lookup = tokio::time::timeout(c.lookup_timeout, c.api.get_opt(name)).await;
        let failed = match lookup {
            Ok(Ok(Some(meta))) => {
                c.metrics.count_lookup(LookupSource::Direct);
                return Ok(Some(Arc::new(meta.metadata.labels.unwrap_or_default())));
            }
            Ok(Ok(None)) => {
                c.metrics.count_lookup(LookupSource::Failed);
                return Err(NamespaceError::NotFound(name.to_owned()));
            }
            Ok(Err(e)) => NamespaceError::Lookup(name.to_owned(), e),
            Err(_) => NamespaceError::LookupTimeout(name.to_owned(), c.lookup_timeout),
        };
        // The API server cannot be asked either: what the cache last knew beats failing the request.
        if let Some(labels) = cached {
            c.metrics.count_lookup(LookupSource::Cache);
            tracing::debug!(namespace = name, error = %crate::error_chain(&failed), "namespace lookup failed; using the labels last cached");
            return Ok(Some(labels));
        }
        c.metrics.count_lookup(LookupSource::Failed);
        Err(failed)
    }
}

/// Whether the API server refused a streamed initial list: it answers `sendInitialEvents` with 422 Invalid where
/// its WatchList feature gate is off.
fn refuses_streaming(error: &watcher::Error) -> bool {
    let status = match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.as_ref(),
        watcher::Error::WatchError(status) => status.as_ref(),
        _ => return false,
    };
    status.code == 422 || (status.code == 400 && status.message.contains("sendInitialEvents"))
}

/// A watch event's namespace, reduced to what is kept.
fn entry(meta: Meta) -> Option<(String, Arc<LabelMap>)> {
    let name = meta.metadata.name?;
    Some((name, Arc::new(meta.metadata.labels.unwrap_or_default())))
}

impl Cluster {
    fn cached(&self, name: &str) -> Option<Arc<LabelMap>> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LabelMap>>> {
        // A poisoned lock only means a writer panicked between two map operations; each entry is whole.
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists and watches until `stop`; after an error, waits a short backoff and starts over with a list.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = crate::watch::retry_backoff();
        let mut outage = Outage::new(crate::watch::REPORT_EVERY);
        loop {
            let ended = tokio::select! {
                ended = self.watch(&mut backoff, &mut outage) => ended,
                () = stop.cancelled() => return,
            };
            self.healthy.store(false, Ordering::Release);
            if let Some(error) = &ended
                && refuses_streaming(error)
                && self.streaming.swap(false, Ordering::AcqRel)
            {
                tracing::info!(error = %crate::error_chain(error), "the API server does not stream initial lists (WatchList off); listing, then watching");
                continue;
            }
            if let Some(error) = ended {
                match outage.failed(Instant::now()) {
                    Some(Report::Began) => {
                        tracing::warn!(error = %crate::error_chain(&error), "namespace watch failed; looking labels up directly until the cache is re-listed")
                    }
                    Some(Report::Continuing { failures, for_ }) => {
                        tracing::warn!(error = %crate::error_chain(&error), failures, failing_for = ?for_, "namespace watch still failing; looking labels up directly")
                    }
                    None => {}
                }
            }
            let wait = backoff.next().unwrap_or(Duration::from_secs(2));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One watch from a fresh list, until its first error (`None` if the stream ended, which kube's watcher
    /// does not do).
    async fn watch(
        &self,
        backoff: &mut impl Backoff,
        outage: &mut Outage,
    ) -> Option<watcher::Error> {
        let config = if self.streaming.load(Ordering::Acquire) {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default()
        };
        let events = watcher(self.api.clone(), config);
        let mut events = std::pin::pin!(events);
        // A fresh list updates the cache in place and then drops what it no longer holds, rather than building a
        // second map beside the first: at the peak of a re-list the cache is held once, not twice, and entries
        // whose labels did not change keep their allocation.
        let mut listed: HashSet<String> = HashSet::new();
        loop {
            let event = match events.next().await? {
                Ok(event) => event,
                Err(error) => return Some(error),
            };
            match event {
                watcher::Event::Init => listed.clear(),
                watcher::Event::InitApply(meta) => {
                    if let Some((name, labels)) = entry(meta) {
                        listed.insert(name.clone());
                        let mut cache = self.write();
                        if cache.get(&name).is_none_or(|known| **known != *labels) {
                            cache.insert(name, labels);
                        }
                    }
                }
                watcher::Event::InitDone => {
                    let count = listed.len();
                    self.write().retain(|name, _| listed.contains(name));
                    listed = HashSet::new();
                    self.healthy.store(true, Ordering::Release);
                    backoff.reset();
                    if !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(namespaces = count, "namespace cache synced");
                    }
                    if let Some(lasted) = outage.succeeded(Instant::now()) {
                        tracing::info!(
                            namespaces = count,
                            ?lasted,
                            "namespace watch recovered; cache re-listed"
                        );
                    }
                }
                watcher::Event::Apply(meta) => {
                    if let Some((name, labels)) = entry(meta) {
                        self.write().insert(name, labels);
                    }
                }
                watcher::Event::Delete(meta) => {
                    if let Some(name) = meta.metadata.name {
                        self.write().remove(&name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_streamed_list_is_told_from_other_failures() {
        let status = |code: u16, message: &str| -> Box<kube::core::Status> {
            Box::new(
                serde_json::from_value(
                    serde_json::json!({"code": code, "message": message, "status": "Failure"}),
                )
                .unwrap(),
            )
        };
        let refused = watcher::Error::WatchStartFailed(kube::Error::Api(status(
            422,
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        )));
        assert!(refuses_streaming(&refused));
        assert!(refuses_streaming(&watcher::Error::WatchError(status(
            422, "Invalid"
        ))));
        let gone = watcher::Error::WatchError(status(410, "too old resource version"));
        assert!(!refuses_streaming(&gone));
        let forbidden =
            watcher::Error::WatchStartFailed(kube::Error::Api(status(403, "forbidden")));
        assert!(!refuses_streaming(&forbidden));
    }

    #[test]
    fn only_the_name_and_labels_are_kept() {
        let meta: Meta = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "team-a",
                "resourceVersion": "42",
                "labels": {"secure-defaults.io/inject": "enabled"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1"}]
            }
        }))
        .unwrap();
        let (name, labels) = entry(meta).unwrap();
        assert_eq!(name, "team-a");
        assert_eq!(
            *labels,
            LabelMap::from([("secure-defaults.io/inject".to_owned(), "enabled".to_owned())])
        );
        let unlabelled: Meta =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "plain"}})).unwrap();
        assert_eq!(entry(unlabelled).map(|(_, l)| l.len()), Some(0));
    }
}
