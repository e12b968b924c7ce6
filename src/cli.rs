//! The command line: `serve`, `mutate` (offline preview) and `check` (policy validation).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_POLICY: &str = "config/policy.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "secure-defaults",
    version,
    about = "Fills in missing pod securityContext fields from a per-namespace policy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preview offline what the webhook would do to a pod, with exactly the server's code.
    Mutate(MutateArgs),
    /// Validate a policy file and say in plain words what applies where.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The JSON Patch, as a JSON array (`[]` when nothing changes).
    Patch,
    /// The defaulted object, in the input's format.
    Object,
}

#[derive(Debug, Args)]
pub struct MutateArgs {
    /// A Pod (YAML or JSON) or an AdmissionReview (JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
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
}

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
