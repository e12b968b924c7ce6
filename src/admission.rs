//! The admission mapping: an `admission.k8s.io/v1` AdmissionReview in, an AdmissionReview out. Pure: the caller
//! looks up the namespace's labels between [`parse`] and [`respond`], so no I/O happens here.
//!
//! A defaulter never denies: every review that parses gets `allowed: true`, with a patch when there is
//! something to fill in.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::defaults::{self, Applied, Outcome};
use crate::patch;
use crate::pod::Pod;
use crate::policy::{Decision, Exemption, NamespaceLabels, Policy};

pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Key of the audit annotation; the API server prefixes it with the webhook's name.
pub const AUDIT_KEY: &str = "defaulted";

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("body is not an AdmissionReview")]
    ParseReview(#[source] serde_json::Error),
    #[error("unsupported AdmissionReview apiVersion {0:?}; only {API_VERSION} is served")]
    UnsupportedVersion(String),
    #[error("unsupported kind {0:?}; expected AdmissionReview")]
    UnsupportedKind(String),
    #[error("AdmissionReview has no request")]
    MissingRequest,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
}

/// The parts of an admission request this webhook reads. The objects stay raw until a route needs them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    #[serde(borrow, default)]
    pub resource: GroupVersionResource<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub old_object: Option<&'a RawValue>,
}

/// What a request asks of this webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A pod being created: full defaulting.
    CreatePod,
    /// An update of `pods/ephemeralcontainers`: default only the new ephemeral containers.
    AddEphemeral,
    /// Anything else: allowed, unchanged.
    Ignore,
}

impl Route {
    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::CreatePod => "create",
            Route::AddEphemeral => "ephemeral",
            Route::Ignore => "other",
        }
    }
}

/// A parsed AdmissionReview.
#[derive(Debug)]
pub struct Review<'a> {
    api_version: Cow<'a, str>,
    pub request: Request<'a>,
}

/// Parses and checks an AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Review<'_>, AdmissionError> {
    let review: ReviewIn<'_> = serde_json::from_slice(body).map_err(AdmissionError::ParseReview)?;
    let api_version = review.api_version.unwrap_or(Cow::Borrowed(""));
    if api_version != API_VERSION {
        return Err(AdmissionError::UnsupportedVersion(api_version.into_owned()));
    }
    let kind = review.kind.unwrap_or(Cow::Borrowed(""));
    if kind != "AdmissionReview" {
        return Err(AdmissionError::UnsupportedKind(kind.into_owned()));
    }
    let request = review.request.ok_or(AdmissionError::MissingRequest)?;
    Ok(Review { api_version, request })
}

impl Review<'_> {
    pub fn route(&self) -> Route {
        let r = &self.request;
        if r.resource.group != "" || r.resource.resource != "pods" {
            return Route::Ignore;
        }
        match (r.operation.as_ref(), r.sub_resource.as_deref()) {
            ("CREATE", None | Some("")) => Route::CreatePod,
            ("UPDATE", Some("ephemeralcontainers")) => Route::AddEphemeral,
            _ => Route::Ignore,
        }
    }

    /// The namespace whose policy applies, when the request is one this webhook acts on.
    pub fn namespace(&self) -> Option<&str> {
        match self.route() {
            Route::Ignore => None,
            _ => self.request.namespace.as_deref().filter(|ns| !ns.is_empty()),
        }
    }
}

/// How a review ended, in bounded terms for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A patch was returned.
    Patched,
    /// Policy applied, but nothing was absent (or every default was skipped by a guard).
    Unchanged,
    /// The namespace is exempt.
    Exempt(Exemption),
    /// Not a request this webhook acts on.
    Ignored,
    /// The object could not be read as a pod; allowed unchanged, with a warning.
    Unreadable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Patched => "patched",
            Verdict::Unchanged => "unchanged",
            Verdict::Exempt(_) => "exempt",
            Verdict::Ignored => "ignored",
            Verdict::Unreadable => "unreadable",
        }
    }
}

/// The response to send, and what it did.
#[derive(Debug)]
pub struct Response {
    /// The serialised AdmissionReview.
    pub body: Vec<u8>,
    pub verdict: Verdict,
    pub outcome: Outcome,
}

/// Decides a review: the engine's outcome, wrapped as an AdmissionReview response.
pub fn respond(review: &Review<'_>, policy: &Policy, labels: NamespaceLabels<'_>) -> Response {
    let (verdict, outcome) = decide(review, policy, labels);
    let body = encode(review, &outcome);
    Response { body, verdict, outcome }
}

fn decide(review: &Review<'_>, policy: &Policy, labels: NamespaceLabels<'_>) -> (Verdict, Outcome) {
    let route = review.route();
    let Some(namespace) = review.namespace() else {
        return (Verdict::Ignored, Outcome::default());
    };
    let defaults = match policy.decide(namespace, labels) {
        Decision::Exempt(why) => return (Verdict::Exempt(why), Outcome::default()),
        Decision::Apply(defaults) => defaults,
    };
    let pod = match read_pod(review.request.object) {
        Ok(pod) => pod,
        Err(e) => return unreadable("object", &e),
    };
    let outcome = match route {
        Route::CreatePod => defaults::default_pod(&pod, &defaults),
        Route::AddEphemeral => {
            let old = match read_pod(review.request.old_object) {
                Ok(old) => old,
                Err(e) => return unreadable("oldObject", &e),
            };
            defaults::default_new_ephemeral(&pod, &old, &defaults)
        }
        Route::Ignore => Outcome::default(),
    };
    let verdict = if outcome.patch.is_empty() {
        Verdict::Unchanged
    } else {
        Verdict::Patched
    };
    (verdict, outcome)
}

fn read_pod<'a>(raw: Option<&'a RawValue>) -> Result<Pod<'a>, serde_json::Error> {
    match raw {
        Some(raw) => serde_json::from_str(raw.get()),
        None => Ok(Pod::default()),
    }
}

fn unreadable(what: &str, error: &serde_json::Error) -> (Verdict, Outcome) {
    let outcome = Outcome {
        warnings: vec![format!("secure-defaults: pod left unchanged: cannot read {what}: {error}")],
        ..Outcome::default()
    };
    (Verdict::Unreadable, outcome)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<&'static str, String>,
}

fn encode(review: &Review<'_>, outcome: &Outcome) -> Vec<u8> {
    let patch = (!outcome.patch.is_empty())
        .then(|| base64::engine::general_purpose::STANDARD.encode(patch::to_json(&outcome.patch)));
    let mut audit_annotations = BTreeMap::new();
    if !outcome.applied.is_empty() {
        audit_annotations.insert(AUDIT_KEY, outcome.applied.to_string());
    }
    let out = ReviewOut {
        api_version: &review.api_version,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid: &review.request.uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &outcome.warnings,
            audit_annotations,
        },
    };
    // Only strings, bools and maps with string keys: serialising into memory cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Summary of what was set, for logs.
pub fn describe(applied: &Applied) -> String {
    if applied.is_empty() {
        "nothing".to_owned()
    } else {
        applied.to_string()
    }
}
