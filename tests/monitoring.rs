//! The monitoring files (`manifests/monitoring/`, `manifests/components/monitoring/`) against the server they
//! watch: the kustomize component carries the same rules and dashboard as the plain files, and every metric the
//! dashboard's queries and the alert rules name is one a live server exports (or kube-state-metrics', listed
//! below). The server runs in-process with namespace lookups off, behind a certificate made with rcgen.
//!
//! Nothing here sleeps to "let things happen": every wait polls for the awaited condition under a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use secure_defaults::config::{Config, RawConfig};
use secure_defaults::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

/// Metrics the rules use that another exporter provides.
const EXTERNAL: &[&str] = &[
    // kube-state-metrics
    "kube_deployment_status_replicas_available",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The component against the plain files

#[test]
fn the_component_carries_the_plain_rules_and_dashboard() {
    const HOW: &str = "run manifests/monitoring/sync.sh";
    let rules = yaml("manifests/monitoring/alerts.yaml");
    let resource = yaml("manifests/components/monitoring/prometheusrule.yaml");
    assert_eq!(resource["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(resource["kind"], "PrometheusRule");
    assert_eq!(
        resource["spec"], rules,
        "the PrometheusRule's spec differs from alerts.yaml: {HOW}"
    );
    assert_eq!(
        read("manifests/components/monitoring/dashboard.json"),
        read("manifests/monitoring/dashboard.json"),
        "the component's dashboard differs from manifests/monitoring/dashboard.json: {HOW}"
    );
    for file in ["alerts.yaml", "dashboard.json"] {
        assert_eq!(
            read(&format!("manifests/chart/secure-defaults/files/{file}")),
            read(&format!("manifests/monitoring/{file}")),
            "the chart's files/{file} differs from manifests/monitoring/{file}: {HOW}"
        );
    }

    let kustomization = yaml("manifests/components/monitoring/kustomization.yaml");
    assert_eq!(kustomization["kind"], "Component");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(resources.contains(&"prometheusrule.yaml"), "{resources:?}");
    let generators = kustomization["configMapGenerator"].as_array().unwrap();
    let dashboard = generators
        .iter()
        .find(|g| {
            g["files"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f.as_str().is_some_and(|f| f.ends_with("dashboard.json")))
        })
        .expect("a ConfigMap generated from dashboard.json");
    assert_eq!(
        dashboard["options"]["labels"]["grafana_dashboard"], "1",
        "Grafana's sidecar loads ConfigMaps labelled grafana_dashboard: \"1\""
    );

    // Every alert points at a runbook section of the README.
    let readme = read("README.md").to_lowercase();
    for rule in alert_rules(&rules) {
        let runbook = rule["annotations"]["runbook"].as_str().unwrap();
        let anchor = runbook.strip_prefix("README.md#").unwrap();
        assert!(
            readme.contains(&format!("#### {anchor}")),
            "no README heading for {runbook}"
        );
    }
}

fn alert_rules(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Metric names

/// The metric names a PromQL expression uses: identifiers outside quotes that are not followed by `(` (a
/// function or aggregation) and are not label names, keywords or duration units. Enough for the expressions
/// in these files, whose metric names all have a known prefix; the prefixes are what is checked.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut braces = 0_usize;
    let mut parens_after_by = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '{' {
            braces += 1;
        } else if c == '}' {
            braces = braces.saturating_sub(1);
        } else if c == ')' {
            parens_after_by = false;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                parens_after_by = true;
                continue;
            }
            let variable = start > 0 && chars[start - 1] == '$';
            // A duration's unit: 5m, 1h.
            let in_range = start > 0 && chars[start - 1].is_ascii_digit();
            if braces == 0
                && !parens_after_by
                && next != Some(&'(')
                && !in_range
                && !variable
                && !is_keyword(&word)
            {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

fn is_keyword(word: &str) -> bool {
    [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "le", // operators and literals
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio", // aggregations, which `by (...)` may separate from their `(`
    ]
    .contains(&word)
}

/// Every PromQL expression in the dashboard: panel targets and query variables.
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// `label_values(metric, label)` names its metric as the first argument.
fn label_values_metric(expr: &str) -> Option<String> {
    let args = expr.trim().strip_prefix("label_values(")?;
    Some(args.split([',', ')', '{']).next()?.trim().to_owned())
}

/// The sample names an exposition offers: each family's by its type, and every sample line's.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "info" => {
                    names.insert(format!("{}_info", name.trim_end_matches("_info")));
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn the_name_scanner_finds_metrics_not_labels_or_functions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{le="0.1",x=~"y|z"}[5m]))) > 0.1 and on (pod) b_total offset 5m unless (c > 0) - time() < 7 * 86400"#,
    );
    assert_eq!(
        names,
        ["a_bucket", "b_total", "c"].map(str::to_owned).into(),
    );
}

