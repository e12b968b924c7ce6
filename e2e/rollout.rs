//! Rolling out safely, against the real API server: report-only namespaces (what would be set, said and audited,
//! nothing set), per-workload exceptions, and `secure-defaults audit` of the pods created before the webhook.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::support::*;

/// The audit annotations the API server logged for the creation of pod `name` in `namespace`.
fn audited(env: &ClusterEnv, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let log = std::fs::read_to_string(env.dir.join("logs/audit.log")).ok()?;
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["verb"] == "create" && e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["namespace"] == namespace && e["objectRef"]["name"] == name)
        .find_map(|e| serde_json::from_value(e["annotations"].clone()).ok())
}

#[tokio::test]
async fn report_only_says_what_it_would_set_and_enforcing_then_sets_exactly_that() {
    let (hook, ns) = served("report", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let env = &ns.env;
    ns.label(INJECT, "report").await;
    // The webhook learns the new label from its watch: until then it still enforces. Dry runs change nothing.
    let probe = bare_pod("probe");
    eventually("report-only mode", DEADLINE, || {
        let out = ns.kubectl_create("--dry-run=server", &probe);
        let reported = stderr(&out).contains("secure-defaults (report): would set");
        async move { reported.then_some(()) }
    })
    .await;

    let out = ns.kubectl_create("", &bare_pod("watched"));
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains(
            "secure-defaults (report): would set runAsUser=65532, runAsGroup=65532, fsGroup=65532, fsGroupChangePolicy=OnRootMismatch, allowPrivilegeEscalation=false (app)"
        ),
        "{warning}"
    );
    let stored = serde_json::to_value(ns.pods().get("watched").await.unwrap()).unwrap();
    let unchanged = json!({
        "/spec/securityContext": {},
        "/spec/containers/0/securityContext": null,
        "/metadata/annotations": null
    });
    assert_at("stored unchanged", &stored, &unchanged);

    let annotations = eventually("the audit event of the reported pod", DEADLINE, || {
        let found = audited(env, &ns.name, "watched");
        async move { found }
    })
    .await;
    let would = annotations
        .get("pods.secure-defaults.io/would-default")
        .cloned()
        .unwrap_or_else(|| panic!("no would-default audit annotation in {annotations:?}"));
    assert!(
        !annotations.contains_key("pods.secure-defaults.io/defaulted"),
        "{annotations:?}"
    );
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains(r#"secure_defaults_fields_would_default_total{field="runAsUser"}"#)
            && metrics.contains(r#"result="reported""#),
        "{metrics}"
    );

    // Enforcing: the next pod gets exactly what the report said.
    ns.label(INJECT, "enabled").await;
    let mut attempt = 0;
    let enforced = eventually("enforcing mode", DEADLINE, || {
        attempt += 1;
        let name = format!("enforced-{attempt}");
        let ns = &ns;
        async move {
            let pod = ns.try_create_pod(bare_pod(&name)).await.ok()?;
            annotation(&pod).map(str::to_owned)
        }
    })
    .await;
    assert_eq!(enforced, would);
}

#[tokio::test]
async fn workloads_opt_out_of_the_fields_the_policy_allows() {
    // `hook` bound, so the server and its registration live until the end of the test.
    let (_hook, ns) = served(
        "exceptions",
        &policy_yaml("opt-in", "podExceptions: [fsGroup, fsGroupChangePolicy]\n"),
        FailurePolicy::Fail,
    )
    .await;
    let mut pod = bare_pod("database");
    pod["metadata"]["annotations"] =
        json!({"secure-defaults.io/skip": "fsGroup, fsGroupChangePolicy, runAsUser"});
    let out = ns.kubectl_create("", &pod);
    assert!(out.status.success(), "{}", stderr(&out));
    let warnings = stderr(&out);
    assert!(
        warnings.contains("fsGroup not defaulted: the pod opts out with secure-defaults.io/skip"),
        "{warnings}"
    );
    assert!(
        warnings
            .contains("asks to leave out runAsUser, which the policy's podExceptions do not allow"),
        "{warnings}"
    );
    let stored = serde_json::to_value(ns.pods().get("database").await.unwrap()).unwrap();
    let expected = json!({
        "/spec/securityContext/fsGroup": null,
        "/spec/securityContext/fsGroupChangePolicy": null,
        // A refused exception is ignored.
        "/spec/securityContext/runAsUser": 65532,
        "/metadata/annotations/secure-defaults.io~1exceptions": "fsGroup,fsGroupChangePolicy",
        "/metadata/annotations/secure-defaults.io~1defaulted":
            "runAsUser=65532,runAsGroup=65532,allowPrivilegeEscalation=false(app)"
    });
    assert_at("exceptions", &stored, &expected);
}

fn audit(env: &ClusterEnv, policy: &std::path::Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_secure-defaults"))
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["audit", "-o", "json", "--page-size", "100", "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "audit: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn audit_lists_the_pods_created_before_the_webhook_until_they_are_replaced() {
    let env = cluster_env().await;
    let client = &env.client;
    // Opted in, but created (with its pods) before any webhook serves it.
    let ns = TestNamespace::create(&env, "audit", "e2e-audit", &[(INJECT, "enabled")]).await;
    ns.create_pod(bare_pod("lonely")).await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        // Recreate: with no kubelet new pods never become ready, so a rolling update would keep the old ones.
        "spec": {"replicas": 2, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": IMAGE}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let policy = env.dir.join("audit-policy-e2e.yaml");
    std::fs::write(&policy, policy_yaml("opt-in", "")).unwrap();
    let ours = |groups: Vec<Value>| -> Vec<Value> {
        groups
            .into_iter()
            .filter(|g| g["namespace"] == "e2e-audit")
            .collect()
    };
    let found = eventually(
        "the audit to list the bare pod and both Deployment pods",
        DEADLINE,
        || {
            let groups = ours(audit(&env, &policy));
            async move {
                let pods: usize = groups
                    .iter()
                    .map(|g| g["pods"].as_array().map_or(0, Vec::len))
                    .sum();
                (pods == 3).then_some(groups)
            }
        },
    )
    .await;
    let owners: Vec<(&str, &str)> = found
        .iter()
        .map(|g| {
            (
                g["owner"]["kind"].as_str().unwrap(),
                g["owner"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        owners,
        vec![("Deployment", "web"), ("Pod", "lonely")],
        "{found:?}"
    );
    assert_eq!(
        found[0]["wouldSet"],
        "runAsUser=65532, runAsGroup=65532, fsGroup=65532, fsGroupChangePolicy=OnRootMismatch, allowPrivilegeEscalation=false (web)"
    );

    // With the webhook serving it, a rollout replaces the Deployment's pods with defaulted ones.
    let policy_text = policy_yaml("opt-in", "");
    let hook = Webhook::start(&env, "audit", &policy_text, FailurePolicy::Fail).await;
    hook.wait_effective(&ns).await;
    let out = ns.kubectl("rollout restart deployment/web", None);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = eventually("the audit to list only the bare pod", DEADLINE, || {
        let groups = ours(audit(&env, &policy));
        async move { (groups.len() == 1).then_some(groups) }
    })
    .await;
    assert_eq!(after[0]["owner"], json!({"kind": "Pod", "name": "lonely"}));
}

/// Creates `count` pods in each of `namespaces` namespaces, not served by any webhook, then audits them.
#[tokio::test]
#[ignore = "creates 5,000 pods: e2e/run.sh runs it alone, after the other tests"]
async fn audit_pages_through_five_thousand_pods_in_a_hundred_namespaces() {
    let env = cluster_env().await;
    let client = &env.client;
    let (namespaces, per) = (100, 50);
    let names: Vec<String> = (0..namespaces)
        .map(|i| format!("e2e-audit-scale-{i}"))
        .collect();
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for name in &names {
        let ns = serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {TEST_LABEL: "audit-scale", INJECT: "enabled"}}}))
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }
    // Deletes the namespaces whichever way the test ends.
    let _cleanup = OnDrop(|| {
        let delete = format!("delete namespace -l {TEST_LABEL}=audit-scale --wait=false");
        let _ = env.kubectl(&words(&delete), None);
    });
    // Pods are refused until the controller manager has made each namespace's `default` ServiceAccount, which
    // takes a while when a test before this one left thousands of namespaces for it to handle.
    eventually(
        "the namespaces' default ServiceAccounts",
        5 * DEADLINE,
        || {
            let (client, names) = (client, &names);
            async move {
                for name in names {
                    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                        Api::namespaced(client.clone(), name);
                    accounts.get_opt("default").await.ok().flatten()?;
                }
                Some(())
            }
        },
    )
    .await;
    let started = Instant::now();
    let pods: Vec<(String, String)> = names
        .iter()
        .flat_map(|ns| (0..per).map(move |p| (ns.clone(), format!("pod-{p}"))))
        .collect();
    let api = |ns: &str| Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
    let mut pending = futures_util::stream::iter(pods.into_iter().map(|(ns, name)| {
        let api = api(&ns);
        async move {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(bare_pod(&name)).unwrap();
            api.create(&PostParams::default(), &pod).await.map(drop)
        }
    }))
    .buffer_unordered(16);
    use futures_util::StreamExt as _;
    while let Some(result) = pending.next().await {
        result.expect("create pod");
    }
    eprintln!(
        "created {} pods in {:?}",
        namespaces * per,
        started.elapsed()
    );
    let policy = env.dir.join("audit-scale-policy.yaml");
    std::fs::write(&policy, policy_yaml("opt-in", "")).unwrap();
    let started = Instant::now();
    let groups = audit(&env, &policy);
    let took = started.elapsed();
    let listed: usize = groups
        .iter()
        .filter(|g| {
            g["namespace"]
                .as_str()
                .is_some_and(|n| n.starts_with("e2e-audit-scale-"))
        })
        .map(|g| g["pods"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(listed, namespaces * per);
    eprintln!("audit of {listed} pods in {namespaces} namespaces took {took:?}");
}
