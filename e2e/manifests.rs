//! The install manifests (`manifests/`), end to end. Every overlay renders with kubectl's built-in kustomize
//! and agrees with itself on the mode. The default overlays (opt-in, cluster-wide) take their certificates
//! from the server itself (components/self-managed-certs): no certificate on the pod's filesystem, RBAC
//! restricted to the objects the server writes, nothing of cert-manager. The cert-manager overlay carries
//! cert-manager's wiring and differs from the opt-in overlay in nothing else. On the API server, the default
//! overlays apply as they are (no cert-manager there), send pods to the real server exactly where their mode
//! says, their ValidatingAdmissionPolicy backstop rejects what an unreachable webhook let through, and their
//! RBAC lets the real server, run with the Deployment's own arguments as its ServiceAccount, issue and inject
//! its certificate.
//!
//! The overlays hold cluster-scoped objects that exist once per cluster (the MutatingWebhookConfiguration
//! `secure-defaults`, the namespace `secure-defaults`, ...), so everything that applies them runs in one test,
//! [`manifests_install_route_pods_and_backstop`]. It applies `e2e/manifests/<mode>`, which is the real
//! overlay with the webhook pointed at the test server and narrowed to this test's namespaces (the other
//! tests share the cluster); the test checks that nothing else differs.

use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

use secure_defaults::fields::Field;

use crate::support::*;

/// The default overlays, named after their mode; both use self-managed certificates.
pub(crate) const MODES: [&str; 2] = ["opt-in", "cluster-wide"];
/// The overlay for clusters that run cert-manager (opt-in mode, certificates from cert-manager).
pub(crate) const CERT_MANAGER: &str = "cert-manager";
/// The value of the test label that e2e/manifests/components/isolate narrows the manifests' selectors to.
const ISOLATION: &str = "manifests";
const BACKSTOP: &str = "secure-defaults backstop";
const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "secure-defaults",
];
/// Where the Deployment's args point the server at its mounted process config.
pub(crate) const CONFIG_FILE: &str = "/etc/secure-defaults/config/secure-defaults.yaml";
/// The base's args; a certificate component appends its flags after them.
pub(crate) const BASE_ARGS: [&str; 3] = ["serve", "--config", CONFIG_FILE];
/// Self-managed mode's objects: Role, RoleBinding, ClusterRole and ClusterRoleBinding all carry this name.
pub(crate) const CERTS_RBAC: &str = "secure-defaults-certs";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:secure-defaults:secure-defaults";

/// Where an overlay's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Certificates {
    SelfManaged,
    CertManager,
}

// ---------------------------------------------------------------------------------------------------------
// Rendering

/// The documents as one `v1/List`, which kubectl apply, get and delete all take.
pub(crate) fn as_list(docs: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

pub(crate) fn try_find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

pub(crate) fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    try_find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

pub(crate) fn find_mut<'a>(docs: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

pub(crate) fn webhook(docs: &[Value]) -> &Value {
    let config = find(docs, "MutatingWebhookConfiguration", "secure-defaults");
    let hooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1, "{config}");
    &hooks[0]
}

pub(crate) fn binding_selector(docs: &[Value]) -> &Value {
    &find(
        docs,
        "ValidatingAdmissionPolicyBinding",
        "secure-defaults-backstop",
    )["spec"]["matchResources"]["namespaceSelector"]
}

pub(crate) fn policy_text(docs: &[Value]) -> String {
    find(docs, "ConfigMap", "secure-defaults-policy")["data"]["policy.yaml"]
        .as_str()
        .expect("ConfigMap secure-defaults-policy has key policy.yaml")
        .to_owned()
}

pub(crate) fn policy_value(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("policy YAML")
}

pub(crate) fn deployment(docs: &[Value]) -> &Value {
    find(docs, "Deployment", "secure-defaults")
}

/// The mode a namespaceSelector encodes with its secure-defaults.io/inject expression.
pub(crate) fn selector_mode(selector: &Value) -> &'static str {
    let expressions: Vec<&Value> = selector["matchExpressions"]
        .as_array()
        .expect("matchExpressions")
        .iter()
        .filter(|e| e["key"] == INJECT)
        .collect();
    assert_eq!(
        expressions.len(),
        1,
        "exactly one {INJECT} expression in {selector}"
    );
    let e = expressions[0];
    match (e["operator"].as_str(), &e["values"]) {
        (Some("In"), values) if *values == json!(["enabled", "report"]) => "opt-in",
        (Some("NotIn"), values) if *values == json!(["disabled"]) => "cluster-wide",
        _ => panic!("{e} is neither the opt-in nor the cluster-wide expression"),
    }
}

pub(crate) fn container(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]["containers"][0]
}

/// The process config file the Deployment reads: (its text, parsed).
pub(crate) fn process_config(docs: &[Value]) -> (String, Value) {
    let pod = &deployment(docs)["spec"]["template"]["spec"];
    let config_map = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("a config volume from a ConfigMap");
    let text = find(docs, "ConfigMap", config_map)["data"]["secure-defaults.yaml"]
        .as_str()
        .expect("key secure-defaults.yaml")
        .to_owned();
    let parsed = serde_saphyr::from_str(&text).expect("process config YAML");
    (text, parsed)
}

pub(crate) fn pod_spec(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]
}

pub(crate) fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

pub(crate) fn volumes(pod: &Value) -> &[Value] {
    pod["volumes"].as_array().map_or(&[], Vec::as_slice)
}

pub(crate) fn mounts(c: &Value) -> &[Value] {
    c["volumeMounts"].as_array().map_or(&[], Vec::as_slice)
}

/// A process config key as the server sees it: the config file's value, else the server's built-in default
/// (src/config.rs), which the e2e suite cannot import.
fn config_or_default<'a>(config: &'a Value, key: &str, default: &'a str) -> &'a str {
    config[key].as_str().unwrap_or(default)
}

/// The rendering's RBAC objects (Roles, ClusterRoles and their bindings).
fn rbac_objects(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["apiVersion"] == "rbac.authorization.k8s.io/v1")
        .collect()
}

