//! Self-managed certificates against the real API server: two replicas, one Lease holder issuing a CA and a
//! serving certificate into a Secret and injecting the caBundle, rotations of both while pods keep being admitted.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::*;

struct Replica {
    child: Child,
    admin_port: u16,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(
    env: &ClusterEnv,
    dir: &std::path::Path,
    name: &str,
    namespace: &str,
    config: &str,
    port: u16,
) -> Replica {
    let admin_port = free_port();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_secure-defaults"))
        .args([
            "serve",
            "--self-managed-certs",
            "--log-format",
            "json",
            "--drain-seconds",
            "0",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--policy")
        .arg(dir.join("policy.yaml"))
        .env("KUBECONFIG", &env.kubeconfig)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", name)
        .env("SECURE_DEFAULTS_WEBHOOK_CONFIGURATION", config)
        .env("SECURE_DEFAULTS_CERT_EXTRA_NAMES", "[127.0.0.1]")
        // Short lifetimes so that a serving-certificate renewal and a whole CA rotation happen within the test.
        .env("SECURE_DEFAULTS_CA_VALIDITY_SECONDS", "75")
        .env("SECURE_DEFAULTS_CERT_VALIDITY_SECONDS", "24")
        .env("SECURE_DEFAULTS_CA_OVERLAP_SECONDS", "4")
        .env("SECURE_DEFAULTS_CERT_CHECK_SECONDS", "1")
        .env("SECURE_DEFAULTS_LEASE_DURATION_SECONDS", "5")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Replica {
        child,
        admin_port,
        log,
    }
}

#[tokio::test]
async fn self_managed_certificates_issue_inject_and_rotate_while_admitting() {
    let env = cluster_env();
    let client = client(&env).await;
    let test = "self-certs";
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), policy_yaml("opt-in", "")).unwrap();

    let home = TestNamespace::create(&client, &env, test, "e2e-self-certs-home", &[]).await;
    let served = TestNamespace::create(
        &client,
        &env,
        test,
        "e2e-self-certs",
        &[(INJECT, "enabled")],
    )
    .await;
    let config_name = "self-certs.e2e.secure-defaults.io";
    let port = free_port();
    // Registered without a caBundle: the Lease holder injects it.
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "pods.secure-defaults.io",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [
                {"key": TEST_LABEL, "operator": "In", "values": [test]},
                {"key": INJECT, "operator": "In", "values": ["enabled"]}]},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5,
            "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded"
        }]
    }))
    .unwrap();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = configs.delete(config_name, &Default::default()).await;
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    struct Unregister(std::path::PathBuf, std::path::PathBuf, &'static str);
    impl Drop for Unregister {
        fn drop(&mut self) {
            let _ = kubectl(
                &self.0,
                &self.1,
                &[
                    "delete",
                    "mutatingwebhookconfiguration",
                    self.2,
                    "--ignore-not-found",
                ],
                None,
            );
        }
    }
    let _unregister = Unregister(env.bin.join("kubectl"), env.kubeconfig.clone(), config_name);

    let a = replica(&env, &dir, "replica-a", &home.name, config_name, port);
    let b = replica(
        &env,
        &dir,
        "replica-b",
        &home.name,
        config_name,
        free_port(),
    );
    for r in [&a, &b] {
        let addr = format!("127.0.0.1:{}", r.admin_port);
        eventually(
            "a replica to load the issued certificate and turn ready",
            DEADLINE,
            || {
                let addr = addr.clone();
                async move {
                    http_get(&addr, "/readyz")
                        .await
                        .filter(|(code, _)| *code == 200)
                        .map(|_| ())
                }
            },
        )
        .await;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &home.name);
    let lease = leases.get("secure-defaults-certificates").await.unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");

    let bundle_injected = configs.get(config_name).await.unwrap().webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone();
    assert!(
        bundle_injected
            .is_some_and(|b| String::from_utf8_lossy(&b.0).contains("BEGIN CERTIFICATE"))
    );
    let pods = served.pods();
    eventually(
        "the API server to trust the injected bundle",
        DEADLINE,
        || {
            let pods = pods.clone();
            async move { served_pod(&pods, "probe", true).await.ok() }
        },
    )
    .await;

    // Keep admitting pods across serving-certificate renewals and a CA rotation.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &home.name);
    let (mut cas, mut leaves) = (BTreeSet::new(), BTreeSet::new());
    let (mut admitted, mut failures) = (0, Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(80) && (cas.len() < 2 || leaves.len() < 4) {
        if let Ok(secret) = secrets.get("secure-defaults-tls").await {
            let data = secret.data.unwrap_or_default();
            cas.extend(data.get("ca.crt").map(|v| v.0.clone()));
            leaves.extend(data.get("tls.crt").map(|v| v.0.clone()));
        }
        admitted += 1;
        if let Err(e) = served_pod(&pods, &format!("pod-{admitted}"), false).await {
            failures.push(e);
        }
        // Pacing the pod stream (not waiting for an event); the loop is bounded by its 80 s deadline.
        tokio::time::sleep(Duration::from_millis(250)).await; // pacing; the loop has an 80 s deadline
    }
    assert!(
        failures.is_empty(),
        "{} of {admitted} pods failed during rotation: {failures:?}",
        failures.len()
    );
    assert!(
        cas.len() >= 2,
        "no CA rotation observed in {:?}",
        start.elapsed()
    );
    assert!(
        leaves.len() >= 4,
        "only {} serving certificates observed",
        leaves.len()
    );
    let metrics = http_get(&format!("127.0.0.1:{}", a.admin_port), "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        !metrics.contains(r#"secure_defaults_certificate_reloads_total{result="failed"}"#),
        "{metrics}"
    );
    drop(b);
}

/// Creates a pod (or a dry run of one) and checks it was defaulted.
async fn served_pod(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    dry_run: bool,
) -> Result<(), String> {
    let pod = serde_json::from_value(bare_pod(name)).unwrap();
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    let created = pods
        .create(&params, &pod)
        .await
        .map_err(|e| e.to_string())?;
    let defaulted = created
        .metadata
        .annotations
        .is_some_and(|a| a.contains_key("secure-defaults.io/defaulted"));
    if defaulted {
        Ok(())
    } else {
        Err(format!("{name} not defaulted"))
    }
}
