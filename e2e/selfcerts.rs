//! Self-managed certificates against the real API server: two replicas, one Lease holder issuing a CA and a
//! serving certificate into a Secret and injecting the caBundle, rotations of both while pods keep being admitted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::*;

/// A replica in self-managed mode, as `name` in `namespace`, injecting into the webhook configuration `config`.
fn replica(
    env: &ClusterEnv,
    dir: &Path,
    name: &str,
    namespace: &str,
    config: &str,
    port: u16,
) -> Server {
    let admin_port = free_port();
    let args = [
        "serve",
        "--self-managed-certs",
        "--log-format",
        "json",
        "--drain-seconds",
        "0",
    ];
    let mut cmd = serve(env, &args, port, admin_port);
    cmd.arg("--policy")
        .arg(dir.join("policy.yaml"))
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", name)
        .env("SECURE_DEFAULTS_WEBHOOK_CONFIGURATION", config)
        .env("SECURE_DEFAULTS_CERT_EXTRA_NAMES", "[127.0.0.1]")
        // Short lifetimes so that a serving-certificate renewal and a whole CA rotation happen within the test.
        .env("SECURE_DEFAULTS_CA_VALIDITY_SECONDS", "75")
        .env("SECURE_DEFAULTS_CERT_VALIDITY_SECONDS", "24")
        .env("SECURE_DEFAULTS_CA_OVERLAP_SECONDS", "4")
        .env("SECURE_DEFAULTS_CERT_CHECK_SECONDS", "1")
        .env("SECURE_DEFAULTS_LEASE_DURATION_SECONDS", "5");
    Server::spawn(cmd, admin_port, dir.join(format!("{name}.log")))
}