fn is_cert_manager(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

pub(crate) fn cert_manager_objects(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| is_cert_manager(d))
        .map(|d| format!("{} {}", d["kind"], d["metadata"]["name"]))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The rendering alone

/// Every overlay renders; in each, the policy's mode, the webhook's namespaceSelector and the backstop
/// binding's namespaceSelector agree; the policies of the base and of both modes differ only in `mode`; the
/// rendered objects keep the promises the manifests make (hardened Deployment that would pass its own backstop,
/// shutdown budget, mounts that allow live reload, webhook shape); the base carries no certificate, the
/// default overlays the self-managed one and the cert-manager overlay cert-manager's, and the cert-manager
/// overlay is the opt-in one with nothing else changed.
#[tokio::test]
async fn manifests_modes_agree_and_the_deployment_keeps_its_own_rules() {
    let env = cluster_env().await;
    let dir = tmp_dir("manifests-render");

    let base = render(&env, "manifests/base");
    check_base_has_no_certificate(&base);
    let (base_config, _) = process_config(&base);
    let mut base_policy = policy_value(&policy_text(&base));
    assert_eq!(
        base_policy["mode"], "opt-in",
        "the base's policy is the default mode"
    );
    base_policy.as_object_mut().unwrap().remove("mode");

    let overlays = [
        (MODES[0], MODES[0], Certificates::SelfManaged),
        (MODES[1], MODES[1], Certificates::SelfManaged),
        (CERT_MANAGER, "opt-in", Certificates::CertManager),
    ];
    let mut rendered = Vec::new();
    for (overlay, mode, certificates) in overlays {
        let docs = render(&env, format!("manifests/overlays/{overlay}"));
        check_rendering(overlay, mode, &docs);
        let text = policy_text(&docs);
        let mut policy = policy_value(&text);
        // The real server accepts the policy the ConfigMap holds.
        check_policy(&dir.join(format!("{overlay}-policy.yaml")), &text);
        policy.as_object_mut().unwrap().remove("mode");
        assert_eq!(
            base_policy, policy,
            "{overlay}: the policy differs from the base's in more than `mode`"
        );
        assert_eq!(
            process_config(&docs).0,
            base_config,
            "{overlay}: the process config is the base's"
        );
        match certificates {
            Certificates::SelfManaged => check_self_managed(overlay, &docs),
            Certificates::CertManager => check_cert_manager(overlay, &docs),
        }
        rendered.push(docs);
    }

    // The cert-manager overlay is the opt-in overlay with the other certificate source, and nothing else.
    assert_eq!(
        without_certificates(&rendered[0]),
        without_certificates(&rendered[2]),
        "{CERT_MANAGER} and {} differ in more than the certificate source",
        MODES[0]
    );
}

/// The base is certificate-neutral: the certificate components add everything about the certificate, so
/// neither has to take anything away.
fn check_base_has_no_certificate(base: &[Value]) {
    let c = container(base);
    assert_eq!(args(c), BASE_ARGS, "base: no certificate flags");
    assert!(
        volumes(pod_spec(base))
            .iter()
            .all(|v| v["name"] != "tls" && v.get("secret").is_none()),
        "base: no certificate volume: {}",
        pod_spec(base)["volumes"]
    );
    assert!(
        mounts(c).iter().all(|m| m["name"] != "tls"),
        "base: no certificate mount: {}",
        c["volumeMounts"]
    );
    let (_, config) = process_config(base);
    for key in ["tls_cert", "tls_key", "self_managed_certs"] {
        assert!(
            config.get(key).is_none(),
            "base: {key} is the certificate component's: {config}"
        );
    }
    assert!(try_find(base, "Role", CERTS_RBAC).is_none());
    assert!(try_find(base, "ClusterRole", CERTS_RBAC).is_none());
    assert_eq!(cert_manager_objects(base), Vec::<String>::new());
    let config = find(base, "MutatingWebhookConfiguration", "secure-defaults");
    assert!(config["metadata"].get("annotations").is_none(), "{config}");
}

/// What every rendering of `mode` keeps, the chart's too: the policy's mode, the webhook's namespaceSelector and
/// the backstop binding's agree; the webhook, the Deployment and the RBAC keep their rules; the image is the
/// release's.
pub(crate) fn check_rendering(what: &str, mode: &str, docs: &[Value]) {
    let policy = policy_value(&policy_text(docs));
    assert_eq!(policy["mode"], mode, "{what}: the policy's mode");
    let hook = webhook(docs);
    assert_eq!(
        selector_mode(&hook["namespaceSelector"]),
        mode,
        "{what}: the webhook's namespaceSelector"
    );
    assert_eq!(
        binding_selector(docs),
        &hook["namespaceSelector"],
        "{what}: the backstop binding selects exactly the webhook's namespaces"
    );
    check_webhook(what, hook);
    check_deployment(what, docs);
    check_rbac_is_least_privilege(what, docs);
    let image = "ghcr.io/secure-defaults/secure-defaults:0.1.0";
    assert_eq!(container(docs)["image"], image, "{what}");
}

fn check_webhook(mode: &str, hook: &Value) {
    let expected = json!({
        "/name": "pods.secure-defaults.io",
        "/clientConfig": {"service": {"namespace": "secure-defaults", "name": "secure-defaults", "path": "/mutate", "port": 443}},
        "/rules": [
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"},
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}
        ],
        "/sideEffects": "None",
        "/admissionReviewVersions": ["v1"],
        "/timeoutSeconds": 3,
        "/reinvocationPolicy": "IfNeeded",
        "/failurePolicy": "Ignore"
    });
    assert_at(mode, hook, &expected);
    let system = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": SYSTEM_NAMESPACES});
    assert!(
        hook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .contains(&system),
        "{mode}: system namespaces not excluded: {}",
        hook["namespaceSelector"]
    );
    let conditions: Vec<&str> = hook["matchConditions"]
        .as_array()
        .expect("matchConditions")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(conditions, ["not-a-mirror-pod", "not-a-windows-pod"]);
}

