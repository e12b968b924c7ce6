//! The opt-in monitoring component (`manifests/components/monitoring`) added to an overlay, rendered with
//! kubectl's built-in kustomize: it adds exactly a PodMonitor, a PrometheusRule whose groups are
//! manifests/monitoring/alerts.yaml, and the dashboard ConfigMap for Grafana's sidecar, all in the
//! installation's namespace, and changes nothing else.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::support::*;

/// `to` relative to `from` (kustomize refuses absolute paths to other kustomizations).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let (a, b): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut path = PathBuf::new();
    for _ in common..a.len() {
        path.push("..");
    }
    for c in &b[common..] {
        path.push(c.as_os_str());
    }
    path
}

fn key(doc: &Value) -> String {
    format!(
        "{}/{}/{}",
        doc["kind"].as_str().unwrap_or(""),
        doc["metadata"]["namespace"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("")
    )
}

#[tokio::test]
async fn the_monitoring_component_adds_rules_scraping_and_the_dashboard() {
    let env = cluster_env().await;
    let dir = tmp_dir("monitoring-component");
    let manifests = repo().join("manifests");
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            relative(&dir, &manifests.join("overlays/opt-in")).display(),
            relative(&dir, &manifests.join("components/monitoring")).display(),
        ),
    )
    .unwrap();

    let plain = render(&env, manifests.join("overlays/opt-in"));
    let with = render(&env, &dir);
    let plain_keys: Vec<String> = plain.iter().map(key).collect();
    let added: Vec<&Value> = with
        .iter()
        .filter(|d| !plain_keys.contains(&key(d)))
        .collect();
    let mut added_keys: Vec<String> = added.iter().map(|d| key(d)).collect();
    added_keys.sort();
    assert_eq!(
        added_keys,
        [
            "ConfigMap/secure-defaults/secure-defaults-dashboard",
            "PodMonitor/secure-defaults/secure-defaults",
            "PrometheusRule/secure-defaults/secure-defaults",
        ]
    );
    for doc in &plain {
        let same = with.iter().find(|d| key(d) == key(doc)).unwrap();
        assert_eq!(same, doc, "the component changed {}", key(doc));
    }

    let find = |kind: &str| *added.iter().find(|d| d["kind"] == kind).unwrap();
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(manifests.join("monitoring/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(find("PrometheusRule")["spec"], rules);

    let dashboard = find("ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dashboard["data"]["secure-defaults.json"].as_str().unwrap();
    assert_eq!(
        json,
        std::fs::read_to_string(manifests.join("monitoring/dashboard.json")).unwrap()
    );
    let parsed: Value = serde_json::from_str(json).unwrap();
    assert_eq!(parsed["uid"], "secure-defaults");

    // The PodMonitor scrapes the admin port of the Deployment's own pods.
    let monitor = find("PodMonitor");
    let deployment = crate::manifests::deployment(&with);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod_labels[k], v, "the PodMonitor selects {k}={v}");
    }
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == port),
        "no container port named {port}: {ports:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
