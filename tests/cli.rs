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
    let pod: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"],
        serde_yaml_ng::Value::from(65532)
    );
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
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["mutate", "-f", "/nonexistent.yaml"],
            "",
            "cannot read /nonexistent.yaml",
        ),
        (
            vec!["mutate", "-f", "-"],
            "spec: [unclosed",
            "input is not valid YAML",
        ),
        (
            vec!["mutate", "-f", "-"],
            "{\"spec\": [unclosed",
            "input is not valid JSON",
        ),
        (
            vec!["mutate", "-f", "-"],
            "kind: Deployment\n",
            "input is a Deployment, not a Pod",
        ),
        (
            vec!["mutate", "-f", "-"],
            "- a\n",
            "not a YAML or JSON object",
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
