//! The preview and the webhook on manifests nobody on the team wrote (`tests/corpus/`), judged by the real
//! kube-apiserver and the real kubectl:
//! - every pod built from the corpus's pods and pod templates that the API server admits without the webhook is
//!   also admitted with it, under the shipped policy and under `profile: restricted` (server-side dry runs);
//! - kubectl reads each corpus file as `mutate` reads it, and reads `mutate -o object`'s output as the input
//!   plus exactly the patches `mutate` reported;
//! - `helm template` of the chart and `kubectl kustomize` of an overlay preview through standard input;
//! - pods pinned to Windows by node selection, and pods with the deprecated seccomp annotations, stay admissible.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::support::*;

fn corpus_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(repo().join("tests/corpus"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    files
}

/// Runs the real binary with `stdin`.
fn secure_defaults(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secure-defaults"));
    cmd.args(args);
    run(cmd, stdin)
}

/// Every pod of the corpus: each Pod, and a pod made of each workload's template. Names are made unique.
fn corpus_pods() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in corpus_files() {
        let source = secure_defaults::preview::read_path(&file)
            .unwrap()
            .remove(0);
        let (_, documents) = secure_defaults::preview::read::documents(&source);
        for document in documents {
            let Some(value) = document.content.unwrap() else {
                continue;
            };
            for object in secure_defaults::preview::read::objects(value).unwrap() {
                let kind = object["kind"].as_str().unwrap_or("Pod");
                let Some(at) = secure_defaults::preview::template_of(kind) else {
                    continue;
                };
                let template = object.pointer(at).cloned().unwrap();
                let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
                    "spec": template["spec"].clone()});
                let n = out.len();
                // As the StatefulSet controller does: a volume for each claim template.
                let claims = object
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array);
                for claim in claims.into_iter().flatten() {
                    let name = claim["metadata"]["name"].clone();
                    let volume = json!({"name": name, "persistentVolumeClaim": {"claimName": format!("{}-{n}", name.as_str().unwrap_or(""))}});
                    match pod["spec"]["volumes"].as_array_mut() {
                        Some(volumes) => volumes.push(volume),
                        None => pod["spec"]["volumes"] = json!([volume]),
                    }
                }
                let meta = pod["metadata"].as_object_mut().unwrap();
                meta.remove("namespace");
                meta.remove("generateName");
                meta.insert("name".into(), json!(format!("corpus-{n}")));
                let what = format!(
                    "{} {kind}/{}",
                    file.strip_prefix(repo()).unwrap().display(),
                    object
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                );
                out.push((what, pod));
            }
        }
    }
    out
}

