//! secure-defaults: a mutating admission webhook that fills in the pod `securityContext` fields a pod leaves
//! out, from a per-namespace policy, without ever overwriting what the pod says.
//!
//! ```text
//!  kube-apiserver ──TLS──▶ server::serve ──▶ admission::parse ──▶ namespaces (label cache, or a direct lookup)
//!                                              │                        │
//!                                              ▼                        ▼
//!                          admission::respond ◀── policy::Policy::for_namespace (from server::policy_store, reloaded live)
//!                                              │      a Defaulting: defaults, report-only, restricted, exceptions
//!                                              ▼
//!                          exceptions::asked (the pod's skip annotation, as the policy allows)
//!                                              ▼
//!                          engine::default_pod ── walks fields::TABLE: one file per field ──▶ JSON Patch (adds only)
//!                                              ▼
//!                          restricted::warnings (what Pod Security "restricted" will refuse)
//! ```
//!
//! The core (`pod`, `fields`, `engine`, `exceptions`, `restricted`, `admission`, `policy`) is plain functions over
//! data: no async, no I/O, no kube client. The server, TLS, certificates, file reloads and the namespace cache are
//! thin layers around it. The offline preview (`preview`, behind `secure-defaults mutate`) and the audit of running
//! pods (`audit`) run exactly the same code.

#![warn(missing_docs)]

pub mod admission;
pub mod audit;
mod certs;
pub mod cli;
pub mod compat;
pub mod config;
pub mod engine;
mod exceptions;
pub mod fields;
pub mod generate;
pub mod images;
pub mod metrics;
mod namespaces;
pub mod pod;
pub mod policy;
pub mod preview;
pub mod restricted;
pub mod server;
mod watch;

/// An error and its causes on one line: `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
