//! The two load shapes, over N keep-alive connections with one request in flight each:
//!
//! * closed loop: every connection sends its next request as soon as the previous answer is in (throughput);
//! * fixed rate (open loop): request `i` is due at `start + i / rate`; whichever connection is free takes the next
//!   due request, and its latency counts from when it was due, not from when it was sent, so a slow answer that
//!   delays the requests behind it shows up in their latency (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::http::{Conn, Target};

/// What to send: the request of worker `w`'s `seq`-th turn, and the status that counts as success.
#[derive(Clone)]
pub struct Job {
    pub make: Arc<dyn Fn(usize, u64) -> (String, Bytes) + Send + Sync>,
    pub status: StatusCode,
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().clamp(1, 100_000_000) as u64);
}

pub struct Outcome {
    /// Latency per request, µs.
    pub latency: Histogram<u64>,
    /// Fixed rate only: how late the client sent each request (its own scheduling delay), µs.
    pub send_lag: Option<Histogram<u64>>,
    /// Closed loop only: every request's latency, µs, as measured (the histogram rounds to 3 significant
    /// digits); for the e2e chart.
    pub samples: Vec<u32>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.latency.len()
    }

    pub fn rate(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "requests": self.requests(),
            "seconds": self.elapsed.as_secs_f64(),
            "rate": self.rate(),
            "latency_us": summary(&self.latency),
        });
        if let Some(lag) = &self.send_lag {
            v["client_send_lag_us"] = summary(lag);
        }
        v
    }
}

pub fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "mean": h.mean(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// `n` senders: `n` HTTP/1.1 connections, or `n` streams over one HTTP/2 connection, as kube-apiserver holds one
/// connection to a webhook and multiplexes its calls.
pub async fn open(target: &Target, n: usize) -> anyhow::Result<Vec<Conn>> {
    if target.is_http2() {
        let first = target.connect().await?;
        let mut conns: Vec<Conn> = (1..n).filter_map(|_| first.stream()).collect();
        conns.push(first);
        return Ok(conns);
    }
    let mut set = JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        set.spawn(async move { target.connect().await });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(conn) = set.join_next().await {
        conns.push(conn??);
    }
    Ok(conns)
}

type Recorded = (Histogram<u64>, Histogram<u64>, Vec<u32>);

async fn collect(mut set: JoinSet<anyhow::Result<Recorded>>) -> anyhow::Result<Recorded> {
    let (mut latency, mut lag, mut samples) = (histogram(), histogram(), Vec::new());
    while let Some(done) = set.join_next().await {
        let (l, g, s) = done.context("load task panicked")??;
        latency.add(l)?;
        lag.add(g)?;
        samples.extend(s);
    }
    Ok((latency, lag, samples))
}

pub async fn closed_loop(
    conns: Vec<Conn>,
    duration: Duration,
    job: &Job,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for (worker, mut conn) in conns.into_iter().enumerate() {
        let job = job.clone();
        set.spawn(async move {
            let mut latency = histogram();
            let mut samples = Vec::new();
            let mut seq = 0;
            while Instant::now() < deadline {
                let (path, body) = (job.make)(worker, seq);
                seq += 1;
                let sent = Instant::now();
                conn.expect(job.status, Method::POST, &path, body).await?;
                let took = sent.elapsed();
                record(&mut latency, took);
                samples.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok((latency, histogram(), samples))
        });
    }
    let (latency, _, samples) = collect(set).await?;
    Ok(Outcome {
        latency,
        send_lag: None,
        samples,
        elapsed: start.elapsed(),
    })
}

/// Waits until `t` with better than the timer's millisecond resolution: sleeps while far, then yields (the runtime
/// still polls sockets between yields) until due.
async fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > Duration::from_micros(1500) {
            tokio::time::sleep(left - Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

pub async fn fixed_rate(
    conns: Vec<Conn>,
    rate: f64,
    duration: Duration,
    job: &Job,
) -> anyhow::Result<Outcome> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval_ns = 1e9 / rate;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let mut set = JoinSet::new();
    for (worker, mut conn) in conns.into_iter().enumerate() {
        let (job, next) = (job.clone(), next.clone());
        set.spawn(async move {
            let (mut latency, mut lag) = (histogram(), histogram());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                wait_until(due).await;
                record(&mut lag, due.elapsed());
                let (path, body) = (job.make)(worker, i);
                conn.expect(job.status, Method::POST, &path, body).await?;
                record(&mut latency, due.elapsed());
            }
            Ok((latency, lag, Vec::new()))
        });
    }
    let (latency, lag, samples) = collect(set).await?;
    Ok(Outcome {
        latency,
        send_lag: Some(lag),
        samples,
        elapsed: start.elapsed(),
    })
}
