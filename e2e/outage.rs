//! The namespace cache across an API server outage: kube-apiserver stopped for 40 s and started again with the
//! same flags; a namespace the cache already knew is relabelled as soon as it answers, and the label must be
//! honoured within seconds, not after the watch's reconnect backoff and a re-list.
//!
//! The outage would fail every other test running at the same time, so the test is `#[ignore]`d and
//! e2e/run.sh runs ignored tests alone, after the others.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::*;

/// How long the API server is away: longer than kube's default watch backoff (30 s plus jitter), which is
/// what used to leave the cache stale for over a minute.
const OUTAGE: Duration = Duration::from_secs(40);
/// How soon after the API server answers again a relabel must take effect.
const HONOURED_WITHIN: Duration = Duration::from_secs(5);

fn cluster(dir: &Path, command: &str) {
    let script = repo().join("e2e/cluster.sh");
    let out = Command::new(script)
        .arg(command)
        .arg(dir)
        .output()
        .expect("run e2e/cluster.sh");
    assert!(
        out.status.success(),
        "e2e/cluster.sh {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the API server again if the test ends (or panics) while it is stopped, so the control plane is left
/// as found.
struct Stopped<'a> {
    dir: &'a Path,
    restarted: bool,
}

impl Stopped<'_> {
    fn restart(&mut self) {
        self.restarted = true;
        cluster(self.dir, "start-apiserver");
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.restarted {
            self.restarted = true;
            let _ = Command::new(repo().join("e2e/cluster.sh"))
                .arg("start-apiserver")
                .arg(self.dir)
                .status();
        }
    }
}

#[tokio::test]
#[ignore = "stops the shared kube-apiserver for 40 s: e2e/run.sh runs it alone, after the other tests"]
async fn namespace_relabelled_after_an_api_server_outage_is_honoured_within_seconds() {
    let test = "outage";
    let policy = policy_yaml(
        "opt-in",
        "namespaces:\n  - match: {labels: {matchLabels: {team: data}}}\n    set: {runAsUser: 20002}\n",
    );
    let (hook, ns) = served(test, &policy, FailurePolicy::Fail).await;
    let env = &ns.env;

    // The cache knows the namespace: a pod's lookup is answered from it.
    let mut n = 0;
    eventually(
        "a lookup answered from the namespace cache",
        DEADLINE,
        || {
            n += 1;
            let (ns, hook, name) = (&ns, &hook, format!("before-{n}"));
            async move {
                let hits = counter(&hook.metrics().await, CACHE_HITS);
                let pod = ns.create_pod(bare_pod(&name)).await;
                assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532, "{pod}");
                (counter(&hook.metrics().await, CACHE_HITS) > hits).then_some(())
            }
        },
    )
    .await;

    let mut stopped = Stopped {
        dir: &env.dir,
        restarted: false,
    };
    cluster(&env.dir, "stop-apiserver");
    let down = Instant::now();
    eventually("the server to notice the outage", DEADLINE, || async {
        hook.log().contains("namespace watch failed").then_some(())
    })
    .await;
    // The outage's length is the scenario itself (past the old 30 s backoff cap), not a wait for an event.
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    stopped.restart(); // returns once /readyz answers ok
    let back = Instant::now();

    // Relabel at once (retried: the client's pooled connections died with the API server), then create pods
    // until one gets the label-selected default.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let patch = json!({"metadata": {"labels": {"team": "data"}}});
    let mut relabelled = None;
    let mut last = String::new();
    let mut attempt = 0;
    loop {
        assert!(
            back.elapsed() < HONOURED_WITHIN,
            "the label team=data was not honoured within {HONOURED_WITHIN:?} of the API server answering \
             (relabelled after {relabelled:?}); last pod or error: {last}\nserver metrics:\n{}",
            hook.metrics().await
        );
        if relabelled.is_none() {
            match namespaces
                .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => relabelled = Some(back.elapsed()),
                Err(e) => last = format!("relabel: {e}"),
            }
            continue;
        }
        attempt += 1;
        match ns
            .try_create_pod(bare_pod(&format!("after-{attempt}")))
            .await
        {
            Ok(pod) if pod["spec"]["securityContext"]["runAsUser"] == 20002 => break,
            Ok(pod) => last = pod.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval, bounded by HONOURED_WITHIN
    }
    eprintln!(
        "relabel honoured {:?} after the API server answered (relabelled after {relabelled:?}, {attempt} pod(s))",
        back.elapsed()
    );
    // Said once, then at most once per 30 s, then once on recovery: not a line per retry.
    eventually("the server to log the recovery", DEADLINE, || async {
        hook.log()
            .contains("namespace watch recovered")
            .then_some(())
    })
    .await;
    let log = hook.log();
    let failing = log
        .lines()
        .filter(|l| {
            l.contains("namespace watch failed") || l.contains("namespace watch still failing")
        })
        .count();
    assert!(
        (1..=3).contains(&failing),
        "{failing} lines about the outage:\n{log}"
    );
    drop(hook);
}
