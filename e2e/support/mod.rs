//! The e2e harness: a real kube-apiserver (started by e2e/run.sh through e2e/cluster.sh), the real
//! `secure-defaults` binary serving HTTPS on loopback, and a MutatingWebhookConfiguration per test that
//! only selects that test's namespaces, so tests run side by side without seeing each other.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use secure_defaults::fields::Field;
use secure_defaults::policy::{NamespaceLabels, Policy};
use serde_json::{Value, json};

pub const TEST_LABEL: &str = "e2e.secure-defaults.io/test";
pub const INJECT: &str = "secure-defaults.io/inject";
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The annotation the webhook lists what it set in.
pub const DEFAULTED: &str = "secure-defaults.io/defaulted";
/// The image of the tests' pods (no kubelet runs them).
pub const IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Held by the tests that install objects with the manifests' fixed cluster-wide names (the chart's and the
/// overlays' install tests), so that they never run at once.
pub static CLUSTER_SCOPED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The helm binary e2e/build-helm.sh builds (once per machine) at the pinned version.
pub fn helm_bin() -> &'static PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo().join("e2e/build-helm.sh"))
            .output()
            .expect("run e2e/build-helm.sh");
        assert!(
            out.status.success(),
            "e2e/build-helm.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("the helm path").trim())
    })
}

/// The repository's root, where the manifests, the chart and the corpus are.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane e2e/run.sh started (its directory holds `kubeconfig` and `env`), and a client of it.
#[derive(Clone)]
pub struct ClusterEnv {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
    pub client: Client,
}

pub async fn cluster_env() -> ClusterEnv {
    let dir = std::env::var_os("E2E_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("E2E_CLUSTER_DIR is not set: run the end-to-end suite with `make test-e2e`, which starts a control plane")
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig");
    ClusterEnv {
        kubeconfig: dir.join("kubeconfig"),
        bin: PathBuf::from(env_value(&dir, "BIN")),
        client: Client::try_from(config).expect("client"),
        dir,
    }
}

/// A value of the cluster's env file (e2e/cluster.sh lists them).
fn env_value(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("env")).expect("cluster env file");
    text.lines()
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"').trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("{key} not in the cluster's env file: restart the cluster"))
}

impl ClusterEnv {
    /// A value of the cluster's env file.
    pub fn var(&self, key: &str) -> String {
        env_value(&self.dir, key)
    }

    /// kubectl as the cluster's admin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        run(cmd, stdin.unwrap_or("").as_bytes())
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns standard output.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval, bounded by the deadline
    }
}

/// A loopback port nothing listens on, never the same twice in this process: the kernel may hand out a port
/// just released again, and two of a server's addresses on one port stop it at start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Runs `f` when dropped: cleanup that happens whichever way a test ends.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A directory of this test run's own (`name` unique to one test), emptied.
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The words of a command line, for the commands whose arguments hold no spaces.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pod's securityContext.
pub fn sc(pod: &Value) -> &Value {
    &pod["spec"]["securityContext"]
}

/// The webhook's annotation on a stored pod: what it set.
pub fn annotation(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/annotations/secure-defaults.io~1defaulted")
        .and_then(Value::as_str)
}

/// Asserts that `value` holds each of `expected`'s values at the JSON pointer that is its key (a value left out
/// reads as null), naming `what` and the first pointer that differs.
#[track_caller]
pub fn assert_at(what: &str, value: &Value, expected: &Value) {
    for (pointer, want) in expected.as_object().expect("pointers and values") {
        let got = value.pointer(pointer).unwrap_or(&Value::Null);
        assert_eq!(got, want, "{what}: {pointer} in {value}");
    }
}

/// The series of namespace lookups the server answered from its namespace cache.
pub const CACHE_HITS: &str = r#"secure_defaults_namespace_lookups_total{source="cache"}"#;

/// The value of the counter or gauge `series` (its name and labels) in a metrics text, 0 where it is absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A pod named `name` with `spec`.
pub fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// A pod of one container that states nothing about its security.
pub fn bare_pod(name: &str) -> Value {
    pod(
        name,
        json!({"containers": [{"name": "app", "image": IMAGE}]}),
    )
}

