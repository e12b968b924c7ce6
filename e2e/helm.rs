//! The Helm chart (`manifests/chart/secure-defaults`), end to end. The chart and the kustomize overlays are
//! two ways to install the same thing: for each mode and certificate source they have in common, `helm
//! template` and `kubectl kustomize` give the same objects, compared field by field after taking out only
//! what legitimately differs (Helm's own labels, the config ConfigMap's content-hash name that kustomize
//! adds and the checksum annotation the chart rolls the pods with instead, comments and key order in the
//! ConfigMaps' YAML). Every rendering of the chart, the extra certificate source (a provided Secret)
//! included, passes the same safety checks as the overlays (e2e/manifests.rs). `manifests/install.yaml` is
//! the chart rendered by `make manifests`, and is current. `helm install` on the local API server gives a
//! webhook that defaults pods in an opted-in namespace, and `helm uninstall` leaves nothing behind.
//!
//! The chart's cluster-scoped objects (MutatingWebhookConfiguration `secure-defaults`, ...) are the
//! overlays' too: [`CLUSTER_SCOPED`] keeps the install test and the overlays' install test apart.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::manifests::*;
use crate::support::*;

const CHART: &str = "manifests/chart/secure-defaults";
const RELEASE: &str = "secure-defaults";
/// Helm's own labels, on every object the chart renders and on none of the overlays'.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

fn helm(env: Option<&ClusterEnv>, args: &[&str]) -> Output {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .current_dir(repo())
        // Nothing from the user's helm configuration, repositories or plugins.
        .env("HELM_CONFIG_HOME", tmp_home().join("config"))
        .env("HELM_CACHE_HOME", tmp_home().join("cache"))
        .env("HELM_DATA_HOME", tmp_home().join("data"));
    if let Some(env) = env {
        cmd.env("KUBECONFIG", &env.kubeconfig);
    }
    cmd.output().expect("run helm")
}

fn tmp_home() -> &'static PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| tmp_dir("helm-home"))
}

