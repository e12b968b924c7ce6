//! The e2e harness: a real kube-apiserver (started by e2e/run.sh through e2e/cluster.sh), the real
//! `secure-defaults` binary serving HTTPS on loopback, and a MutatingWebhookConfiguration per test that
//! only selects that test's namespaces, so tests run side by side without seeing each other.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};
use secure_defaults::fields::Field;
use secure_defaults::policy::{NamespaceLabels, Policy};
use serde_json::{Value, json};

pub const TEST_LABEL: &str = "e2e.secure-defaults.io/test";
pub const INJECT: &str = "secure-defaults.io/inject";
pub const DEADLINE: Duration = Duration::from_secs(60);

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

/// The control plane e2e/run.sh started: its directory holds `kubeconfig` and `env`.
pub struct ClusterEnv {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
}

pub fn cluster_env() -> ClusterEnv {
    let dir = std::env::var_os("E2E_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("E2E_CLUSTER_DIR is not set: run the end-to-end suite with `make test-e2e`, which starts a control plane")
    });
    let env = std::fs::read_to_string(dir.join("env")).expect("cluster env file");
    let bin = env
        .lines()
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .find(|(k, _)| *k == "BIN")
        .map(|(_, v)| PathBuf::from(v.trim_matches('"').trim_matches('\'')))
        .expect("BIN in cluster env");
    ClusterEnv {
        kubeconfig: dir.join("kubeconfig"),
        dir,
        bin,
    }
}

pub async fn client(env: &ClusterEnv) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
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