/// Creates `pod` in namespace `ns` (a server-side dry run if `dry_run`): what the API server stored, or its
/// refusal.
pub async fn create(
    client: &Client,
    ns: &str,
    pod: &Value,
    dry_run: bool,
) -> Result<Value, String> {
    let pod: Pod = serde_json::from_value(pod.clone()).expect("pod JSON");
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&params, &pod)
        .await
        .map(|p| serde_json::to_value(p).unwrap())
        .map_err(|e| e.to_string())
}

/// Waits until `count` pods match the label `selector` (the controller manager made them); returns them.
pub async fn pods_labelled(pods: &Api<Pod>, selector: &str, count: usize) -> Vec<Value> {
    let list = eventually(&format!("{count} pods {selector}"), DEADLINE, || async {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        (list.items.len() == count).then_some(list)
    })
    .await;
    list.items
        .into_iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect()
}

/// `kubectl kustomize` of a directory (relative to the repository, or absolute), one JSON value per document.
pub fn render(env: &ClusterEnv, dir: impl AsRef<Path>) -> Vec<Value> {
    let path = repo().join(dir);
    let text = env.kubectl_ok(&["kustomize", path.to_str().unwrap()], None);
    secure_defaults::preview::read::yaml_values(&text).expect("YAML documents")
}

