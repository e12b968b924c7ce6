//! Prometheus metrics. Every label has a small, fixed set of values: no pod names, namespaces or error strings.
//! `policy_info`'s `hash` is not a fixed set, but has one series at a time: the policy in force.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::{Route, Verdict};
use crate::engine::Outcome;
use crate::fields::Field;

/// Latency buckets in seconds, fine below a millisecond where this webhook should live.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

/// Labels of the admission counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// create, ephemeral, other.
    pub operation: &'static str,
    /// patched, unchanged, exempt, ignored, unreadable, bad_request, client_timeout, error.
    pub result: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// create, ephemeral, other, unknown.
    pub operation: &'static str,
}

/// Labels of the per-field counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    /// A field's name in the table.
    pub field: &'static str,
}

/// Labels of the reload counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or failed.
    pub result: &'static str,
}

/// Labels of the policy info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyInfoLabels {
    /// The first 16 hex digits of the SHA-256 of the policy file: one series at a time.
    pub hash: String,
}

/// Labels of the namespace lookup counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// cache, direct, failed.
    pub source: &'static str,
}

/// Every metric the server exports, in one registry.
pub struct Metrics {
    registry: Registry,
    /// Admission reviews answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time per review.
    pub duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Pods that got each field.
    pub fields_defaulted: Family<FieldLabels, Counter>,
    /// Warnings returned.
    pub warnings: Counter,
    /// Policy reloads.
    pub policy_reloads: Family<ResultLabels, Counter>,
    /// The policy's generation.
    pub policy_generation: Gauge,
    /// Certificate reloads.
    pub certificate_reloads: Family<ResultLabels, Counter>,
    /// Where namespace labels came from.
    pub namespace_lookups: Family<LookupLabels, Counter>,
    /// Open webhook connections.
    pub open_connections: Gauge,
    /// Failed or timed-out TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// Pods that would have got a field, in report-only namespaces.
    pub fields_would_default: Family<FieldLabels, Counter>,
    /// Fields left out because a pod opted out of them, as its policy allows.
    pub exceptions: Family<FieldLabels, Counter>,
    /// notAfter of the serving certificate in use (Unix seconds).
    pub certificate_expiry: Gauge,
    /// notAfter of the CA signing the self-managed serving certificate (Unix seconds).
    pub ca_expiry: Gauge,
    /// When the self-managed serving certificate in use was issued (Unix seconds).
    pub certificate_last_rotation: Gauge,
    /// When the policy in force was loaded: at start, then at each successful reload (Unix seconds).
    pub policy_last_reload: Gauge,
    /// The policy in force, by content hash; only the current hash has a series.
    pub policy_info: Family<PolicyInfoLabels, Gauge>,
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
    /// A registry with every metric registered.
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
        registry.register("guard_warnings", "Warnings of the field guards: a default skipped or set with a note (privileged, CAP_SYS_ADMIN, no runAsUser, a deprecated seccomp annotation) or a pod left alone (mirror, Windows); report-mode lines and exception warnings are not counted here", warnings.clone());
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
        let fields_would_default = Family::<FieldLabels, Counter>::default();
        registry.register(
            "fields_would_default",
            "Pods in report-only namespaces that would have got a field, by field",
            fields_would_default.clone(),
        );
        let exceptions = Family::<FieldLabels, Counter>::default();
        registry.register(
            "exceptions",
            "Fields left out because the pod opted out with secure-defaults.io/skip, as its policy allows, by field",
            exceptions.clone(),
        );
        // Both reload outcomes exist from the start, at 0: a failure is then an increase that rate() and
        // increase() see, not a series appearing from nothing.
        for family in [&policy_reloads, &certificate_reloads] {
            for result in ["ok", "failed"] {
                family.get_or_create(&ResultLabels { result }).inc_by(0);
            }
        }
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the serving certificate in use, as a Unix time",
            certificate_expiry.clone(),
        );
        let ca_expiry = Gauge::default();
        registry.register(
            "ca_expiry_timestamp_seconds",
            "Expiry (notAfter) of the CA that signs the self-managed serving certificate, as a Unix time (self-managed certificates only)",
            ca_expiry.clone(),
        );
        let certificate_last_rotation = Gauge::default();
        registry.register(
            "certificate_last_rotation_timestamp_seconds",
            "When the self-managed serving certificate in use was issued or last rotated, as a Unix time (self-managed certificates only)",
            certificate_last_rotation.clone(),
        );
        let policy_last_reload = Gauge::default();
        registry.register(
            "policy_last_reload_timestamp_seconds",
            "When the policy in force was loaded (at start, then at each successful reload), as a Unix time",
            policy_last_reload.clone(),
        );
        let policy_info = Family::<PolicyInfoLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The policy in force: 1 for the first 16 hex digits of the SHA-256 of its file; replicas that disagree serve different policies",
            policy_info.clone(),
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
            fields_would_default,
            exceptions,
            certificate_expiry,
            ca_expiry,
            certificate_last_rotation,
            policy_last_reload,
            policy_info,
        }
    }

    /// Records a policy put in force now: its load time, and its hash as the one `policy_info` series (the
    /// previous hash's series goes).
    pub fn policy_loaded(&self, file: &[u8]) {
        self.policy_loaded_at(file, unix_now());
    }

    fn policy_loaded_at(&self, file: &[u8], unix: i64) {
        let hash = policy_hash(file);
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&PolicyInfoLabels { hash })
            .set(1);
        self.policy_last_reload.set(unix);
    }

    /// Counts an answered review, its time, and the fields it set (or, in report-only mode, would have set) or
    /// left out at the pod's request.
    pub fn count_answer(&self, route: Route, verdict: Verdict, seconds: f64, outcome: &Outcome) {
        self.count_request(route.as_str(), verdict.as_str());
        self.observe_duration(route.as_str(), seconds);
        let family = match verdict {
            Verdict::Reported => &self.fields_would_default,
            _ => &self.fields_defaulted,
        };
        for field in outcome.applied.fields() {
            family
                .get_or_create(&FieldLabels {
                    field: field.name(),
                })
                .inc();
        }
        for field in &outcome.exceptions {
            self.exceptions
                .get_or_create(&FieldLabels {
                    field: field.name(),
                })
                .inc();
        }
        self.warnings.inc_by(outcome.guard_warnings as u64);
    }

    /// Counts one answered (or refused) request.
    pub fn count_request(&self, operation: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { operation, result })
            .inc();
    }

    /// Records one request's time.
    pub fn observe_duration(&self, operation: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(seconds);
    }

    /// Counts pods that got these fields.
    pub fn count_fields(&self, fields: impl Iterator<Item = Field>) {
        for field in fields {
            self.fields_defaulted
                .get_or_create(&FieldLabels {
                    field: field.name(),
                })
                .inc();
        }
    }

    /// Counts one reload, ok or failed.
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