fn helm_ok(env: Option<&ClusterEnv>, args: &[&str]) -> String {
    let out = helm(env, args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse(text: &str) -> Vec<Value> {
    secure_defaults::preview::read::yaml_values(text).expect("YAML documents")
}

/// `args` followed by `--set` and each of `sets`.
fn with_sets<'a>(mut args: Vec<&'a str>, sets: &[&'a str]) -> Vec<&'a str> {
    for set in sets {
        args.extend(["--set", set]);
    }
    args
}

/// `helm template` of the chart in `namespace` with `--set` values.
fn template(namespace: &str, sets: &[&str]) -> Vec<Value> {
    let args = vec!["template", RELEASE, CHART, "--namespace", namespace];
    parse(&helm_ok(None, &with_sets(args, sets)))
}

/// `helm template` that must fail; returns its error output.
fn template_err(sets: &[&str]) -> String {
    let args = vec!["template", RELEASE, CHART, "--namespace", "secure-defaults"];
    let out = helm(None, &with_sets(args, sets));
    assert!(!out.status.success(), "helm accepted {sets:?}");
    stderr(&out)
}

/// The objects with what legitimately differs between the chart and the overlays taken out, sorted by kind
/// and name: Helm's labels; the config ConfigMap's name (kustomize suffixes a content hash, the chart rolls
/// the pods with a checksum annotation instead); the ConfigMaps' data parsed (comments and key order are
/// presentation), with the server's default log_level filled in where the overlays leave it out.
fn normalise(docs: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = docs.to_vec();
    for doc in &mut out {
        if let Some(labels) = doc["metadata"]
            .get_mut("labels")
            .and_then(Value::as_object_mut)
        {
            for label in HELM_LABELS {
                labels.remove(label);
            }
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if doc["kind"] == "ConfigMap" {
            if name.starts_with("secure-defaults-config") {
                doc["metadata"]["name"] = json!("secure-defaults-config");
            }
            let data = doc["data"].as_object_mut().expect("ConfigMap data");
            for (key, text) in data.iter_mut() {
                let mut parsed: Value = serde_saphyr::from_str(text.as_str().unwrap())
                    .unwrap_or_else(|e| panic!("ConfigMap {name} {key}: {e}"));
                if key == "secure-defaults.yaml" && parsed.get("log_level").is_none() {
                    parsed["log_level"] = json!("info");
                }
                *text = parsed;
            }
        }
        if doc["kind"] == "Deployment" {
            let template = &mut doc["spec"]["template"];
            if let Some(annotations) = template["metadata"]
                .get_mut("annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.remove("checksum/config");
                if annotations.is_empty() {
                    template["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("annotations");
                }
            }
            for v in template["spec"]["volumes"].as_array_mut().unwrap() {
                if v["name"] == "config" {
                    v["configMap"]["name"] = json!("secure-defaults-config");
                }
            }
        }
    }
    out.sort_by_key(|d| {
        (
            d["kind"].as_str().unwrap_or_default().to_owned(),
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    out
}

fn describe(doc: &Value) -> String {
    format!("{} {}", doc["kind"], doc["metadata"]["name"])
}

/// Fails on the first object that differs, naming it and showing both sides.
fn assert_same_objects(what: &str, chart: &[Value], kustomize: &[Value]) {
    let (chart, kustomize) = (normalise(chart), normalise(kustomize));
    let names = |docs: &[Value]| docs.iter().map(describe).collect::<Vec<_>>();
    assert_eq!(
        names(&chart),
        names(&kustomize),
        "{what}: the chart and the overlay install different objects"
    );
    for (c, k) in chart.iter().zip(&kustomize) {
        let mut differences = Vec::new();
        diff("", c, k, &mut differences);
        assert!(
            differences.is_empty(),
            "{what}: {} differs between the chart and the overlay:\n{}",
            describe(c),
            differences.join("\n")
        );
    }
}

/// Where two JSON values differ: one line per path, with both sides.
fn diff(path: &str, chart: &Value, overlay: &Value, out: &mut Vec<String>) {
    match (chart, overlay) {
        (Value::Object(c), Value::Object(o)) => {
            let keys: std::collections::BTreeSet<&String> = c.keys().chain(o.keys()).collect();
            for key in keys {
                let (cv, ov) = (
                    c.get(key).unwrap_or(&Value::Null),
                    o.get(key).unwrap_or(&Value::Null),
                );
                diff(&format!("{path}/{key}"), cv, ov, out);
            }
        }
        (Value::Array(c), Value::Array(o)) if c.len() == o.len() => {
            for (i, (cv, ov)) in c.iter().zip(o).enumerate() {
                diff(&format!("{path}/{i}"), cv, ov, out);
            }
        }
        _ if chart == overlay => {}
        _ => out.push(format!("  {path}: chart {chart}, overlay {overlay}")),
    }
}

/// The provided-Secret option: its CA in the webhook's caBundle, its Secret mounted whole and named by the
/// flags, no RBAC on Secrets, nothing of cert-manager's nor of the self-managed mode.
fn check_provided_secret(what: &str, docs: &[Value], secret: &str, ca_pem: &str) {
    assert_eq!(
        webhook(docs)["clientConfig"]["caBundle"],
        base64::engine::general_purpose::STANDARD.encode(ca_pem),
        "{what}"
    );
    check_certificate_from_secret(what, docs, secret);
    assert_eq!(cert_manager_objects(docs), Vec::<String>::new(), "{what}");
}

const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

/// `helm lint` passes for every mode and certificate source; the schema refuses a misspelt value at every
/// level and a value out of its range; the chart refuses an incomplete certificate choice.
#[test]
fn helm_chart_lints_and_refuses_bad_values() {
    let lint = || vec!["lint", "--strict", CHART];
    for mode in MODES {
        for certificates in ["self-managed", "cert-manager"] {
            let (mode, source) = (
                format!("mode={mode}"),
                format!("certificates.source={certificates}"),
            );
            let out = helm_ok(None, &with_sets(lint(), &[&mode, &source]));
            assert!(out.contains("0 chart(s) failed"), "{out}");
        }
    }
    let secret = [
        "certificates.source=secret",
        "certificates.secret.name=my-tls",
        &format!("certificates.secret.caCertificate={TEST_CA}"),
    ];
    helm_ok(None, &with_sets(lint(), &secret));

    // Misspelt keys at every level, values out of range and incomplete choices are refused, saying why.
    let (extra, schema) = (
        "additional properties",
        "values don't meet the specifications of the schema",
    );
    let refused: [(&str, &[&str]); 14] = [
        ("replicaCont=3", &[extra, "''"]),
        ("webhook.failurPolicy=Fail", &[extra, "'/webhook'"]),
        ("image.tga=x", &[extra, "'/image'"]),
        ("policy.default.runAsUser=1", &[extra, "'/policy'"]),
        (
            "certificates.secret.nmae=x",
            &[extra, "'/certificates/secret'"],
        ),
        (
            "networkPolicy.monitoringNamespaceSelector.matchLabel.a=b",
            &[extra, "'/networkPolicy/monitoringNamespaceSelector'"],
        ),
        ("mode=everywhere", &[schema]),
        ("webhook.failurePolicy=Sometimes", &[schema]),
        ("certificates.source=vault", &[schema]),
        ("replicaCount=0", &[schema]),
        ("webhook.timeoutSeconds=31", &[schema]),
        ("logLevel=verbose", &[schema]),
        ("certificates.source=secret", &["certificates.secret.name"]),
        ("networkPolicy.enabled=true", &["controlPlaneCIDRs"]),
    ];
    for (set, says) in refused {
        let err = template_err(&[set]);
        assert!(says.iter().all(|s| err.contains(s)), "{set}: {err}");
    }
}

/// For each mode and certificate source the overlays offer, the chart renders exactly the overlay's objects
/// (the Namespace when asked to, as `make manifests` does); every rendering, the provided-Secret one too,
/// passes the overlays' safety checks; a release in another namespace is wired to it throughout.
#[tokio::test]
async fn helm_template_matches_the_overlays_and_keeps_their_rules() {
    let env = cluster_env().await;
    for (overlay, mode, certificates) in [
        (MODES[0], MODES[0], "self-managed"),
        (MODES[1], MODES[1], "self-managed"),
        (CERT_MANAGER, "opt-in", "cert-manager"),
    ] {
        let what = format!("chart {mode}/{certificates}");
        let sets = [
            format!("mode={mode}"),
            format!("certificates.source={certificates}"),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let chart = template("secure-defaults", &sets);
        check_rendering(&what, mode, &chart);
        match certificates {
            "self-managed" => check_self_managed(&what, &chart),
            _ => check_cert_manager(&what, &chart),
        }
        assert!(try_find(&chart, "Namespace", "secure-defaults").is_none());

        let kustomize = render(&env, format!("manifests/overlays/{overlay}"));
        let with_namespace = template(
            "secure-defaults",
            &[sets.as_slice(), &["namespace.create=true"]].concat(),
        );
        assert_same_objects(
            &format!("{what} vs overlays/{overlay}"),
            &with_namespace,
            &kustomize,
        );
    }

    // profile: restricted brings the restricted backstop, as the overlay with its component has it (the
    // policy differs by the profile, which the overlays' policy does not set).
    let without_policy = |docs: Vec<Value>| -> Vec<Value> {
        docs.into_iter()
            .filter(|d| {
                !(d["kind"] == "ConfigMap" && d["metadata"]["name"] == "secure-defaults-policy")
            })
            .collect()
    };
    let chart = template(
        "secure-defaults",
        &["policy.profile=restricted", "namespace.create=true"],
    );
    assert_eq!(policy_value(&policy_text(&chart))["profile"], "restricted");
    let restricted = find(
        &chart,
        "ValidatingAdmissionPolicyBinding",
        "secure-defaults-backstop-restricted",
    );
    assert_eq!(
        &restricted["spec"]["matchResources"]["namespaceSelector"],
        &webhook(&chart)["namespaceSelector"]
    );
    assert_same_objects(
        "chart profile=restricted vs overlays/opt-in + components/backstop-restricted",
        &without_policy(chart),
        &without_policy(render(&env, "e2e/manifests/opt-in-restricted")),
    );
    let plain = template("secure-defaults", &[]);
    assert!(
        try_find(
            &plain,
            "ValidatingAdmissionPolicy",
            "secure-defaults-backstop-restricted"
        )
        .is_none()
    );

    // The third certificate source, which the overlays do not have.
    let secret = [
        "certificates.source=secret",
        "certificates.secret.name=my-tls",
        &format!("certificates.secret.caCertificate={TEST_CA}"),
    ];
    for mode in MODES {
        let what = format!("chart {mode}/secret");
        let mode_set = format!("mode={mode}");
        let mut docs = template(
            "secure-defaults",
            &[&[mode_set.as_str()], &secret[..]].concat(),
        );
        check_provided_secret(&what, &docs, "my-tls", TEST_CA);
        // The caBundle checked, the webhook is the overlays'.
        let config = find_mut(&mut docs, "MutatingWebhookConfiguration", "secure-defaults");
        let client_config = config["webhooks"][0]["clientConfig"].as_object_mut();
        client_config.unwrap().remove("caBundle");
        check_rendering(&what, mode, &docs);
    }

    // Another release namespace: the Service the webhook calls, the RBAC subjects, the namespace the webhook
    // never serves, cert-manager's injection and DNS names all follow it.
    for certificates in ["self-managed", "cert-manager"] {
        let docs = template("tools", &[&format!("certificates.source={certificates}")]);
        let hook = webhook(&docs);
        assert_eq!(hook["clientConfig"]["service"]["namespace"], "tools");
        assert!(
            hook["namespaceSelector"]["matchExpressions"][0]["values"]
                .as_array()
                .unwrap()
                .contains(&json!("tools")),
            "{}",
            hook["namespaceSelector"]
        );
        for object in &docs {
            if let Some(subjects) = object["subjects"].as_array() {
                assert!(
                    subjects.iter().all(|s| s["namespace"] == "tools"),
                    "{object}"
                );
            }
            if !object["metadata"]["namespace"].is_null() {
                assert_eq!(
                    object["metadata"]["namespace"],
                    "tools",
                    "{}",
                    describe(object)
                );
            }
        }
        if certificates == "cert-manager" {
            let config = find(&docs, "MutatingWebhookConfiguration", "secure-defaults");
            assert_eq!(
                config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "tools/secure-defaults-serving"
            );
            assert!(
                find(&docs, "Certificate", "secure-defaults-serving")["spec"]["dnsNames"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("secure-defaults.tools.svc"))
            );
        }
    }
}

/// The values users set change what they name and nothing else: the safety checks still hold.
#[test]
fn helm_values_change_what_they_say() {
    let docs = template(
        "secure-defaults",
        &[
            "replicaCount=3",
            "image.repository=registry.example/sd",
            "image.tag=1.2.3",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "image.pullPolicy=Always",
            "imagePullSecrets[0].name=pull",
            "webhook.failurePolicy=Fail",
            "webhook.timeoutSeconds=5",
            "webhook.namespaceSelector.matchExpressions[0].key=team",
            "webhook.namespaceSelector.matchExpressions[0].operator=Exists",
            "webhook.objectSelector.matchLabels.sd=on",
            "backstop.enabled=false",
            "podDisruptionBudget.enabled=false",
            "priorityClassName=system-cluster-critical",
            "tolerations[0].operator=Exists",
            "podAnnotations.a=b",
            "podLabels.team=platform",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=kube-prometheus-stack",
            "grafanaDashboard.enabled=true",
            "networkPolicy.enabled=true",
            "networkPolicy.controlPlaneCIDRs[0]=10.0.0.0/24",
            "logFormat=text",
            "logLevel=debug",
            "clientAuth.caConfigMap=apiserver-client-ca",
            "policy.profile=restricted",
            "policy.followPodSecurityLabels=true",
        ],
    );
    workload_and_webhook_values_apply(&docs);
    config_and_policy_values_apply(&docs);
    monitoring_and_network_values_apply(&docs);
    // The hardening is not a value: it survives every setting above.
    check_hardening("chart values", &docs);

    // An existing policy ConfigMap: mounted instead, and the chart renders no policy of its own.
    let docs = template("secure-defaults", &["policy.existingConfigMap=my-policy"]);
    assert!(try_find(&docs, "ConfigMap", "secure-defaults-policy").is_none());
    assert_eq!(
        volume(pod_spec(&docs), "policy"),
        Some(&json!({"name": "policy", "configMap": {"name": "my-policy"}}))
    );

    // Image-aware defaults: the images: section in the policy, the registry Secret mounted whole, and the
    // section's credentials pointing into it unless it names its own.
    let docs = template(
        "secure-defaults",
        &[
            "policy.images.registries[0]=registry.example.com/*",
            "registry.secretName=regcred",
        ],
    );
    let text = policy_text(&docs);
    let expected = json!({"/images/registries": ["registry.example.com/*"],
        "/images/credentials": "/etc/secure-defaults/registry/.dockerconfigjson"});
    assert_at("images values", &policy_value(&text), &expected);
    assert_eq!(
        volume(pod_spec(&docs), "registry"),
        Some(&json!({"name": "registry", "secret": {"secretName": "regcred"}}))
    );
    let mount =
        json!({"name": "registry", "mountPath": "/etc/secure-defaults/registry", "readOnly": true});
    assert!(mounts(container(&docs)).contains(&mount));
    // The real server takes that section (the credentials file aside, which exists only in the pod).
    check_policy(
        &tmp_dir("helm-values").join("images-policy.yaml"),
        &text.replace(
            "  credentials: /etc/secure-defaults/registry/.dockerconfigjson\n",
            "",
        ),
    );
    let docs = template(
        "secure-defaults",
        &[
            "policy.images.registries[0]=registry.example.com/*",
            "policy.images.credentials=/elsewhere.json",
            "registry.secretName=regcred",
        ],
    );
    assert_eq!(
        policy_value(&policy_text(&docs))["images"]["credentials"],
        "/elsewhere.json"
    );

    // Defaults: no NetworkPolicy, no ServiceMonitor, no PrometheusRule, no dashboard.
    let docs = template("secure-defaults", &[]);
    assert!(try_find(&docs, "NetworkPolicy", "secure-defaults").is_none());
    assert!(try_find(&docs, "ServiceMonitor", "secure-defaults").is_none());
    assert!(try_find(&docs, "PrometheusRule", "secure-defaults").is_none());
    assert!(try_find(&docs, "ConfigMap", "secure-defaults-dashboard").is_none());
    assert!(process_config(&docs).1.get("tls_client_ca").is_none());
    assert!(volume(pod_spec(&docs), "client-ca").is_none());
    assert!(volume(pod_spec(&docs), "registry").is_none());
    assert!(policy_value(&policy_text(&docs)).get("images").is_none());
}

/// The Deployment, its pods and the webhook configuration follow the values set in
/// [`helm_values_change_what_they_say`].
fn workload_and_webhook_values_apply(docs: &[Value]) {
    let expected = json!({
        "/spec/replicas": 3,
        "/spec/template/metadata/annotations/a": "b",
        // Pod labels join the template, never the selector (which must not change between releases).
        "/spec/template/metadata/labels/team": "platform",
        "/spec/selector/matchLabels": {"app.kubernetes.io/name": "secure-defaults", "app.kubernetes.io/component": "webhook"},
        "/spec/template/spec/imagePullSecrets": [{"name": "pull"}],
        "/spec/template/spec/priorityClassName": "system-cluster-critical",
        "/spec/template/spec/tolerations": [{"operator": "Exists"}],
        "/spec/template/spec/containers/0/image":
            "registry.example/sd:1.2.3@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/spec/template/spec/containers/0/imagePullPolicy": "Always"
    });
    assert_at("chart values", deployment(docs), &expected);
    let hook = webhook(docs);
    let expected = json!({
        "/failurePolicy": "Fail",
        "/timeoutSeconds": 5,
        "/objectSelector": {"matchLabels": {"sd": "on"}},
        "/namespaceSelector/matchExpressions/2": {"key": "team", "operator": "Exists"}
    });
    assert_at("chart values", hook, &expected);
    let expressions = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    assert_eq!(expressions.len(), 3, "{expressions:?}");
    assert_eq!(selector_mode(&hook["namespaceSelector"]), "opt-in");
    for (kind, name) in [
        ("PriorityClass", "secure-defaults-critical"),
        ("ValidatingAdmissionPolicy", "secure-defaults-backstop"),
        (
            "ValidatingAdmissionPolicyBinding",
            "secure-defaults-backstop",
        ),
        ("PodDisruptionBudget", "secure-defaults"),
    ] {
        assert!(try_find(docs, kind, name).is_none(), "{kind} {name}");
    }
}

/// The process config, the client CA and the policy follow the values, and the real server accepts the policy.
fn config_and_policy_values_apply(docs: &[Value]) {
    let pod = pod_spec(docs);
    let (_, config) = process_config(docs);
    // Client authentication: the CA's ConfigMap mounted whole (so it reloads), and the server pointed at it.
    let expected = json!({
        "/log_format": "text",
        "/log_level": "debug",
        "/tls_client_ca": "/etc/secure-defaults/client-ca/ca.crt"
    });
    assert_at("chart values", &config, &expected);
    assert_eq!(
        volume(pod, "client-ca"),
        Some(&json!({"name": "client-ca", "configMap": {"name": "apiserver-client-ca"}}))
    );
    let mount = json!({"name": "client-ca", "mountPath": "/etc/secure-defaults/client-ca", "readOnly": true});
    assert!(mounts(container(docs)).contains(&mount));
    let text = policy_text(docs);
    let policy = policy_value(&text);
    assert_eq!(policy["profile"], "restricted");
    assert_eq!(policy["followPodSecurityLabels"], true);
    // The real server accepts the policy the values make.
    check_policy(&tmp_dir("helm-values").join("policy.yaml"), &text);
}

/// The metrics Service, ServiceMonitor, alerts, dashboard and NetworkPolicy follow the values.
fn monitoring_and_network_values_apply(docs: &[Value]) {
    let deploy = deployment(docs);
    // Metrics: a Service for the admin port only, and the ServiceMonitor scraping it.
    let monitor = find(docs, "ServiceMonitor", "secure-defaults");
    let metrics = find(docs, "Service", "secure-defaults-metrics");
    assert_eq!(metrics["spec"]["ports"][0]["port"], 8080);
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&metrics["metadata"]["labels"][k], v);
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        find(docs, "Service", "secure-defaults")["spec"]["ports"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the webhook's Service keeps its one port"
    );

    // The alerts and the dashboard: the same as the kustomize monitoring component's, with the labels asked for.
    let component = |file: &str| {
        let path = repo().join("manifests/components/monitoring").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let rule = find(docs, "PrometheusRule", "secure-defaults");
    let component_rule: Value = serde_saphyr::from_str(&component("prometheusrule.yaml")).unwrap();
    assert_eq!(rule["spec"], component_rule["spec"]);
    assert!(
        !rule["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let expected = json!({
        "/metadata/namespace": "secure-defaults",
        "/metadata/labels/release": "kube-prometheus-stack"
    });
    assert_at("chart values", rule, &expected);
    let dashboard = find(docs, "ConfigMap", "secure-defaults-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_of = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    assert_eq!(
        json_of(dashboard["data"]["secure-defaults.json"].as_str().unwrap()),
        json_of(&component("dashboard.json"))
    );

    // Network policy: the webhook port from the control plane only, the admin port from monitoring only.
    let policy = find(docs, "NetworkPolicy", "secure-defaults");
    let expected = json!({
        "/spec/podSelector/matchLabels": deploy["spec"]["selector"]["matchLabels"],
        "/spec/ingress": [
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": "https", "protocol": "TCP"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
             "ports": [{"port": "admin", "protocol": "TCP"}]}
        ]
    });
    assert_at("chart values", policy, &expected);
}

/// `manifests/install.yaml` is what `make manifests` renders from the chart now (rerun it after changing
/// the chart), and it is the opt-in overlay with self-managed certificates.
#[tokio::test]
async fn helm_rendered_install_yaml_is_current() {
    let env = cluster_env().await;
    let out = Command::new(repo().join("e2e/render-install.sh"))
        .env("HELM", helm_bin())
        .output()
        .expect("run e2e/render-install.sh");
    assert!(out.status.success(), "{}", stderr(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let shipped = std::fs::read_to_string(repo().join("manifests/install.yaml"))
        .expect("manifests/install.yaml (make manifests)");
    assert!(
        rendered == shipped,
        "manifests/install.yaml is stale: run `make manifests`"
    );
    let docs = parse(&shipped);
    find(&docs, "Namespace", "secure-defaults");
    assert_same_objects(
        "install.yaml vs overlays/opt-in",
        &docs,
        &render(&env, "manifests/overlays/opt-in"),
    );
}

/// `helm install` on the API server (its webhook then pointed at a test server running the chart's own
/// policy, as the kustomize install test does, and narrowed to this test's namespaces): a pod in an opted-in
/// namespace is defaulted, one elsewhere is not. `helm uninstall` then leaves no webhook configuration, no
/// backstop, no binding, no policy: a pod in the same namespace is created untouched.
#[tokio::test]
async fn helm_install_defaults_pods_and_uninstall_leaves_nothing() {
    let env = cluster_env().await;
    let _cluster_scoped = CLUSTER_SCOPED.lock().await;
    let test = "helm";
    let namespace = "e2e-helm-system";
    let on = TestNamespace::create(&env, test, "e2e-helm-on", &[(INJECT, "enabled")]).await;
    let off = TestNamespace::create(&env, test, "e2e-helm-off", &[]).await;

    let policy = policy_text(&template(namespace, &[]));
    let hook = Webhook::start(&env, "helm-server", &policy, FailurePolicy::Ignore).await;

    let values = tmp_dir("helm-install").join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "webhook:\n  namespaceSelector:\n    matchExpressions:\n      - {{key: {TEST_LABEL}, operator: In, values: [{test}]}}\n"
        ),
    )
    .unwrap();
    // Removes the release and its namespace, also when the test fails.
    let release = OnDrop(|| {
        let uninstall = format!("uninstall {RELEASE} --namespace {namespace} --ignore-not-found");
        let _ = helm(Some(&env), &words(&uninstall));
        let delete = format!("delete namespace {namespace} --ignore-not-found --wait=false");
        let _ = env.kubectl(&words(&delete), None);
    });
    let install = format!(
        "install {RELEASE} {CHART} --namespace {namespace} --create-namespace --values {}",
        values.display()
    );
    let out = helm_ok(Some(&env), &words(&install));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("kubectl label namespace NS secure-defaults.io/inject=enabled")
            && out.contains("--dry-run=server"),
        "NOTES tell how to opt in and check: {out}"
    );
    let get_manifest = format!("get manifest {RELEASE} --namespace {namespace}");
    let installed = parse(&helm_ok(Some(&env), &words(&get_manifest)));
    let list = as_list(&installed);
    let stored = env.kubectl_ok(&["get", "-f", "-", "-o", "name"], Some(&list));
    assert_eq!(stored.lines().count(), installed.len(), "{stored}");

    // The API server reaches the test server instead of the Service (no kubelet runs the Deployment here).
    let patch = json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": format!("https://127.0.0.1:{}/mutate", hook.port)},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle",
         "value": base64::engine::general_purpose::STANDARD.encode(&hook.certs.ca_pem)},
    ])
    .to_string();
    let config = "mutatingwebhookconfiguration/secure-defaults";
    env.kubectl_ok(&["patch", config, "--type", "json", "-p", &patch], None);

    eventually(
        "the chart's webhook serving e2e-helm-on",
        DEADLINE,
        || async { annotation(&on.dry_run(&bare_pod("probe")).await.ok()?).map(drop) },
    )
    .await;
    let pod = on.create_pod(bare_pod("defaulted")).await;
    let expected = json!({
        "/spec/securityContext/runAsUser": 65532,
        "/spec/containers/0/securityContext/allowPrivilegeEscalation": false
    });
    assert_at("the chart's webhook", &pod, &expected);
    let shipped = defaulted(&bare_pod("defaulted"), &parse_policy(&shipped_policy()));
    assert_eq!(annotation(&pod), annotation(&shipped), "{pod}");
    let untouched = off.create_pod(bare_pod("untouched")).await;
    assert_eq!(annotation(&untouched), None, "{untouched}");

    // Uninstall: everything the release made is gone, cluster-scoped objects included.
    let uninstall = format!("uninstall {RELEASE} --namespace {namespace} --wait --timeout 60s");
    helm_ok(Some(&env), &words(&uninstall));
    nothing_left_behind(&env, namespace, &list);
    // Without webhook and backstop a pod in the opted-in namespace is created as it was sent (the backstop,
    // were it still there, would refuse it: the test server's own webhook does not select this namespace).
    // The API server drops a deleted admission policy from its cache a moment after the object is gone: poll
    // (each refused attempt stores nothing) until the pod is admitted.
    let after = eventually(
        "a pod admitted once the backstop is gone",
        DEADLINE,
        || async { on.try_create_pod(bare_pod("after-uninstall")).await.ok() },
    )
    .await;
    assert_eq!(annotation(&after), None, "{after}");
    assert!(sc(&after).get("runAsUser").is_none(), "{after}");
    drop(release);
    drop(hook);
}

/// After `helm uninstall`: none of the objects the release installed (the `v1/List` `installed`), no
/// cluster-scoped object of the chart and no policy or config ConfigMap is left.
fn nothing_left_behind(env: &ClusterEnv, namespace: &str, installed: &str) {
    let get = ["get", "-f", "-", "-o", "name", "--ignore-not-found"];
    assert_eq!(env.kubectl_ok(&get, Some(installed)), "", "left behind");
    for object in [
        "mutatingwebhookconfiguration/secure-defaults",
        "validatingadmissionpolicy/secure-defaults-backstop",
        "validatingadmissionpolicybinding/secure-defaults-backstop",
        "clusterrolebinding/secure-defaults",
        "clusterrolebinding/secure-defaults-certs",
    ] {
        let out = env.kubectl_ok(&["get", object, "--ignore-not-found", "-o", "name"], None);
        assert_eq!(out, "", "{object} left behind");
    }
    let selector = "app.kubernetes.io/name=secure-defaults";
    let get = format!("get configmaps -n {namespace} -l {selector} -o name");
    assert_eq!(
        env.kubectl_ok(&words(&get), None),
        "",
        "policy or config left behind"
    );
}