/// A server-side dry run of `pod` in `ns`: `Ok` with the pod the API server would store, or its refusal.
async fn dry_run(pods: &Api<DynamicObject>, pod: &Value) -> Result<Value, String> {
    let object: DynamicObject = serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&params, &object).await {
        Ok(stored) => Ok(serde_json::to_value(stored).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

fn pod_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod"));
    Api::namespaced_with(client.clone(), ns, &resource)
}

#[tokio::test]
async fn corpus_pods_admitted_without_the_webhook_are_admitted_with_it() {
    let env = cluster_env().await;
    let client = &env.client;
    let pods = corpus_pods();
    assert!(pods.len() >= 100, "{} pods", pods.len());
    let bare = TestNamespace::create(&env, "corpus-bare", "e2e-corpus-bare", &[]).await;
    let mut served_by = Vec::new();
    for (test, rest) in [
        ("corpus-plain", ""),
        ("corpus-restricted", "profile: restricted\n"),
    ] {
        let policy = policy_yaml("opt-in", rest);
        served_by.push((test, served(test, &policy, FailurePolicy::Fail).await));
    }
    // The ServiceAccounts the pods name, in every namespace, as their manifests would have created them.
    let accounts: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|(_, p)| {
            p.pointer("/spec/serviceAccountName")
                .or_else(|| p.pointer("/spec/serviceAccount"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
        })
        .collect();
    for ns in std::iter::once(&bare.name).chain(served_by.iter().map(|(_, (_, ns))| &ns.name)) {
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), ns);
        for account in accounts.iter().filter(|a| *a != "default") {
            let sa = serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
            api.create(&PostParams::default(), &sa).await.unwrap();
        }
    }
    let without = pod_api(client, &bare.name);
    let mut admitted = 0;
    let mut defaulted = BTreeMap::new();
    let mut failures = Vec::new();
    let mut refused_anyway = BTreeMap::new();
    for (what, pod) in &pods {
        if let Err(e) = dry_run(&without, pod).await {
            let reason: String = e.chars().take(90).collect();
            refused_anyway
                .entry(reason)
                .or_insert_with(Vec::new)
                .push(what.clone());
            continue;
        }
        admitted += 1;
        for (test, (_, ns)) in &served_by {
            match dry_run(&pod_api(client, &ns.name), pod).await {
                Ok(stored) => {
                    let annotated = annotation(&stored).is_some();
                    *defaulted.entry(*test).or_insert(0) += usize::from(annotated);
                }
                Err(e) => failures.push(format!("{test}: {what}: {e}")),
            }
        }
    }
    eprintln!(
        "corpus: {} pods, {admitted} admitted without the webhook; defaulted with it: {defaulted:?}",
        pods.len()
    );
    for (reason, pods) in &refused_anyway {
        eprintln!(
            "refused without the webhook too ({}): {reason}: {:?}",
            pods.len(),
            &pods[..pods.len().min(3)]
        );
    }
    assert!(
        failures.is_empty(),
        "admitted without the webhook, refused with it:\n{}",
        failures.join("\n")
    );
    assert!(admitted >= 100, "{admitted} admitted");
    for (test, _) in &served_by {
        assert!(
            defaulted.get(test).copied().unwrap_or(0) >= 100,
            "{test}: {defaulted:?}"
        );
    }
}

