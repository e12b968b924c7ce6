//! The namespace cache's memory, against the real API server: it keeps only what decisions read (each
//! namespace's name and labels), so a cluster whose namespaces carry large annotations (and managedFields) does not
//! grow the server's memory with them.
//!
//! It creates 3,000 namespaces, so it is `#[ignore]`d and e2e/run.sh runs it alone, after the other tests.

use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::*;

#[tokio::test]
#[ignore = "creates 3,000 namespaces: e2e/run.sh runs it alone, after the other tests"]
async fn namespace_cache_memory_does_not_grow_with_annotations() {
    let env = cluster_env().await;
    let client = &env.client;
    let test = "memory";
    let policy = policy_yaml("opt-in", "");
    let hook = Webhook::start(&env, test, &policy, FailurePolicy::Ignore).await;
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
    // Deletes the test's namespaces whichever way it ends.
    let _cleanup = OnDrop(|| {
        let delete = format!("delete namespace -l {TEST_LABEL}=memory --wait=false");
        let _ = env.kubectl(&words(&delete), None);
    });

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
    eventually("the cache to hold the last namespace", DEADLINE, || async {
        let hits = counter(&hook.metrics().await, CACHE_HITS);
        create(client, &last, &bare_pod("probe"), true).await.ok()?;
        (counter(&hook.metrics().await, CACHE_HITS) > hits).then_some(())
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
