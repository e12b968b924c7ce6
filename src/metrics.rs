//! Prometheus metrics. Every label has a small, fixed set of values: no pod names, namespaces or error strings.
//! `policy_info`'s `hash` is not a fixed set, but has one series at a time: the policy in force.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::{Route, Verdict};
use crate::engine::Outcome;
use crate::fields::Field;
use crate::images::Images;

/// Latency buckets in seconds, fine below a millisecond where this webhook should live.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

/// How a request ended: a review's verdict, or why it got no review answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestResult {
    /// Answered.
    Answered(Verdict),
    /// Not an AdmissionReview we take (HTTP 400).
    BadRequest,
    /// The body did not arrive in time (HTTP 408).
    ClientTimeout,
    /// Answering failed (HTTP 500).
    Error,
}

impl RequestResult {
    fn as_str(self) -> &'static str {
        match self {
            RequestResult::Answered(verdict) => verdict.as_str(),
            RequestResult::BadRequest => "bad_request",
            RequestResult::ClientTimeout => "client_timeout",
            RequestResult::Error => "error",
        }
    }
}

/// Where namespace labels came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LookupSource {
    /// The watched cache.
    Cache,
    /// A direct GET, while the cache could not answer.
    Direct,
    /// Neither answered.
    Failed,
}

impl LookupSource {
    fn as_str(self) -> &'static str {
        match self {
            LookupSource::Cache => "cache",
            LookupSource::Direct => "direct",
            LookupSource::Failed => "failed",
        }
    }
}

/// A series' labels, by name: `operation` and `result` of a request, `operation` of a latency, `field` (a field's
/// name in the table), `result` of a reload, `source` of a namespace lookup.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Declares every metric once: its field, type, how it is made, its name (after the `secure_defaults_` prefix)
/// and its help (also the field's doc). The struct and its registration are written from this one list.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $make:expr, $name:literal, $help:literal;)*) => {
        /// Every metric the server exports, in one registry.
        pub struct Metrics {
            registry: Registry,
            $(#[doc = $help] pub $field: $ty,)*
        }

        impl Metrics {
            /// A registry with every metric registered.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("secure_defaults");
                $(
                    let $field: $ty = $make;
                    registry.register($name, $help, $field.clone());
                )*
                let metrics = Self { registry, $($field,)* };
                metrics.start_at_zero();
                metrics
            }
        }
    };
}