fn check_deployment(mode: &str, docs: &[Value]) {
    let deploy = deployment(docs);
    let pod = pod_spec(docs);
    let c = container(docs);
    let (_, config) = process_config(docs);
    check_hardening(mode, docs);
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(deploy["spec"]["replicas"], 2, "{mode}");
    assert_eq!(&deploy["spec"]["selector"]["matchLabels"], labels, "{mode}");
    let expected = json!({
        // Scheduling: its own priority class, spread over nodes.
        "/priorityClassName": "secure-defaults-critical",
        "/topologySpreadConstraints/0/topologyKey": "kubernetes.io/hostname",
        "/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm/topologyKey":
            "kubernetes.io/hostname",
        "/terminationGracePeriodSeconds": 30
    });
    assert_at(mode, pod, &expected);
    let expected = json!({
        // No CPU limit, memory bounded.
        "/resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "/livenessProbe/httpGet": {"path": "/healthz", "port": "admin", "scheme": "HTTP"},
        "/readinessProbe/httpGet": {"path": "/readyz", "port": "admin", "scheme": "HTTP"},
        // A preStop sleep action: there is no shell in the image.
        "/lifecycle/preStop/sleep/seconds": 5
    });
    assert_at(mode, c, &expected);
    // No configuration in the environment either: the process config is the ConfigMap's, plus the args.
    for var in c["env"].as_array().into_iter().flatten() {
        assert!(
            !var["name"]
                .as_str()
                .unwrap()
                .starts_with("SECURE_DEFAULTS_"),
            "{var}"
        );
    }
    let class = find(docs, "PriorityClass", "secure-defaults-critical");
    assert_at(
        mode,
        class,
        &json!({"/value": 1_000_000_000, "/globalDefault": false}),
    );
    assert_eq!(
        &find(docs, "PodDisruptionBudget", "secure-defaults")["spec"],
        &json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": {"matchLabels": labels}})
    );
    let service = find(docs, "Service", "secure-defaults");
    let expected = json!({
        "/spec/selector": labels,
        "/spec/ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}]
    });
    assert_at(mode, service, &expected);

    // Ports, and the process config they must agree with.
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((port("https"), port("admin")), (8443, 8080));
    let expected = json!({
        "/listen": "0.0.0.0:8443",
        "/admin_listen": "0.0.0.0:8080",
        "/log_format": "json",
        "/shutdown_timeout_seconds": 10,
        "/policy": "/etc/secure-defaults/policy/policy.yaml"
    });
    assert_at(mode, &config, &expected);

    // Shutdown fits the grace period: preStop sleep, then the server's drain and in-flight deadline.
    let seconds = |v: &Value| v.as_u64().unwrap();
    let shutdown = seconds(&c["lifecycle"]["preStop"]["sleep"]["seconds"])
        + seconds(&config["drain_seconds"])
        + seconds(&config["shutdown_timeout_seconds"]);
    assert!(
        shutdown + 5 <= 30,
        "{mode}: shutdown takes up to {shutdown}s of a 30s grace period"
    );

    // The args point at the mounted config (the certificate component's flags follow). Every mount is a
    // read-only whole-directory mount: the kubelet never updates subPath mounts, and the server reloads the
    // policy (and, from files, the certificate) live.
    assert_eq!(
        args(c)[..BASE_ARGS.len()],
        BASE_ARGS,
        "{mode}: {}",
        c["args"]
    );
    for m in mounts(c) {
        assert!(m.get("subPath").is_none(), "{mode}: {m}");
        assert_eq!(m["readOnly"], true, "{mode}: {m}");
    }
    assert_eq!(
        mount_path(c, "config"),
        Some(CONFIG_FILE.rsplit_once('/').unwrap().0)
    );
    assert_eq!(mount_path(c, "policy"), Some("/etc/secure-defaults/policy"));
    assert_eq!(
        volume(pod, "policy"),
        Some(&json!({"name": "policy", "configMap": {"name": "secure-defaults-policy"}}))
    );
}

/// What no value of the chart changes: the Deployment passes the backstop it ships, were its namespace served,
/// and runs hardened. No service links (the server ignores SECURE_DEFAULTS_SERVICE_HOST & co., see
/// manifests_process_config_starts_the_server, but the environment stays what the manifests write).
pub(crate) fn check_hardening(what: &str, docs: &[Value]) {
    let pod = pod_spec(docs);
    assert_eq!(crate::backstop::missing(pod), Vec::<Field>::new(), "{what}");
    let expected = json!({
        "/securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "/containers/0/securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        "/enableServiceLinks": false
    });
    assert_at(what, pod, &expected);
}

pub(crate) fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    mounts(c)
        .iter()
        .find(|m| m["name"] == volume)
        .map(|m| m["mountPath"].as_str().unwrap())
}

pub(crate) fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    volumes(pod).iter().find(|v| v["name"] == name)
}

/// No wildcard anywhere; only the ServiceAccount secure-defaults is bound; nothing cluster-wide beyond reading
/// namespaces and, in self-managed mode, the one webhook configuration; Secrets and Leases only in the
/// webhook's own namespace.
fn check_rbac_is_least_privilege(overlay: &str, docs: &[Value]) {
    let base_rules = json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]);
    assert_eq!(
        find(docs, "ClusterRole", "secure-defaults")["rules"],
        base_rules,
        "{overlay}: the base only reads namespaces"
    );
    for object in rbac_objects(docs) {
        let what = format!(
            "{overlay}: {} {}",
            object["kind"], object["metadata"]["name"]
        );
        match object["kind"].as_str().unwrap() {
            "Role" | "ClusterRole" => {
                for rule in object["rules"].as_array().unwrap() {
                    for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                        assert!(
                            rule[field]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .all(|v| v.as_str().is_some_and(|v| !v.contains('*'))),
                            "{what}: wildcard in {rule}"
                        );
                    }
                    if object["kind"] == "ClusterRole" {
                        assert!(
                            !rule["resources"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|r| r == "secrets" || r == "leases"),
                            "{what}: Secrets or Leases cluster-wide: {rule}"
                        );
                    }
                }
                if object["kind"] == "Role" {
                    assert_eq!(object["metadata"]["namespace"], "secure-defaults", "{what}");
                }
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                assert_eq!(
                    object["subjects"],
                    json!([{"kind": "ServiceAccount", "name": "secure-defaults", "namespace": "secure-defaults"}]),
                    "{what}"
                );
                let role_kind = object["roleRef"]["kind"].as_str().unwrap();
                let role = object["roleRef"]["name"].as_str().unwrap();
                assert!(
                    try_find(docs, role_kind, role).is_some(),
                    "{what}: binds the missing {role_kind} {role}"
                );
            }
            kind => panic!("{what}: unexpected RBAC kind {kind}"),
        }
    }
    assert_eq!(pod_spec(docs)["serviceAccountName"], "secure-defaults");
    find(docs, "ServiceAccount", "secure-defaults");
}

