//! `loadgen server`: one server process under load, from start to stop, and `loadgen ready`: time to /readyz.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::http::Target;
use crate::load::{self, Job};
use crate::proc::{self, CpuMeter};
use crate::{Args, fixture};

/// The server process; stopped (TERM, then KILL) when dropped.
struct Server {
    child: Child,
    pid: String,
}

impl Server {
    fn spawn(command: &[String], log: &Path) -> anyhow::Result<Self> {
        let (program, args) = command
            .split_first()
            .context("no server command after --")?;
        let log =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {program}"))?;
        let pid = child.id().to_string();
        Ok(Self { child, pid })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("server exited with {status}");
        }
        Ok(())
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command_log(args: &Args, name: &str) -> PathBuf {
    args.opt("log")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("loadgen-{name}.log")))
}

async fn wait_readyz(
    server: &mut Server,
    admin: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        server.check_alive()?;
        if crate::http::plain_get(admin, "/readyz").await == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Checks one answer: 200, the review's uid echoed, allowed, and (for the real server) a patch.
fn check_response(body: &[u8], want_patch: bool) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body).context("response is not JSON")?;
    let r = &v["response"];
    if r["uid"] != fixture::REQUEST_UID || r["allowed"] != true {
        bail!("unexpected response: {v}");
    }
    // The patch's bytes in base64.
    let patched = r["patch"].as_str().is_some_and(|p| !p.is_empty());
    if want_patch && !patched {
        bail!("response has no patch: {v}");
    }
    Ok(())
}

/// The round whose `key` is the median (the upper one of an even count), whole, so that its figures stay
/// consistent with each other; every round's `key` is kept beside it under `rounds`.
fn median_round(mut rounds: Vec<Value>, key: impl Fn(&Value) -> f64) -> Value {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let keys: Vec<f64> = rounds.iter().map(&key).collect();
    let mid = rounds.len() / 2;
    let mut median = rounds.swap_remove(mid);
    median["rounds"] = json!(keys);
    median
}

