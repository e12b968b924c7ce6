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
                    "initContainers": [{"name": "init-db", "image": "registry.k8s.io/pause:3.10"}],
                    "containers": [
                        {"name": "app", "image": "registry.k8s.io/pause:3.10"},
                        {"name": "sidecar", "image": "registry.k8s.io/pause:3.10"}
                    ]}}}
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

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Labels `ns` to enforce "restricted" and waits until the API server's PodSecurity admission does (it reads
/// namespaces from its own cache): a dry run of a privileged pod is refused.
async fn enforce_restricted(ns: &TestNamespace) {
    ns.label(ENFORCE, "restricted").await;
    let privileged = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "p", "image": "registry.k8s.io/pause:3.10",
            "securityContext": {"privileged": true}}]}})
    .to_string();
    eventually("PodSecurity to enforce restricted", DEADLINE, || {
        let out = ns.kubectl(
            &["create", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&privileged),
        );
        let refused = !out.status.success() && stderr(&out).contains("violates PodSecurity");
        async move { refused.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn restricted_namespace_admits_the_pods_of_a_plain_deployment_once_defaulted() {
    let Served {
        env,
        client,
        hook: _hook,
        ns,
    } = served("restricted", &restricted_policy(""), FailurePolicy::Fail).await;
    enforce_restricted(&ns).await;
    // A restricted namespace this webhook does not serve (not opted in).
    let plain = TestNamespace::create(
        &client,
        &env,
        "restricted",
        "e2e-restricted-plain",
        &[(ENFORCE, "restricted")],
    )
    .await;

    for namespace in [&ns.name, &plain.name] {
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &plain_deployment("web"))
            .await
            .unwrap();
    }
    let pods = ns.pods();
    let stored = eventually(
        "the Deployment's pod in the served namespace",
        DEADLINE,
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()?;
                list.items.into_iter().next()
            }
        },
    )
    .await;
    let pod = serde_json::to_value(stored).unwrap();
    let sc = &pod["spec"]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{pod}");
    assert_eq!(
        sc["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{pod}"
    );
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().unwrap() {
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"], false,
                "{c}"
            );
            assert_eq!(
                c["securityContext"]["capabilities"]["drop"],
                json!(["ALL"]),
                "{c}"
            );
        }
    }

    // The stored pod passes "restricted" on its own: a server-side dry run of it in the namespace the webhook
    // does not serve is admitted.
    let copy = as_new_pod(&pod, &plain.name);
    let out = plain.kubectl(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&copy.to_string()),
    );
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
    let Served {
        env,
        client,
        hook: _hook,
        ns,
    } = served(
        "debug-restricted",
        &restricted_policy(""),
        FailurePolicy::Fail,
    )
    .await;
    enforce_restricted(&ns).await;
    ns.create_pod(bare_pod("target")).await;

    let debug = |ns: &TestNamespace, profile: &str, container: &str| {
        ns.kubectl(
            &[
                "debug",
                "target",
                "-n",
                &ns.name,
                "--image",
                "busybox:1.36",
                "--container",
                container,
                "--profile",
                profile,
            ],
            None,
        )
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
    // The webhook learns of the namespace's label through its watch: retry (each attempt is refused and
    // leaves nothing behind) until its warning shows.
    let warning_text = "secure-defaults: Pod Security \"restricted\" refuses this: container \"tracer\" adds capability SYS_PTRACE";
    let err = eventually("the SYS_PTRACE warning", DEADLINE, || {
        let out = debug(&ns, "general", "tracer");
        assert!(!out.status.success(), "debug with SYS_PTRACE admitted");
        let err = stderr(&out);
        async move { err.contains(warning_text).then_some(err) }
    })
    .await;
    let warning = err.find(warning_text).unwrap_or_default();
    let refusal = err
        .find("violates PodSecurity")
        .unwrap_or_else(|| panic!("not refused by PodSecurity: {err}"));
    assert!(warning < refusal, "{err}");
    assert!(err.contains("SYS_PTRACE"), "{err}");
    assert!(!err.contains("allowPrivilegeEscalation != false"), "{err}");

    // Without the webhook, the same baseline debug container is refused: an explicitly compliant pod in a
    // restricted namespace that is not served.
    let plain = TestNamespace::create(
        &client,
        &env,
        "debug-restricted",
        "e2e-debug-restricted-plain",
        &[(ENFORCE, "restricted")],
    )
    .await;
    plain
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
            "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}
        }))
        .await;
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
    let Served {
        client: _client,
        hook: _hook,
        ns,
        ..
    } = served(
        "explicit-restricted",
        &restricted_policy(""),
        FailurePolicy::Fail,
    )
    .await;
    enforce_restricted(&ns).await;

    // An explicit root user stays, so PodSecurity refuses the pod; the warning naming it comes first.
    let root = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "db", "image": "registry.k8s.io/pause:3.10",
            "securityContext": {"runAsUser": 0}}]}});
    let err = eventually("the runAsUser 0 warning", DEADLINE, || {
        let out = ns.kubectl(
            &["create", "-n", &ns.name, "-f", "-"],
            Some(&root.to_string()),
        );
        assert!(!out.status.success(), "root pod admitted");
        let err = stderr(&out);
        async move {
            err.contains("container \"db\" sets runAsUser: 0")
                .then_some(err)
        }
    })
    .await;
    let warning = err
        .find("container \"db\" sets runAsUser: 0")
        .unwrap_or_default();
    let refusal = err
        .find("violates PodSecurity")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(warning < refusal, "{err}");

    // An added NET_BIND_SERVICE stays, and the drop list joins it.
    let web = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10",
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}});
    let stored = ns.create_pod(web).await;
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
    let Served {
        client: _client,
        hook: _hook,
        ns,
        ..
    } = served("follow-label", policy, FailurePolicy::Fail).await;
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
