//! The namespace cache's memory, against the real API server: it keeps only what decisions read (each
//! namespace's name and labels), so a cluster whose namespaces carry large annotations (and managedFields) does not
//! grow the server's memory with them.
//!
//! It creates 3,000 namespaces, so it is `#[ignore]`d and e2e/run.sh runs it alone, after the other tests.

use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::*;

const CACHE_HITS: &str = r#"secure_defaults_namespace_lookups_total{source="cache"}"#;

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
#[ignore = "creates 3,000 namespaces: e2e/run.sh runs it alone, after the other tests"]
async fn namespace_cache_memory_does_not_grow_with_annotations() {
    let env = cluster_env();
    let client = client(&env).await;
    let test = "memory";
    let hook = Webhook::start(
        &client,
        &env,
        test,
        &policy_yaml("opt-in", ""),
        FailurePolicy::Ignore,
    )
    .await;
    let pid = hook.pid().expect("server running");
    let before = rss_kib(pid);

    // 3,000 namespaces, each with an 8 KiB annotation: 24 MiB of metadata that decisions never read.
    let (count, ballast) = (3000, "x".repeat(8 * 1024));
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let names: Vec<String> = (0..count).map(|i| format!("e2e-memory-{i}")).collect();
    let mut creating = futures_util::stream::iter(names.iter().map(|name| {
        let (api, ballast) = (api.clone(), ballast.clone());
        async move {
            let ns = serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {TEST_LABEL: test, INJECT: "enabled"},
                "annotations": {"e2e.secure-defaults.io/ballast": ballast}}}))
            .unwrap();
            api.create(&PostParams::default(), &ns).await.map(drop)
        }
    }))
    .buffer_unordered(16);
    use futures_util::StreamExt as _;
    while let Some(created) = creating.next().await {
        created.expect("create namespace");
    }
    let _cleanup = Cleanup(&env);

    // Watch events come in order: once the last namespace is answered from the cache, all of them are cached.
    // Pods there are refused until the controller manager has made its `default` ServiceAccount (3,000 of them).
    let last = names.last().unwrap().clone();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &last);
    eventually(
        "the last namespace's default ServiceAccount",
        4 * DEADLINE,
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    let probe = bare_pod("probe");
    eventually("the cache to hold the last namespace", DEADLINE, || {
        let (hook, client, last, probe) = (&hook, &client, &last, &probe);
        async move {
            let hits = counter(&hook.metrics().await, CACHE_HITS);
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), last);
            let pod = serde_json::from_value(probe.clone()).unwrap();
            pods.create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod,
            )
            .await
            .ok()?;
            (counter(&hook.metrics().await, CACHE_HITS) > hits).then_some(())
        }
    })
    .await;
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "RSS {:.1} MiB before, {:.1} MiB with {count} annotated namespaces cached (+{grown_mib:.1} MiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    // The annotations alone are 24 MiB; a cache of names and labels grows by a small fraction of that (the
    // allocator keeps some of what the paged list used).
    assert!(
        grown_mib < 8.0,
        "RSS grew by {grown_mib:.1} MiB with {count} namespaces"
    );
}

/// Deletes the test's namespaces whatever way it ends.
struct Cleanup<'a>(&'a ClusterEnv);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.0.bin.join("kubectl"),
            &self.0.kubeconfig,
            &[
                "delete",
                "namespace",
                "-l",
                &format!("{TEST_LABEL}=memory"),
                "--wait=false",
            ],
            None,
        );
    }
}