// ---------------------------------------------------------------------------------------------------------------
// A live server

struct Running {
    webhook: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct Fixture {
    dir: PathBuf,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    not_after: i64,
}

impl Fixture {
    /// A self-signed serving certificate for 127.0.0.1 with a known notAfter, and a policy file.
    fn new(test: &str, policy: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("monitoring")
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let not_after = 4_102_444_800; // 2100-01-01
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("policy.yaml"), policy).unwrap();
        Self {
            dir,
            ca_der: cert.der().clone(),
            not_after,
        }
    }

    fn config(&self) -> Config {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        // Validation refuses two equal addresses, port 0 included: any port for the admin listener is set after.
        let mut config = Config::try_from(RawConfig {
            listen: any_port,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls_cert: self.dir.join("tls.crt"),
            tls_key: self.dir.join("tls.key"),
            policy: self.dir.join("policy.yaml"),
            namespace_lookups: false,
            reload_interval_ms: 100,
            drain_seconds: 0,
            shutdown_timeout_seconds: 2,
            ..RawConfig::default()
        })
        .unwrap();
        config.admin_listen = any_port;
        config
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn policy_yaml(run_as_user: i64) -> String {
    format!(
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: cluster-wide\ndefaults:\n  runAsUser: {run_as_user}\n  allowPrivilegeEscalation: false\n"
    )
}

async fn start(config: Config) -> Running {
    let server = Server::bind(config).await.unwrap();
    let webhook = server.webhook_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        webhook,
        admin,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 request over TLS (when `tls` is given) or plain TCP; the status and body.
async fn request(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, String), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let response = if let Some(tls) = tls {
        let stream = TlsConnector::from(tls)
            .connect(ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn scrape(admin: SocketAddr) -> String {
    let get = Request::get("/metrics")
        .header(header::HOST, "x")
        .header(header::CONNECTION, "close")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (status, body) = request(admin, None, get).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// One review of a pod in `namespace` with these annotations; the response, allowed.
async fn review(
    webhook: SocketAddr,
    trusted: &rustls_pki_types::CertificateDer<'static>,
    namespace: &str,
    annotations: Value,
) -> Value {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "monitoring",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:app:deployer"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": namespace, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}
            },
            "dryRun": false
        }
    });
    let post = Request::post("/mutate")
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let (status, reply) = request(webhook, Some(Arc::new(tls)), post).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    reply
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn policy_info_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("secure_defaults_policy_info{"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_exported_metrics() {
    // Reviews that reach every family a server without a cluster can: a defaulted pod that opts out of a
    // field, and a pod in a report-only namespace. (Namespace lookups need a cluster; the dashboard leaves
    // them out.)
    let policy = format!(
        "{}namespaces:\n  - match: {{names: [app]}}\n    podExceptions: [allowPrivilegeEscalation]\n  - match: {{names: [reported]}}\n    report: true\n",
        policy_yaml(65532)
    );
    let f = Fixture::new("names", &policy);
    let server = start(f.config()).await;
    let patched = review(
        server.webhook,
        &f.ca_der,
        "app",
        json!({"secure-defaults.io/skip": "allowPrivilegeEscalation"}),
    )
    .await;
    assert_eq!(patched["response"]["patchType"], "JSONPatch", "{patched}");
    review(server.webhook, &f.ca_der, "reported", json!({})).await;
    let text = scrape(server.admin).await;
    server.shutdown().await;
    let exported = exported_names(&text);
    assert!(
        exported.contains("secure_defaults_admission_duration_seconds_bucket")
            && exported.contains("secure_defaults_admission_requests_total"),
        "{exported:?}"
    );

    let mut used: Vec<(String, String)> = Vec::new();
    let dashboard: Value =
        serde_json::from_str(&read("manifests/monitoring/dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 7, "{exprs:?}");
    for expr in &exprs {
        let names = match label_values_metric(expr) {
            Some(name) => BTreeSet::from([name]),
            None => metric_names(expr),
        };
        assert!(
            !names.is_empty(),
            "no metric found in dashboard query {expr}"
        );
        used.extend(names.into_iter().map(|n| (n, format!("dashboard: {expr}"))));
    }
    let rules = yaml("manifests/monitoring/alerts.yaml");
    for rule in alert_rules(&rules) {
        let expr = rule["expr"].as_str().unwrap();
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric found in rule {expr}");
        used.extend(
            names
                .into_iter()
                .map(|n| (n, format!("alert {}: {expr}", rule["alert"]))),
        );
    }
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.contains(name) && !EXTERNAL.contains(&name.as_str()))
        .map(|(name, r#where)| format!("{name} ({where})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics the server does not export:\n{}\n\nexported: {exported:?}",
        unknown.join("\n")
    );
    // The panels the dashboard promises, by the metric each one draws from.
    let names: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "secure_defaults_admission_requests_total",
        "secure_defaults_admission_duration_seconds_bucket",
        "secure_defaults_fields_defaulted_total",
        "secure_defaults_guard_warnings_total",
        "secure_defaults_policy_reloads_total",
        "secure_defaults_certificate_expiry_timestamp_seconds",
        "secure_defaults_open_connections",
        "secure_defaults_policy_info",
    ] {
        assert!(names.contains(wanted), "nothing uses {wanted}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_policy_metrics_follow_the_files() {
    let f = Fixture::new("follow", &policy_yaml(65532));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .floor();
    let server = start(f.config()).await;
    let text = scrape(server.admin).await;
    assert_eq!(
        sample(
            &text,
            "secure_defaults_certificate_expiry_timestamp_seconds"
        ),
        Some(f.not_after as f64),
        "{text}"
    );
    let first = secure_defaults::metrics::policy_hash(policy_yaml(65532).as_bytes());
    assert_eq!(
        policy_info_series(&text),
        [format!("secure_defaults_policy_info{{hash=\"{first}\"}} 1")],
        "{text}"
    );
    let loaded = sample(
        &text,
        "secure_defaults_policy_last_reload_timestamp_seconds",
    )
    .unwrap();
    assert!(loaded >= before, "{loaded} < {before}");

    std::fs::write(f.dir.join("policy.yaml"), policy_yaml(10001)).unwrap();
    let second = secure_defaults::metrics::policy_hash(policy_yaml(10001).as_bytes());
    let text = eventually("the new policy's hash", async || {
        let text = scrape(server.admin).await;
        text.contains(&second).then_some(text)
    })
    .await;
    assert_eq!(
        policy_info_series(&text),
        [format!(
            "secure_defaults_policy_info{{hash=\"{second}\"}} 1"
        )],
        "only the current hash has a series: {text}"
    );
    let reloaded = sample(
        &text,
        "secure_defaults_policy_last_reload_timestamp_seconds",
    )
    .unwrap();
    assert!(reloaded >= loaded, "{reloaded} < {loaded}");

    // A refused policy keeps the hash and the load time of the one in force.
    std::fs::write(f.dir.join("policy.yaml"), "kind: Nonsense\n").unwrap();
    let text = eventually("the refusal", async || {
        let text = scrape(server.admin).await;
        (sample(
            &text,
            "secure_defaults_policy_reloads_total{result=\"failed\"}",
        )? >= 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        policy_info_series(&text),
        [format!(
            "secure_defaults_policy_info{{hash=\"{second}\"}} 1"
        )],
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "secure_defaults_policy_last_reload_timestamp_seconds"
        ),
        Some(reloaded),
        "{text}"
    );
    server.shutdown().await;
}