/// The default overlays: the server issues its certificate into a Secret it reads through the API. The
/// Deployment passes --self-managed-certs and the pod's namespace and name, mounts no Secret at all (it would
/// hold the CA's private key), keeps its service account token (the server needs it), and the RBAC grants
/// exactly the calls the server makes on exactly the objects its process config names.
pub(crate) fn check_self_managed(overlay: &str, docs: &[Value]) {
    let c = container(docs);
    let pod = pod_spec(docs);
    assert_eq!(
        args(c)[BASE_ARGS.len()..],
        ["--self-managed-certs"],
        "{overlay}: {}",
        c["args"]
    );
    let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
    for (var, field) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        assert!(
            env.contains(&&json!({"name": var, "valueFrom": {"fieldRef": {"fieldPath": field}}})),
            "{overlay}: {var}: {env:?}"
        );
    }
    assert_ne!(
        pod["automountServiceAccountToken"], false,
        "{overlay}: the server calls the API with its token"
    );
    for v in volumes(pod) {
        assert!(
            v.get("secret").is_none() && v.get("projected").is_none(),
            "{overlay}: a Secret on the pod's filesystem in self-managed mode: {v}"
        );
    }
    assert!(volume(pod, "tls").is_none(), "{overlay}");
    assert_eq!(mount_path(c, "tls"), None, "{overlay}");
    assert!(
        mounts(c).iter().all(|m| !m["mountPath"]
            .as_str()
            .unwrap()
            .starts_with("/etc/secure-defaults/tls")),
        "{overlay}: {}",
        c["volumeMounts"]
    );
    assert_eq!(
        cert_manager_objects(docs),
        Vec::<String>::new(),
        "{overlay}"
    );
    let hook_config = find(docs, "MutatingWebhookConfiguration", "secure-defaults");
    assert!(
        hook_config["metadata"].get("annotations").is_none(),
        "{overlay}: no cert-manager injection in self-managed mode: {hook_config}"
    );

    // The names the server uses (process config or its defaults) are the names the RBAC grants.
    let (_, config) = process_config(docs);
    let secret = config_or_default(&config, "tls_secret", "secure-defaults-tls");
    let service = config_or_default(&config, "service", "secure-defaults");
    let lease = format!("{service}-certificates");
    let webhook_configuration =
        config_or_default(&config, "webhook_configuration", "secure-defaults");
    find(docs, "Service", service);
    find(docs, "MutatingWebhookConfiguration", webhook_configuration);
    let role = find(docs, "Role", CERTS_RBAC);
    assert_eq!(role["metadata"]["namespace"], "secure-defaults");
    assert_eq!(
        role["rules"],
        json!([
            // create cannot be restricted by name; everything else is.
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get", "list", "watch", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "update"]}
        ]),
        "{overlay}"
    );
    assert_eq!(
        find(docs, "ClusterRole", CERTS_RBAC)["rules"],
        json!([{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [webhook_configuration], "verbs": ["get", "update"]}]),
        "{overlay}"
    );
    for (binding, kind) in [
        ("RoleBinding", "Role"),
        ("ClusterRoleBinding", "ClusterRole"),
    ] {
        assert_eq!(
            find(docs, binding, CERTS_RBAC)["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": CERTS_RBAC}),
            "{overlay}"
        );
    }
}

/// The cert-manager overlay: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate for the
/// Service's name, its CA injected by cert-manager, its Secret (never the CA's) mounted whole, and the server
/// pointed at the files in that mount. Nothing of the self-managed mode.
pub(crate) fn check_cert_manager(overlay: &str, docs: &[Value]) {
    let hook_config = find(docs, "MutatingWebhookConfiguration", "secure-defaults");
    let from = hook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("cert-manager CA injection annotation");
    let (namespace, name) = from.split_once('/').unwrap();
    let serving = find(docs, "Certificate", name);
    assert_eq!(serving["metadata"]["namespace"], namespace, "{overlay}");
    assert!(
        serving["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("secure-defaults.secure-defaults.svc")),
        "{serving}"
    );
    let issuer = find(
        docs,
        "Issuer",
        serving["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca = find(docs, "Certificate", "secure-defaults-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"]);
    assert_eq!(
        find(
            docs,
            "Issuer",
            ca["spec"]["issuerRef"]["name"].as_str().unwrap()
        )["spec"],
        json!({"selfSigned": {}})
    );

    // The serving certificate's Secret, mounted whole; never optional (a pod waits for cert-manager rather
    // than starting without a certificate); the CA's Secret, with its private key, is not mounted.
    let secret = serving["spec"]["secretName"].as_str().unwrap();
    assert_eq!(secret, "secure-defaults-tls");
    check_certificate_from_secret(overlay, docs, secret);
    let secret_volumes: Vec<&Value> = volumes(pod_spec(docs))
        .iter()
        .filter(|v| v.get("secret").is_some() || v.get("projected").is_some())
        .collect();
    assert_eq!(secret_volumes.len(), 1, "{overlay}: {secret_volumes:?}");
    assert_ne!(ca["spec"]["secretName"], secret);
}

/// A serving certificate from the Secret `secret` (cert-manager's, or one provided): mounted whole as volume
/// `tls`, its files named by the flags alone (the process config names no certificate), and none of what only
/// self-managed certificates need (the downward-API variables, RBAC on Secrets).
pub(crate) fn check_certificate_from_secret(what: &str, docs: &[Value], secret: &str) {
    let c = container(docs);
    assert_eq!(
        volume(pod_spec(docs), "tls"),
        Some(&json!({"name": "tls", "secret": {"secretName": secret}})),
        "{what}"
    );
    let dir = mount_path(c, "tls").expect("the tls volume mounted");
    // tls.crt and tls.key are the key names of cert-manager's Secrets.
    let (cert, key) = (format!("{dir}/tls.crt"), format!("{dir}/tls.key"));
    assert_eq!(
        args(c)[BASE_ARGS.len()..],
        ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()],
        "{what}: {}",
        c["args"]
    );
    let (_, config) = process_config(docs);
    assert!(config.get("tls_cert").is_none() && config.get("tls_key").is_none());
    assert!(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["name"] != "POD_NAMESPACE" && e["name"] != "POD_NAME"),
        "{what}: {}",
        c["env"]
    );
    for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
        assert!(
            try_find(docs, kind, CERTS_RBAC).is_none(),
            "{what}: the server needs no access to Secrets with a certificate from a Secret ({kind})"
        );
    }
}

/// The rendering with either certificate source's additions taken out: cert-manager's objects and
/// annotation, the self-managed RBAC, the certificate flags, the downward-API variables, the tls volume.
fn without_certificates(docs: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = docs
        .iter()
        .filter(|d| !is_cert_manager(d))
        .filter(|d| d["metadata"]["name"] != CERTS_RBAC)
        .cloned()
        .collect();
    let metadata =
        &mut find_mut(&mut out, "MutatingWebhookConfiguration", "secure-defaults")["metadata"];
    if let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove("cert-manager.io/inject-ca-from");
        if annotations.is_empty() {
            metadata.as_object_mut().unwrap().remove("annotations");
        }
    }
    let pod = &mut find_mut(&mut out, "Deployment", "secure-defaults")["spec"]["template"]["spec"];
    if let Some(volumes) = pod.get_mut("volumes").and_then(Value::as_array_mut) {
        volumes.retain(|v| v["name"] != "tls");
    }
    let c = &mut pod["containers"][0];
    c["args"].as_array_mut().unwrap().truncate(BASE_ARGS.len());
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        env.retain(|e| e["name"] != "POD_NAMESPACE" && e["name"] != "POD_NAME");
    }
    if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| m["name"] != "tls");
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// The process config

