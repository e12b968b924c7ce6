//! End-to-end tests: a real kube-apiserver (with etcd and the controller manager) calls the real
//! `secure-defaults serve` over TLS, applies its patch and validates the result. Run with `make test-e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backstop;
mod clientauth;
mod helm;
mod images;
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
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn opted_in_namespace_is_defaulted_and_others_are_not() {
    let env = cluster_env().await;
    let test = "opt-in";
    let policy = policy_yaml("opt-in", "");
    let hook = Webhook::start(&env, test, &policy, FailurePolicy::Fail).await;
    let on = TestNamespace::create(&env, test, "e2e-optin-on", &[(INJECT, "enabled")]).await;
    let off = TestNamespace::create(&env, test, "e2e-optin-off", &[]).await;
    hook.wait_effective(&on).await;

    let pod = on.create_pod(bare_pod("bare")).await;
    assert_at(
        "opted in",
        &pod,
        &json!({
            "/spec/securityContext/runAsUser": 65532,
            "/spec/securityContext/runAsGroup": 65532,
            "/spec/securityContext/fsGroup": 65532,
            "/spec/securityContext/fsGroupChangePolicy": "OnRootMismatch",
            "/spec/containers/0/securityContext/allowPrivilegeEscalation": false,
            "/metadata/annotations/secure-defaults.io~1defaulted":
                "runAsUser=65532,runAsGroup=65532,fsGroup=65532,fsGroupChangePolicy=OnRootMismatch,allowPrivilegeEscalation=false(app)"
        }),
    );

    let untouched = off.create_pod(bare_pod("bare")).await;
    assert!(
        sc(&untouched).as_object().is_none_or(|m| m.is_empty()),
        "{untouched}"
    );
    assert_at(
        "not opted in",
        &untouched,
        &json!({"/metadata/annotations/secure-defaults.io~1defaulted": null, "/spec/containers/0/securityContext": null}),
    );
}

