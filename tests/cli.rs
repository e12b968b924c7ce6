//! The offline CLI as a user runs it: `mutate` and `check`, exit codes and messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secure-defaults"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that fails before reading its input (a missing file, a bad policy) may exit before this write.
    if let Err(e) = input.write_all(stdin.unwrap_or("").as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp(name: &str, content: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: demo\nspec:\n  containers:\n  - name: app\n    image: nginx\n";

#[test]
fn mutate_prints_the_patch_for_an_opted_in_namespace() {
    let out = run(
        &[
            "mutate",
            "-f",
            "-",
            "-l",
            "secure-defaults.io/inject=enabled",
        ],
        Some(POD),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = patch.as_array().unwrap();
    assert!(ops.iter().all(|op| op["op"] == "add"));
    assert!(
        ops.iter()
            .any(|op| op["path"] == "/spec/containers/0/securityContext")
    );
}

#[test]
fn mutate_object_output_keeps_the_input_format() {
    let out = run(
        &[
            "mutate",
            "-f",
            "-",
            "-l",
            "secure-defaults.io/inject=enabled",
            "-o",
            "object",
        ],
        Some(POD),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pod: serde_json::Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
    assert!(
        text(&out.stdout).starts_with("apiVersion: v1"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn mutate_explains_an_exempt_namespace_and_prints_an_empty_patch() {
    let out = run(&["mutate", "-f", "-", "-n", "apps"], Some(POD));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "[]");
    assert!(
        text(&out.stderr).contains("not labelled secure-defaults.io/inject=enabled"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mutate_takes_an_admission_review() {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
            "namespace": "kube-system", "object": {"spec": {"containers": [{"name": "a"}]}}}
    });
    let out = run(&["mutate", "-f", "-"], Some(&review.to_string()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
    assert!(
        text(&out.stderr).contains("system namespace"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mutate_warns_on_stderr() {
    let pod = "spec:\n  containers:\n  - name: vpn\n    securityContext: {privileged: true}\n";
    let out = run(
        &[
            "mutate",
            "-f",
            "-",
            "-l",
            "secure-defaults.io/inject=enabled",
        ],
        Some(pod),
    );
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("warning: secure-defaults: allowPrivilegeEscalation not defaulted: container \"vpn\" is privileged"));
}

#[test]
fn mutate_reads_json_as_json() {
    // Valid JSON that a YAML parser refuses or alters: raw DEL and C1 characters, a surrogate-pair escape (as
    // Python's json.dumps writes non-BMP characters), raw U+2028/U+2029/U+0085 in a key, and a raw U+0085 inside a
    // string, which must come back unchanged.
    let odd = "del\u{7f} c1\u{85}\u{9f} ls\u{2028} ps\u{2029}";
    let input = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"p\",\"annotations\":{{\"k\\u2028\u{2029}\u{85}\":\"{odd}\",\"emoji\":\"\\ud83d\\ude00\"}}}},\"spec\":{{\"containers\":[{{\"name\":\"app\",\"image\":\"x\"}}]}}}}"
    );
    let out = run(
        &[
            "mutate",
            "-f",
            "-",
            "-l",
            "secure-defaults.io/inject=enabled",
            "-o",
            "object",
        ],
        Some(&input),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["k\u{2028}\u{2029}\u{85}"], odd, "{pod}");
    assert_eq!(annotations["emoji"], "\u{1f600}", "{pod}");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
}

#[test]
fn bad_input_fails_with_one_line() {
    let bad_policy = temp(
        "bad-policy.yaml",
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\ndefaults:\n  runAsUser: 0\n",
    );
    let no_ca = temp(
        "no-ca-policy.yaml",
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\nimages:\n  registries: [\"*\"]\n  caFile: /nonexistent/ca.crt\n",
    );
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["check", "--policy", no_ca.to_str().unwrap()],
            "",
            "cannot read the registry CA file /nonexistent/ca.crt",
        ),
        (
            vec!["mutate", "-f", "/nonexistent.yaml"],
            "",
            "cannot read /nonexistent.yaml",
        ),
        (
            vec!["mutate", "-f", "-"],
            "spec: [unclosed",
            "-: document 1: not valid YAML: unclosed bracket '[' at line 1",
        ),
        (
            vec!["mutate", "-f", "-"],
            "{\"spec\": [unclosed",
            "-: document 1: not valid YAML",
        ),
        (vec!["mutate", "-f", "-"], "", "-: no objects to preview"),
        (
            vec!["mutate", "-f", "-", "--exit-code"],
            "# only a comment\n---\n",
            "-: no objects to preview",
        ),
        (
            vec!["mutate", "-f", "-"],
            "- a\n",
            "-: document 1: not an object but a sequence",
        ),
        (
            vec![
                "mutate",
                "-f",
                "-",
                "--policy",
                bad_policy.to_str().unwrap(),
            ],
            POD,
            "defaults.runAsUser: 0 is root",
        ),
        (
            vec!["check", "--policy", bad_policy.to_str().unwrap()],
            "",
            "at line 5",
        ),
    ];
    for (args, stdin, words) in cases {
        let out = run(&args, Some(stdin));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(words), "{args:?}: {err:?} lacks {words:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn check_describes_the_policy_and_a_namespace() {
    let out = run(
        &[
            "check",
            "-n",
            "shop",
            "-l",
            "secure-defaults.io/inject=enabled",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("config/policy.yaml: valid"), "{stdout}");
    assert!(
        stdout.contains("namespace \"shop\": defaults runAsUser=65532"),
        "{stdout}"
    );
}

#[test]
fn mutate_previews_workloads_in_a_directory_and_gates_ci_with_exit_code() {
    let dir = std::env::temp_dir().join(format!("secure-defaults-cli-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("apps")).unwrap();
    std::fs::write(
        dir.join("apps/web.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("nightly.json"),
        r#"{"apiVersion":"batch/v1","kind":"CronJob","metadata":{"name":"nightly"},"spec":{"schedule":"@daily","jobTemplate":{"spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"job","image":"busybox"}]}}}}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("more.yml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: one}\nspec: {containers: [{name: a, image: x}]}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: StatefulSet\n  metadata: {name: db}\n  spec:\n    selector: {matchLabels: {app: db}}\n    template:\n      metadata: {labels: {app: db}}\n      spec:\n        containers: [{name: db, image: postgres, securityContext: {runAsUser: 999}}]\n---\n",
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "not a manifest").unwrap();
    let label = "secure-defaults.io/inject=enabled";
    let d = dir.to_str().unwrap();

    let out = run(&["mutate", "-f", d, "-l", label, "--exit-code"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<(&str, &str)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Deployment", "web"),
            ("Pod", "one"),
            ("StatefulSet", "db"),
            ("CronJob", "nightly")
        ]
    );
    let web = &results[0];
    assert_eq!(web["namespace"], "shop");
    assert!(
        web["patch"]
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/spec/template/spec/securityContext"),
        "{web}"
    );
    let cron = &results[3]["patch"].to_string();
    assert!(
        cron.contains("/spec/jobTemplate/spec/template/spec/containers/0/securityContext"),
        "{cron}"
    );
    assert!(
        text(&out.stderr).contains("Deployment/web: would set runAsUser=65532"),
        "{}",
        text(&out.stderr)
    );

    // Applying the output leaves nothing to change.
    let out = run(&["mutate", "-f", d, "-l", label, "-o", "object"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let applied = dir.join("applied.yaml");
    std::fs::write(&applied, &out.stdout).unwrap();
    let out = run(
        &[
            "mutate",
            "-f",
            applied.to_str().unwrap(),
            "-l",
            label,
            "--exit-code",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["mutate", "-f", "/nonexistent", "--exit-code"], None);
    assert_eq!(out.status.code(), Some(2), "errors are not 'would change'");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A release manifest as `helm template` prints it: objects with no pod around a workload.
const MIXED: &str = "# Source: shop/templates/sa.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web   # the app's identity
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data:
  mode: '0644'
  enabled: \"yes\"
---
# Source: shop/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        env:
        - {name: DEBUG, value: 'on'}
      volumes:
      - name: config
        configMap: {name: web-config, defaultMode: 0644}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 0x50}]
";

#[test]
fn mutate_passes_objects_without_a_pod_through_in_their_place() {
    let label = "secure-defaults.io/inject=enabled";
    let out = run(
        &["mutate", "-f", "-", "-l", label, "--exit-code"],
        Some(MIXED),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        patch
            .to_string()
            .contains("/spec/template/spec/securityContext"),
        "the one pod-bearing object's patch: {patch}"
    );
    assert!(
        text(&out.stderr).contains("3 objects carry no pod and pass through unchanged"),
        "{}",
        text(&out.stderr)
    );

    let out = run(
        &["mutate", "-f", "-", "-l", label, "-o", "object"],
        Some(MIXED),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = text(&out.stdout);
    let documents: Vec<&str> = written.split("\n---\n").collect();
    let original: Vec<&str> = MIXED.split("\n---\n").collect();
    assert_eq!(documents.len(), 4, "{written}");
    for i in [0, 1, 3] {
        assert_eq!(
            documents[i],
            original[i],
            "document {} is kept byte for byte",
            i + 1
        );
    }
    assert!(
        documents[2].starts_with("# Source: shop/templates/deployment.yaml\n"),
        "the comment before a changed document stays: {}",
        documents[2]
    );
    // The changed Deployment keeps the meaning of what it does not default: kubectl reads 0644 as 420 and 'on'
    // as a string; so must the output.
    let values = secure_defaults::preview::read::yaml_values(&written).unwrap();
    let deployment = &values[2]["spec"]["template"]["spec"];
    assert_eq!(
        deployment["volumes"][0]["configMap"]["defaultMode"], 420,
        "{written}"
    );
    assert_eq!(
        deployment["containers"][0]["env"][0]["value"], "on",
        "{written}"
    );
    assert_eq!(deployment["securityContext"]["runAsUser"], 65532);

    // Fed back in, nothing changes.
    let out = run(
        &["mutate", "-f", "-", "-l", label, "--exit-code"],
        Some(&written),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn mutate_reads_a_yaml_file_that_starts_with_a_flow_mapping() {
    let path = temp(
        "flow.yaml",
        "{apiVersion: v1, kind: Pod, metadata: {name: flow}, spec: {containers: [{name: a, image: x}]}}\n",
    );
    let label = "secure-defaults.io/inject=enabled";
    let out = run(&["mutate", "-f", path.to_str().unwrap(), "-l", label], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("runAsUser"),
        "{}",
        text(&out.stdout)
    );
    let json = temp("flow.json", "{apiVersion: v1, kind: Pod}\n");
    let out = run(&["mutate", "-f", json.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("flow.json: document 1: not valid JSON"),
        "a .json file is JSON: {}",
        text(&out.stderr)
    );
}

#[test]
fn mutate_reports_a_broken_document_and_previews_the_others() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: one}\nspec: {containers: [{name: a, image: x}]}\n---\nkind: Deployment\nmetadata: {name: broken}\nspec: {template: [1]}\n---\nkind: Pod\nspec: [unclosed\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: two}\nspec: {containers: [{name: a, image: x}]}\n";
    let label = "secure-defaults.io/inject=enabled";
    let out = run(
        &["mutate", "-f", "-", "-l", label, "--exit-code"],
        Some(input),
    );
    assert_eq!(out.status.code(), Some(2), "an error is not 'would change'");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: -: document 2: Deployment \"broken\": the pod template at /spec/template is not an object"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: -: document 3: not valid YAML: ") && stderr.contains("line 11"),
        "the line is the line in the whole input: {stderr}"
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"], "the others are still previewed");
}

#[test]
fn mutate_skips_an_empty_file_in_a_directory_but_refuses_an_empty_input() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-empty");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.yaml"), "# nothing yet\n").unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    let out = run(
        &["mutate", "-f", dir.to_str().unwrap(), "--exit-code"],
        None,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("empty.yaml: no objects, skipped"),
        "{stderr}"
    );
    assert_ne!(out.status.code(), Some(2), "{stderr}");

    std::fs::remove_file(dir.join("pod.yaml")).unwrap();
    let out = run(
        &["mutate", "-f", dir.to_str().unwrap(), "--exit-code"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "nothing at all to preview");
    assert!(
        text(&out.stderr).contains("no objects to preview"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &["mutate", "-f", dir.join("empty.yaml").to_str().unwrap()],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a file named on its own must hold objects"
    );
}

/// An API server that completes TLS and then never answers: `audit` gives up after its timeout with exit 1 and
/// one line, instead of waiting for ever.
#[test]
fn audit_gives_up_on_a_cluster_that_never_answers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            while tls.is_handshaking() {
                if tls.complete_io(&mut stream).is_err() {
                    break;
                }
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Read the request, answer nothing, keep the connection open.
            held.push((tls, stream));
        }
    });
    let kubeconfig = temp(
        "silent-kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: silent\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: silent, user: u}}\ncurrent-context: c\n"
        ),
    );
    let mut child = bin()
        .args([
            "audit",
            "--policy",
            "config/policy.yaml",
            "--request-timeout",
            "2",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A liveness bound, not a timing claim: a hung audit fails here instead of hanging the suite.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("audit still waiting on a silent API server after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "TLS was completed"
    );
    assert!(err.starts_with("error: cannot list namespaces"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn check_shows_what_a_namespace_entry_lets_pods_opt_out_of() {
    let policy = temp(
        "exceptions-policy.yaml",
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\npodExceptions: [fsGroup]\ndefaults: {runAsUser: 65532, fsGroup: 65532}\nnamespaces:\n- match: {names: [legacy]}\n  podExceptions: [runAsUser]\n- match: {names: [trial]}\n  report: true\n",
    );
    let label = "secure-defaults.io/inject=enabled";
    let p = policy.to_str().unwrap();
    let out = run(&["check", "--policy", p, "-n", "legacy", "-l", label], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("  its pods may opt out of runAsUser, fsGroup with the annotation secure-defaults.io/skip"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["check", "--policy", p, "-n", "trial", "-l", label], None);
    assert!(
        text(&out.stdout).contains("  report-only:"),
        "{}",
        text(&out.stdout)
    );
}
