//! Load on the local kube-apiserver that e2e/cluster.sh started (loopback, admin client certificate): pod
//! creations per admission configuration, and bulk namespace creation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::http::Target;
use crate::load::{self, Job};
use crate::{Args, fixture};

/// The API server of a cluster directory (its `env` file and `pki/`).
fn cluster(dir: &Path) -> anyhow::Result<Target> {
    let env = std::fs::read_to_string(dir.join("env"))
        .with_context(|| format!("read {}/env", dir.display()))?;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_owned())
            .with_context(|| format!("no {name} in {}/env", dir.display()))
    };
    let url = var("APISERVER_URL")?;
    let addr: SocketAddr = url
        .strip_prefix("https://")
        .context("APISERVER_URL is not https")?
        .parse()?;
    if !addr.ip().is_loopback() {
        bail!("refusing a non-loopback API server {addr}");
    }
    let ca = PathBuf::from(var("CA_CERT")?);
    let pki = dir.join("pki");
    Target::new(
        addr,
        &ca,
        Some((&pki.join("admin.crt"), &pki.join("admin.key"))),
    )
}

#[derive(Clone)]
struct PodTarget {
    name: String,
    namespace: String,
    expect: String,
    /// The containers' image, where not the fixture's; `{n}` in it becomes a number counted per create (a fresh
    /// tag for each pod), taken modulo `tags`.
    image: Option<String>,
    tags: u64,
    next: Arc<AtomicU64>,
}

const TARGET: &str = "--target NAME=NAMESPACE:EXPECT[:IMAGE]";

fn parse_target(spec: &str, tags: u64) -> anyhow::Result<PodTarget> {
    let (name, rest) = spec.split_once('=').context(TARGET)?;
    let (namespace, rest) = rest.split_once(':').context(TARGET)?;
    let (expect, image) = match rest.split_once(':') {
        Some((expect, image)) => (expect, Some(image.to_owned())),
        None => (rest, None),
    };
    if !["none", "null", "webhook", "map", "peer", "image"].contains(&expect) {
        bail!("EXPECT must be none, null, webhook, map, peer or image, not {expect:?}");
    }
    if expect == "image" && image.is_none() {
        bail!("{name}: EXPECT image needs an IMAGE ({TARGET})");
    }
    Ok(PodTarget {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        expect: expect.to_owned(),
        image,
        tags: tags.max(1),
        next: Arc::new(AtomicU64::new(0)),
    })
}

impl PodTarget {
    /// A pod of this target: the fixture's, with the target's image.
    fn pod(&self, containers: usize, name: &str) -> Value {
        let mut pod = fixture::create_pod(containers, name);
        if let Some(image) = &self.image {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % self.tags;
            let image = image.replace("{n}", &n.to_string());
            if let Some(list) = pod
                .pointer_mut("/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for c in list {
                    c["image"] = json!(image);
                }
            }
        }
        pod
    }
}

/// Whether a created pod shows exactly the mutation its configuration should make.
fn mutated_as_expected(expect: &str, pod: &Value) -> bool {
    let id =
        |field: &str| pod.pointer(&format!("/spec/securityContext/{field}")) == Some(&json!(65532));
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let no_escalation = !containers.is_empty()
        && containers
            .iter()
            .all(|c| c.pointer("/securityContext/allowPrivilegeEscalation") == Some(&json!(false)));
    let pod_level = id("runAsUser") && id("runAsGroup") && id("fsGroup");
    let annotated = pod
        .pointer("/metadata/annotations/secure-defaults.io~1defaulted")
        .is_some();
    match expect {
        // "null": a webhook is called and answers without a patch.
        "none" | "null" => !id("runAsUser") && !no_escalation && !annotated,
        "webhook" => pod_level && no_escalation && annotated,
        // Image-aware defaults (the bench's image runs as 1001:1001): the pod-level defaults, and each container
        // its image's user.
        "image" => {
            pod_level
                && no_escalation
                && annotated
                && containers
                    .iter()
                    .all(|c| c.pointer("/securityContext/runAsUser") == Some(&json!(1001)))
        }
        // A MutatingAdmissionPolicy, Kyverno or Gatekeeper: the same fields, no annotation of ours.
        "map" | "peer" => pod_level && no_escalation && !annotated,
        _ => false,
    }
}

