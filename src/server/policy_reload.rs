//! Live reload of the policy file, through the one poll-validate-swap loop ([`crate::watch::reload`]): a file
//! that fails validation is refused at once and the last good policy stays in force; the failure is logged with
//! its line and counted.

use std::path::PathBuf;

use super::policy_store::PolicyStore;
use crate::images::lookup::{Lookup, LookupError};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};

/// Why a policy file was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The file is not a valid policy.
    #[error(transparent)]
    ParsePolicy(#[from] PolicyError),
    /// Its `images:` section names a credentials or CA file that cannot be read.
    #[error("policy {path}: images")]
    SetUpImages {
        /// The policy file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: LookupError,
    },
}
use crate::watch::{ReloadCounter, Reloadable};

/// The policy file, and the store it is put in force in.
pub struct PolicyFile {
    /// The file.
    pub path: PathBuf,
    /// The store requests read.
    pub store: PolicyStore,
}

impl Reloadable for PolicyFile {
    const WHAT: &'static str = "policy";
    // A policy is one file, written whole by the kubelet's symlink swap: a refusal is reported at once.
    const CONFIRM_REFUSAL: bool = false;
    type Loaded = (Policy, Vec<u8>, Option<Lookup>);
    type Error = PolicyLoadError;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn load(&self, contents: &[Vec<u8>]) -> Result<Self::Loaded, PolicyLoadError> {
        let text = contents.first().cloned().unwrap_or_default();
        let policy = crate::policy::parse(&text, &self.path)?;
        let current = self.store.current();
        let images = Lookup::for_policy(policy.images.as_ref(), current.images.as_ref()).map_err(
            |source| PolicyLoadError::SetUpImages {
                path: self.path.clone(),
                source,
            },
        )?;
        Ok((policy, text, images))
    }

    fn swap(&self, (policy, text, images): Self::Loaded, metrics: &Metrics) {
        let generation = self.store.replace(policy, images);
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
