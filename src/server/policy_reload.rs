//! Live reload of the policy file: poll, validate, swap. A file that fails validation is refused and the last
//! good policy stays in force; the failure is logged with its line and counted.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::policy_store::PolicyStore;
use crate::metrics::Metrics;
use crate::watch::{Change, Every, FileSet};

/// Polls the policy file every `interval` until `stop`, putting each valid change in force.
pub async fn run(
    path: PathBuf,
    loaded: Vec<u8>,
    store: PolicyStore,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut files = FileSet::new(vec![path.clone()], vec![loaded]);
    let mut every = Every::new(interval, stop);
    let mut unreadable_reported = false;
    while every.tick().await {
        match files.poll() {
            Change::Unchanged => unreadable_reported = false,
            Change::Unreadable(file, error) => {
                if !unreadable_reported {
                    tracing::error!(path = %file.display(), %error, "cannot read policy file; keeping the policy in force");
                    Metrics::count_reload(&metrics.policy_reloads, false);
                    unreadable_reported = true;
                }
            }
            Change::Changed(mut contents) => {
                unreadable_reported = false;
                let text = contents.pop().unwrap_or_default();
                match crate::policy::parse(&text, &path) {
                    Ok(policy) => {
                        let generation = store.replace(policy);
                        metrics
                            .policy_generation
                            .set(i64::try_from(generation).unwrap_or(i64::MAX));
                        Metrics::count_reload(&metrics.policy_reloads, true);
                        metrics.policy_loaded(&text);
                        tracing::info!(path = %path.display(), generation, "policy reloaded");
                    }
                    Err(error) => {
                        Metrics::count_reload(&metrics.policy_reloads, false);
                        tracing::error!(error = %crate::error_chain(&error), "policy refused; keeping the policy in force");
                    }
                }
            }
        }
    }
}
