//! The offline preview behind `secure-defaults mutate`: reads manifests (files, directories, multi-document YAML,
//! `kind: List`), wraps each pod, or each workload's pod template, in an AdmissionReview (or takes a review as it
//! is), and runs it through exactly the code the server runs.
//!
//! A workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, PodTemplate) is previewed through its
//! pod template: what its pods will get. The patch is given against the workload itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::admission::{self, Verdict};
use crate::policy::{NamespaceLabels, Policy};

/// Why a preview failed; the source (file or `-`) is named by the caller.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    ReadInput {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input that starts like JSON is not valid JSON.
    #[error("{source_name}: not valid JSON")]
    ParseJson {
        /// The input's name.
        source_name: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An input is not valid YAML.
    #[error("{source_name}: not valid YAML")]
    ParseYaml {
        /// The input's name.
        source_name: String,
        /// The cause.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A document or list item is not an object.
    #[error("{source_name}: a document is not a YAML or JSON object")]
    NotAnObject {
        /// The input's name.
        source_name: String,
    },
    /// An object of a kind with no pod to default.
    #[error(
        "{source_name}: {kind} {name:?} is not a Pod, a workload with a pod template or an AdmissionReview"
    )]
    UnsupportedKind {
        /// The input's name.
        source_name: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// A workload without its pod template.
    #[error("{source_name}: {kind} {name:?} has no pod template at {at}")]
    NoTemplate {
        /// The input's name.
        source_name: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Where the pod template was looked for.
        at: &'static str,
    },
    /// An AdmissionReview the server would refuse.
    #[error("{source_name}: invalid AdmissionReview")]
    Review {
        /// The input's name.
        source_name: String,
        /// The cause.
        #[source]
        source: admission::AdmissionError,
    },
    /// The response could not be written.
    #[error("{source_name}: cannot answer the review")]
    Respond {
        /// The input's name.
        source_name: String,
        /// The cause.
        #[source]
        source: admission::AdmissionError,
    },
    /// The patch does not apply to the object it was made for.
    #[error("{source_name}: the patch does not apply to {kind} {name:?}")]
    ApplyPatch {
        /// The input's name.
        source_name: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The cause.
        #[source]
        source: json_patch::PatchError,
    },
}

/// The input format, so the defaulted objects can be printed back in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// One input: its name for messages, and its bytes.
pub struct Source {
    /// The file's path, or `-` for standard input.
    pub name: String,
    /// What it holds.
    pub bytes: Vec<u8>,
}

/// The inputs under `path`: the file itself, or every `.yaml`, `.yml` and `.json` file below a directory, in path
/// order.
pub fn read_path(path: &Path) -> Result<Vec<Source>, PreviewError> {
    let read_error = |source| PreviewError::ReadInput {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(read_error)?;
        return Ok(vec![Source {
            name: path.display().to_string(),
            bytes,
        }]);
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| read_error(e.into()))?;
        let manifest = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if entry.file_type().is_file() && manifest {
            let bytes = std::fs::read(entry.path()).map_err(|source| PreviewError::ReadInput {
                path: entry.path().to_owned(),
                source,
            })?;
            files.push(Source {
                name: entry.path().display().to_string(),
                bytes,
            });
        }
    }
    Ok(files)
}

/// What one object would get.
#[derive(Debug)]
pub struct Preview {
    /// The file it came from.
    pub source: String,
    /// Its kind.
    pub kind: String,
    /// Its name (or generateName).
    pub name: String,
    /// The namespace whose policy applied.
    pub namespace: String,
    /// How the review ended.
    pub verdict: Verdict,
    /// The patch, against the object itself (for a workload, paths go through its pod template).
    pub patch: Vec<PatchOperation>,
    /// The warnings the API server would pass on.
    pub warnings: Vec<String>,
    /// What was set, as the pod's annotation records it; empty when nothing was.
    pub summary: String,
    /// The object with the patch applied.
    pub object: Value,
    /// The format it was read in.
    pub format: Format,
}

/// Options of a preview. `namespace` overrides an object's own `metadata.namespace` (default `default`); it is
/// ignored for an AdmissionReview, whose request names its namespace.
pub struct Options<'a> {
    /// The namespace to preview in.
    pub namespace: Option<&'a str>,
    /// That namespace's labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Where a kind keeps its pod template.
fn template_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        "PodTemplate" => Some("/template"),
        _ => None,
    }
}

/// Reads the objects of one source: every document of a YAML stream, the items of a `kind: List`.
pub fn objects(source: &Source) -> Result<(Format, Vec<Value>), PreviewError> {
    let name = || source.name.clone();
    // JSON is read as JSON: a YAML parser refuses or alters some valid JSON strings.
    let format = match source.bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => Format::Json,
        _ => Format::Yaml,
    };
    let documents: Vec<Value> = match format {
        Format::Json => vec![serde_json::from_slice(&source.bytes).map_err(|source| {
            PreviewError::ParseJson {
                source_name: name(),
                source,
            }
        })?],
        Format::Yaml => serde_yaml_ng::Deserializer::from_slice(&source.bytes)
            .map(Value::deserialize)
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|source| PreviewError::ParseYaml {
                source_name: name(),
                source,
            })?,
    };
    let mut out = Vec::new();
    for document in documents {
        match document {
            // An empty document (a trailing `---`) holds nothing.
            Value::Null => {}
            Value::Object(_) if document.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = document.get("items").and_then(Value::as_array).cloned();
                out.extend(items.unwrap_or_default());
            }
            Value::Object(_) => out.push(document),
            _ => {
                return Err(PreviewError::NotAnObject {
                    source_name: name(),
                });
            }
        }
    }
    if out.iter().any(|o| !o.is_object()) {
        return Err(PreviewError::NotAnObject {
            source_name: name(),
        });
    }
    Ok((format, out))
}

