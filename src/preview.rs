//! The offline preview behind `secure-defaults mutate`: wraps a pod in an AdmissionReview (or takes a review as
//! it is) and runs it through exactly the code the server runs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use json_patch::PatchOperation;

use crate::admission::{self, Verdict};
use crate::policy::{NamespaceLabels, Policy};

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("input is not valid JSON")]
    ParseJson(#[source] serde_json::Error),
    #[error("input is not valid YAML")]
    ParseYaml(#[source] serde_yaml_ng::Error),
    #[error("input is a {0}, not a Pod or an AdmissionReview")]
    UnsupportedKind(String),
    #[error("input is not a YAML or JSON object")]
    NotAnObject,
    #[error("invalid AdmissionReview")]
    Review(#[source] admission::AdmissionError),
    #[error("cannot answer the review")]
    Respond(#[source] admission::AdmissionError),
    #[error("the patch does not apply to the input")]
    ApplyPatch(#[source] json_patch::PatchError),
}

/// The input format, so the defaulted object can be printed back in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug)]
pub struct Preview {
    pub namespace: String,
    pub route: admission::Route,
    pub verdict: Verdict,
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<String>,
    /// The pod with the patch applied.
    pub object: Value,
    pub format: Format,
}

/// Options of a preview. `namespace` overrides the pod's own `metadata.namespace` (default `default`); it is
/// ignored for an AdmissionReview, whose request names its namespace.
pub struct Options<'a> {
    pub namespace: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
}

impl Preview {
    /// The patch as an RFC 6902 JSON array.
    pub fn patch_json(&self) -> Value {
        serde_json::to_value(&self.patch).unwrap_or(Value::Array(Vec::new()))
    }
}

pub fn run(input: &[u8], policy: &Policy, options: &Options<'_>) -> Result<Preview, PreviewError> {
    // JSON is read as JSON: a YAML parser refuses or alters some valid JSON strings.
    let format = match input.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => Format::Json,
        _ => Format::Yaml,
    };
    let value: Value = match format {
        Format::Json => serde_json::from_slice(input).map_err(PreviewError::ParseJson)?,
        Format::Yaml => serde_yaml_ng::from_slice(input).map_err(PreviewError::ParseYaml)?,
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("Pod")
        .to_owned();
    if !value.is_object() {
        return Err(PreviewError::NotAnObject);
    }
    let review = match kind.as_str() {
        "AdmissionReview" => value,
        "Pod" => {
            let namespace = options
                .namespace
                .or_else(|| value.pointer("/metadata/namespace").and_then(Value::as_str))
                .unwrap_or("default")
                .to_owned();
            json!({
                "apiVersion": admission::API_VERSION,
                "kind": "AdmissionReview",
                "request": {
                    "uid": "00000000-0000-0000-0000-000000000000",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace,
                    "operation": "CREATE",
                    "object": value,
                }
            })
        }
        other => return Err(PreviewError::UnsupportedKind(other.to_owned())),
    };
    // The server receives bytes; give the shared code bytes too.
    let body = serde_json::to_vec(&review).unwrap_or_default();
    let parsed = admission::parse(&body).map_err(PreviewError::Review)?;
    let response = admission::respond(&parsed, policy, NamespaceLabels::Known(options.labels))
        .map_err(PreviewError::Respond)?;
    let mut object = review
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    json_patch::patch(&mut object, &response.outcome.patch).map_err(PreviewError::ApplyPatch)?;
    Ok(Preview {
        namespace: parsed.request.namespace.as_deref().unwrap_or("").to_owned(),
        route: parsed.route(),
        verdict: response.verdict,
        patch: response.outcome.patch,
        warnings: response.outcome.warnings,
        object,
        format,
    })
}
