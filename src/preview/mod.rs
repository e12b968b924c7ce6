//! The offline preview behind `secure-defaults mutate`: reads manifests as kubectl reads them ([`read`]), wraps
//! each pod, or each workload's pod template, in an AdmissionReview (or takes a review as it is), and runs it
//! through exactly the code the server runs.
//!
//! A workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, PodTemplate)
//! is previewed through its pod template: what its pods will get. The patch is given against the workload itself.
//! Every other object (a Service, a ConfigMap, RBAC, a custom resource) carries no pod and passes through
//! unchanged. A document or object that cannot be read is an error that names its file, document and object;
//! the rest of the input is still previewed.

mod output;
pub mod read;

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Value, json};

pub use output::{notes, render};
pub use read::{DocumentError, Format, ReadError, Source, read_path};

use crate::admission::{self, Verdict};
use crate::images::{Images, Platform};
use crate::policy::{NamespaceLabels, Policy};

/// Where an object is in the input: its source, its document (from 1), its item in a `kind: List` (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file, or `-` for standard input.
    pub source: String,
    /// The document, from 1.
    pub document: usize,
    /// The item of a `kind: List`, from 1.
    pub item: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// An object's kind and name, for messages: `Deployment "web"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Its kind (`Pod` when it says none).
    pub kind: String,
    /// Its name, else its generateName, else "".
    pub name: String,
}

impl Named {
    fn of(object: &Value) -> Named {
        let meta = |key: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
        };
        Named {
            kind: object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("Pod")
                .to_owned(),
            name: meta("name")
                .or_else(|| meta("generateName"))
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.name)
    }
}

/// Why part of the input could not be previewed; each names its place.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// A file or directory could not be read.
    #[error(transparent)]
    ReadSource(#[from] ReadError),
    /// A source holds no object at all.
    #[error("{source_name}: no objects to preview (an empty input; kubectl refuses it too)")]
    NoObjects {
        /// The input's name.
        source_name: String,
    },
    /// A document, or an item of a list, could not be read.
    #[error("{place}")]
    ReadDocument {
        /// Where.
        place: Place,
        /// The cause.
        #[source]
        source: DocumentError,
    },
    /// A workload whose pod template is missing or not an object.
    #[error("{place}: {object}: the pod template at {at} is {found}")]
    ReadTemplate {
        /// Where.
        place: Place,
        /// The workload.
        object: Named,
        /// Where the pod template was looked for.
        at: &'static str,
        /// What was there.
        found: &'static str,
    },
    /// An AdmissionReview the server would refuse.
    #[error("{place}: invalid AdmissionReview")]
    Review {
        /// Where.
        place: Place,
        /// The cause.
        #[source]
        source: admission::AdmissionError,
    },
    /// The response could not be written.
    #[error("{place}: {object}: cannot answer the review")]
    Respond {
        /// Where.
        place: Place,
        /// The object.
        object: Named,
        /// The cause.
        #[source]
        source: admission::AdmissionError,
    },
    /// The patch does not apply to the object it was made for.
    #[error("{place}: {object}: the patch does not apply")]
    ApplyPatch {
        /// Where.
        place: Place,
        /// The object.
        object: Named,
        /// The cause.
        #[source]
        source: json_patch::PatchError,
    },
}

/// What one pod-bearing object would get.
#[derive(Debug)]
pub struct Preview {
    /// Where it is.
    pub place: Place,
    /// Its kind and name.
    pub object: Named,
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
}

/// Options of a preview. `namespace` overrides an object's own `metadata.namespace` (default `default`); it is
/// ignored for an AdmissionReview, whose request names its namespace.
pub struct Options<'a> {
    /// The namespace to preview in.
    pub namespace: Option<&'a str>,
    /// That namespace's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Where images' users are read (`mutate --images`): the images a pod's review would look up, and the
    /// platform, to what the registries say. `None`: no image is looked up.
    pub images: Option<&'a dyn Fn(Vec<&str>, Option<Platform>) -> Images>,
}