/// The variables Kubernetes gives a pod for a Service in its namespace when service links are on: for the
/// Service `secure-defaults` they share the server's SECURE_DEFAULTS_ prefix.
fn service_links(service: &Value, cluster_ip: &str) -> Vec<(String, String)> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_uppercase()
        .replace('-', "_");
    let ports = service["spec"]["ports"].as_array().unwrap();
    let mut vars = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let number = port["port"].as_u64().unwrap();
        let proto = port["protocol"].as_str().unwrap_or("TCP");
        let url = format!("{}://{cluster_ip}:{number}", proto.to_lowercase());
        if i == 0 {
            vars.push((format!("{name}_SERVICE_HOST"), cluster_ip.to_owned()));
            vars.push((format!("{name}_SERVICE_PORT"), number.to_string()));
            vars.push((format!("{name}_PORT"), url.clone()));
        }
        if let Some(port_name) = port["name"].as_str() {
            vars.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    port_name.to_uppercase().replace('-', "_")
                ),
                number.to_string(),
            ));
        }
        let prefix = format!("{name}_PORT_{number}_{proto}");
        vars.push((prefix.clone(), url));
        vars.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
        vars.push((format!("{prefix}_PORT"), number.to_string()));
        vars.push((format!("{prefix}_ADDR"), cluster_ip.to_owned()));
    }
    vars
}

/// The process config in the ConfigMap is one the real server starts with (only addresses and file paths,
/// which differ on this machine, are overridden by flags), also with the service-link variables Kubernetes
/// would inject for the `secure-defaults` Service were service links on: they are not configuration. A
/// genuinely unknown SECURE_DEFAULTS_ variable still stops the server, with a one-line error naming it.
#[tokio::test]
async fn manifests_process_config_starts_the_server() {
    let env = cluster_env().await;
    let dir = tmp_dir("manifests-config");
    let docs = render(&env, format!("manifests/overlays/{}", MODES[0]));
    let (config, _) = process_config(&docs);
    let config_path = dir.join("secure-defaults.yaml");
    std::fs::write(&config_path, config).unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy_text(&docs)).unwrap();
    let certs = certs(&dir);

    let serve = |admin_port: u16| {
        let args = ["serve", "--config", config_path.to_str().unwrap()];
        let mut cmd = serve(&env, &args, free_port(), admin_port);
        cmd.arg("--tls-cert")
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .arg("--policy")
            .arg(&policy_path);
        cmd
    };

    let port = free_port();
    let log = dir.join("plain.log");
    drop(Server::ready(serve(port), port, log, "with the manifests' config").await);

    let links = service_links(find(&docs, "Service", "secure-defaults"), "10.96.0.10");
    let names: Vec<&str> = links.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "SECURE_DEFAULTS_SERVICE_HOST",
        "SECURE_DEFAULTS_SERVICE_PORT",
        "SECURE_DEFAULTS_SERVICE_PORT_HTTPS",
        "SECURE_DEFAULTS_PORT",
        "SECURE_DEFAULTS_PORT_443_TCP",
        "SECURE_DEFAULTS_PORT_443_TCP_PROTO",
        "SECURE_DEFAULTS_PORT_443_TCP_PORT",
        "SECURE_DEFAULTS_PORT_443_TCP_ADDR",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    let port = free_port();
    let mut cmd = serve(port);
    cmd.envs(links.iter().map(|(k, v)| (k, v)));
    let what = format!("with the service-link variables {names:?}");
    drop(Server::ready(cmd, port, dir.join("service-links.log"), &what).await);

    // A typo is still configuration gone wrong: refused at once, in one line that names it.
    let mut cmd = serve(free_port());
    cmd.env("SECURE_DEFAULTS_LISTN", "127.0.0.1:1");
    let mut server = Server::spawn(cmd, 0, dir.join("unknown.log"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SECURE_DEFAULTS_LISTN did not stop the server:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval, bounded by the deadline above
    };
    let stderr = server.log();
    assert!(!status.success(), "{status}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: invalid configuration")
            && lines[0].contains("unknown field")
            && lines[0].contains("LISTN")
            && lines[0].contains("SECURE_DEFAULTS_"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Installed in the cluster

/// Removes what the install test put in the cluster, also when it fails.
struct Installed<'a> {
    env: &'a ClusterEnv,
    /// `v1/List`s applied, by role: deleted in reverse order.
    applied: Vec<String>,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let env = self.env;
        for list in self.applied.iter().rev() {
            let delete = words("delete -f - --ignore-not-found --wait=false");
            let _ = env.kubectl(&delete, Some(list));
        }
        let crds = repo().join("e2e/manifests/cert-manager-crds.yaml");
        let crds = format!(
            "delete -f {} --ignore-not-found --wait=false",
            crds.display()
        );
        let _ = env.kubectl(&words(&crds), None);
        let pods = format!("delete pods -n kube-system -l {TEST_LABEL}={ISOLATION} --wait=false");
        let _ = env.kubectl(&words(&pods), None);
        let labels = format!("label namespace kube-system {TEST_LABEL}- {INJECT}-");
        let _ = env.kubectl(&words(&labels), None);
    }
}

/// The rendering of `e2e/manifests/<mode>` with the test server's address filled in, after checking that it
/// differs from the real overlay only in the webhook's address and the test's isolation expressions.
fn test_rendering(env: &ClusterEnv, mode: &str, hook: &Webhook) -> Vec<Value> {
    let real = render(env, format!("manifests/overlays/{mode}"));
    let mut test = render(env, format!("e2e/manifests/{mode}"));
    assert_eq!(real.len(), test.len());
    let isolation = json!({"key": TEST_LABEL, "operator": "In", "values": [ISOLATION]});
    for (r, t) in real.iter().zip(&test) {
        let mut t = t.clone();
        let without_isolation = |selector: &mut Value| {
            let expressions = selector["matchExpressions"].as_array_mut().unwrap();
            assert_eq!(expressions.last(), Some(&isolation), "{mode}");
            expressions.pop();
        };
        match (t["kind"].as_str().unwrap(), t["metadata"]["name"].as_str()) {
            ("MutatingWebhookConfiguration", Some("secure-defaults")) => {
                let w = &mut t["webhooks"][0];
                assert_eq!(
                    w["clientConfig"],
                    json!({"url": "https://127.0.0.1:PORT/mutate", "caBundle": "CA_BUNDLE"})
                );
                w["clientConfig"] = r["webhooks"][0]["clientConfig"].clone();
                without_isolation(&mut w["namespaceSelector"]);
            }
            ("ValidatingAdmissionPolicyBinding", Some("secure-defaults-backstop")) => {
                without_isolation(&mut t["spec"]["matchResources"]["namespaceSelector"]);
            }
            _ => {}
        }
        assert_eq!(
            r, &t,
            "{mode}: the test overlay changes more than the webhook's address"
        );
    }
    let config = find_mut(&mut test, "MutatingWebhookConfiguration", "secure-defaults");
    config["webhooks"][0]["clientConfig"] = json!({
        "url": format!("https://127.0.0.1:{}/mutate", hook.port),
        "caBundle": base64::engine::general_purpose::STANDARD.encode(&hook.certs.ca_pem),
    });
    test
}

