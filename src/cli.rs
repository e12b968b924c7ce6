//! The command line: `serve`, `mutate` (offline preview), `check` (policy validation) and `audit`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{DEFAULT_POLICY, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "secure-defaults",
    version,
    about = "Fills in missing pod securityContext fields from a per-namespace policy"
)]
/// The command line.
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server.
    Serve(ServeArgs),
    /// Preview offline what the webhook would do to a pod, with exactly the server's code.
    Mutate(MutateArgs),
    /// Validate a policy file and say in plain words what applies where.
    Check(CheckArgs),
    /// List the running pods the policy would change if they were created now, by owner. Read-only.
    Audit(AuditArgs),
    /// Rewrite the files generated from the field table (README tables, shipped policies); run from the
    /// repository root (`make generate`).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// Flags of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Only say which files are stale; exit 1 if any is.
    #[arg(long)]
    pub check: bool,
}

/// Flags of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The policy file; without it, the policy is read from the cluster's ConfigMap.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The ConfigMap holding the policy, as NAMESPACE/NAME.
    #[arg(
        long,
        value_name = "NS/NAME",
        default_value = "secure-defaults/secure-defaults-policy"
    )]
    pub policy_configmap: String,
    /// Read each image's user from its registry, as the server does (the policy's `images:` section).
    #[arg(long)]
    pub images: bool,
    /// The ConfigMap's key holding the policy.
    #[arg(long, value_name = "KEY", default_value = "policy.yaml")]
    pub policy_key: String,
    /// What to print.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::audit::Format::Table)]
    pub output: crate::audit::Format,
    /// How many objects to ask the API server for at a time.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub page_size: u32,
    /// Seconds to wait for a connection to the API server.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,
    /// Seconds to wait for each read from the API server (a page of a list) before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
}

/// What `mutate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The JSON Patch, as a JSON array (`[]` when nothing changes).
    Patch,
    /// The defaulted object, in the input's format.
    Object,
}

/// Flags of `mutate`.
#[derive(Debug, Args)]
pub struct MutateArgs {
    /// A manifest file or a directory of them (read recursively: .yaml, .yml, .json), or `-` for standard input
    /// (such as `helm template` or `kubectl kustomize` output). Pods, workloads with a pod template (Deployment,
    /// StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, PodTemplate), `kind: List` items,
    /// or an AdmissionReview are previewed; every other object passes through unchanged.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
    pub file: PathBuf,
    /// Exit 1 when anything would change, for CI gates (anything unreadable, or no objects at all, exits 2).
    #[arg(long)]
    pub exit_code: bool,
    /// The policy file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// The pod's namespace (default: the pod's metadata.namespace, else `default`); ignored for a review.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// A label of the namespace, as KEY=VALUE; repeat for several.
    #[arg(short = 'l', long = "namespace-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub namespace_labels: Vec<(String, String)>,
    /// What to print.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Patch)]
    pub output: Output,
    /// Read each image's user from its registry, as the server does (the policy's `images:` section says which
    /// registries, with which credentials), so the preview shows which images run as whom.
    #[arg(long)]
    pub images: bool,
}

/// Flags of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Also say what applies to this namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// A label of that namespace, as KEY=VALUE; repeat for several.
    #[arg(short = 'l', long = "namespace-label", value_name = "KEY=VALUE", value_parser = parse_label, requires = "namespace")]
    pub namespace_labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Flags of `serve`. Each one set overrides the config file and the environment; unset ones are left out so they
/// do not override anything.
#[derive(Debug, Args, Serialize)]
pub struct ServeArgs {
    /// The process config file (default config/secure-defaults.yaml, if it exists).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTPS address of the webhook.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates, reloaded live: only clients presenting a certificate from them are served.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// The policy file, reloaded live.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Do not look namespace labels up in the cluster (local trials without a cluster).
    #[arg(long = "no-namespace-lookups", action = clap::ArgAction::SetFalse, default_value_t = true)]
    #[serde(skip_serializing_if = "is_true")]
    pub namespace_lookups: bool,
    /// Seconds to keep serving after SIGTERM, with readiness already false.
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<u64>,
    /// Seconds in-flight requests get to finish after the drain.
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_seconds: Option<u64>,
    /// Issue, rotate and inject the serving certificate in the cluster (Secret + Lease) instead of reading files.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub self_managed_certs: bool,
    /// The log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// A tracing filter such as `info` or `secure_defaults=debug`.
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}
