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
use secure_defaults::pod::WindowsBy;
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

/// The pod as the webhook would store it under `policy` (every field, unless given), and the warnings.
fn defaulted(pod: &Value, policy: &policy::Policy) -> (Value, admission::Response) {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "namespace": "app", "object": pod}});
    let body = serde_json::to_vec(&review).unwrap();
    let parsed = admission::parse(&body).unwrap();
    let labels = BTreeMap::from([(policy::INJECT_LABEL.to_owned(), "enabled".to_owned())]);
    let response = admission::respond(&parsed, policy, NamespaceLabels::Known(&labels)).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &response.outcome.patch).unwrap();
    (patched, response)
}

/// A pod with one plain container and, where given, a second one with this `securityContext`.
fn pod_with(other: Option<Value>) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "x"})];
    if let Some(sc) = other {
        containers.push(json!({"name": "other", "image": "x", "securityContext": sc}));
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
}

/// The value of `field` in a pod: at pod level, or on container `index`.
fn value_at(pod: &Value, field: Field, index: usize) -> &Value {
    let sc = match field.level() {
        Level::Pod => &pod["spec"]["securityContext"],
        Level::Container => &pod["spec"]["containers"][index]["securityContext"],
    };
    field.path().iter().fold(sc, |v, key| &v[*key])
}

#[test]
fn every_field_reaches_the_patch_the_annotation_and_the_metrics() {
    let policy = parse(&every_field()).unwrap();
    let (patched, response) = defaulted(&pod_with(None), &policy);
    let metrics = Metrics::new();
    metrics.count_fields(response.outcome.applied.fields());
    let exposition = metrics.encode();
    let annotation = patched["metadata"]["annotations"]["secure-defaults.io/defaulted"]
        .as_str()
        .unwrap_or_default();
    for field in Field::all() {
        assert_eq!(
            value_at(&patched, field, 0),
            &field.examples().0[0],
            "{field}: {patched}"
        );
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

/// The conditions the backstops' CEL is written from are the ones the guards act on: where each holds, the
/// engine leaves its field out with a warning (the e2e suite proves the API server's backstops let those pods
/// pass), and sets it where it does not.
#[test]
fn every_condition_a_field_is_left_out_under_leaves_it_out() {
    let policy = parse(&every_field()).unwrap();
    for field in Field::all() {
        for condition in field.container_skips() {
            let (patched, response) = defaulted(&pod_with(Some(condition.example())), &policy);
            assert_eq!(
                value_at(&patched, field, 1),
                &Value::Null,
                "{field} {condition:?}"
            );
            assert_ne!(
                value_at(&patched, field, 0),
                &Value::Null,
                "{field} {condition:?}"
            );
            let warned = response
                .outcome
                .warnings
                .iter()
                .any(|w| w.contains("\"other\""));
            assert!(
                warned,
                "{field} {condition:?}: {:?}",
                response.outcome.warnings
            );
        }
        for condition in field.pod_skips() {
            let mut pod = pod_with(None);
            json_patch::merge(&mut pod, &condition.example());
            let (patched, response) = defaulted(&pod, &policy);
            assert_eq!(
                value_at(&patched, field, 0),
                &Value::Null,
                "{field} {condition:?}"
            );
            assert!(
                !response.outcome.warnings.is_empty(),
                "{field} {condition:?}"
            );
        }
    }
    for way in WindowsBy::ALL {
        let mut pod = pod_with(None);
        json_patch::merge(&mut pod, &way.example());
        let (_, response) = defaulted(&pod, &policy);
        assert!(
            response.outcome.patch.is_empty(),
            "{way:?}: {:?}",
            response.outcome.patch
        );
        let said = response
            .outcome
            .warnings
            .iter()
            .any(|w| w.contains(&way.to_string()));
        assert!(said, "{way:?}: {:?}", response.outcome.warnings);
    }
}