/// Admission requests the server has answered so far (it counts before it replies, so a pod creation that
/// returned has been counted).
async fn requests(hook: &Webhook) -> u64 {
    hook.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("secure_defaults_admission_requests_total{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A pod labelled for this test, so that those it leaves in kube-system are found.
fn labelled(name: &str, spec: Value) -> Value {
    let mut pod = pod(name, spec);
    pod["metadata"]["labels"] = json!({TEST_LABEL: ISOLATION});
    pod
}

fn bare(name: &str) -> Value {
    labelled(
        name,
        json!({"containers": [{"name": "app", "image": IMAGE}]}),
    )
}

/// For each default overlay (both with self-managed certificates): apply it (webhook pointed at a test server
/// started with the overlay's own policy) to an API server without cert-manager, check every object is
/// stored, that pods in the mode's namespaces are defaulted and all others (kube-system included, whatever its
/// labels) never reach the server, that matchConditions keep Windows and mirror pods away from it; then stop
/// the server and check the backstop: with failurePolicy Ignore the webhook is skipped, and the
/// ValidatingAdmissionPolicy rejects undefaulted pods (and only those) in served namespaces. The second mode is
/// applied over the first, as a mode switch would be. Then: the installed RBAC lets the real server, run with
/// the Deployment's args and environment as its ServiceAccount, issue its certificate; and the cert-manager
/// overlay is refused without cert-manager and accepted with (stand-ins for) its CRDs.
#[tokio::test]
async fn manifests_install_route_pods_and_backstop() {
    let env = cluster_env().await;
    let client = &env.client;
    // The chart's install test creates the same cluster-wide objects.
    let _cluster_scoped = CLUSTER_SCOPED.lock().await;
    let mut installed = Installed {
        env: &env,
        applied: Vec::new(),
    };
    // The default overlays need nothing from cert-manager: its kinds are unknown here until the end.
    let crd = env.kubectl(&["get", "crd", "certificates.cert-manager.io"], None);
    assert!(
        !crd.status.success(),
        "cert-manager's CRDs already installed"
    );
    // kube-system carries every label the selectors could want: only the exclusion by name keeps it out.
    let labels = format!("{TEST_LABEL}={ISOLATION} {INJECT}=enabled");
    env.kubectl_ok(
        &words(&format!("label --overwrite namespace kube-system {labels}")),
        None,
    );
    let ns = async |name: &str, labels: &[(&str, &str)]| {
        TestNamespace::create(&env, ISOLATION, name, labels).await
    };
    let enabled = ns("e2e-manifests-enabled", &[(INJECT, "enabled")]).await;
    let plain = ns("e2e-manifests-plain", &[]).await;
    let disabled = ns("e2e-manifests-disabled", &[(INJECT, "disabled")]).await;
    let report = ns("e2e-manifests-report", &[(INJECT, "report")]).await;

    let mut applied = Vec::new();
    for (index, mode) in MODES.into_iter().enumerate() {
        let (served, unserved): (Vec<&TestNamespace>, Vec<&TestNamespace>) = match mode {
            "opt-in" => (vec![&enabled], vec![&plain, &disabled]),
            _ => (vec![&plain, &enabled], vec![&disabled]),
        };
        let policy = policy_text(&render(&env, format!("manifests/overlays/{mode}")));
        let test = format!("manifests-{mode}");
        let mut hook = Webhook::start(&env, &test, &policy, FailurePolicy::Ignore).await;

        // 1. Every object is accepted and stored, at the first attempt, without cert-manager.
        let docs = test_rendering(&env, mode, &hook);
        let list = as_list(&docs);
        installed.applied = vec![list.clone()];
        env.kubectl_ok(&["apply", "-f", "-"], Some(&list));
        let stored = env.kubectl_ok(&["get", "-f", "-", "-o", "name"], Some(&list));
        assert_eq!(stored.lines().count(), docs.len(), "{stored}");
        if index == 0 {
            deployment_pods_are_created(client, &docs).await;
        }

        // 2. Routing: the mode's namespaces are defaulted, the others never reach the server.
        routing_follows_the_mode(client, mode, &served, &unserved, &report, &hook).await;

        // 3. The backstop, with the webhook down (failurePolicy Ignore: the API server skips it).
        hook.kill();
        backstop_holds_with_the_webhook_down(client, mode, &served, &unserved, &report, &docs)
            .await;
        drop(hook);
        applied = docs;
    }

    self_managed_rbac_suffices(&env, client, &applied).await;
    cert_manager_overlay_needs_cert_manager(&env).await;
    drop(installed);
}

/// Step 2 of [`manifests_install_route_pods_and_backstop`]: the mode's namespaces are defaulted, a report-only one
/// is reported on, and the others (kube-system, Windows and mirror pods too) never reach the server.
async fn routing_follows_the_mode(
    client: &Client,
    mode: &str,
    served: &[&TestNamespace],
    unserved: &[&TestNamespace],
    report: &TestNamespace,
    hook: &Webhook,
) {
    for ns in served {
        let what = format!("{mode}: the manifests' webhook serving {}", ns.name);
        eventually(&what, DEADLINE, || async {
            annotation(&ns.dry_run(&bare("probe")).await.ok()?).map(drop)
        })
        .await;
        let stored = ns.create_pod(bare(&format!("{mode}-bare"))).await;
        let shipped = defaulted(&bare("bare"), &parse_policy(&shipped_policy()));
        assert_eq!(
            annotation(&stored),
            annotation(&shipped),
            "{what}: {stored}"
        );
    }
    // A report-only namespace is sent in both modes, and its pods are stored as they were written.
    let probe = bare("probe");
    let what = format!(
        "{mode}: the manifests' webhook reporting in {}",
        report.name
    );
    eventually(&what, DEADLINE, || async {
        let out = report.kubectl_create("--dry-run=server", &probe);
        (out.status.success() && stderr(&out).contains("secure-defaults (report): would set"))
            .then_some(())
    })
    .await;
    let stored = report.create_pod(bare(&format!("{mode}-report"))).await;
    assert_eq!(annotation(&stored), None, "{mode}: {stored}");
    assert!(sc(&stored)["runAsUser"].is_null(), "{mode}: {stored}");
    // Not sent: the server's request count stays put, and a served pod right after adds exactly one.
    let served_ns = &served[0].name;
    let mut not_sent: Vec<(&str, Value, String)> = unserved
        .iter()
        .map(|ns| {
            (
                ns.name.as_str(),
                bare("bare"),
                format!("a pod in {}", ns.name),
            )
        })
        .collect();
    not_sent.extend([
        ("kube-system", bare("bare"), "a pod in kube-system".into()),
        (served_ns, windows("windows"), "a Windows pod".into()),
        (served_ns, mirror("mirror"), "a mirror pod".into()),
    ]);
    for (ns, pod, what) in not_sent {
        let what = format!("{mode}: {what}");
        let before = requests(hook).await;
        let created = create(client, ns, &pod, true)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(annotation(&created), None, "{what}: {created}");
        assert_eq!(requests(hook).await, before, "{what} reached the server");
        let probe = create(client, served_ns, &bare("probe"), true)
            .await
            .unwrap();
        assert!(annotation(&probe).is_some(), "{probe}");
        assert_eq!(requests(hook).await, before + 1, "{what}");
    }
}

/// Step 3 of [`manifests_install_route_pods_and_backstop`]: with the webhook down, the backstop refuses what it
/// would have defaulted in the served namespaces, and leaves report-only, unserved and system namespaces alone.
async fn backstop_holds_with_the_webhook_down(
    client: &Client,
    mode: &str,
    served: &[&TestNamespace],
    unserved: &[&TestNamespace],
    report: &TestNamespace,
    docs: &[Value],
) {
    for ns in served {
        let what = format!("{mode}: the backstop rejecting in {}", ns.name);
        eventually(&what, DEADLINE, || async {
            let refusal = ns.dry_run(&bare("bare")).await.err()?;
            refusal.contains(BACKSTOP).then_some(())
        })
        .await;
    }
    backstop_cases(client, mode, &served[0].name, docs).await;
    // Report-only namespaces are never defaulted, so the backstop leaves their pods alone.
    report.dry_run(&bare("bare")).await.unwrap_or_else(|e| {
        panic!("{mode}: the backstop refused a pod in a report-only namespace: {e}")
    });
    for ns in unserved {
        ns.dry_run(&bare("bare"))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {} is not served: {e}", ns.name));
    }
    let name = format!("e2e-manifests-{mode}");
    let stored = create(client, "kube-system", &bare(&name), false)
        .await
        .unwrap_or_else(|e| panic!("{mode}: kube-system is never served: {e}"));
    assert_eq!(annotation(&stored), None);
}

fn windows(name: &str) -> Value {
    labelled(
        name,
        json!({"os": {"name": "windows"}, "containers": [{"name": "app", "image": IMAGE}]}),
    )
}

fn mirror(name: &str) -> Value {
    let mut pod = bare(name);
    pod["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "e2e"});
    pod["spec"]["nodeName"] = json!("e2e-node");
    pod
}

/// The Deployment's ReplicaSet creates its 2 pods: the namespace's restricted Pod Security level admits them
/// and the PriorityClass resolves (no kubelet runs them). As stored, they carry the service account token the
/// self-managed server calls the API with, and no Secret volume.
async fn deployment_pods_are_created(client: &Client, docs: &[Value]) {
    let selector = deployment(docs)["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "secure-defaults");
    for p in pods_labelled(&pods, &selector, 2).await {
        let spec = &p["spec"];
        assert_eq!(spec["priority"], 1_000_000_000);
        assert_eq!(spec["enableServiceLinks"], false);
        let volumes = volumes(spec);
        assert!(
            volumes.iter().all(|v| v.get("secret").is_none()),
            "a Secret volume: {volumes:?}"
        );
        assert!(
            volumes.iter().any(|v| v["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.get("serviceAccountToken").is_some())),
            "no service account token: {volumes:?}"
        );
    }
}

/// With the webhook down, in a served namespace: the installed backstop names what a bare pod lacks, and admits
/// the pod the webhook would have stored and the Deployment's own pod template. (Case by case, from the field
/// table, the backstops are proven in `backstop.rs`.)
async fn backstop_cases(client: &Client, mode: &str, ns: &str, docs: &[Value]) {
    let err = create(client, ns, &bare("p"), true)
        .await
        .expect_err(&format!(
            "{mode}: a bare pod admitted with the webhook down"
        ));
    assert!(
        err.contains(BACKSTOP) && err.contains("container(s) \"app\""),
        "{mode}: {err}"
    );
    let mut own = deployment(docs)["spec"]["template"]["spec"].clone();
    // Only what would not resolve in a test namespace: its service account.
    own.as_object_mut().unwrap().remove("serviceAccountName");
    let webhooks = defaulted(&bare("p"), &parse_policy(&shipped_policy()));
    let admitted = [
        ("the webhook's pod", webhooks),
        ("the Deployment's own pod template", labelled("p", own)),
    ];
    for (what, pod) in admitted {
        create(client, ns, &pod, true)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {what} rejected: {e}"));
    }
}

/// The default overlay's RBAC, as installed with it, is what the real server needs in self-managed mode, and
/// not more: the ServiceAccount may do exactly the named things, and the server run with the Deployment's own
/// args, environment (downward API resolved as the kubelet would) and process config, with that
/// ServiceAccount's own token and no certificate file anywhere, turns ready, writes its Secret and Lease and
/// injects the caBundle into the manifests' webhook configuration.
async fn self_managed_rbac_suffices(env: &ClusterEnv, client: &Client, docs: &[Value]) {
    rbac_grants_exactly_the_named_things(env, docs).await;
    the_server_runs_on_that_rbac_alone(env, client, docs).await;
}

/// What the ServiceAccount may do (`kubectl auth can-i` in the namespace secure-defaults). A list or watch
/// restricted to one name is what the API server authorises for a request carrying the field selector
/// metadata.name=<that name>; `can-i list secrets/NAME` asks exactly that.
const ALLOWED: [&str; 11] = [
    "watch namespaces",
    "get namespaces/anything",
    "create secrets",
    "get secrets/secure-defaults-tls",
    "list secrets/secure-defaults-tls",
    "watch secrets/secure-defaults-tls",
    "update secrets/secure-defaults-tls",
    "create leases.coordination.k8s.io",
    "update leases.coordination.k8s.io/secure-defaults-certificates",
    "update mutatingwebhookconfigurations.admissionregistration.k8s.io/secure-defaults",
    "get mutatingwebhookconfigurations.admissionregistration.k8s.io/secure-defaults",
];

/// What the ServiceAccount may not do.
const DENIED: [&str; 15] = [
    "get secrets/other",
    "list secrets",
    "watch secrets",
    "watch secrets/other",
    "patch secrets/secure-defaults-tls",
    "delete secrets/secure-defaults-tls",
    "get secrets/secure-defaults-tls -n default",
    "update leases.coordination.k8s.io/other",
    "delete leases.coordination.k8s.io/secure-defaults-certificates",
    "update mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
    "delete mutatingwebhookconfigurations.admissionregistration.k8s.io/secure-defaults",
    "update validatingadmissionpolicies.admissionregistration.k8s.io/secure-defaults-backstop",
    "update validatingadmissionpolicybindings.admissionregistration.k8s.io/secure-defaults-backstop",
    "update namespaces/secure-defaults",
    "create pods",
];

/// The overlay's Role, RoleBinding, ClusterRole and ClusterRoleBinding are installed, and the ServiceAccount may do
/// exactly the named things.
async fn rbac_grants_exactly_the_named_things(env: &ClusterEnv, docs: &[Value]) {
    let rbac: Vec<Value> = docs
        .iter()
        .filter(|d| {
            d["apiVersion"] == "rbac.authorization.k8s.io/v1" && d["metadata"]["name"] == CERTS_RBAC
        })
        .cloned()
        .collect();
    let what = "Role, RoleBinding, ClusterRole, ClusterRoleBinding";
    assert_eq!(rbac.len(), 4, "{what}");
    let stored = env.kubectl_ok(&["get", "-f", "-", "-o", "name"], Some(&as_list(&rbac)));
    assert_eq!(
        stored.lines().count(),
        4,
        "installed with the overlay: {stored}"
    );

    let can = |action: &str| {
        let can_i = format!("auth can-i --as {SERVICE_ACCOUNT} -n secure-defaults {action}");
        env.kubectl(&words(&can_i), None).status.success()
    };
    for action in ALLOWED {
        eventually(&format!("RBAC allowing {action}"), DEADLINE, || async {
            can(action).then_some(())
        })
        .await;
    }
    for action in DENIED {
        assert!(!can(action), "the ServiceAccount may {action}");
    }
}

/// The server, run as the Deployment runs it with the ServiceAccount's own token, turns ready, writes its Secret
/// and Lease and injects the caBundle, and nothing it asks is refused.
async fn the_server_runs_on_that_rbac_alone(env: &ClusterEnv, client: &Client, docs: &[Value]) {
    // The server, as the ServiceAccount, as the Deployment starts it.
    let dir = tmp_dir("manifests-self-managed");
    let create_token = "create token secure-defaults -n secure-defaults --duration=1h";
    let token = env.kubectl_ok(&words(create_token), None);
    let kubeconfig = dir.join("kubeconfig");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": env.var("APISERVER_URL"), "certificate-authority": env.var("CA_CERT")}}],
        "users": [{"name": "secure-defaults", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "secure-defaults", "namespace": "secure-defaults"}}],
        "current-context": "sa"
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    let config_path = dir.join("secure-defaults.yaml");
    std::fs::write(&config_path, process_config(docs).0).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_text(docs)).unwrap();

    let c = container(docs);
    let deploy = deployment(docs);
    let pod_name = "e2e-manifests-self-managed";
    // The Deployment's args, with the config file at its path on this machine; then only what differs here:
    // addresses, and the policy's path.
    let config_file = config_path.to_str().unwrap();
    let args: Vec<&str> = args(c)
        .into_iter()
        .map(|arg| if arg == CONFIG_FILE { config_file } else { arg })
        .collect();
    let admin_port = free_port();
    let mut cmd = serve(env, &args, free_port(), admin_port);
    cmd.arg("--policy")
        .arg(&policy)
        .env("KUBECONFIG", &kubeconfig);
    for var in c["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match (
            &var["value"],
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.namespace")) => {
                deploy["metadata"]["namespace"].as_str().unwrap().to_owned()
            }
            (_, Some("metadata.name")) => pod_name.to_owned(),
            _ => panic!("cannot resolve the Deployment's variable {var}"),
        };
        cmd.env(name, value);
    }
    let log = dir.join("server.log");
    let what = "in self-managed mode as the ServiceAccount";
    let server = Server::ready(cmd, admin_port, log, what).await;

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "secure-defaults");
    let ca = eventually("the Secret secure-defaults-tls", DEADLINE, || async {
        let data = secrets.get_opt("secure-defaults-tls").await.ok()??.data?;
        data.contains_key("tls.crt").then_some(())?;
        Some(String::from_utf8(data.get("ca.crt")?.0.clone()).unwrap())
    })
    .await;
    let configs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    eventually(
        "the caBundle injected into secure-defaults",
        DEADLINE,
        || async {
            let config = configs.get("secure-defaults").await.ok()?;
            let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
            String::from_utf8_lossy(&bundle.0)
                .contains(ca.trim())
                .then_some(())
        },
    )
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "secure-defaults");
    let lease = leases.get("secure-defaults-certificates").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod_name)
    );
    // No request of the ServiceAccount was refused by RBAC ("... is forbidden: User ... cannot ...").
    let text = server.log();
    assert!(!text.contains("is forbidden: User"), "{text}");
    drop(server);
}