/// Dry-run creates a pod until the API server applies the expected mutation (configurations take effect
/// asynchronously); fails if it does not within a minute.
async fn verify(target: &Target, t: &PodTarget, containers: usize) -> anyhow::Result<Value> {
    let mut conn = target.connect().await?;
    let path = format!("/api/v1/namespaces/{}/pods?dryRun=All", t.namespace);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let body = serde_json::to_vec(&t.pod(containers, &format!("{}-probe", t.name)))?;
        let (status, response) = conn.send(Method::POST, &path, Bytes::from(body)).await?;
        let pod: Value = serde_json::from_slice(&response).unwrap_or(Value::Null);
        if status == StatusCode::CREATED && mutated_as_expected(&t.expect, &pod) {
            return Ok(pod);
        }
        // A refused object will not become valid by waiting.
        let refused =
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY;
        if refused || Instant::now() > deadline {
            bail!(
                "{}: a pod created in {} is not mutated as {:?} expects (HTTP {status}, after {:.0?}): {}",
                t.name,
                t.namespace,
                t.expect,
                started.elapsed(),
                String::from_utf8_lossy(&response[..response.len().min(2000)])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn create_job(t: &PodTarget, round: usize, containers: usize) -> Job {
    let (path, prefix) = (
        format!("/api/v1/namespaces/{}/pods", t.namespace),
        // Unique across runs against the same cluster: the process id is part of every name.
        format!("{}-{}-r{round}", t.name, std::process::id()),
    );
    let t = t.clone();
    Job {
        make: Arc::new(move |worker, seq| {
            let pod = t.pod(containers, &format!("{prefix}-w{worker}-{seq}"));
            (
                path.clone(),
                Bytes::from(serde_json::to_vec(&pod).expect("a pod serialises")),
            )
        }),
        status: StatusCode::CREATED,
    }
}

pub async fn create_pods(args: &Args) -> anyhow::Result<()> {
    let target = cluster(Path::new(args.req("env")?))?;
    let tags = args.num("tags", 1u64)?;
    let targets: Vec<PodTarget> = args
        .all("target")
        .iter()
        .map(|s| parse_target(s, tags))
        .collect::<Result<_, _>>()?;
    let connections = args.num("connections", 8usize)?;
    let rounds = args.num("rounds", 3usize)?;
    let round_secs = Duration::from_secs_f64(args.num("round-seconds", 3.0f64)?);
    let containers = args.num("containers", 1usize)?;
    let out = PathBuf::from(args.req("out")?);

    for t in &targets {
        let pod = verify(&target, t, containers).await?;
        eprintln!(
            "[e2e] {} ({}): a dry-run pod comes back as expected ({}): securityContext {}",
            t.name,
            t.namespace,
            t.expect,
            pod.pointer("/spec/securityContext").unwrap_or(&Value::Null)
        );
    }
    // Warm-up, unrecorded: connections, caches, the webhook's connection pool in the API server.
    for t in &targets {
        let conns = load::open(&target, connections).await?;
        load::closed_loop(
            conns,
            Duration::from_secs(1),
            &create_job(t, 99, containers),
        )
        .await?;
    }
    // Rounds interleave the configurations so that drift on a busy machine hits them alike.
    let mut totals: Vec<(hdrhistogram::Histogram<u64>, Duration, Vec<u32>)> = targets
        .iter()
        .map(|_| (load::histogram(), Duration::ZERO, Vec::new()))
        .collect();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let conns = load::open(&target, connections).await?;
            let outcome =
                load::closed_loop(conns, round_secs, &create_job(t, round, containers)).await?;
            eprintln!(
                "[e2e] round {}/{rounds} {}: {:.0} creates/s, p50 {} µs, p99 {} µs",
                round + 1,
                t.name,
                outcome.rate(),
                outcome.latency.value_at_quantile(0.5),
                outcome.latency.value_at_quantile(0.99)
            );
            totals[i].0.add(&outcome.latency)?;
            totals[i].1 += outcome.elapsed;
            totals[i].2.extend(&outcome.samples);
        }
    }
    let results: Vec<Value> = targets
        .iter()
        .zip(&totals)
        .map(|(t, (latency, elapsed, samples))| {
            json!({
                "name": t.name,
                "namespace": t.namespace,
                "expect": t.expect,
                "image": t.image,
                // Pods of this target made in all (the probe and warm-up too): how many tags `{n}` went through.
                "made": t.next.load(Ordering::Relaxed),
                "creates": latency.len(),
                "seconds": elapsed.as_secs_f64(),
                "rate": latency.len() as f64 / elapsed.as_secs_f64(),
                "latency_us": load::summary(latency),
                // Every timed create's latency, µs, in the order measured per round: for the chart.
                "samples_us": samples,
            })
        })
        .collect();
    let result = json!({
        "connections": connections,
        "rounds": rounds,
        "round_seconds": round_secs.as_secs_f64(),
        "containers": containers,
        "targets": results,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&result)?)?;
    Ok(())
}

pub async fn create_namespaces(args: &Args) -> anyhow::Result<()> {
    let target = cluster(Path::new(args.req("env")?))?;
    let count = args.num("count", 10_000u64)?;
    let prefix = args.opt("prefix").unwrap_or("bulk").to_owned();
    let connections = args.num("connections", 32usize)?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for mut conn in load::open(&target, connections).await? {
        let (next, prefix) = (next.clone(), prefix.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("{prefix}-{i:05}")}});
                let (status, body) = conn
                    .send(Method::POST, "/api/v1/namespaces", Bytes::from(serde_json::to_vec(&ns)?))
                    .await?;
                if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
                    bail!(
                        "create namespace: HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(500)])
                    );
                }
                if (i + 1) % 2000 == 0 {
                    eprintln!("[namespaces] {} created", i + 1);
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "[namespaces] {count} created in {secs:.1} s ({:.0}/s)",
        count as f64 / secs
    );
    Ok(())
}