/// A number as kubectl prints it: a float with no fraction is an integer.
fn normalised(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                json!(f as i64)
            } else {
                value.clone()
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalised(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What `kubectl create --dry-run=client -o json` reads from `input`: its objects, in order.
fn kubectl_reads(env: &ClusterEnv, input: &[u8]) -> (Vec<Value>, String) {
    let create = ["create", "--dry-run=client", "-o", "json", "-f", "-"];
    let out = env.kubectl(&create, Some(&String::from_utf8_lossy(input)));
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
        let value = value.unwrap();
        match value["kind"].as_str() {
            Some("List") => objects.extend(value["items"].as_array().cloned().unwrap_or_default()),
            _ => objects.push(value),
        }
    }

    (objects, stderr(&out))
}

#[tokio::test]
async fn kubectl_reads_the_preview_output_as_the_input_plus_the_reported_patches() {
    let env = cluster_env().await;
    let label = format!("{INJECT}=enabled");
    let mut compared = 0;
    let mut patched = 0;
    for file in corpus_files() {
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        let input = std::fs::read(&file).unwrap();
        let format = if name.ends_with(".json") {
            "json"
        } else {
            "yaml"
        };
        // Standard input is told by its content; a file by its name. Give `mutate` the file, as a user would.
        let f = file.to_str().unwrap();
        let mutate = format!("mutate -f {f} -n corpus -l {label}");
        let patches = secure_defaults(&words(&mutate), b"");
        assert!(patches.status.success(), "{name}: {}", stderr(&patches));
        let written = secure_defaults(&words(&format!("{mutate} -o object")), b"");
        assert!(written.status.success(), "{name}: {}", stderr(&written));

        let (before, before_err) = kubectl_reads(&env, &input);
        let (after, after_err) = kubectl_reads(&env, &written.stdout);
        assert_eq!(
            before.len(),
            after.len(),
            "{name}: kubectl read a different number of objects\nbefore: {before_err}\nafter: {after_err}"
        );

        // kubectl reads the input as `mutate` does.
        let source = secure_defaults::preview::read_path(&file)
            .unwrap()
            .remove(0);
        let (_, documents) = secure_defaults::preview::read::documents(&source);
        let ours: Vec<Value> = documents
            .into_iter()
            .filter_map(|d| d.content.unwrap())
            .flat_map(|v| secure_defaults::preview::read::objects(v).unwrap())
            .collect();
        let key = |o: &Value| {
            (
                o["kind"].as_str().unwrap_or("").to_owned(),
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        };
        let at = |o: &Value| {
            let ns = o.pointer("/metadata/namespace").and_then(Value::as_str);
            (key(o), ns.unwrap_or("default").to_owned())
        };
        for theirs in &before {
            // The object of the same kind and name; of the same namespace too where several share a name.
            let candidates: Vec<&Value> = ours.iter().filter(|o| key(o) == key(theirs)).collect();
            let mine = match candidates.as_slice() {
                [one] => *one,
                many => many
                    .iter()
                    .find(|o| at(o) == at(theirs))
                    .copied()
                    .unwrap_or_else(|| {
                        panic!("{name}: kubectl read {:?}, mutate did not", at(theirs))
                    }),
            };
            // kubectl fills in the namespace of its context where an object names none, and drops it from
            // cluster-scoped objects.
            let without_namespace = |o: &Value| {
                let mut o = o.clone();
                if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("namespace");
                }
                o
            };
            let (mine, theirs) = (&without_namespace(mine), without_namespace(theirs));
            assert_eq!(
                normalised(mine),
                normalised(&theirs),
                "{name}: {:?} read differently ({format})",
                key(&theirs)
            );
        }

        // The output, as kubectl reads it, is the input plus the reported patches.
        let reported: Value = serde_json::from_slice(&patches.stdout).unwrap();
        let records: Vec<Value> = match &reported {
            Value::Array(ops) if ops.first().is_none_or(|o| o.get("op").is_some()) => {
                // One pod-bearing object: the patch itself.
                let one = ours.iter().find(|o| {
                    secure_defaults::preview::template_of(o["kind"].as_str().unwrap_or("Pod"))
                        .is_some()
                });
                one.map(|o| json!({"kind": key(o).0, "name": key(o).1, "patch": reported.clone()}))
                    .into_iter()
                    .collect()
            }
            Value::Array(records) => records.clone(),
            other => panic!("{name}: {other}"),
        };
        for (theirs_before, theirs_after) in before.iter().zip(&after) {
            let mut expected = theirs_before.clone();
            if let Some(record) = records.iter().find(|r| {
                (
                    r["kind"].as_str().unwrap_or("").to_owned(),
                    r["name"].as_str().unwrap_or("").to_owned(),
                ) == key(theirs_before)
            }) {
                let patch: json_patch::Patch =
                    serde_json::from_value(record["patch"].clone()).unwrap();
                json_patch::patch(&mut expected, &patch).unwrap();
                patched += usize::from(!patch.0.is_empty());
            }
            assert_eq!(
                normalised(&expected),
                normalised(theirs_after),
                "{name}: {:?}: kubectl reads the output otherwise than input + patch",
                key(theirs_before)
            );
            compared += 1;
        }
    }
    eprintln!("kubectl: {compared} objects compared, {patched} of them patched");
    assert!(compared >= 300, "{compared} objects compared");
    assert!(patched >= 100, "{patched} objects patched");
}

#[tokio::test]
async fn helm_template_and_kustomize_output_preview_through_standard_input() {
    let env = cluster_env().await;
    let mutate = format!("mutate -f - -n apps -l {INJECT}=enabled");
    let check = format!("{mutate} --exit-code");
    let check = words(&check);
    let chart = repo().join("manifests/chart/secure-defaults");
    let rendered = Command::new(helm_bin())
        .args(["template", "sd", chart.to_str().unwrap()])
        .args(["--namespace", "secure-defaults"])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let overlay = repo().join("manifests/overlays/opt-in");
    let overlay = env.kubectl_ok(&["kustomize", overlay.to_str().unwrap()], None);
    for (what, manifest) in [
        ("helm template", rendered.stdout),
        ("kubectl kustomize", overlay.into_bytes()),
    ] {
        // The chart's Deployment states its own user but no fsGroup: that is what would change.
        let out = secure_defaults(&check, &manifest);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("objects carry no pod and pass through unchanged"),
            "{what}: {err}"
        );
        let patch: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            patch
                .to_string()
                .contains("/spec/template/spec/securityContext/fsGroup"),
            "{what}: {patch}"
        );

        let out = secure_defaults(&words(&format!("{mutate} -o object")), &manifest);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        let (before, before_err) = kubectl_reads(&env, &manifest);
        let (after, after_err) = kubectl_reads(&env, &out.stdout);
        assert!(
            before.len() > 5 && before.len() == after.len(),
            "{what}: {before_err}\n{after_err}"
        );
        for (b, a) in before.iter().zip(&after) {
            if b["kind"] == "Deployment" {
                let sc = |o: &Value| {
                    o.pointer("/spec/template/spec/securityContext")
                        .cloned()
                        .unwrap_or_default()
                };
                assert_eq!(
                    sc(a)["runAsUser"],
                    sc(b)["runAsUser"],
                    "{what}: its own user is kept"
                );
                assert_eq!(sc(a)["fsGroup"], json!(65532), "{what}: {a}");
            } else {
                assert_eq!(a, b, "{what}: objects with no pod pass through");
            }
        }
        // Applied, nothing is left to change: a CI gate passes.
        let again = secure_defaults(&check, &out.stdout);
        assert_eq!(again.status.code(), Some(0), "{what}: {}", stderr(&again));
    }
}

