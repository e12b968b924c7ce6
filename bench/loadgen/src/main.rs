//! `loadgen`: the load generator and report of `make bench` (driven by bench/run.sh). Everything it sends goes to
//! loopback addresses given on its command line.
//!
//! ```text
//! loadgen floor  --listen ADDR --cert PEM --key PEM --response FILE
//!     A server with the webhook's TLS and HTTP stack that answers POST /mutate with a fixed body, without parsing.
//! loadgen server --name NAME --addr ADDR --ca PEM --out FILE [--admin ADDR] [options] -- COMMAND...
//!     Starts COMMAND (the server, pinned by the caller), times it to ready, then closed-loop and fixed-rate load,
//!     CPU per request and peak RSS with many open connections; stops it and writes JSON.
//! loadgen create-pods --env CLUSTER_DIR --target NAME=NAMESPACE:EXPECT[:IMAGE] ... [--tags N] --out FILE
//!     Pod creations through kube-apiserver, round-robin over the targets; EXPECT is none, null, webhook, map,
//!     peer or image (the webhook with image-aware defaults: containers run as 1001). IMAGE replaces the
//!     containers' image; `{n}` in it counts creates modulo N (a fresh tag per pod).
//! loadgen create-namespaces --env CLUSTER_DIR --count N --prefix P
//! loadgen ready --admin ADDR --out FILE -- COMMAND...
//!     Starts COMMAND and times it to /readyz 200.
//! loadgen chart --dir DIR --out FILE.svg
//!     Draws the e2e pod-creation latencies (DIR/e2e-latency.json, DIR/e2e-throughput.json) per configuration.
//! loadgen report --dir DIR
//!     Reads the phases' JSON and criterion's estimates; prints one markdown table and writes DIR/results.json.
//! loadgen fixture --containers N [--pod]
//!     Prints the AdmissionReview (or the pod to create) the benchmarks use.
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../benches/support/fixture.rs"]
mod fixture;

mod apiserver;
mod chart;
mod floor;
mod http;
mod load;
mod proc;
mod report;
mod server;

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// `--key value` options (a key may repeat), then `--` and a command.
pub struct Args {
    values: HashMap<String, Vec<String>>,
    pub command: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut it = raw.iter();
        let mut command = Vec::new();
        while let Some(arg) = it.next() {
            if arg == "--" {
                command = it.cloned().collect();
                break;
            }
            let Some(key) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}");
            };
            let value = match key.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => {
                    let v = it
                        .next()
                        .with_context(|| format!("--{key} needs a value"))?;
                    (key.to_owned(), v.clone())
                }
            };
            values.entry(value.0).or_default().push(value.1);
        }
        Ok(Self { values, command })
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    pub fn req(&self, key: &str) -> anyhow::Result<&str> {
        self.opt(key)
            .with_context(|| format!("--{key} is required"))
    }

    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{key} {v:?}: {e}")),
        }
    }
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(raw: Vec<String>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some((sub, rest)) = raw.split_first() else {
        bail!(
            "usage: loadgen floor|server|create-pods|create-namespaces|ready|report|chart|fixture ..."
        );
    };
    let args = Args::parse(rest)?;
    match sub.as_str() {
        // The floor runs like the webhook: a multi-thread runtime sized to the CPUs it may use.
        "floor" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(floor::run(&args)),
        // The client side is one thread: the caller pins it to a core of its own.
        "server" => current_thread()?.block_on(server::run(&args)),
        "create-pods" => current_thread()?.block_on(apiserver::create_pods(&args)),
        "create-namespaces" => current_thread()?.block_on(apiserver::create_namespaces(&args)),
        "ready" => current_thread()?.block_on(server::ready(&args)),
        "report" => report::run(&args),
        "chart" => chart::run(&args),
        "fixture" => {
            let n = args.num("containers", 1usize)?;
            let value = if args.opt("pod").is_some() {
                fixture::create_pod(n, "fixture")
            } else {
                fixture::review(n)
            };
            println!("{}", serde_json::to_string(&value)?);
            Ok(())
        }
        other => bail!("unknown subcommand {other:?}"),
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    match run(raw) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