/// The first 16 hex digits of the SHA-256 of a policy file's bytes.
pub fn policy_hash(file: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, file);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
        let none = Outcome::default();
        m.count_answer(Route::CreatePod, Verdict::Patched, 0.000_07, &none);
        m.count_answer(Route::CreatePod, Verdict::Patched, 0.002, &none);
        m.count_answer(Route::Ignore, Verdict::Ignored, 0.000_01, &none);
        m.count_fields([field("runAsUser"), field("allowPrivilegeEscalation")].into_iter());
        let mut reported = Outcome::default();
        reported.applied.pod(field("fsGroup"), serde_json::json!(1));
        reported.exceptions.insert(field("runAsUser"));
        m.count_answer(Route::CreatePod, Verdict::Reported, 0.000_01, &reported);
        let text = m.encode();
        assert!(
            text.contains(r#"secure_defaults_fields_would_default_total{field="fsGroup"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"secure_defaults_fields_defaulted_total{field="fsGroup"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"secure_defaults_exceptions_total{field="runAsUser"} 1"#),
            "{text}"
        );
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
                "secure_defaults_admission_duration_seconds_count{operation=\"create\"} 4"
            ),
            "{text}"
        );
        assert!(text.contains("secure_defaults_admission_duration_seconds_bucket{le=\"0.0001\",operation=\"create\"} 3"), "{text}");
        assert!(
            text.contains("secure_defaults_fields_defaulted_total{field=\"runAsUser\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn policy_info_keeps_only_the_current_hash() {
        let m = Metrics::new();
        m.policy_loaded_at(b"first", 1_800_000_000);
        let first = policy_hash(b"first");
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        // sha256("abc") starts with ba7816bf8f01cfea.
        assert_eq!(policy_hash(b"abc"), "ba7816bf8f01cfea");
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "secure_defaults_policy_info{{hash=\"{first}\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains("secure_defaults_policy_last_reload_timestamp_seconds 1800000000"),
            "{text}"
        );
        m.policy_loaded_at(b"second", 1_800_000_060);
        let second = policy_hash(b"second");
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "secure_defaults_policy_info{{hash=\"{second}\"}} 1"
            )),
            "{text}"
        );
        assert!(
            !text.contains(&first),
            "the old hash's series stays: {text}"
        );
        assert_eq!(
            text.matches("secure_defaults_policy_info{").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("secure_defaults_policy_last_reload_timestamp_seconds 1800000060"),
            "{text}"
        );
    }

    #[test]
    fn certificate_times_are_exposed_under_their_names() {
        let m = Metrics::new();
        m.certificate_expiry.set(1_900_000_000);
        m.ca_expiry.set(1_950_000_000);
        m.certificate_last_rotation.set(1_800_000_000);
        let text = m.encode();
        for line in [
            r#"secure_defaults_policy_reloads_total{result="failed"} 0"#,
            r#"secure_defaults_certificate_reloads_total{result="failed"} 0"#,
            "secure_defaults_certificate_expiry_timestamp_seconds 1900000000",
            "secure_defaults_ca_expiry_timestamp_seconds 1950000000",
            "secure_defaults_certificate_last_rotation_timestamp_seconds 1800000000",
        ] {
            assert!(text.contains(line), "{line} missing: {text}");
        }
    }
}