#[tokio::test]
async fn cluster_wide_mode_honours_opt_out_and_exempt_namespaces() {
    let env = cluster_env().await;
    let test = "cluster-wide";
    let policy = policy_yaml("cluster-wide", "exemptNamespaces: [e2e-wide-exempt]\n");
    let hook = Webhook::start(&env, test, &policy, FailurePolicy::Fail).await;
    let plain = TestNamespace::create(&env, test, "e2e-wide-plain", &[]).await;
    let out = TestNamespace::create(&env, test, "e2e-wide-out", &[(INJECT, "disabled")]).await;
    let exempt = TestNamespace::create(&env, test, "e2e-wide-exempt", &[]).await;
    hook.wait_effective(&plain).await;

    let pod = plain.create_pod(bare_pod("p")).await;
    assert_eq!(sc(&pod)["runAsUser"], 65532);
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
    let (_hook, ns) = served("explicit", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let app = json!([{"name": "app", "image": IMAGE}]);
    // (pod, its spec, what the API server stores at these pointers)
    let cases = [
        // Falsy explicit values at pod and container level.
        (
            "falsy",
            json!({"securityContext": {"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0},
                "containers": [{"name": "app", "image": IMAGE, "securityContext": {"allowPrivilegeEscalation": true}}]}),
            json!({
                "/spec/securityContext/runAsUser": 0,
                "/spec/securityContext/runAsGroup": 0,
                "/spec/securityContext/fsGroup": 0,
                "/spec/securityContext/fsGroupChangePolicy": "OnRootMismatch",
                "/spec/containers/0/securityContext/allowPrivilegeEscalation": true
            }),
        ),
        // Privileged and CAP_SYS_ADMIN containers: the API server would refuse allowPrivilegeEscalation=false.
        (
            "privileged",
            json!({"containers": [
                {"name": "vpn", "image": IMAGE, "securityContext": {"privileged": true}},
                {"name": "fuse", "image": IMAGE, "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
                {"name": "app", "image": IMAGE}]}),
            json!({
                "/spec/containers/0/securityContext/allowPrivilegeEscalation": null,
                "/spec/containers/1/securityContext/allowPrivilegeEscalation": null,
                "/spec/containers/2/securityContext/allowPrivilegeEscalation": false
            }),
        ),
        // A Windows pod gets nothing (these fields are invalid there).
        (
            "windows",
            json!({"os": {"name": "windows"}, "containers": app}),
            json!({"/spec/securityContext/runAsUser": null, "/metadata/annotations/secure-defaults.io~1defaulted": null}),
        ),
        // Init containers are defaulted too.
        (
            "init",
            json!({"initContainers": [{"name": "init-db", "image": IMAGE}], "containers": app}),
            json!({
                "/spec/initContainers/0/securityContext/allowPrivilegeEscalation": false,
                "/metadata/annotations/secure-defaults.io~1defaulted":
                    "runAsUser=65532,runAsGroup=65532,fsGroup=65532,fsGroupChangePolicy=OnRootMismatch,allowPrivilegeEscalation=false(app,init-db)"
            }),
        ),
        // Fields the engine does not model survive untouched.
        (
            "unknown-fields",
            json!({"hostUsers": true,
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "supplementalGroups": [4000],
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                "containers": [{"name": "app", "image": IMAGE,
                    "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                    "securityContext": {"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}),
            json!({
                "/spec/securityContext/seccompProfile/type": "RuntimeDefault",
                "/spec/securityContext/supplementalGroups": [4000],
                "/spec/securityContext/sysctls/0/value": "0",
                "/spec/securityContext/runAsUser": 65532,
                "/spec/containers/0/resizePolicy/0/resourceName": "cpu",
                "/spec/containers/0/securityContext/readOnlyRootFilesystem": true,
                "/spec/containers/0/securityContext/allowPrivilegeEscalation": false
            }),
        ),
    ];
    for (name, spec, expected) in cases {
        assert_at(name, &ns.create_pod(pod(name, spec)).await, &expected);
    }

    let warned = ns.kubectl(&format!("run warned --image {IMAGE} --privileged"), None);
    assert!(warned.status.success(), "{}", stderr(&warned));
    assert!(
        stderr(&warned).contains("allowPrivilegeEscalation not defaulted"),
        "kubectl shows the webhook's warning: {}",
        stderr(&warned)
    );
}

#[tokio::test]
async fn deployment_pods_are_defaulted() {
    let (_hook, ns) = served(
        "deployment",
        &policy_yaml("opt-in", ""),
        FailurePolicy::Fail,
    )
    .await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": IMAGE}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(ns.env.client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    for pod in pods_labelled(&ns.pods(), "app=web", 2).await {
        let expected = json!({
            "/spec/securityContext/runAsUser": 65532,
            "/spec/containers/0/securityContext/allowPrivilegeEscalation": false
        });
        assert_at("a Deployment's pod", &pod, &expected);
    }
}

#[tokio::test]
async fn ephemeral_debug_container_gets_only_allow_privilege_escalation() {
    let (hook, ns) = served("ephemeral", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let before = ns.create_pod(bare_pod("target")).await;

    let debug = "debug target --image busybox:1.36 --container debugger --profile general";
    let out = ns.kubectl(debug, None);
    assert!(out.status.success(), "kubectl debug: {}", stderr(&out));
    let after = serde_json::to_value(ns.pods().get("target").await.unwrap()).unwrap();
    let debugger = &after["spec"]["ephemeralContainers"][0];
    assert_eq!(debugger["name"], "debugger");
    assert_eq!(
        debugger["securityContext"]["allowPrivilegeEscalation"], false,
        "{after}"
    );
    // Nothing else of the pod changes.
    for pointer in [
        "/spec/securityContext",
        "/spec/containers",
        "/metadata/annotations",
    ] {
        assert_eq!(before.pointer(pointer), after.pointer(pointer), "{pointer}");
    }
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
    let (_hook, ns) = served("dry-run", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
    let manifest = bare_pod("preview").to_string();
    let out = ns.kubectl("apply --dry-run=server -o json -f -", Some(&manifest));
    assert!(out.status.success(), "{}", stderr(&out));
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sc(&pod)["runAsUser"], 65532);
    assert!(
        ns.pods().get_opt("preview").await.unwrap().is_none(),
        "dry run stored the pod"
    );
}

#[tokio::test]
async fn policy_changes_apply_to_the_next_pods_and_invalid_ones_are_refused() {
    let (hook, ns) = served("reload", &policy_yaml("opt-in", ""), FailurePolicy::Fail).await;
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
    let refused = r#"secure_defaults_policy_reloads_total{result="failed"} 1"#;
    eventually(
        "the invalid policy to be refused",
        Duration::from_secs(10),
        || async { hook.metrics().await.contains(refused).then_some(()) },
    )
    .await;
    assert_eq!(
        sc(&ns.create_pod(bare_pod("third")).await)["runAsUser"],
        10001
    );
    // The log is written by its own thread, after the failure is counted.
    eventually(
        "the log to name the refused field",
        Duration::from_secs(10),
        || async {
            hook.log()
                .contains("defaults.runAsUser: 0 is root")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn namespace_labelled_after_start_is_picked_up() {
    let env = cluster_env().await;
    let test = "late-label";
    let policy = policy_yaml(
        "opt-in",
        "namespaces:\n  - match: {labels: {matchLabels: {team: data}}}\n    set: {runAsUser: 20002}\n",
    );
    let hook = Webhook::start(&env, test, &policy, FailurePolicy::Fail).await;
    let ns = TestNamespace::create(&env, test, "e2e-late-label", &[]).await;
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
    for (test, failure) in [
        ("down-fail", FailurePolicy::Fail),
        ("down-ignore", FailurePolicy::Ignore),
    ] {
        let (mut hook, ns) = served(test, &policy_yaml("opt-in", ""), failure).await;
        let other_name = format!("{}-other", ns.name);
        let other = TestNamespace::create(&ns.env, test, &other_name, &[]).await;
        hook.kill();
        match failure {
            FailurePolicy::Fail => {
                let message = ns
                    .try_create_pod(bare_pod("refused"))
                    .await
                    .expect_err("pod created while the webhook is down");
                assert!(
                    message.contains("failed calling webhook")
                        && message.contains("pods.secure-defaults.io"),
                    "{message}"
                );
            }
            FailurePolicy::Ignore => {
                let pod = ns.create_pod(bare_pod("undefaulted")).await;
                assert!(annotation(&pod).is_none());
                assert!(sc(&pod).get("runAsUser").is_none());
            }
        }
        // Namespaces the webhook does not select never notice.
        other.create_pod(bare_pod("unaffected")).await;
    }
}

/// What `serve` logs of the cluster at start (`secure_defaults::compat`) is what the API server offers: its
/// release, ValidatingAdmissionPolicy v1 (the backstops) and MutatingAdmissionPolicy served exactly where the table
/// says GA. Run on each release by `make test-compat`, it measures the README's compatibility table.
#[tokio::test]
async fn the_compatibility_table_matches_the_api_server() {
    let env = cluster_env().await;
    let client = &env.client;
    let info = client.apiserver_version().await.unwrap();
    let release = secure_defaults::compat::Release::parse(&info.major, &info.minor).unwrap();
    let features = release.features();
    let group = "--api-group=admissionregistration.k8s.io";
    let resources = env.kubectl_ok(&["api-resources", group, "-o", "wide"], None);
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
    let streamed = env.kubectl(
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
