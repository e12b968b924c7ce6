//! Pod Security "restricted" through defaulting, judged by the API server's own PodSecurity admission, which runs
//! after mutating admission: pods that say nothing about their security context are admitted in a namespace that
//! enforces "restricted" once secure-defaults has filled it in, and refused where it is not served.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use super::support::*;

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

fn restricted_policy(extra: &str) -> String {
    policy_yaml("opt-in", &format!("profile: restricted\n{extra}"))
}

/// A Deployment of two containers and an init container, none of which says anything about security.
fn plain_deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {
                    "initContainers": [{"name": "init-db", "image": IMAGE}],
                    "containers": [{"name": "app", "image": IMAGE}, {"name": "sidecar", "image": IMAGE}]}}}
    }))
    .unwrap()
}

/// The stored pod as a new object for another namespace: what the API server set on creation removed.
fn as_new_pod(pod: &Value, namespace: &str) -> Value {
    let mut pod = pod.clone();
    let meta = pod["metadata"].as_object_mut().unwrap();
    for key in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "ownerReferences",
        "generateName",
    ] {
        meta.remove(key);
    }
    meta.insert("name".into(), json!("copy"));
    meta.insert("namespace".into(), json!(namespace));
    pod.as_object_mut().unwrap().remove("status");
    pod
}

/// Labels `ns` to enforce "restricted" and waits until the API server's PodSecurity admission does (it reads
/// namespaces from its own cache): a dry run of a privileged pod is refused.
async fn enforce_restricted(ns: &TestNamespace) {
    ns.label(ENFORCE, "restricted").await;
    let container = json!({"name": "p", "image": IMAGE, "securityContext": {"privileged": true}});
    let privileged = pod("privileged", json!({"containers": [container]}));
    eventually("PodSecurity to enforce restricted", DEADLINE, || {
        let out = ns.kubectl_create("--dry-run=server", &privileged);
        let refused = !out.status.success() && stderr(&out).contains("violates PodSecurity");
        async move { refused.then_some(()) }
    })
    .await;
}

/// Runs `attempt` (a kubectl command that PodSecurity refuses) until secure-defaults' `warning` shows (the
/// webhook learns of a namespace's label through its watch; each refused attempt leaves nothing behind), and
/// checks that the warning comes before the refusal; returns what kubectl said.
async fn refused_after_warning(
    warning: &str,
    attempt: impl Fn() -> std::process::Output,
) -> String {
    let err = eventually(warning, DEADLINE, || {
        let out = attempt();
        assert!(!out.status.success(), "admitted: {warning}");
        let err = stderr(&out);
        async move { err.contains(warning).then_some(err) }
    })
    .await;
    let refusal = err
        .find("violates PodSecurity")
        .unwrap_or_else(|| panic!("not refused by PodSecurity: {err}"));
    assert!(err.find(warning).unwrap_or_default() < refusal, "{err}");
    err
}