fn phase_json(outcome: &load::Outcome, cpu: (f64, f64), client: (f64, f64)) -> Value {
    let mut v = outcome.to_json();
    v["server_cpu_seconds"] = json!(cpu.0);
    v["server_cpu_utilisation"] = json!(cpu.1);
    v["server_cpu_us_per_request"] = json!(cpu.0 * 1e6 / outcome.requests().max(1) as f64);
    v["client_cpu_utilisation"] = json!(client.1);
    v
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let name = args.req("name")?.to_owned();
    let addr: SocketAddr = args.req("addr")?.parse()?;
    let admin: Option<SocketAddr> = args.opt("admin").map(str::parse).transpose()?;
    let target = Target::new(addr, Path::new(args.req("ca")?), None)?;
    let target = match args.opt("protocol") {
        None | Some("http1") => target,
        Some("http2") => target.http2(),
        Some(other) => bail!("--protocol {other:?}: http1 or http2"),
    };
    let containers = args.num("containers", 1usize)?;
    let connections = args.num("connections", 32usize)?;
    let idle_connections = args.num("idle-connections", 512usize)?;
    let closed_secs = args.num("closed-seconds", 5.0f64)?;
    let rate_secs = args.num("rate-seconds", 5.0f64)?;
    let rates: Vec<f64> = match args.opt("rates") {
        Some("") | None => vec![],
        Some(list) => list
            .split(',')
            .map(|r| r.parse())
            .collect::<Result<_, _>>()?,
    };
    // Each timed phase runs this many times and reports its median round: on a shared machine a few seconds of
    // interference otherwise decide a whole figure.
    let rounds = args.num("rounds", 3usize)?.max(1);
    let want_patch = args.opt("expect-patch").is_some_and(|v| v == "true");
    let out = PathBuf::from(args.req("out")?);

    let body = Bytes::from(fixture::review_bytes(containers));
    let job = Job {
        make: Arc::new({
            let body = body.clone();
            move |_, _| ("/mutate".to_owned(), body.clone())
        }),
        status: StatusCode::OK,
    };

    eprintln!("[{name}] starting: {}", args.command.join(" "));
    let started = Instant::now();
    let mut server = Server::spawn(&args.command, &command_log(args, &name))?;
    let pid = server.pid.clone();
    let ready_ms = match admin {
        Some(admin) => {
            wait_readyz(&mut server, admin, Duration::from_secs(30)).await?;
            Some(started.elapsed().as_secs_f64() * 1e3)
        }
        None => None,
    };
    // First answered review: connect (refused until the listener is up) and send, every millisecond.
    let response = loop {
        server.check_alive()?;
        let attempt = async {
            let mut conn = target.connect().await?;
            conn.expect(StatusCode::OK, Method::POST, "/mutate", body.clone())
                .await
        };
        match attempt.await {
            Ok(response) => break response,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(e.context("no answer within 30s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    check_response(&response, want_patch)?;
    if let Some(path) = args.opt("save-response") {
        std::fs::write(path, &response)?;
    }
    eprintln!(
        "[{name}] ready in {}; first review answered after {first_ms:.1} ms ({} B request, {} B response)",
        ready_ms.map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
        body.len(),
        response.len()
    );

    // Warm-up, unrecorded.
    load::closed_loop(
        load::open(&target, connections).await?,
        Duration::from_secs(1),
        &job,
    )
    .await?;

    let mut closed_rounds = Vec::new();
    for _ in 0..rounds {
        let (cpu, client) = (CpuMeter::start(&pid)?, CpuMeter::start("self")?);
        let outcome = load::closed_loop(
            load::open(&target, connections).await?,
            Duration::from_secs_f64(closed_secs),
            &job,
        )
        .await?;
        let v = phase_json(&outcome, cpu.stop()?, client.stop()?);
        eprintln!(
            "[{name}] closed loop, {connections} {}: {:.0} req/s, p50 {} µs, p99 {} µs; server CPU {:.1} µs/req at {:.0}% of a core; client at {:.0}%",
            if target.is_http2() {
                "HTTP/2 streams"
            } else {
                "connections"
            },
            v["rate"].as_f64().unwrap_or(0.0),
            v["latency_us"]["p50"],
            v["latency_us"]["p99"],
            v["server_cpu_us_per_request"].as_f64().unwrap_or(0.0),
            v["server_cpu_utilisation"].as_f64().unwrap_or(0.0) * 100.0,
            v["client_cpu_utilisation"].as_f64().unwrap_or(0.0) * 100.0,
        );
        closed_rounds.push(v);
    }
    let closed = median_round(closed_rounds, |v| v["rate"].as_f64().unwrap_or(0.0));

    let mut fixed = Vec::new();
    for &rate in &rates {
        let mut rate_rounds = Vec::new();
        for _ in 0..rounds {
            let (cpu, client) = (CpuMeter::start(&pid)?, CpuMeter::start("self")?);
            let outcome = load::fixed_rate(
                load::open(&target, connections).await?,
                rate,
                Duration::from_secs_f64(rate_secs),
                &job,
            )
            .await?;
            let mut v = phase_json(&outcome, cpu.stop()?, client.stop()?);
            v["target_rate"] = json!(rate);
            eprintln!(
                "[{name}] fixed rate {rate:.0}/s: achieved {:.0}/s, p50 {} µs, p99 {} µs, p99.9 {} µs (client send lag p99 {} µs)",
                v["rate"].as_f64().unwrap_or(0.0),
                v["latency_us"]["p50"],
                v["latency_us"]["p99"],
                v["latency_us"]["p999"],
                v["client_send_lag_us"]["p99"],
            );
            rate_rounds.push(v);
        }
        fixed.push(median_round(rate_rounds, |v| {
            v["latency_us"]["p99"].as_f64().unwrap_or(f64::MAX)
        }));
    }

    let mut memory = json!(null);
    if idle_connections > 0 {
        // Open them all and read memory; a review on each in turn; then one in flight on every one at once.
        let rss_before = proc::status_kib(&pid, "VmRSS")?;
        let conns = load::open(&target, idle_connections).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss_handshaken = proc::status_kib(&pid, "VmRSS")?;
        // One review on each connection, one connection at a time.
        let mut held = Vec::new();
        for mut conn in conns {
            conn.expect(StatusCode::OK, Method::POST, "/mutate", body.clone())
                .await?;
            held.push(conn);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss_sequential = proc::status_kib(&pid, "VmRSS")?;
        // Then one review in flight on every connection at once: the peak.
        let mut set = tokio::task::JoinSet::new();
        for mut conn in held.drain(..) {
            let body = body.clone();
            set.spawn(async move {
                conn.expect(StatusCode::OK, Method::POST, "/mutate", body)
                    .await?;
                Ok::<_, anyhow::Error>(conn)
            });
        }
        while let Some(done) = set.join_next().await {
            held.push(done??);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.check_alive()?;
        memory = json!({
            "open_connections": held.len(),
            "vm_rss_before_kib": rss_before,
            "vm_rss_after_handshakes_kib": rss_handshaken,
            "vm_rss_after_sequential_reviews_kib": rss_sequential,
            "vm_rss_kib": proc::status_kib(&pid, "VmRSS")?,
            "vm_hwm_kib": proc::status_kib(&pid, "VmHWM")?,
            "threads": proc::threads(&pid),
        });
        eprintln!(
            "[{name}] RSS {rss_before} KiB before, {rss_handshaken} KiB with {} connections open, {rss_sequential} KiB after a review on each in turn, {} KiB after one in flight on all at once; peak (VmHWM) {} KiB",
            held.len(),
            memory["vm_rss_kib"],
            memory["vm_hwm_kib"]
        );
        drop(held);
    }
    server.check_alive()?;
    server.stop();

    let result = json!({
        "name": name,
        "command": args.command,
        "request_bytes": body.len(),
        "response_bytes": response.len(),
        "connections": connections,
        "protocol": if target.is_http2() { "http2" } else { "http1" },
        "ready_ms": ready_ms,
        "first_response_ms": first_ms,
        "closed_loop": closed,
        "fixed_rate": fixed,
        "memory": memory,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&result)?)?;
    Ok(())
}

/// `loadgen ready`: start a server and time it to /readyz 200.
pub async fn ready(args: &Args) -> anyhow::Result<()> {
    let admin: SocketAddr = args.req("admin")?.parse()?;
    let timeout = Duration::from_secs_f64(args.num("timeout", 60.0f64)?);
    let out = PathBuf::from(args.req("out")?);
    let started = Instant::now();
    let mut server = Server::spawn(&args.command, &command_log(args, "ready"))?;
    wait_readyz(&mut server, admin, timeout).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    server.stop();
    eprintln!("[ready] /readyz 200 after {ms:.1} ms");
    let mut result = json!({"ready_ms": ms, "command": args.command});
    if let Some(n) = args.opt("namespaces") {
        result["namespaces"] = json!(n.parse::<u64>()?);
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&result)?)?;
    Ok(())
}
