//! Live reload of the policy file, through the one poll-validate-swap loop ([`crate::watch::reload`]): a file
//! that fails validation is refused at once and the last good policy stays in force; the failure is logged with
//! its line and counted.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::policy_store::PolicyStore;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::watch::{FileSet, ReloadCounter, Reloadable};

struct PolicyFile {
    path: PathBuf,
    store: PolicyStore,
}

impl Reloadable for PolicyFile {
    const WHAT: &'static str = "policy";
    // A policy is one file, written whole by the kubelet's symlink swap: a refusal is reported at once.
    const CONFIRM_REFUSAL: bool = false;
    type Loaded = (Policy, Vec<u8>);
    type Error = PolicyError;

    fn load(&self, contents: &[Vec<u8>]) -> Result<Self::Loaded, PolicyError> {
        let text = contents.first().cloned().unwrap_or_default();
        let policy = crate::policy::parse(&text, &self.path)?;
        Ok((policy, text))
    }

    fn swap(&self, (policy, text): Self::Loaded, metrics: &Metrics) {
        let generation = self.store.replace(policy);
        metrics
            .policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        metrics.policy_loaded(&text);
        tracing::info!(path = %self.path.display(), generation, "policy reloaded");
    }

    fn counter(metrics: &Metrics) -> &ReloadCounter {
        &metrics.policy_reloads
    }
}

/// Polls the policy file every `interval` until `stop`, putting each valid change in force.
pub async fn run(
    path: PathBuf,
    loaded: Vec<u8>,
    store: PolicyStore,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let files = FileSet::new(vec![path.clone()], vec![loaded]);
    crate::watch::reload(PolicyFile { path, store }, files, metrics, interval, stop).await;
}