/// One document after the preview: its bytes in the source, and its objects as they come out.
#[derive(Debug)]
pub struct DocumentOut {
    /// Its bytes in the source.
    pub span: std::ops::Range<usize>,
    /// The document as read, with every previewed object defaulted; `None` when it could not be read or holds
    /// nothing.
    pub value: Option<Value>,
    /// Whether anything in it changed.
    pub changed: bool,
}

/// One source after the preview.
#[derive(Debug)]
pub struct SourceOut {
    /// The input.
    pub source: Source,
    /// Its format.
    pub format: Format,
    /// Its documents, in order.
    pub documents: Vec<DocumentOut>,
}

/// The whole preview: what each pod-bearing object would get, what passed through, what could not be read.
#[derive(Debug, Default)]
pub struct Run {
    /// Each pod-bearing object, in input order.
    pub previews: Vec<Preview>,
    /// Each object or document that could not be previewed, in input order.
    pub errors: Vec<PreviewError>,
    /// How many objects carry no pod and pass through unchanged.
    pub passed_through: usize,
    /// Sources of a directory that hold no object, skipped.
    pub skipped: Vec<String>,
    /// The sources, for writing the objects back.
    pub sources: Vec<SourceOut>,
}

impl Run {
    /// Whether anything would change.
    pub fn changes(&self) -> bool {
        self.previews.iter().any(|p| !p.patch.is_empty())
    }
}

/// Where a kind keeps its pod: "" for a Pod itself, else the pointer to its pod template; `None` for a kind with
/// no pod.
pub fn template_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
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

/// What reading one object gave.
enum Seen {
    /// A pod-bearing object, previewed; the object with the patch applied.
    Previewed(Box<Preview>, Value),
    /// No pod in it.
    PassedThrough,
}

/// Previews one object: a Pod, a workload, or an AdmissionReview.
fn preview(
    place: &Place,
    object: &Value,
    policy: &Policy,
    options: &Options<'_>,
) -> Result<Seen, Box<PreviewError>> {
    let named = Named::of(object);
    let namespace = options
        .namespace
        .map(str::to_owned)
        .or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "default".to_owned());
    let (review, template) = match named.kind.as_str() {
        "AdmissionReview" => (object.clone(), None),
        "Pod" => (review_of(object, &namespace), Some("")),
        other => {
            let Some(at) = template_of(other) else {
                return Ok(Seen::PassedThrough);
            };
            let template = match object.pointer(at) {
                Some(template @ Value::Object(_)) => template,
                found => {
                    return Err(Box::new(PreviewError::ReadTemplate {
                        place: place.clone(),
                        object: named,
                        at,
                        found: match found {
                            None => "missing",
                            Some(Value::Null) => "null",
                            Some(_) => "not an object",
                        },
                    }));
                }
            };
            (review_of(template, &namespace), Some(at))
        }
    };
    // The server receives bytes; give the shared code bytes too.
    let body = serde_json::to_vec(&review).unwrap_or_default();
    let parsed = admission::parse(&body).map_err(|source| PreviewError::Review {
        place: place.clone(),
        source,
    });
    let parsed = parsed.map_err(Box::new)?;
    let labels = NamespaceLabels::Known(options.labels);
    let images = match options.images {
        Some(look_up) => {
            let (wanted, platform) = admission::images_to_look_up(&parsed, policy, labels);
            if wanted.is_empty() {
                Images::default()
            } else {
                look_up(wanted, platform)
            }
        }
        None => Images::default(),
    };
    let response = admission::respond_with(&parsed, policy, labels, &images).map_err(|source| {
        Box::new(PreviewError::Respond {
            place: place.clone(),
            object: named.clone(),
            source,
        })
    })?;
    let namespace = parsed.request.namespace.as_deref().unwrap_or("").to_owned();
    let ops = response.outcome.patch;
    // Against the object itself: through the template's path for a workload; a review's patch is its pod's.
    let (mut patched, patch) = match template {
        Some(base) => (
            object.clone(),
            ops.into_iter().map(|op| rebase(op, base)).collect(),
        ),
        None => (
            review
                .pointer("/request/object")
                .cloned()
                .unwrap_or(Value::Null),
            ops,
        ),
    };
    json_patch::patch(&mut patched, &patch).map_err(|source| {
        Box::new(PreviewError::ApplyPatch {
            place: place.clone(),
            object: named.clone(),
            source,
        })
    })?;
    let preview = Preview {
        place: place.clone(),
        object: named,
        namespace,
        verdict: response.verdict,
        patch,
        warnings: response.outcome.warnings,
        summary: response.outcome.summary,
    };
    Ok(Seen::Previewed(Box::new(preview), patched))
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

