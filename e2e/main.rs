//! End-to-end tests: a real kube-apiserver (with etcd and the controller manager) calls the real
//! `secure-defaults serve` over TLS, applies its patch and validates the result. Run with `make test-e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backstop;
mod clientauth;
mod helm;
mod manifests;
mod memory;
mod monitoring;
mod networkpolicy;
mod outage;
mod preview;
mod restricted;
mod rollout;
mod selfcerts;
mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::*;

fn sc(pod: &Value) -> &Value {
    &pod["spec"]["securityContext"]
}

fn annotation(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/annotations/secure-defaults.io~1defaulted")
        .and_then(Value::as_str)
}

#[tokio::test]
async fn opted_in_namespace_is_defaulted_and_others_are_not() {
    let env = cluster_env();
    let client = client(&env).await;
    let test = "opt-in";
    let hook = Webhook::start(
        &client,
        &env,
        test,
        &policy_yaml("opt-in", ""),
        FailurePolicy::Fail,
    )
    .await;
    let on =
        TestNamespace::create(&client, &env, test, "e2e-optin-on", &[(INJECT, "enabled")]).await;
    let off = TestNamespace::create(&client, &env, test, "e2e-optin-off", &[]).await;
    hook.wait_effective(&on).await;

    let pod = on.create_pod(bare_pod("bare")).await;
    assert_eq!(sc(&pod)["runAsUser"], 65532);
    assert_eq!(sc(&pod)["runAsGroup"], 65532);
    assert_eq!(sc(&pod)["fsGroup"], 65532);
    assert_eq!(sc(&pod)["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        annotation(&pod),
        Some(
            "runAsUser=65532,runAsGroup=65532,fsGroup=65532,fsGroupChangePolicy=OnRootMismatch,allowPrivilegeEscalation=false(app)"
        )
    );

    let untouched = off.create_pod(bare_pod("bare")).await;
    assert!(
        untouched["spec"]["securityContext"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{untouched}"
    );
    assert!(annotation(&untouched).is_none());
    assert!(
        untouched["spec"]["containers"][0]
            .get("securityContext")
            .is_none()
    );
}

#[tokio::test]
async fn cluster_wide_mode_honours_opt_out_and_exempt_namespaces() {
    let env = cluster_env();
    let client = client(&env).await;
    let test = "cluster-wide";
    let policy = policy_yaml("cluster-wide", "exemptNamespaces: [e2e-wide-exempt]\n");
    let hook = Webhook::start(&client, &env, test, &policy, FailurePolicy::Fail).await;
    let plain = TestNamespace::create(&client, &env, test, "e2e-wide-plain", &[]).await;
    let out =
        TestNamespace::create(&client, &env, test, "e2e-wide-out", &[(INJECT, "disabled")]).await;
    let exempt = TestNamespace::create(&client, &env, test, "e2e-wide-exempt", &[]).await;
    hook.wait_effective(&plain).await;

    assert_eq!(
        sc(&plain.create_pod(bare_pod("p")).await)["runAsUser"],
        65532
    );
    let opted_out = out.create_pod(bare_pod("p")).await;
    assert!(annotation(&opted_out).is_none(), "{opted_out}");
    // The exempt namespace is selected by the webhook configuration but exempted by the policy.
    let exempted = exempt.create_pod(bare_pod("p")).await;
    assert!(annotation(&exempted).is_none(), "{exempted}");
    assert!(sc(&exempted).get("runAsUser").is_none());
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains(
            r#"secure_defaults_admission_requests_total{operation="create",result="exempt"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn explicit_values_survive_and_every_pod_stays_valid() {
    let Served {
        client: _client,
        hook: _hook,
        ns,
        ..
    } = served("explicit", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let image = "registry.k8s.io/pause:3.10";

    // Falsy explicit values at pod and container level.
    let pod = ns
        .create_pod(json!({"metadata": {"name": "falsy"}, "spec": {
            "securityContext": {"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0},
            "containers": [{"name": "app", "image": image, "securityContext": {"allowPrivilegeEscalation": true}}]}}))
        .await;
    assert_eq!(sc(&pod)["runAsUser"], 0);
    assert_eq!(sc(&pod)["runAsGroup"], 0);
    assert_eq!(sc(&pod)["fsGroup"], 0);
    assert_eq!(sc(&pod)["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        true
    );

    // Privileged and CAP_SYS_ADMIN containers: the API server would refuse allowPrivilegeEscalation=false.
    let pod = ns
        .create_pod(json!({"metadata": {"name": "privileged"}, "spec": {"containers": [
            {"name": "vpn", "image": image, "securityContext": {"privileged": true}},
            {"name": "fuse", "image": image, "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
            {"name": "app", "image": image}]}}))
        .await;
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert!(
        containers[0]["securityContext"]
            .get("allowPrivilegeEscalation")
            .is_none()
    );
    assert!(
        containers[1]["securityContext"]
            .get("allowPrivilegeEscalation")
            .is_none()
    );
    assert_eq!(
        containers[2]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let warned = ns.kubectl(
        &[
            "run",
            "warned",
            "-n",
            &ns.name,
            "--image",
            image,
            "--privileged",
        ],
        None,
    );
    assert!(
        warned.status.success(),
        "{}",
        String::from_utf8_lossy(&warned.stderr)
    );
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("allowPrivilegeEscalation not defaulted"),
        "kubectl shows the webhook's warning: {}",
        String::from_utf8_lossy(&warned.stderr)
    );

    // A Windows pod gets nothing (these fields are invalid there).
    let pod = ns
        .create_pod(
            json!({"metadata": {"name": "windows"}, "spec": {"os": {"name": "windows"},
            "containers": [{"name": "app", "image": image}]}}),
        )
        .await;
    assert!(sc(&pod).get("runAsUser").is_none(), "{pod}");
    assert!(annotation(&pod).is_none());

    // Init containers are defaulted too.
    let pod = ns
        .create_pod(json!({"metadata": {"name": "init"}, "spec": {
            "initContainers": [{"name": "init-db", "image": image}],
            "containers": [{"name": "app", "image": image}]}}))
        .await;
    assert_eq!(
        pod["spec"]["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(
        annotation(&pod)
            .unwrap()
            .ends_with("allowPrivilegeEscalation=false(app,init-db)")
    );

    // Fields the engine does not model survive untouched.
    let pod = ns
        .create_pod(json!({"metadata": {"name": "unknown-fields"}, "spec": {
            "hostUsers": true,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "supplementalGroups": [4000],
                "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
            "containers": [{"name": "app", "image": image,
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                "securityContext": {"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}}))
        .await;
    assert_eq!(sc(&pod)["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc(&pod)["supplementalGroups"], json!([4000]));
    assert_eq!(sc(&pod)["sysctls"][0]["value"], "0");
    assert_eq!(
        pod["spec"]["containers"][0]["resizePolicy"][0]["resourceName"],
        "cpu"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(sc(&pod)["runAsUser"], 65532);
}

#[tokio::test]
async fn deployment_pods_are_defaulted() {
    let Served {
        client,
        hook: _hook,
        ns,
        ..
    } = served(
        "deployment",
        &policy_yaml("opt-in", ""),
        FailurePolicy::Fail,
    )
    .await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods = ns.pods();
    let list = eventually("the controller manager to create 2 pods", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            (list.items.len() == 2).then_some(list)
        }
    })
    .await;
    for pod in list.items {
        let pod = serde_json::to_value(pod).unwrap();
        assert_eq!(sc(&pod)["runAsUser"], 65532, "{pod}");
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
            false
        );
    }
}

#[tokio::test]
async fn ephemeral_debug_container_gets_only_allow_privilege_escalation() {
    let Served {
        client: _client,
        hook,
        ns,
        ..
    } = served("ephemeral", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let before = ns.create_pod(bare_pod("target")).await;

    let out = ns.kubectl(
        &[
            "debug",
            "target",
            "-n",
            &ns.name,
            "--image",
            "busybox:1.36",
            "--container",
            "debugger",
            "--profile",
            "general",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl debug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = serde_json::to_value(ns.pods().get("target").await.unwrap()).unwrap();
    let debugger = &after["spec"]["ephemeralContainers"][0];
    assert_eq!(debugger["name"], "debugger");
    assert_eq!(
        debugger["securityContext"]["allowPrivilegeEscalation"], false,
        "{after}"
    );
    assert_eq!(
        before["spec"]["securityContext"],
        after["spec"]["securityContext"]
    );
    assert_eq!(before["spec"]["containers"], after["spec"]["containers"]);
    assert_eq!(
        before["metadata"]["annotations"],
        after["metadata"]["annotations"]
    );
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains(
            r#"secure_defaults_admission_requests_total{operation="ephemeral",result="patched"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn server_side_dry_run_shows_the_defaulted_pod() {
    let Served {
        client: _client,
        hook: _hook,
        ns,
        ..
    } = served("dry-run", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let manifest = bare_pod("preview").to_string();
    let out = ns.kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(&manifest),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sc(&pod)["runAsUser"], 65532);
    assert!(
        ns.pods().get_opt("preview").await.unwrap().is_none(),
        "dry run stored the pod"
    );
}

#[tokio::test]
async fn policy_changes_apply_to_the_next_pods_and_invalid_ones_are_refused() {
    let Served {
        client: _client,
        hook,
        ns,
        ..
    } = served("reload", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    assert_eq!(
        sc(&ns.create_pod(bare_pod("first")).await)["runAsUser"],
        65532
    );

    hook.write_policy(&policy_yaml("opt-in", "").replace("runAsUser: 65532", "runAsUser: 10001"));
    let mut n = 0;
    eventually("the new policy to be used", Duration::from_secs(10), || {
        n += 1;
        let (ns, name) = (&ns, format!("second-{n}"));
        async move { (sc(&ns.create_pod(bare_pod(&name)).await)["runAsUser"] == 10001).then_some(()) }
    })
    .await;

    hook.write_policy(&policy_yaml("opt-in", "").replace("runAsUser: 65532", "runAsUser: 0"));
    eventually(
        "the invalid policy to be refused",
        Duration::from_secs(10),
        || {
            let hook = &hook;
            async move {
                hook.metrics()
                    .await
                    .contains(r#"secure_defaults_policy_reloads_total{result="failed"} 1"#)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        sc(&ns.create_pod(bare_pod("third")).await)["runAsUser"],
        10001
    );
    assert!(
        hook.log().contains("defaults.runAsUser: 0 is root"),
        "the log names the field"
    );
}

#[tokio::test]
async fn namespace_labelled_after_start_is_picked_up() {
    let env = cluster_env();
    let client = client(&env).await;
    let test = "late-label";
    let policy = policy_yaml(
        "opt-in",
        "namespaces:\n  - match: {labels: {matchLabels: {team: data}}}\n    set: {runAsUser: 20002}\n",
    );
    let hook = Webhook::start(&client, &env, test, &policy, FailurePolicy::Fail).await;
    let ns = TestNamespace::create(&client, &env, test, "e2e-late-label", &[]).await;
    let pod = ns.create_pod(bare_pod("before")).await;
    assert!(annotation(&pod).is_none());

    ns.label(INJECT, "enabled").await;
    ns.label("team", "data").await;
    let mut n = 0;
    eventually("the labels to take effect", DEADLINE, || {
        n += 1;
        let (ns, name) = (&ns, format!("after-{n}"));
        async move { (sc(&ns.create_pod(bare_pod(&name)).await)["runAsUser"] == 20002).then_some(()) }
    })
    .await;
    drop(hook);
}

#[tokio::test]
async fn webhook_down_fails_closed_or_open_as_configured() {
    let env = cluster_env();
    let client = client(&env).await;

    let test = "down-fail";
    let mut hook = Webhook::start(
        &client,
        &env,
        test,
        &policy_yaml("opt-in", ""),
        FailurePolicy::Fail,
    )
    .await;
    let served =
        TestNamespace::create(&client, &env, test, "e2e-down-fail", &[(INJECT, "enabled")]).await;
    let other = TestNamespace::create(&client, &env, test, "e2e-down-fail-other", &[]).await;
    hook.wait_effective(&served).await;
    hook.kill();
    let err = served
        .try_create_pod(bare_pod("refused"))
        .await
        .expect_err("pod created while the webhook is down");
    let message = err.to_string();
    assert!(
        message.contains("failed calling webhook") && message.contains("pods.secure-defaults.io"),
        "{message}"
    );
    other.create_pod(bare_pod("unaffected")).await;

    let test = "down-ignore";
    let mut hook = Webhook::start(
        &client,
        &env,
        test,
        &policy_yaml("opt-in", ""),
        FailurePolicy::Ignore,
    )
    .await;
    let served = TestNamespace::create(
        &client,
        &env,
        test,
        "e2e-down-ignore",
        &[(INJECT, "enabled")],
    )
    .await;
    hook.wait_effective(&served).await;
    hook.kill();
    let pod = served.create_pod(bare_pod("undefaulted")).await;
    assert!(annotation(&pod).is_none());
    assert!(sc(&pod).get("runAsUser").is_none());
}

/// What `serve` logs of the cluster at start (`secure_defaults::compat`) is what the API server offers: its
/// release, ValidatingAdmissionPolicy v1 (the backstops) and MutatingAdmissionPolicy served exactly where the table
/// says GA. Run on each release by `make test-compat`, it measures the README's compatibility table.
#[tokio::test]
async fn the_compatibility_table_matches_the_api_server() {
    let env = cluster_env();
    let client = client(&env).await;
    let info = client.apiserver_version().await.unwrap();
    let release = secure_defaults::compat::Release::parse(&info.major, &info.minor).unwrap();
    let features = release.features();
    let out = support::kubectl(
        &env.bin.join("kubectl"),
        &env.kubeconfig,
        &[
            "api-resources",
            "--api-group=admissionregistration.k8s.io",
            "-o",
            "wide",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resources = String::from_utf8_lossy(&out.stdout).into_owned();
    let served = |kind: &str| {
        resources
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == kind))
    };
    assert_eq!(
        served("ValidatingAdmissionPolicy"),
        features.validating_admission_policy,
        "{release}: {resources}"
    );
    assert_eq!(
        served("MutatingAdmissionPolicy"),
        features.mutating_admission_policy == secure_defaults::compat::Availability::Ga,
        "{release}: {resources}"
    );
    // Whether the namespace cache gets its initial list streamed in the watch (WatchList) or falls back to a
    // list, then a watch.
    let streamed = support::kubectl(
        &env.bin.join("kubectl"),
        &env.kubeconfig,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
        ],
        None,
    );
    eprintln!(
        "compat: {} ({release}): ValidatingAdmissionPolicy v1 {}, MutatingAdmissionPolicy {}, streamed initial list {}",
        info.git_version,
        features.validating_admission_policy,
        features.mutating_admission_policy,
        streamed.status.success()
    );
}