/// A namespace of one test, deleted on drop. On a failing test it prints the pods the API server stored.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    env_kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl TestNamespace {
    pub async fn create(
        client: &Client,
        env: &ClusterEnv,
        test: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Self {
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
            client: client.clone(),
            env_kubeconfig: env.kubeconfig.clone(),
            kubectl: env.bin.join("kubectl"),
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn label(&self, key: &str, value: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
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

    pub async fn try_create_pod(&self, pod: Value) -> Result<Value, kube::Error> {
        let pod: Pod = serde_json::from_value(pod).expect("pod json");
        let created = self.pods().create(&PostParams::default(), &pod).await?;
        Ok(serde_json::to_value(created).unwrap())
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        kubectl(&self.kubectl, &self.env_kubeconfig, args, stdin)
    }
}

pub fn kubectl(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut child = Command::new(bin)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.kubectl(
                &[
                    "get",
                    "pods,deployments,replicasets",
                    "-n",
                    &self.name,
                    "-o",
                    "yaml",
                ],
                None,
            );
            eprintln!(
                "---- what the API server stored in namespace {} ----\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = self.kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
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
    /// Flags added to `serve`.
    extra_args: Vec<String>,
    client: Client,
    config_name: String,
    env_kubeconfig: PathBuf,
    kubectl: PathBuf,
}

pub fn policy_yaml(mode: &str, rest: &str) -> String {
    format!(
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: {mode}\ndefaults:\n  runAsUser: 65532\n  runAsGroup: 65532\n  fsGroup: 65532\n  fsGroupChangePolicy: OnRootMismatch\n  allowPrivilegeEscalation: false\n{rest}"
    )
}

impl Webhook {
    /// Starts the server with `policy` and registers it for namespaces labelled with this test's name.
    /// `mode` selects the namespaceSelector: opt-in (inject=enabled) or cluster-wide (inject!=disabled).
    pub async fn start(
        client: &Client,
        env: &ClusterEnv,
        test: &str,
        policy: &str,
        failure: FailurePolicy,
    ) -> Self {
        Self::start_with_args(client, env, test, policy, failure, &[]).await
    }

    /// [`Webhook::start`], with `args` added to the server's flags.
    pub async fn start_with_args(
        client: &Client,
        env: &ClusterEnv,
        test: &str,
        policy: &str,
        failure: FailurePolicy,
        args: &[&str],
    ) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let policy_path = dir.join("policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        let certs = certs(&dir);
        let mut webhook = Self {
            test: test.to_owned(),
            dir,
            policy: policy_path,
            port: free_port(),
            admin_port: free_port(),
            certs,
            child: None,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            client: client.clone(),
            config_name: format!("{test}.e2e.secure-defaults.io"),
            env_kubeconfig: env.kubeconfig.clone(),
            kubectl: env.bin.join("kubectl"),
        };
        webhook.spawn();
        webhook.wait_ready().await;
        let mode = if policy.contains("mode: cluster-wide") {
            "cluster-wide"
        } else {
            "opt-in"
        };
        webhook.register(mode, failure).await;
        webhook
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_secure-defaults"))
            .args([
                "serve",
                "--log-format",
                "json",
                "--drain-seconds",
                "0",
                "--shutdown-timeout-seconds",
                "2",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--tls-cert")
            .arg(&self.certs.cert)
            .arg("--tls-key")
            .arg(&self.certs.key)
            .arg("--policy")
            .arg(&self.policy)
            .args(&self.extra_args)
            .env("KUBECONFIG", &self.env_kubeconfig)
            .env("SECURE_DEFAULTS_RELOAD_INTERVAL_MS", "200")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start secure-defaults");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let url = format!("127.0.0.1:{}", self.admin_port);
        let log = self.dir.join("server.log");
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "secure-defaults exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if http_get(&url, "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "secure-defaults not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval, bounded by DEADLINE
        }
    }

    async fn register(&self, mode: &str, failure: FailurePolicy) {
        use base64::Engine as _;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&self.certs.ca_pem);
        let mode_expression = match mode {
            "cluster-wide" => json!({"key": INJECT, "operator": "NotIn", "values": ["disabled"]}),
            _ => json!({"key": INJECT, "operator": "In", "values": ["enabled", "report"]}),
        };
        let config = json!({
            "metadata": {"name": self.config_name},
            "webhooks": [{
                "name": "pods.secure-defaults.io",
                "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate", self.port), "caBundle": ca_bundle},
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"},
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}
                ],
                "namespaceSelector": {"matchExpressions": [
                    {"key": TEST_LABEL, "operator": "In", "values": [self.test]},
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", "kube-node-lease", "secure-defaults"]},
                    mode_expression
                ]},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
                "failurePolicy": failure.as_str(),
                "reinvocationPolicy": "IfNeeded"
            }]
        });
        let config: MutatingWebhookConfiguration = serde_json::from_value(config).unwrap();
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        api.create(&PostParams::default(), &config)
            .await
            .expect("register webhook");
    }

    /// Waits until the API server calls this webhook for pods in `ns` (it picks up new configurations
    /// asynchronously), by dry-run creating a probe pod until it comes back defaulted.
    pub async fn wait_effective(&self, ns: &TestNamespace) {
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]}
        }))
        .unwrap();
        let pods = ns.pods();
        eventually("the webhook to be called", DEADLINE, || {
            let (pods, probe) = (pods.clone(), probe.clone());
            async move {
                let created = pods
                    .create(
                        &PostParams {
                            dry_run: true,
                            ..Default::default()
                        },
                        &probe,
                    )
                    .await
                    .ok()?;
                created
                    .metadata
                    .annotations
                    .as_ref()?
                    .get("secure-defaults.io/defaulted")
                    .map(|_| ())
            }
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

    /// Stops the server process (the webhook configuration stays registered).
    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

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
        let _ = kubectl(
            &self.kubectl,
            &self.env_kubeconfig,
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.config_name,
                "--ignore-not-found",
            ],
            None,
        );
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

pub fn bare_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
    })
}

/// The common start of a test: the real server running `policy` and registered with `failure`, and one
/// namespace `e2e-TEST` opted in by label for which the API server already calls the webhook.
pub struct Served {
    pub env: ClusterEnv,
    pub client: Client,
    pub hook: Webhook,
    pub ns: TestNamespace,
}

pub async fn served(test: &str, policy: &str, failure: FailurePolicy) -> Served {
    let env = cluster_env();
    let client = client(&env).await;
    let hook = Webhook::start(&client, &env, test, policy, failure).await;
    let ns = TestNamespace::create(
        &client,
        &env,
        test,
        &format!("e2e-{test}"),
        &[(INJECT, "enabled")],
    )
    .await;
    hook.wait_effective(&ns).await;
    Served {
        env,
        client,
        hook,
        ns,
    }
}