/// Previews every object of every source. Nothing here fails as a whole: what cannot be read is recorded in
/// [`Run::errors`] and the rest goes on.
pub fn run(sources: Vec<Source>, policy: &Policy, options: &Options<'_>) -> Run {
    let mut out = Run::default();
    for source in sources {
        let (format, documents) = read::documents(&source);
        let errors_before = out.errors.len();
        let mut objects = 0;
        let mut documents_out = Vec::with_capacity(documents.len());
        for document in documents {
            let mut place = Place {
                source: source.name.clone(),
                document: document.number,
                item: None,
            };
            let value = match document.content {
                Ok(value) => value,
                Err(e) => {
                    out.errors
                        .push(PreviewError::ReadDocument { place, source: e });
                    documents_out.push(DocumentOut {
                        span: document.span,
                        value: None,
                        changed: false,
                    });
                    continue;
                }
            };
            let (value, changed) = match value {
                Some(value) => {
                    let (value, changed, count) =
                        preview_document(value, &mut place, policy, options, &mut out);
                    objects += count;
                    (value, changed)
                }
                None => (None, false),
            };
            documents_out.push(DocumentOut {
                span: document.span,
                value,
                changed,
            });
        }
        if objects == 0 && out.errors.len() == errors_before {
            if source.in_directory {
                out.skipped.push(source.name.clone());
            } else {
                out.errors.push(PreviewError::NoObjects {
                    source_name: source.name.clone(),
                });
            }
        }
        out.sources.push(SourceOut {
            source,
            format,
            documents: documents_out,
        });
    }
    if !out.sources.is_empty()
        && out
            .sources
            .iter()
            .all(|s| out.skipped.contains(&s.source.name))
    {
        out.errors.push(PreviewError::NoObjects {
            source_name: "the input".to_owned(),
        });
    }
    out
}

/// Previews the objects of one document (itself, or a list's items); the document as it comes out, whether it
/// changed, and how many objects it holds.
fn preview_document(
    document: Value,
    place: &mut Place,
    policy: &Policy,
    options: &Options<'_>,
    out: &mut Run,
) -> (Option<Value>, bool, usize) {
    let list = read::is_list(&document);
    let objects = match read::objects(document.clone()) {
        Ok(objects) => objects,
        Err(source) => {
            out.errors.push(PreviewError::ReadDocument {
                place: place.clone(),
                source,
            });
            return (None, false, 0);
        }
    };
    let count = objects.len();
    let mut changed = false;
    let mut results = Vec::with_capacity(count);
    for (i, object) in objects.into_iter().enumerate() {
        place.item = list.then_some(i + 1);
        if !object.is_object() {
            out.errors.push(PreviewError::ReadDocument {
                place: place.clone(),
                source: read::objects(object.clone())
                    .err()
                    .unwrap_or(DocumentError::NotAnObject { found: "an object" }),
            });
            results.push(object);
            continue;
        }
        match preview(place, &object, policy, options) {
            Ok(Seen::Previewed(preview, patched)) => {
                if !preview.patch.is_empty() {
                    changed = true;
                    results.push(patched);
                } else {
                    results.push(object);
                }
                out.previews.push(*preview);
            }
            Ok(Seen::PassedThrough) => {
                out.passed_through += 1;
                results.push(object);
            }
            Err(e) => {
                out.errors.push(*e);
                results.push(object);
            }
        }
    }
    // A list that does not change stays the document as read (`items: null` included).
    let value = if list && !changed {
        document
    } else if list {
        let mut document = document;
        if let Some(items) = document.get_mut("items") {
            *items = Value::Array(results);
        }
        document
    } else {
        results.pop().unwrap_or(document)
    };
    (Some(value), changed, count)
}