/// The cert-manager overlay needs cert-manager: an API server without its CRDs refuses it (which is why the
/// default overlays do without), and with them (schema-less stand-ins here) accepts every object (server-side
/// dry run: nothing of it is stored, the default overlay stays installed).
async fn cert_manager_overlay_needs_cert_manager(env: &ClusterEnv) {
    let list = as_list(&render(env, format!("manifests/overlays/{CERT_MANAGER}")));
    let apply = ["apply", "--dry-run=server", "-f", "-"];
    let out = env.kubectl(&apply, Some(&list));
    assert!(
        !out.status.success() && stderr(&out).contains("cert-manager.io"),
        "the cert-manager overlay applied without cert-manager: {}",
        stderr(&out)
    );

    let crds = repo().join("e2e/manifests/cert-manager-crds.yaml");
    env.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()], None);
    let crds = "crd/issuers.cert-manager.io crd/certificates.cert-manager.io";
    let wait = format!("wait --for=condition=Established --timeout=60s {crds}");
    env.kubectl_ok(&words(&wait), None);
    eventually(
        "kubectl apply --dry-run=server of the cert-manager overlay",
        DEADLINE,
        || async {
            // Retried: kubectl may not have discovered the cert-manager kinds yet.
            let out = env.kubectl(&apply, Some(&list));
            if out.status.success() {
                Some(())
            } else {
                eprintln!("{}", stderr(&out));
                None
            }
        },
    )
    .await;
}
