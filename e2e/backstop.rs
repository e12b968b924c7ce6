//! Both backstops as the API server runs them, with cases written from the field table: each refuses exactly the
//! pods missing a field it checks, and lets through every pod the webhook would store, including those where a
//! field's guard leaves the field out (its conditions) and the Windows pods the webhook leaves alone. A field added
//! to the table brings its cases with it.

use secure_defaults::fields::{Backstop, Field, Level};
use secure_defaults::pod::WindowsBy;
use serde_json::{Value, json};

use crate::support::*;

/// The policy behind each backstop: the shipped one, with the restricted profile for the restricted backstop.
fn policy_text(backstop: Backstop) -> String {
    match backstop {
        Backstop::Plain => shipped_policy(),
        Backstop::Restricted => shipped_policy() + "profile: restricted\n",
    }
}

/// The fields a backstop checks that a pod with this spec leaves out where the webhook would set them: the
/// fields the webhook would set under the restricted policy (the cases below prove that the backstops refuse
/// exactly those).
pub(crate) fn missing(spec: &Value) -> Vec<Field> {
    let policy = parse_policy(&policy_text(Backstop::Restricted));
    let (_, set) = defaulting(&pod("p", spec.clone()), &policy);
    set.into_iter().filter(|f| f.backstop().is_some()).collect()
}

/// A pod with an app container and an init container, nothing else stated.
fn base() -> Value {
    let spec = json!({"containers": [{"name": "app", "image": IMAGE}], "initContainers": [{"name": "init", "image": IMAGE}]});
    pod("p", spec)
}

/// Where a field may sit in [`base`]: its `securityContext` parents (the pod's, or one container's).
fn places(field: Field) -> Vec<Vec<&'static str>> {
    match field.level() {
        Level::Pod => vec![vec!["spec", "securityContext"]],
        Level::Container => ["containers", "initContainers"]
            .into_iter()
            .map(|list| vec!["spec", list, "0", "securityContext"])
            .collect(),
    }
}

/// The JSON pointer of `field` at `place`.
fn pointer(place: &[&str], field: Field) -> String {
    place
        .iter()
        .chain(&field.path())
        .map(|key| format!("/{key}"))
        .collect()
}

/// Sets `field` at `place`, making the objects on the way.
fn set(pod: &mut Value, place: &[&str], field: Field, value: Value) {
    let mut at = pod;
    for key in place.iter().chain(&field.path()) {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*key],
        };
    }
    *at = value;
}

/// Removes `field` from `place`; whether it was there.
fn remove(pod: &mut Value, place: &[&str], field: Field) -> bool {
    let at = pointer(place, field);
    let (parent, key) = at.rsplit_once('/').unwrap();
    pod.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(key))
        .is_some()
}

/// What `backstop` should do with each pod: what the case is, the pod, and `None` where it is admitted, else
/// what the refusal names.
fn cases(backstop: Backstop) -> Vec<(String, Value, Option<String>)> {
    let policy = parse_policy(&policy_text(backstop));
    let ours = |f: &Field| f.backstop() == Some(backstop);
    let stored = defaulted(&base(), &policy);
    let mut cases = vec![("the webhook's pod".to_owned(), stored.clone(), None)];
    let mut explicit = base();
    for field in Field::all() {
        for place in places(field) {
            let mut pod = stored.clone();
            if !remove(&mut pod, &place, field) {
                // A field this policy does not default; the backstop's own fields it always does.
                assert!(
                    !ours(&field),
                    "{field}: the webhook did not set it at {place:?}: {stored}"
                );
                continue;
            }
            let refused = ours(&field).then(|| field.path().join("."));
            cases.push((
                format!("without {field} at {}", pointer(&place, field)),
                pod,
                refused,
            ));
            if ours(&field) {
                // Explicit values are never judged: stated as the policy would refuse them, they pass.
                set(&mut explicit, &place, field, field.examples().1);
            }
        }
    }
    cases.push((
        "explicit values".to_owned(),
        defaulted(&explicit, &policy),
        None,
    ));
    // Where a guard leaves a checked field out, the backstop lets the pod through.
    for field in Field::all().filter(ours) {
        let examples = field.container_skips().iter().map(|c| {
            (
                format!("{c:?}"),
                json!({"spec": {
            "containers": [{"name": "app", "image": IMAGE, "securityContext": c.example()}]}}),
            )
        });
        let examples = examples.chain(
            field
                .pod_skips()
                .iter()
                .map(|c| (format!("{c:?}"), c.example())),
        );
        for (condition, example) in examples {
            let mut pod = base();
            json_patch::merge(&mut pod, &example);
            let pod = defaulted(&pod, &policy);
            assert!(
                pod.pointer(&pointer(&places(field)[0], field)).is_none(),
                "{field} {condition}: {pod}"
            );
            cases.push((format!("{field} left out: {condition}"), pod, None));
        }
    }
    for way in WindowsBy::ALL {
        let mut pod = base();
        json_patch::merge(&mut pod, &way.example());
        assert_eq!(
            defaulted(&pod, &policy),
            pod,
            "{way:?}: the webhook leaves it alone"
        );
        cases.push((format!("a Windows pod: {way}"), pod, None));
    }
    cases
}