/// Previews one object.
pub fn preview(
    source: &str,
    format: Format,
    value: Value,
    policy: &Policy,
    options: &Options<'_>,
) -> Result<Preview, PreviewError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("Pod")
        .to_owned();
    let meta = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = meta("name")
        .or_else(|| meta("generateName"))
        .unwrap_or_default();
    let namespace = options
        .namespace
        .map(str::to_owned)
        .or_else(|| meta("namespace"))
        .unwrap_or_else(|| "default".to_owned());
    let (review, template) = match kind.as_str() {
        "AdmissionReview" => (value.clone(), None),
        "Pod" => (review_of(&value, &namespace), Some("")),
        other => {
            let Some(at) = template_of(other) else {
                return Err(PreviewError::UnsupportedKind {
                    source_name: source.to_owned(),
                    kind,
                    name,
                });
            };
            let Some(template) = value.pointer(at) else {
                return Err(PreviewError::NoTemplate {
                    source_name: source.to_owned(),
                    kind,
                    name,
                    at,
                });
            };
            (review_of(template, &namespace), Some(at))
        }
    };
    // The server receives bytes; give the shared code bytes too.
    let body = serde_json::to_vec(&review).unwrap_or_default();
    let parsed = admission::parse(&body).map_err(|e| PreviewError::Review {
        source_name: source.to_owned(),
        source: e,
    })?;
    let response = admission::respond(&parsed, policy, NamespaceLabels::Known(options.labels))
        .map_err(|e| PreviewError::Respond {
            source_name: source.to_owned(),
            source: e,
        })?;
    let namespace = parsed.request.namespace.as_deref().unwrap_or("").to_owned();
    let ops = response.outcome.patch;
    // Against the object itself: through the template's path for a workload; a review's patch is its pod's.
    let (mut object, patch) = match template {
        Some(base) => (value, ops.into_iter().map(|op| rebase(op, base)).collect()),
        None => (
            review
                .pointer("/request/object")
                .cloned()
                .unwrap_or(Value::Null),
            ops,
        ),
    };
    json_patch::patch(&mut object, &patch).map_err(|e| PreviewError::ApplyPatch {
        source_name: source.to_owned(),
        kind: kind.clone(),
        name: name.clone(),
        source: e,
    })?;
    Ok(Preview {
        source: source.to_owned(),
        kind,
        name,
        namespace,
        verdict: response.verdict,
        patch,
        warnings: response.outcome.warnings,
        summary: response.outcome.summary,
        object,
        format,
    })
}

/// A pod (or pod template) as the API server would send it for creation in `namespace`.
fn review_of(pod: &Value, namespace: &str) -> Value {
    json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

/// The operation with `base` (a pointer, "" for the root) put in front of its path.
fn rebase(op: PatchOperation, base: &str) -> PatchOperation {
    match op {
        PatchOperation::Add(AddOperation { path, value }) => {
            let mut full = PointerBuf::parse(base).unwrap_or_default();
            full.append(&path);
            PatchOperation::Add(AddOperation { path: full, value })
        }
        other => other,
    }
}

/// Previews every object of every source.
pub fn run(
    sources: &[Source],
    policy: &Policy,
    options: &Options<'_>,
) -> Result<Vec<Preview>, PreviewError> {
    let mut out = Vec::new();
    for source in sources {
        let (format, values) = objects(source)?;
        for value in values {
            out.push(preview(&source.name, format, value, policy, options)?);
        }
    }
    Ok(out)
}

/// What `mutate` prints on standard output. One object: its patch (a JSON array) or the defaulted object in its
/// input format, as before. Several: a JSON array of `{source, kind, name, namespace, patch}`, or the defaulted
/// objects as YAML documents (a JSON `List` when every input was JSON).
pub fn render(previews: &[Preview], objects: bool) -> Result<String, PreviewError> {
    let text = match (previews, objects) {
        ([one], false) => pretty(&one.patch),
        ([one], true) => in_format(&one.object, one.format),
        (many, false) => {
            let results: Vec<Value> = many
                .iter()
                .map(|p| {
                    json!({"source": p.source, "kind": p.kind, "name": p.name,
                        "namespace": p.namespace, "patch": p.patch})
                })
                .collect();
            pretty(&results)
        }
        (many, true) if many.iter().all(|p| p.format == Format::Json) => {
            let items: Vec<&Value> = many.iter().map(|p| &p.object).collect();
            pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        }
        (many, true) => many
            .iter()
            .map(|p| in_format(&p.object, Format::Yaml))
            .collect::<Vec<_>>()
            .join("---\n"),
    };
    Ok(text)
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

fn in_format(object: &Value, format: Format) -> String {
    match format {
        Format::Json => pretty(object),
        Format::Yaml => serde_yaml_ng::to_string(object).unwrap_or_default(),
    }
}

/// What `mutate` says on standard error, per object: what it would get, or why nothing, and its warnings.
pub fn notes(previews: &[Preview]) -> Vec<String> {
    let several = previews.len() > 1;
    let mut out = Vec::new();
    for p in previews {
        let who = if several {
            format!("{}: {}/{}: ", p.source, p.kind, p.name)
        } else {
            String::new()
        };
        for warning in &p.warnings {
            out.push(format!("warning: {who}{warning}"));
        }
        match p.verdict {
            Verdict::Exempt(why) => {
                out.push(format!(
                    "note: {who}namespace {:?} is exempt: {why}",
                    p.namespace
                ));
            }
            _ if several && p.patch.is_empty() => out.push(format!("{who}unchanged")),
            _ if several => out.push(format!("{who}would set {}", p.summary)),
            _ => {}
        }
    }
    out
}