metrics! {
    requests: Family<Labels<2>, Counter> = Family::default(),
        "admission_requests", "Admission reviews answered, by operation and result";
    duration: Family<Labels<1>, Histogram, fn() -> Histogram> = Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        "admission_duration_seconds", "Time from the request's first byte read to the response, by operation";
    fields_defaulted: Family<Labels<1>, Counter> = Family::default(),
        "fields_defaulted", "Pods (or new ephemeral containers) that got a field defaulted, by field";
    warnings: Counter = Counter::default(),
        "guard_warnings", "Warnings of the field guards: a default skipped or set with a note (privileged, CAP_SYS_ADMIN, no runAsUser, a deprecated seccomp annotation) or a pod left alone (mirror, Windows); report-mode lines and exception warnings are not counted here";
    policy_reloads: Family<Labels<1>, Counter> = Family::default(),
        "policy_reloads", "Policy file reloads, ok or failed (a failed one keeps the last good policy)";
    policy_generation: Gauge = Gauge::default(),
        "policy_generation", "Generation of the policy in force: 1 at start, +1 per successful reload";
    certificate_reloads: Family<Labels<1>, Counter> = Family::default(),
        "certificate_reloads", "Serving certificate reloads, ok or failed (a failed one keeps the certificate in use)";
    namespace_lookups: Family<Labels<1>, Counter> = Family::default(),
        "namespace_lookups", "Namespace label lookups, by source: cache, direct (not yet cached) or failed";
    open_connections: Gauge = Gauge::default(),
        "open_connections", "Open webhook connections";
    tls_handshake_failures: Counter = Counter::default(),
        "tls_handshake_failures", "TLS handshakes that failed or timed out";
    fields_would_default: Family<Labels<1>, Counter> = Family::default(),
        "fields_would_default", "Pods in report-only namespaces that would have got a field, by field";
    exceptions: Family<Labels<1>, Counter> = Family::default(),
        "exceptions", "Fields left out because the pod opted out with secure-defaults.io/skip, as its policy allows, by field";
    certificate_expiry: Gauge = Gauge::default(),
        "certificate_expiry_timestamp_seconds", "Expiry (notAfter) of the serving certificate in use, as a Unix time";
    ca_expiry: Gauge = Gauge::default(),
        "ca_expiry_timestamp_seconds", "Expiry (notAfter) of the CA that signs the self-managed serving certificate, as a Unix time (self-managed certificates only)";
    certificate_last_rotation: Gauge = Gauge::default(),
        "certificate_last_rotation_timestamp_seconds", "When the self-managed serving certificate in use was issued or last rotated, as a Unix time (self-managed certificates only)";
    policy_last_reload: Gauge = Gauge::default(),
        "policy_last_reload_timestamp_seconds", "When the policy in force was loaded (at start, then at each successful reload), as a Unix time";
    image_lookups: Family<Labels<1>, Counter> = Family::default(),
        "image_lookups", "Images whose user a review asked for (policy images: section), by result: known, or why not (timeout, unauthorized, not_found, not_allowed, too_large, bad_reference, failed)";
    image_lookup_duration: Histogram = Histogram::new(LATENCY_BUCKETS),
        "image_lookup_duration_seconds", "Time a review waited for its images' users (at most the policy's images.timeoutMs)";
    image_cache_entries: Gauge = Gauge::default(),
        "image_cache_entries", "Images' users held in the cache (at most the policy's images.cacheEntries; read after each review that asked for images)";
    policy_info: Family<[(&'static str, String); 1], Gauge> = Family::default(),
        "policy_info", "The policy in force: 1 for the first 16 hex digits of the SHA-256 of its file; replicas that disagree serve different policies";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Both reload outcomes exist from the start, at 0: a failure is then an increase that rate() and increase()
    /// see, not a series appearing from nothing.
    fn start_at_zero(&self) {
        for family in [&self.policy_reloads, &self.certificate_reloads] {
            for result in ["ok", "failed"] {
                family.get_or_create(&[("result", result)]).inc_by(0);
            }
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
        self.policy_info.get_or_create(&[("hash", hash)]).set(1);
        self.policy_last_reload.set(unix);
    }

    /// Counts an answered review, its time, and the fields it set (or, in report-only mode, would have set) or
    /// left out at the pod's request.
    pub fn count_answer(&self, route: Route, verdict: Verdict, seconds: f64, outcome: &Outcome) {
        self.count_request(Some(route), RequestResult::Answered(verdict));
        self.observe_duration(route, seconds);
        let family = match verdict {
            Verdict::Reported => &self.fields_would_default,
            _ => &self.fields_defaulted,
        };
        outcome
            .applied
            .fields()
            .for_each(|field| count_field(family, field));
        for field in &outcome.exceptions {
            count_field(&self.exceptions, *field);
        }
        self.warnings.inc_by(outcome.guard_warnings as u64);
    }

    /// Counts one answered (or refused) request: by its route, or as operation `unknown` if refused before its
    /// route was known.
    pub fn count_request(&self, route: Option<Route>, result: RequestResult) {
        let operation = route.map_or("unknown", Route::as_str);
        self.requests
            .get_or_create(&[("operation", operation), ("result", result.as_str())])
            .inc();
    }

    /// Records one request's time.
    pub fn observe_duration(&self, route: Route, seconds: f64) {
        self.duration
            .get_or_create(&[("operation", route.as_str())])
            .observe(seconds);
    }

    /// Counts a review's image lookups by result, and its wait; `cached` is the cache's size after them.
    pub fn count_images(&self, images: &Images, seconds: f64, cached: u64) {
        self.image_cache_entries
            .set(i64::try_from(cached).unwrap_or(i64::MAX));
        for found in images.users.values() {
            let result = match found {
                Ok(_) => "known",
                Err(why) => why.as_str(),
            };
            self.image_lookups
                .get_or_create(&[("result", result)])
                .inc();
        }
        self.image_lookup_duration.observe(seconds);
    }

    /// Counts one namespace label lookup by where its answer came from.
    pub fn count_lookup(&self, source: LookupSource) {
        self.namespace_lookups
            .get_or_create(&[("source", source.as_str())])
            .inc();
    }

    /// Counts pods that got these fields.
    pub fn count_fields(&self, fields: impl Iterator<Item = Field>) {
        fields.for_each(|field| count_field(&self.fields_defaulted, field));
    }

    /// Counts one reload, ok or failed.
    pub fn count_reload(family: &Family<Labels<1>, Counter>, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        family.get_or_create(&[("result", result)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn count_field(family: &Family<Labels<1>, Counter>, field: Field) {
    family.get_or_create(&[("field", field.name())]).inc();
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
        m.count_request(
            Some(Route::CreatePod),
            RequestResult::Answered(Verdict::Patched),
        );
        m.observe_duration(Route::CreatePod, 0.000_07);
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
        for line in [
            r#"secure_defaults_fields_would_default_total{field="fsGroup"} 1"#,
            r#"secure_defaults_exceptions_total{field="runAsUser"} 1"#,
            r#"secure_defaults_admission_requests_total{operation="create",result="patched"} 3"#,
            r#"secure_defaults_admission_requests_total{operation="other",result="ignored"} 1"#,
            r#"secure_defaults_admission_duration_seconds_count{operation="create"} 4"#,
            r#"secure_defaults_admission_duration_seconds_bucket{le="0.0001",operation="create"} 3"#,
            r#"secure_defaults_fields_defaulted_total{field="runAsUser"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing: {text}");
        }
        for unused in [
            r#"secure_defaults_fields_defaulted_total{field="fsGroup"}"#,
            r#"result="unchanged""#,
        ] {
            assert!(
                !text.contains(unused),
                "unused series {unused} appears: {text}"
            );
        }
    }

    #[test]
    fn policy_info_keeps_only_the_current_hash() {
        let m = Metrics::new();
        let load = |file: &[u8], unix: i64| {
            m.policy_loaded_at(file, unix);
            let (hash, text) = (policy_hash(file), m.encode());
            for line in [
                format!("secure_defaults_policy_info{{hash=\"{hash}\"}} 1"),
                format!("secure_defaults_policy_last_reload_timestamp_seconds {unix}"),
            ] {
                assert!(text.contains(&line), "{line} missing: {text}");
            }
            (hash, text)
        };
        let (first, _) = load(b"first", 1_800_000_000);
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        // sha256("abc") starts with ba7816bf8f01cfea.
        assert_eq!(policy_hash(b"abc"), "ba7816bf8f01cfea");
        let (_, text) = load(b"second", 1_800_000_060);
        assert!(
            !text.contains(&first),
            "the old hash's series stays: {text}"
        );
        assert_eq!(
            text.matches("secure_defaults_policy_info{").count(),
            1,
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