/// The component's policy under a name of this test's, bound to this test's namespaces alone; removed on drop.
struct Bound<'a> {
    ns: &'a TestNamespace,
    name: String,
}

impl<'a> Bound<'a> {
    fn apply(ns: &'a TestNamespace, backstop: Backstop, test: &str) -> Self {
        let text = std::fs::read_to_string(repo().join(backstop.files()[0])).unwrap();
        let mut policy = secure_defaults::preview::read::yaml_values(&text)
            .unwrap()
            .remove(0);
        let name = format!("e2e-{}", backstop.policy_name());
        policy["metadata"]["name"] = json!(name);
        let binding = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {TEST_LABEL: test}}}}});
        for doc in [policy, binding] {
            let out = ns.kubectl("apply -f -", Some(&doc.to_string()));
            assert!(out.status.success(), "{}", stderr(&out));
        }
        Bound { ns, name }
    }
}

impl Drop for Bound<'_> {
    fn drop(&mut self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let delete = format!("delete {kind}/{} --ignore-not-found", self.name);
            let _ = self.ns.kubectl(&delete, None);
        }
    }
}

#[tokio::test]
async fn each_backstop_refuses_exactly_the_pods_missing_a_field_it_checks() {
    let env = cluster_env().await;
    for backstop in Backstop::ALL {
        let test = format!("table-{}", backstop.policy_name());
        let ns = TestNamespace::create(&env, &test, &format!("e2e-{test}"), &[(INJECT, "enabled")])
            .await;
        let _bound = Bound::apply(&ns, backstop, &test);
        let cases = cases(backstop);
        let (what, missing, _) = cases
            .iter()
            .find(|(_, _, refused)| refused.is_some())
            .expect("a refused case");
        eventually(
            &format!("{} to refuse a pod {what}", backstop.policy_name()),
            DEADLINE,
            || async {
                ns.dry_run(missing)
                    .await
                    .err()
                    .filter(|e| e.contains("secure-defaults backstop"))
            },
        )
        .await;
        for (what, pod, refused) in &cases {
            let answer = ns.dry_run(pod).await.map(drop);
            match (refused, &answer) {
                (None, Ok(())) => {}
                (Some(path), Err(message))
                    if message.contains("secure-defaults backstop")
                        && message.contains(path.as_str()) => {}
                _ => panic!(
                    "{}: {what}: expected {}, got {answer:?}\n{pod}",
                    backstop.policy_name(),
                    refused
                        .as_ref()
                        .map_or("admitted".to_owned(), |p| format!("refused for {p}"))
                ),
            }
        }
        // With the webhook serving the namespace, a pod that states nothing is admitted, defaulted.
        let policy = policy_text(backstop);
        let hook = Webhook::start(&env, &test, &policy, FailurePolicy::Fail).await;
        hook.wait_effective(&ns).await;
        let stored = ns.create_pod(bare_pod("served")).await;
        for field in Field::all().filter(|f| f.backstop() == Some(backstop)) {
            assert!(
                stored.pointer(&pointer(&places(field)[0], field)).is_some(),
                "{field}: {stored}"
            );
        }
        drop(hook);
        // Report-only namespaces are left alone.
        ns.label(INJECT, "report").await;
        eventually(
            "the backstop to leave a report-only namespace alone",
            DEADLINE,
            || async { ns.dry_run(missing).await.ok() },
        )
        .await;
    }
}