#[tokio::test]
async fn restricted_namespace_admits_the_pods_of_a_plain_deployment_once_defaulted() {
    let (_hook, ns) = served("restricted", &restricted_policy(""), FailurePolicy::Fail).await;
    let (env, client) = (&ns.env, &ns.env.client);
    enforce_restricted(&ns).await;
    // A restricted namespace this webhook does not serve (not opted in).
    let restricted = [(ENFORCE, "restricted")];
    let plain = TestNamespace::create(env, "restricted", "e2e-restricted-plain", &restricted).await;

    for namespace in [&ns.name, &plain.name] {
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &plain_deployment("web"))
            .await
            .unwrap();
    }
    // The Deployment's pod in the served namespace.
    let pod = pods_labelled(&ns.pods(), "app=web", 1).await.remove(0);
    let expected = json!({
        "/spec/securityContext/runAsNonRoot": true,
        "/spec/securityContext/seccompProfile": {"type": "RuntimeDefault"}
    });
    assert_at("the Deployment's pod", &pod, &expected);
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().unwrap() {
            let expected = json!({
                "/securityContext/allowPrivilegeEscalation": false,
                "/securityContext/capabilities/drop": ["ALL"]
            });
            assert_at(list, c, &expected);
        }
    }

    // The stored pod passes "restricted" on its own: a server-side dry run of it in the namespace the webhook
    // does not serve is admitted.
    let copy = as_new_pod(&pod, &plain.name);
    let out = plain.kubectl_create("--dry-run=server -o json", &copy);
    assert!(out.status.success(), "dry run refused: {}", stderr(&out));

    // The control: the same Deployment in the unserved restricted namespace gets its pods refused.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &plain.name);
    let refusal = eventually(
        "the unserved ReplicaSet to report its refused pods",
        DEADLINE,
        || {
            let replica_sets = replica_sets.clone();
            async move {
                let list = replica_sets.list(&ListParams::default()).await.ok()?;
                list.items.iter().find_map(|rs| {
                    rs.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find_map(|c| {
                            (c.type_ == "ReplicaFailure")
                                .then(|| c.message.clone().unwrap_or_default())
                        })
                })
            }
        },
    )
    .await;
    assert!(refusal.contains("violates PodSecurity"), "{refusal}");
    assert!(
        plain
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn kubectl_debug_works_in_a_restricted_namespace_with_the_baseline_profile() {
    let test = "debug-restricted";
    let (_hook, ns) = served(test, &restricted_policy(""), FailurePolicy::Fail).await;
    enforce_restricted(&ns).await;
    ns.create_pod(bare_pod("target")).await;

    let debug = |ns: &TestNamespace, profile: &str, container: &str| {
        let debug = format!(
            "debug target --image busybox:1.36 --container {container} --profile {profile}"
        );
        ns.kubectl(&debug, None)
    };
    let out = debug(&ns, "baseline", "debugger");
    assert!(out.status.success(), "kubectl debug: {}", stderr(&out));
    let after = serde_json::to_value(ns.pods().get("target").await.unwrap()).unwrap();
    let debugger = &after["spec"]["ephemeralContainers"][0];
    assert_eq!(debugger["name"], "debugger");
    assert_eq!(
        debugger["securityContext"],
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
        "{after}"
    );

    // kubectl's default profile adds SYS_PTRACE, which "restricted" never allows: refused for that alone, and
    // secure-defaults' warning naming the container and the capability comes first.
    let warning = "secure-defaults: Pod Security \"restricted\" refuses this: container \"tracer\" adds capability SYS_PTRACE";
    let err = refused_after_warning(warning, || debug(&ns, "general", "tracer")).await;
    assert!(!err.contains("allowPrivilegeEscalation != false"), "{err}");

    // Without the webhook, the same baseline debug container is refused: an explicitly compliant pod in a
    // restricted namespace that is not served.
    let name = "e2e-debug-restricted-plain";
    let plain = TestNamespace::create(&ns.env, test, name, &[(ENFORCE, "restricted")]).await;
    let compliant = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": IMAGE,
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
    });
    plain.create_pod(pod("target", compliant)).await;
    let out = debug(&plain, "baseline", "debugger");
    assert!(!out.status.success(), "admitted without the webhook");
    assert!(
        stderr(&out).contains("violates PodSecurity"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn explicit_values_survive_in_a_restricted_namespace() {
    let test = "explicit-restricted";
    let (_hook, ns) = served(test, &restricted_policy(""), FailurePolicy::Fail).await;
    enforce_restricted(&ns).await;

    // An explicit root user stays, so PodSecurity refuses the pod; the warning naming it comes first.
    let root = json!({"name": "db", "image": IMAGE, "securityContext": {"runAsUser": 0}});
    let root = pod("root", json!({"containers": [root]}));
    let warning = "container \"db\" sets runAsUser: 0";
    refused_after_warning(warning, || ns.kubectl_create("", &root)).await;

    // An added NET_BIND_SERVICE stays, and the drop list joins it.
    let web = json!({"name": "web", "image": IMAGE,
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}});
    let stored = ns
        .create_pod(pod("web", json!({"containers": [web]})))
        .await;
    assert_eq!(
        stored["spec"]["containers"][0]["securityContext"]["capabilities"],
        json!({"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}),
        "{stored}"
    );
}

#[tokio::test]
async fn a_namespace_relabelled_restricted_gets_the_restricted_fields_without_a_policy_change() {
    // The defaults list none of the restricted fields; the namespace's own label asks for them.
    let policy = "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\nfollowPodSecurityLabels: true\ndefaults:\n  runAsUser: 65532\n";
    let (_hook, ns) = served("follow-label", policy, FailurePolicy::Fail).await;
    ns.label(ENFORCE, "baseline").await;
    let before = ns.create_pod(bare_pod("before")).await;
    assert_eq!(
        before["spec"]["securityContext"],
        json!({"runAsUser": 65532}),
        "{before}"
    );

    ns.label(ENFORCE, "restricted").await;
    let mut attempt = 0;
    let after = eventually("a pod with the restricted fields", DEADLINE, || {
        attempt += 1;
        let name = format!("after-{attempt}");
        let ns = &ns;
        async move {
            let pod = ns.try_create_pod(bare_pod(&name)).await.ok()?;
            (pod["spec"]["securityContext"]["runAsNonRoot"] == true).then_some(pod)
        }
    })
    .await;
    assert_eq!(
        after["spec"]["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{after}"
    );
    assert_eq!(
        after["spec"]["containers"][0]["securityContext"],
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
        "{after}"
    );
}