/// `secure-defaults check` accepts the policy `text`, written to `file`.
pub fn check_policy(file: &Path, text: &str) {
    std::fs::write(file, text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_secure-defaults"))
        .args(["check", "--policy"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "secure-defaults check refuses {}:\n{}",
        file.display(),
        stderr(&check)
    );
}

/// A namespace of one test, deleted on drop. On a failing test it prints the pods the API server stored.
pub struct TestNamespace {
    pub name: String,
    pub env: ClusterEnv,
}

impl TestNamespace {
    /// The namespace `name` of the test `test`, with `labels`.
    pub async fn create(env: &ClusterEnv, test: &str, name: &str, labels: &[(&str, &str)]) -> Self {
        let client = &env.client;
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        all.insert(TEST_LABEL.into(), test.into());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": all}})).unwrap();
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // The ServiceAccount admission plugin refuses pods until the controller manager made `default`.
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
        eventually("default service account", DEADLINE, || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await;
        Self {
            name: name.to_owned(),
            env: env.clone(),
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.env.client.clone(), &self.name)
    }

    pub async fn label(&self, key: &str, value: &str) {
        let api: Api<Namespace> = Api::all(self.env.client.clone());
        let patch = json!({"metadata": {"labels": {key: value}}});
        api.patch(
            &self.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("label namespace");
    }

    /// Creates a pod from JSON and returns what the API server stored.
    pub async fn create_pod(&self, pod: Value) -> Value {
        self.try_create_pod(pod).await.expect("create pod")
    }

    pub async fn try_create_pod(&self, pod: Value) -> Result<Value, String> {
        create(&self.env.client, &self.name, &pod, false).await
    }

    /// A server-side dry run of `pod` here: the pod the API server would store, or its refusal.
    pub async fn dry_run(&self, pod: &Value) -> Result<Value, String> {
        create(&self.env.client, &self.name, pod, true).await
    }

    /// kubectl with the words of `line`, in this namespace.
    pub fn kubectl(&self, line: &str, stdin: Option<&str>) -> Output {
        let mut args = words(line);
        args.extend(["-n", &self.name]);
        self.env.kubectl(&args, stdin)
    }

    /// `kubectl create` of `pod` here, with the words of `flags` added: what kubectl says, warnings included.
    pub fn kubectl_create(&self, flags: &str, pod: &Value) -> Output {
        self.kubectl(&format!("create -f - {flags}"), Some(&pod.to_string()))
    }
}

/// Runs `cmd` to the end with `stdin` as its standard input: its status and output.
pub fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.kubectl("get pods,deployments,replicasets -o yaml", None);
            eprintln!(
                "---- what the API server stored in namespace {} ----\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            );
        }
        let delete = ["delete", "namespace", &self.name, "--wait=false"];
        let _ = self.env.kubectl(&delete, None);
    }
}

/// A CA and a serving certificate for 127.0.0.1, written as PEM files.
pub struct Certs {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "secure-defaults e2e CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Certs {
        ca_pem: ca.pem(),
        cert: cert_path,
        key: key_path,
    }
}

/// `secure-defaults serve` with `args` first, listening on 127.0.0.1:`port` with its admin endpoints on
/// 127.0.0.1:`admin_port`, calling the API server as the cluster's admin.
pub fn serve(env: &ClusterEnv, args: &[&str], port: u16, admin_port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secure-defaults"));
    cmd.args(args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .env("KUBECONFIG", &env.kubeconfig);
    cmd
}

/// Whether the server with admin endpoints on 127.0.0.1:`admin_port` answers /readyz with 200.
pub async fn is_ready(admin_port: u16) -> bool {
    http_get(&format!("127.0.0.1:{admin_port}"), "/readyz")
        .await
        .is_some_and(|(code, _)| code == 200)
}

/// A server process a test started, killed on drop; its log is printed when the test fails.
pub struct Server {
    pub child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cmd` (standard error to `log`) for admin endpoints on `admin_port`.
    pub fn spawn(mut cmd: Command, admin_port: u16, log: PathBuf) -> Self {
        let err = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(err).spawn().unwrap();
        Server {
            child,
            admin_port,
            log,
        }
    }

    /// [`Server::spawn`], then waits for /readyz; panics with the log if the server exits first or is not
    /// ready in time (`what` says how it was started).
    pub async fn ready(cmd: Command, admin_port: u16, log: PathBuf, what: &str) -> Self {
        let mut server = Self::spawn(cmd, admin_port, log);
        wait_ready(&mut server.child, admin_port, &server.log, what).await;
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for /readyz on `admin_port`; panics with the server's log if `child` exits first or is not ready in
/// time.
async fn wait_ready(child: &mut Child, admin_port: u16, log: &Path, what: &str) {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited ({status}) {what}:\n{}", read_log());
        }
        if is_ready(admin_port).await {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not ready {what}:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval, bounded by DEADLINE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// The real server process plus the MutatingWebhookConfiguration pointing at it, for one test.
pub struct Webhook {
    pub test: String,
    pub dir: PathBuf,
    pub policy: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub certs: Certs,
    child: Option<Child>,
    config_name: String,
    env: ClusterEnv,
}

pub fn policy_yaml(mode: &str, rest: &str) -> String {
    format!(
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: {mode}\ndefaults:\n  runAsUser: 65532\n  runAsGroup: 65532\n  fsGroup: 65532\n  fsGroupChangePolicy: OnRootMismatch\n  allowPrivilegeEscalation: false\n{rest}"
    )
}

/// The MutatingWebhookConfiguration `name` for the server at `url`: pods (and ephemeral containers) of the
/// namespaces labelled with `test` and opted in, or (`cluster_wide`) not opted out; no system namespace.
pub fn webhook_configuration(
    name: &str,
    test: &str,
    url: &str,
    ca_bundle: Option<&str>,
    cluster_wide: bool,
    failure: FailurePolicy,
) -> MutatingWebhookConfiguration {
    let mode_expression = match cluster_wide {
        true => json!({"key": INJECT, "operator": "NotIn", "values": ["disabled"]}),
        false => json!({"key": INJECT, "operator": "In", "values": ["enabled", "report"]}),
    };
    let config = json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pods.secure-defaults.io",
            "clientConfig": {"url": url, "caBundle": ca_bundle},
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"},
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}
            ],
            "namespaceSelector": {"matchExpressions": [
                {"key": TEST_LABEL, "operator": "In", "values": [test]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", "kube-node-lease", "secure-defaults"]},
                mode_expression
            ]},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "failurePolicy": format!("{failure:?}"),
            "reinvocationPolicy": "IfNeeded"
        }]
    });
    serde_json::from_value(config).unwrap()
}

/// Registers `config`, replacing one of the same name an earlier run left.
pub async fn register(client: &Client, config: &MutatingWebhookConfiguration) {
    let name = config.metadata.name.as_deref().unwrap();
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), config)
        .await
        .expect("register webhook");
}

impl Webhook {
    /// Starts the server with `policy` and registers it for namespaces labelled with this test's name.
    /// The policy's mode selects the namespaceSelector: opt-in (inject=enabled) or cluster-wide (inject!=disabled).
    pub async fn start(env: &ClusterEnv, test: &str, policy: &str, failure: FailurePolicy) -> Self {
        Self::start_with_args(env, test, policy, failure, &[]).await
    }

    /// [`Webhook::start`], with `args` added to the server's flags.
    pub async fn start_with_args(
        env: &ClusterEnv,
        test: &str,
        policy: &str,
        failure: FailurePolicy,
        args: &[&str],
    ) -> Self {
        let dir = tmp_dir(test);
        let policy_path = dir.join("policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        let certs = certs(&dir);
        let (port, admin_port) = (free_port(), free_port());
        let mut cmd = serve(env, &["serve"], port, admin_port);
        cmd.args(["--log-format", "json", "--drain-seconds", "0"])
            .args(["--shutdown-timeout-seconds", "2", "--tls-cert"])
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .arg("--policy")
            .arg(&policy_path)
            .args(args)
            .env("SECURE_DEFAULTS_RELOAD_INTERVAL_MS", "200");
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn();
        let mut webhook = Self {
            test: test.to_owned(),
            dir,
            policy: policy_path,
            port,
            admin_port,
            certs,
            child: Some(child.expect("start secure-defaults")),
            config_name: format!("{test}.e2e.secure-defaults.io"),
            env: env.clone(),
        };
        let log = webhook.dir.join("server.log");
        wait_ready(webhook.child.as_mut().unwrap(), admin_port, &log, "").await;
        let url = format!("https://127.0.0.1:{port}/mutate");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&webhook.certs.ca_pem);
        let cluster_wide = policy.contains("mode: cluster-wide");
        let config = webhook_configuration(
            &webhook.config_name,
            test,
            &url,
            Some(&ca_bundle),
            cluster_wide,
            failure,
        );
        register(&env.client, &config).await;
        webhook
    }

    /// Waits until the API server calls this webhook for pods in `ns` (it picks up new configurations
    /// asynchronously), by dry-run creating a probe pod until it comes back defaulted.
    pub async fn wait_effective(&self, ns: &TestNamespace) {
        eventually("the webhook to be called", DEADLINE, || async {
            let probe = ns.dry_run(&bare_pod("probe")).await.ok()?;
            annotation(&probe).map(drop)
        })
        .await;
    }

    pub fn write_policy(&self, text: &str) {
        // Write then rename, so the server never reads a half-written file.
        let tmp = self.dir.join("policy.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.policy).unwrap();
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("127.0.0.1:{}", self.admin_port), "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server process (the webhook configuration stays registered).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- secure-defaults log of {} ----\n{}",
                self.test,
                self.log()
            );
        }
        self.kill();
        let object = format!("mutatingwebhookconfiguration/{}", self.config_name);
        let _ = self
            .env
            .kubectl(&["delete", &object, "--ignore-not-found"], None);
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}
/// The shipped policy (config/policy.yaml), as text.
pub fn shipped_policy() -> String {
    std::fs::read_to_string(repo().join("config/policy.yaml")).unwrap()
}

pub fn parse_policy(text: &str) -> Policy {
    secure_defaults::policy::parse(text.as_bytes(), Path::new("policy.yaml")).unwrap()
}

/// The pod as the webhook would store it.
pub fn defaulted(pod: &Value, policy: &Policy) -> Value {
    defaulting(pod, policy).0
}

/// The pod as the webhook would store it, and the fields it set.
pub fn defaulting(pod: &Value, policy: &Policy) -> (Value, Vec<Field>) {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "namespace": "app", "object": pod}});
    let body = serde_json::to_vec(&review).unwrap();
    let parsed = secure_defaults::admission::parse(&body).unwrap();
    let labels = BTreeMap::from([(
        secure_defaults::policy::INJECT_LABEL.to_owned(),
        "enabled".to_owned(),
    )]);
    let response =
        secure_defaults::admission::respond(&parsed, policy, NamespaceLabels::Known(&labels))
            .unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &response.outcome.patch).unwrap();
    (patched, response.outcome.applied.fields().collect())
}

/// The common start of a test: the real server running `policy` and registered with `failure`, and one
/// namespace `e2e-TEST` opted in by label for which the API server already calls the webhook.
pub async fn served(test: &str, policy: &str, failure: FailurePolicy) -> (Webhook, TestNamespace) {
    let env = cluster_env().await;
    let hook = Webhook::start(&env, test, policy, failure).await;
    let name = format!("e2e-{test}");
    let ns = TestNamespace::create(&env, test, &name, &[(INJECT, "enabled")]).await;
    hook.wait_effective(&ns).await;
    (hook, ns)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}
