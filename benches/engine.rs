//! The engine's cost per review: `admission::parse` then `admission::respond` (decide, build the patch, serialise
//! the response) with a full-defaults policy and known namespace labels, on realistic Deployment-created pods of 1,
//! 5 and 20 containers. Two baselines on the same bytes put the figure in context:
//! `serde_json::from_slice::<Value>` (just reading the bytes into a tree, a lower bound for any tree-based reader)
//! and kube's typed `AdmissionReview<DynamicObject>` (what a webhook built on kube's admission types parses).
//!
//! Run with `cargo bench --bench engine` (or `make bench`, which also runs the server and end-to-end benchmarks).
//!
//! Profiling: `ENGINE_PROFILE=<containers>:<iterations>` skips criterion and runs the review that many times, for
//! `valgrind --tool=callgrind --toggle-collect='*review_once*'` (instructions per review, deterministic).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use secure_defaults::admission::{self, Verdict};
use secure_defaults::policy::{self, INJECT_LABEL, NamespaceLabels, Policy};

const POLICY: &str = "apiVersion: secure-defaults.io/v1alpha1
kind: Policy
mode: opt-in
exemptNamespaces: [kube-system, kube-public, kube-node-lease]
defaults:
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  allowPrivilegeEscalation: false
";

fn policy() -> Policy {
    policy::parse(POLICY.as_bytes(), Path::new("bench-policy.yaml")).expect("bench policy parses")
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (INJECT_LABEL.to_owned(), "enabled".to_owned()),
        (
            "kubernetes.io/metadata.name".to_owned(),
            fixture::NAMESPACE.to_owned(),
        ),
        ("team".to_owned(), "shop".to_owned()),
    ])
}

/// One full review, as the server's handler does it between reading the body and writing the response.
#[inline(never)]
fn review_once(body: &[u8], policy: &Policy, labels: &BTreeMap<String, String>) -> usize {
    let review = admission::parse(body).expect("fixture parses");
    let response =
        admission::respond(&review, policy, NamespaceLabels::Known(labels)).expect("responds");
    response.body.len()
}

/// A broken benchmark must fail loudly: check the engine really patches the fixture before timing it.
fn check(containers: usize, body: &[u8], policy: &Policy, labels: &BTreeMap<String, String>) {
    let review = admission::parse(body).expect("fixture parses");
    let response =
        admission::respond(&review, policy, NamespaceLabels::Known(labels)).expect("responds");
    assert_eq!(
        response.verdict,
        Verdict::Patched,
        "fixture of {containers} containers"
    );
    // 4 pod-level fields (securityContext is present but empty), one per container, the annotation.
    assert_eq!(
        response.outcome.patch.len(),
        4 + containers + 1,
        "{:?}",
        response.outcome.patch
    );
    let out: serde_json::Value = serde_json::from_slice(&response.body).expect("response is JSON");
    assert_eq!(out["response"]["uid"], fixture::REQUEST_UID);
    assert_eq!(out["response"]["allowed"], true);
}

fn engine(c: &mut Criterion) {
    let policy = policy();
    let labels = labels();
    let bodies: Vec<(usize, Vec<u8>)> = fixture::SIZES
        .iter()
        .map(|&n| (n, fixture::review_bytes(n)))
        .collect();
    for (n, body) in &bodies {
        check(*n, body, &policy, &labels);
        eprintln!("fixture: {n} container(s), review {} bytes", body.len());
    }

    let mut group = c.benchmark_group("engine");
    for (n, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("review", n), body, |b, body| {
            b.iter(|| review_once(black_box(body), &policy, &labels));
        });
        group.bench_with_input(BenchmarkId::new("parse", n), body, |b, body| {
            b.iter(|| {
                let review = admission::parse(black_box(body)).expect("parses");
                black_box(review.route());
            });
        });
        let parsed = admission::parse(body).expect("parses");
        group.bench_with_input(BenchmarkId::new("respond", n), &parsed, |b, parsed| {
            b.iter(|| {
                let response =
                    admission::respond(black_box(parsed), &policy, NamespaceLabels::Known(&labels))
                        .expect("responds");
                black_box(response.body.len())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("baseline");
    for (n, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("value", n), body, |b, body| {
            b.iter(|| {
                let value: serde_json::Value =
                    serde_json::from_slice(black_box(body)).expect("parses");
                black_box(value)
            });
        });
        group.bench_with_input(BenchmarkId::new("kube_typed", n), body, |b, body| {
            b.iter(|| {
                let review: AdmissionReview<DynamicObject> =
                    serde_json::from_slice(black_box(body)).expect("parses");
                black_box(review)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, engine);

fn main() {
    if let Ok(spec) = std::env::var("ENGINE_PROFILE") {
        let (containers, iterations) = spec
            .split_once(':')
            .and_then(|(c, i)| Some((c.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .expect("ENGINE_PROFILE=<containers>:<iterations>");
        let (policy, labels) = (policy(), labels());
        let body = fixture::review_bytes(containers);
        check(containers, &body, &policy, &labels);
        let mut total = 0;
        for _ in 0..iterations {
            total += review_once(black_box(&body), &policy, &labels);
        }
        println!(
            "{iterations} reviews of {} bytes; {total} response bytes",
            body.len()
        );
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
