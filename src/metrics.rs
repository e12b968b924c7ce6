//! Prometheus metrics. Every label has a small, fixed set of values: no pod names, namespaces or error strings.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::sync::OnceLock;

use crate::admission::{Route, Verdict};
use crate::fields::{self, Field};

/// Latency buckets in seconds, fine below a millisecond where this webhook should live.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// create, ephemeral, other.
    pub operation: &'static str,
    /// patched, unchanged, exempt, ignored, unreadable, bad_request, client_timeout, error.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    pub field: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or failed.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// cache, direct, failed.
    pub source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub fields_defaulted: Family<FieldLabels, Counter>,
    pub warnings: Counter,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub policy_generation: Gauge,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    pub namespace_lookups: Family<LookupLabels, Counter>,
    pub open_connections: Gauge,
    pub tls_handshake_failures: Counter,
    answers: Answers,
}

/// The series every admission touches, looked up in their families on first use and then kept: answering a
/// review then neither hashes a label set nor takes a family's lock. A series still appears only once used.
#[derive(Default)]
struct Answers {
    requests: [[OnceLock<Counter>; 5]; 3],
    duration: [OnceLock<Histogram>; 3],
    fields: [OnceLock<Counter>; fields::COUNT],
}

fn route_slot(route: Route) -> usize {
    match route {
        Route::CreatePod => 0,
        Route::AddEphemeral => 1,
        Route::Ignore => 2,
    }
}

fn verdict_slot(verdict: Verdict) -> usize {
    match verdict {
        Verdict::Patched => 0,
        Verdict::Unchanged => 1,
        Verdict::Exempt(_) => 2,
        Verdict::Ignored => 3,
        Verdict::Unreadable => 4,
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("secure_defaults");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by operation and result",
            requests.clone(),
        );
        let duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "admission_duration_seconds",
            "Time from the request's first byte read to the response, by operation",
            duration.clone(),
        );
        let fields_defaulted = Family::<FieldLabels, Counter>::default();
        registry.register(
            "fields_defaulted",
            "Pods (or new ephemeral containers) that got a field defaulted, by field",
            fields_defaulted.clone(),
        );
        let warnings = Counter::default();
        registry.register("guard_warnings", "Defaults skipped by a guard (privileged, CAP_SYS_ADMIN, Windows, no runAsUser), each returned as a warning", warnings.clone());
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy file reloads, ok or failed (a failed one keeps the last good policy)",
            policy_reloads.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the policy in force: 1 at start, +1 per successful reload",
            policy_generation.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads, ok or failed (a failed one keeps the certificate in use)",
            certificate_reloads.clone(),
        );
        let namespace_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "namespace_lookups",
            "Namespace label lookups, by source: cache, direct (not yet cached) or failed",
            namespace_lookups.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open webhook connections",
            open_connections.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            fields_defaulted,
            warnings,
            policy_reloads,
            policy_generation,
            certificate_reloads,
            namespace_lookups,
            open_connections,
            tls_handshake_failures,
            answers: Answers::default(),
        }
    }

    /// Counts an answered review and its time: [`Self::count_request`] and [`Self::observe_duration`] for the
    /// labels of `route` and `verdict`, without the lookups.
    pub fn count_answer(&self, route: Route, verdict: Verdict, seconds: f64) {
        let operation = route.as_str();
        self.answers.requests[route_slot(route)][verdict_slot(verdict)]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        operation,
                        result: verdict.as_str(),
                    })
                    .clone()
            })
            .inc();
        self.answers.duration[route_slot(route)]
            .get_or_init(|| {
                self.duration
                    .get_or_create(&OperationLabels { operation })
                    .clone()
            })
            .observe(seconds);
    }

    pub fn count_request(&self, operation: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { operation, result })
            .inc();
    }

    pub fn observe_duration(&self, operation: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(seconds);
    }

    pub fn count_fields(&self, fields: impl Iterator<Item = Field>) {
        for field in fields {
            self.answers.fields[field.index()]
                .get_or_init(|| {
                    self.fields_defaulted
                        .get_or_create(&FieldLabels {
                            field: field.name(),
                        })
                        .clone()
                })
                .inc();
        }
    }

    pub fn count_reload(family: &Family<ResultLabels, Counter>, ok: bool) {
        family
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_and_sub_millisecond_buckets() {
        let m = Metrics::new();
        m.count_request("create", "patched");
        m.observe_duration("create", 0.000_07);
        let field = |name| Field::by_name(name).unwrap();
        m.count_fields([field("runAsUser")].into_iter());
        m.count_answer(Route::CreatePod, Verdict::Patched, 0.000_07);
        m.count_answer(Route::CreatePod, Verdict::Patched, 0.002);
        m.count_answer(Route::Ignore, Verdict::Ignored, 0.000_01);
        m.count_fields([field("runAsUser"), field("allowPrivilegeEscalation")].into_iter());
        let text = m.encode();
        // The kept handles and the family lookups count into the same series.
        assert!(text.contains("secure_defaults_admission_requests_total{operation=\"create\",result=\"patched\"} 3"), "{text}");
        assert!(
            text.contains(
                "secure_defaults_admission_requests_total{operation=\"other\",result=\"ignored\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("result=\"unchanged\""),
            "unused series appear: {text}"
        );
        assert!(
            text.contains(
                "secure_defaults_admission_duration_seconds_count{operation=\"create\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("secure_defaults_admission_duration_seconds_bucket{le=\"0.0001\",operation=\"create\"} 2"), "{text}");
        assert!(
            text.contains("secure_defaults_fields_defaulted_total{field=\"runAsUser\"} 2"),
            "{text}"
        );
    }
}
