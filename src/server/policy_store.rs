//! The policy in force: an `Arc<Policy>` behind a `tokio::sync::watch`, so every request reads one whole policy
//! (old or new, never a mixture) without taking a lock for longer than a pointer copy.

use std::sync::Arc;

use tokio::sync::watch;

use crate::images::lookup::Lookup;
use crate::policy::Policy;

/// The policy in force, with its generation.
#[derive(Debug)]
pub struct Current {
    /// The policy.
    pub policy: Policy,
    /// 1 for the policy loaded at start, +1 per successful reload.
    pub generation: u64,
    /// Where the policy has an `images:` section: the lookups of its images' users.
    pub images: Option<Lookup>,
}

/// Where requests read the policy and the reload writes it.
#[derive(Clone)]
pub struct PolicyStore {
    tx: Arc<watch::Sender<Arc<Current>>>,
}

impl PolicyStore {
    /// A store holding `policy` (with its image lookups) as generation 1.
    pub fn new(policy: Policy, images: Option<Lookup>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Current {
            policy,
            generation: 1,
            images,
        }));
        Self { tx: Arc::new(tx) }
    }

    /// The policy in force now; the caller keeps it for the whole request.
    pub fn current(&self) -> Arc<Current> {
        self.tx.borrow().clone()
    }

    /// Puts a new policy (with its image lookups) in force and returns its generation.
    pub fn replace(&self, policy: Policy, images: Option<Lookup>) -> u64 {
        let mut generation = 0;
        self.tx.send_modify(|current| {
            generation = current.generation + 1;
            *current = Arc::new(Current {
                policy,
                generation,
                images,
            });
        });
        generation
    }
}