/// `kubectl create` of `pod` in `ns`: admitted, with warnings that say each of `words`; the pod as stored.
fn created_with_warning(ns: &TestNamespace, pod: &Value, words: &[&str]) -> Value {
    let out = ns.kubectl_create("-o json", pod);
    let (name, err) = (&pod["metadata"]["name"], stderr(&out));
    assert!(out.status.success(), "{name}: refused: {err}");
    assert!(words.iter().all(|w| err.contains(w)), "{name}: {err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn windows_pods_pinned_by_node_selection_are_left_alone() {
    let policy = policy_yaml("opt-in", "profile: restricted\n");
    let (_hook, ns) = served("windows-pinned", &policy, FailurePolicy::Fail).await;
    let container = json!([{"name": "iis", "image": "mcr.microsoft.com/windows/servercore/iis"}]);
    let cases = [
        (
            json!({"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": container}),
            "nodeSelector kubernetes.io/os is windows",
        ),
        (
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}},
                "containers": container}),
            "required node affinity admits only Windows nodes",
        ),
    ];
    for (i, (spec, words)) in cases.into_iter().enumerate() {
        let pod = pod(&format!("win-{i}"), spec);
        let stored = created_with_warning(&ns, &pod, &[words, "set spec.os.name: windows"]);
        assert!(
            sc(&stored).as_object().is_none_or(|s| s.is_empty()),
            "{stored}"
        );
        assert_at(
            words,
            &stored,
            &json!({"/spec/containers/0/securityContext": null}),
        );
    }
}

#[tokio::test]
async fn pods_with_the_deprecated_seccomp_annotations_stay_admissible() {
    let policy = policy_yaml("opt-in", "profile: restricted\n");
    let (_hook, ns) = served("seccomp-annotations", &policy, FailurePolicy::Fail).await;
    // (pod, its annotation, the pod-level profile stored, words of the warning)
    let cases = [
        (
            "pod-localhost",
            json!({"seccomp.security.alpha.kubernetes.io/pod": "localhost/profiles/audit.json"}),
            json!(null),
            "the pod states its profile \"localhost/profiles/audit.json\" in the deprecated annotation",
        ),
        (
            "container-unconfined",
            json!({"container.seccomp.security.alpha.kubernetes.io/app": "unconfined"}),
            json!(null),
            "container \"app\" states its profile \"unconfined\"",
        ),
        (
            "pod-runtime-default",
            json!({"seccomp.security.alpha.kubernetes.io/pod": "runtime/default"}),
            json!({"type": "RuntimeDefault"}),
            "the field makes it take effect",
        ),
    ];
    for (name, annotations, profile, words) in cases {
        let mut pod = bare_pod(name);
        pod["metadata"]["annotations"] = annotations;
        let stored = created_with_warning(&ns, &pod, &[words]);
        // Everything else restricted needs is still set.
        let expected = json!({
            "/spec/securityContext/seccompProfile": profile,
            "/spec/securityContext/runAsNonRoot": true
        });
        assert_at(name, &stored, &expected);
    }
}
