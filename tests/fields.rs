//! Walks the field table and fails for any field that some part of the product does not know: the policy parser
//! (values, `skip:`, errors with their path and line), `check`'s description, the engine's patch and the pod's
//! annotation, and the metrics label. (The property tests in `properties.rs` draw their defaults from the same
//! table and fail if a field is never set.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use secure_defaults::admission;
use secure_defaults::fields::{Field, Level};
use secure_defaults::metrics::Metrics;
use secure_defaults::policy::{self, NamespaceLabels};
use serde_json::{Value, json};

const HEAD: &str = "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\n";

fn parse(body: &str) -> Result<policy::Policy, String> {
    policy::parse(format!("{HEAD}{body}").as_bytes(), Path::new("p.yaml"))
        .map_err(|e| secure_defaults::error_chain(&e))
}

/// Every field set to its first valid example, as policy YAML (JSON is YAML).
fn every_field() -> String {
    let mut body = String::from("defaults:\n");
    for field in Field::all() {
        body += &format!("  {field}: {}\n", field.examples().0[0]);
    }
    body
}

#[test]
fn the_policy_parser_knows_every_field() {
    for field in Field::all() {
        let (good, bad) = field.examples();
        for value in &good {
            let policy = parse(&format!("defaults:\n  {field}: {value}\n"))
                .unwrap_or_else(|e| panic!("{field}: {value}: {e}"));
            assert_eq!(policy.defaults.get(field), Some(value), "{field}");
            let set = parse(&format!(
                "namespaces:\n  - match: {{names: [a]}}\n    set: {{{field}: {value}}}\n"
            ));
            assert!(set.is_ok(), "{field} in set: {set:?}");
        }
        // A refused value is reported at its own path and line (line 5: after the head and `defaults:`).
        let error = parse(&format!("defaults:\n  {field}: {bad}\n")).unwrap_err();
        assert!(
            error.contains(&format!("defaults.{field}: ")) && error.contains("at line 5"),
            "{field}: {error}"
        );
        let skip = parse(&format!(
            "namespaces:\n  - match: {{names: [a]}}\n    skip: [{field}]\n"
        ));
        assert!(skip.is_ok(), "{field} in skip: {skip:?}");
    }
}

#[test]
fn check_describes_every_field() {
    let policy = parse(&every_field()).unwrap();
    let text = policy::explain(&policy);
    for field in Field::all() {
        assert!(text.contains(&format!("{field}=")), "{field}: {text}");
    }
}

#[test]
fn every_field_reaches_the_patch_the_annotation_and_the_metrics() {
    let policy = parse(&every_field()).unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "x"}]}});
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "namespace": "app", "object": pod}});
    let body = serde_json::to_vec(&review).unwrap();
    let parsed = admission::parse(&body).unwrap();
    let labels = BTreeMap::from([(policy::INJECT_LABEL.to_owned(), "enabled".to_owned())]);
    let response = admission::respond(&parsed, &policy, NamespaceLabels::Known(&labels)).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &response.outcome.patch).unwrap();
    let metrics = Metrics::new();
    metrics.count_fields(response.outcome.applied.fields());
    let exposition = metrics.encode();
    let annotation = patched["metadata"]["annotations"]["secure-defaults.io/defaulted"]
        .as_str()
        .unwrap_or_default();
    for field in Field::all() {
        let sc = match field.level() {
            Level::Pod => &patched["spec"]["securityContext"],
            Level::Container => &patched["spec"]["containers"][0]["securityContext"],
        };
        let at = field.path().iter().fold(sc, |v, key| &v[*key]);
        assert_eq!(at, &field.examples().0[0], "{field}: {patched}");
        assert!(
            annotation.contains(&format!("{field}=")),
            "{field}: {annotation}"
        );
        assert!(
            exposition.contains(&format!("field=\"{field}\"")),
            "{field}: {exposition}"
        );
    }
    assert_ne!(patched["spec"]["securityContext"], Value::Null);
}