#[tokio::test]
async fn self_managed_certificates_issue_inject_and_rotate_while_admitting() {
    let env = cluster_env().await;
    let client = &env.client;
    let test = "self-certs";
    let dir = tmp_dir(test);
    std::fs::write(dir.join("policy.yaml"), policy_yaml("opt-in", "")).unwrap();

    let home = TestNamespace::create(&env, test, "e2e-self-certs-home", &[]).await;
    let served = TestNamespace::create(&env, test, "e2e-self-certs", &[(INJECT, "enabled")]).await;
    let config_name = "self-certs.e2e.secure-defaults.io";
    let port = free_port();
    // Registered without a caBundle: the Lease holder injects it.
    let url = format!("https://127.0.0.1:{port}/mutate");
    let config = webhook_configuration(config_name, test, &url, None, false, FailurePolicy::Fail);
    register(client, &config).await;
    let _unregister = OnDrop(|| {
        let object = format!("mutatingwebhookconfiguration/{config_name}");
        let _ = env.kubectl(&["delete", &object, "--ignore-not-found"], None);
    });

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
        let what = "a replica to load the issued certificate and turn ready";
        eventually(what, DEADLINE, || async {
            is_ready(r.admin_port).await.then_some(())
        })
        .await;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &home.name);
    let lease = leases.get("secure-defaults-certificates").await.unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");

    // A replica turns ready once it serves the Secret's certificate; the holder injects the bundle
    // just after writing that Secret, so the other replica can be ready first.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually(
        "the Lease holder to inject the caBundle",
        DEADLINE,
        || async {
            let config = configs.get(config_name).await.ok()?;
            let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
            String::from_utf8_lossy(&bundle.0)
                .contains("BEGIN CERTIFICATE")
                .then_some(())
        },
    )
    .await;
    eventually(
        "the API server to trust the injected bundle",
        DEADLINE,
        || async { served_pod(client, &served.name, "probe", true).await.ok() },
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
        if let Err(e) = served_pod(client, &served.name, &format!("pod-{admitted}"), false).await {
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
    certificate_metrics_follow_the_secret(a.admin_port, start).await;
    drop(b);
}

/// Creates a pod in `ns` (or a dry run of one) and checks it was defaulted.
async fn served_pod(client: &Client, ns: &str, name: &str, dry_run: bool) -> Result<(), String> {
    let created = create(client, ns, &bare_pod(name), dry_run).await?;
    annotation(&created)
        .map(drop)
        .ok_or_else(|| format!("{name} not defaulted"))
}

/// The Lease is judged by when this replica saw it change, never by the holder's clock: a holder whose clock
/// is an hour behind keeps its Lease for as long as it renews, and a dead holder whose clock was an hour ahead
/// loses it one lease duration (5 s here) after its last renewal.
#[tokio::test]
async fn self_managed_lease_expiry_ignores_the_holders_clock() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    let env = cluster_env().await;
    let client = &env.client;
    let test = "self-certs-skew";
    let dir = tmp_dir(test);
    std::fs::write(dir.join("policy.yaml"), policy_yaml("opt-in", "")).unwrap();
    let home = TestNamespace::create(&env, test, "e2e-self-certs-skew", &[]).await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &home.name);
    let name = "secure-defaults-certificates";
    let hour = SignedDuration::from_hours(1);
    let at =
        |offset: SignedDuration| Some(MicroTime(Timestamp::now().checked_add(offset).unwrap()));
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 5}
    }))
    .unwrap();
    let mut lease = leases.create(&PostParams::default(), &lease).await.unwrap();

    // Nothing to inject into: the replica logs that and carries on.
    let replica = replica(
        &env,
        &dir,
        "replica-c",
        &home.name,
        "absent.e2e.secure-defaults.io",
        free_port(),
    );

    // A live holder whose clock is an hour behind: renewing every 500 ms for three lease durations, it keeps
    // the Lease (a replica comparing renewTime with its own clock would take it at once).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let spec = lease.spec.as_mut().unwrap();
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some("skewed"),
            "the live holder lost its Lease"
        );
        spec.renew_time = at(-hour);
        lease = leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "renewing as the live holder after {:?}: {e}",
                    start.elapsed()
                )
            });
        // Pacing the holder's renewals; the loop is bounded by its 15 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // It answers, and not ready.
    let admin = format!("127.0.0.1:{}", replica.admin_port);
    let (code, _) = eventually("the replica's admin port to answer", DEADLINE, || {
        http_get(&admin, "/readyz")
    })
    .await;
    assert_ne!(code, 200, "ready without a certificate");

    // The holder dies with its clock an hour ahead: its Lease looks valid for another hour by its renewTime.
    let spec = lease.spec.as_mut().unwrap();
    spec.renew_time = at(hour);
    // Before the write, so that no replica can have seen the last renewal earlier than this.
    let died = Instant::now();
    leases
        .replace(name, &PostParams::default(), &lease)
        .await
        .unwrap();
    eventually(
        "the replica to take the dead holder's Lease",
        DEADLINE,
        || async {
            let lease = leases.get(name).await.ok()?;
            (lease.spec?.holder_identity.as_deref() == Some("replica-c")).then_some(())
        },
    )
    .await;
    // A safety bound, not a speed one: taking the Lease sooner would mean trusting the holder's clock.
    let taken_after = died.elapsed();
    assert!(
        taken_after >= Duration::from_secs(5),
        "taken {taken_after:?} after the last renewal, before the lease duration"
    );
    eventually(
        "the replica to issue its certificate and turn ready",
        DEADLINE,
        || async { is_ready(replica.admin_port).await.then_some(()) },
    )
    .await;
    drop(replica);
}

/// No reload failed on replica `admin_port`, and its certificate times come from the certificates in the Secret:
/// issued during this test (begun at `start`), the serving certificate expiring after it was issued and no later
/// than its CA.
async fn certificate_metrics_follow_the_secret(admin_port: u16, start: Instant) {
    let metrics = http_get(&format!("127.0.0.1:{}", admin_port), "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains(r#"secure_defaults_certificate_reloads_total{result="failed"} 0"#),
        "{metrics}"
    );
    let value = |name: &str| -> i64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let rotated = value("secure_defaults_certificate_last_rotation_timestamp_seconds");
    let expiry = value("secure_defaults_certificate_expiry_timestamp_seconds");
    let ca_expiry = value("secure_defaults_ca_expiry_timestamp_seconds");
    let began = now - i64::try_from(start.elapsed().as_secs()).unwrap() - 120;
    assert!(
        (began..=now + 60).contains(&rotated),
        "last rotation {rotated}, test began after {began}, now {now}"
    );
    assert!(rotated < expiry && expiry <= ca_expiry, "{metrics}");
}
