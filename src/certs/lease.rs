//! The Lease that elects one replica to issue, rotate and inject the self-managed certificate. No maintained
//! crate fits kube 5 here; expiry is judged by this replica's own clock (see [`takeable`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use super::cluster::Target;

/// A Lease as another replica left it: what changes on every renewal. The times are opaque values written by
/// that replica's clock; only whether they changed matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The holder.
    pub holder: Option<String>,
    /// The holder's renewTime, kept as an opaque value: only whether it changes counts.
    pub renew_time: Option<String>,
    /// The Lease's duration.
    pub lease_duration_seconds: Option<i32>,
    /// The object's resourceVersion.
    pub resource_version: Option<String>,
}

impl Record {
    fn of(lease: &k8s::Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// The Lease record this replica last saw and when it first saw it, by its own monotonic clock.
#[derive(Clone, Debug)]
pub struct Seen {
    record: Record,
    since: Instant,
}

/// Whether another replica's Lease may be taken. As in client-go's leader election, expiry is judged by the
/// local time at which this replica last saw the record change, never by the holder's `renewTime`: the holder's
/// clock and ours may disagree by minutes, and a live holder would otherwise look expired (our clock ahead) or
/// a dead one live for ever (ours behind). A holder that renews changes the record every round; a record seen
/// unchanged for the lease's duration belongs to a holder that stopped. A Lease without a holder is free.
/// Updates `seen` with `record` observed at `now`.
pub fn takeable(seen: &mut Option<Seen>, record: Record, now: Instant, default: Duration) -> bool {
    let since = match seen {
        Some(last) if last.record == record => last.since,
        _ => now,
    };
    let duration = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default, Duration::from_secs);
    let free = record.holder.is_none();
    *seen = Some(Seen { record, since });
    free || now.saturating_duration_since(since) >= duration
}

/// Takes the Lease `target.lease` for `target.identity` if it is free or expired, renews it if held; returns whether
/// this replica holds it.
pub async fn hold(
    client: &kube::Client,
    target: &Target,
    seen: &mut Option<Seen>,
) -> Result<bool, kube::Error> {
    let api: Api<k8s::Lease> = Api::namespaced(client.clone(), &target.namespace);
    // Written for other readers (kubectl, client-go tools); this replica never compares them with its clock.
    let now = Timestamp::now();
    let duration = i32::try_from(target.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let mut lease = match api.get_opt(&target.lease).await? {
        Some(lease) => lease,
        None => {
            let lease = k8s::Lease {
                metadata: ObjectMeta {
                    name: Some(target.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s::LeaseSpec {
                    holder_identity: Some(target.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    ..Default::default()
                }),
            };
            return won(api.create(&PostParams::default(), &lease).await);
        }
    };
    let record = Record::of(&lease);
    let mine = record.holder.as_ref() == Some(&target.identity);
    let expired = takeable(seen, record, Instant::now(), target.lease_duration);
    if !mine && !expired {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    if !mine {
        spec.holder_identity = Some(target.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(MicroTime(now));
    // Carries the resourceVersion read above: if another replica renewed or took it meanwhile, this fails.
    won(api
        .replace(&target.lease, &PostParams::default(), &lease)
        .await)
}

/// Whether a write of the Lease went through; a conflict means another replica created, renewed or took it
/// first.
fn won(written: Result<k8s::Lease, kube::Error>) -> Result<bool, kube::Error> {
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry_follows_the_local_clock_not_the_holders() {
        // Our lease duration, for a Lease that does not say its own.
        const OURS: Duration = Duration::from_secs(15);
        // The holder's clock an hour behind ours, an hour ahead, or right: none of it may matter.
        const BEHIND: &str = "2026-11-30T23:00:00Z";
        const AHEAD: &str = "2026-12-01T01:00:00Z";
        const RIGHT: &str = "2026-12-01T00:00:00Z";
        // (local seconds since the first observation, holder, renewTime, resourceVersion, leaseDurationSeconds,
        //  takeable?)
        type Step = (
            u64,
            Option<&'static str>,
            &'static str,
            &'static str,
            Option<i32>,
            bool,
        );
        let table: &[(&str, &[Step])] = &[
            (
                "a live holder behind us renews: never takeable",
                &[
                    (0, Some("a"), BEHIND, "1", Some(15), false),
                    (10, Some("a"), BEHIND, "2", Some(15), false),
                    (20, Some("a"), BEHIND, "3", Some(15), false),
                    (30, Some("a"), BEHIND, "4", Some(15), false),
                ],
            ),
            (
                "a live holder ahead of us renews: never takeable",
                &[
                    (0, Some("a"), AHEAD, "1", Some(15), false),
                    (14, Some("a"), AHEAD, "2", Some(15), false),
                    (28, Some("a"), AHEAD, "3", Some(15), false),
                ],
            ),
            (
                "a stale record behind us: takeable after its duration of local time, not at first sight",
                &[
                    (0, Some("a"), BEHIND, "1", Some(15), false),
                    (14, Some("a"), BEHIND, "1", Some(15), false),
                    (15, Some("a"), BEHIND, "1", Some(15), true),
                ],
            ),
            (
                "a stale record ahead of us: takeable after its duration, not an hour later",
                &[
                    (0, Some("a"), AHEAD, "1", Some(15), false),
                    (15, Some("a"), AHEAD, "1", Some(15), true),
                ],
            ),
            (
                "a stale record with a right clock: the same",
                &[
                    (0, Some("a"), RIGHT, "1", Some(15), false),
                    (15, Some("a"), RIGHT, "1", Some(15), true),
                ],
            ),
            (
                "a change of holder restarts the count",
                &[
                    (0, Some("a"), RIGHT, "1", Some(15), false),
                    (10, Some("b"), RIGHT, "2", Some(15), false),
                    (24, Some("b"), RIGHT, "2", Some(15), false),
                    (25, Some("b"), RIGHT, "2", Some(15), true),
                ],
            ),
            (
                "a change of resourceVersion alone restarts the count",
                &[
                    (0, Some("a"), RIGHT, "1", Some(15), false),
                    (10, Some("a"), RIGHT, "2", Some(15), false),
                    (24, Some("a"), RIGHT, "2", Some(15), false),
                ],
            ),
            (
                "a Lease without a holder is free at once",
                &[(0, None, AHEAD, "1", Some(15), true)],
            ),
            (
                "the Lease's own duration wins over ours",
                &[
                    (0, Some("a"), AHEAD, "1", Some(2), false),
                    (2, Some("a"), AHEAD, "1", Some(2), true),
                ],
            ),
            (
                "without one, ours applies",
                &[
                    (0, Some("a"), AHEAD, "1", None, false),
                    (14, Some("a"), AHEAD, "1", None, false),
                    (15, Some("a"), AHEAD, "1", None, true),
                ],
            ),
        ];
        let start = Instant::now();
        for (case, steps) in table {
            let mut seen = None;
            for &(secs, holder, renew, version, duration, expected) in *steps {
                let record = Record {
                    holder: holder.map(str::to_owned),
                    renew_time: Some(renew.to_owned()),
                    lease_duration_seconds: duration,
                    resource_version: Some(version.to_owned()),
                };
                let now = start + Duration::from_secs(secs);
                assert_eq!(
                    takeable(&mut seen, record, now, OURS),
                    expected,
                    "{case}, at {secs} s"
                );
            }
        }
    }
}
