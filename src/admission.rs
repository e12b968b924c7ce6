//! The admission mapping: an `admission.k8s.io/v1` AdmissionReview in, an AdmissionReview out. Pure: the caller
//! looks up the namespace's labels between [`parse`] and [`respond`], so no I/O happens here.
//!
//! A defaulter never denies: every review that parses gets `allowed: true`, with a patch when there is
//! something to fill in.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::core::admission::AdmissionResponse;
use kube::core::{Status, TypeMeta};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::engine::{self, Outcome};
use crate::fields;
use crate::images::{Images, Platform};
use crate::pod::{ContainerList, Pod};
use crate::policy::{Decision, Exemption, NamespaceLabels, Policy};
use crate::{exceptions, restricted};

/// The one AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Key of the audit annotation; the API server prefixes it with the webhook's name.
pub const AUDIT_KEY: &str = "defaulted";
/// Key of the audit annotation in report-only mode, with what would have been set.
pub const REPORT_AUDIT_KEY: &str = "would-default";

/// Why a body is not answered with a review.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The body is not JSON of an AdmissionReview.
    #[error("body is not an AdmissionReview")]
    ParseReview(#[source] serde_json::Error),
    /// The body is JSON, but not an object.
    #[error("body is not an AdmissionReview: expected a JSON object")]
    NotAnObject,
    /// The body is not UTF-8, which JSON must be.
    #[error("body is not an AdmissionReview: not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// An AdmissionReview of another version.
    #[error("unsupported AdmissionReview apiVersion {0:?}; only {API_VERSION} is served")]
    UnsupportedVersion(String),
    /// Another kind than AdmissionReview.
    #[error("unsupported kind {0:?}; expected AdmissionReview")]
    UnsupportedKind(String),
    /// A review without a request.
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// The patch could not be serialised.
    #[error("cannot encode the patch")]
    EncodePatch(#[source] kube::core::admission::SerializePatchError),
    /// The response could not be serialised.
    #[error("cannot encode the response")]
    EncodeResponse(#[source] serde_json::Error),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct ReviewIn<'a, O> {
    #[serde(borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default = "Option::default")]
    request: Option<RequestIn<'a, O>>,
}

/// The resource a request is for.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource<'a> {
    /// API group, "" for the core group.
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Resource, such as `pods`.
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
}

/// The request as read off the wire; `O` is the pod view, or `IgnoredAny` when the objects do not read as pods.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct RequestIn<'a, O> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow, default)]
    resource: GroupVersionResource<'a>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "Option::default")]
    object: Option<O>,
    #[serde(default = "Option::default")]
    old_object: Option<O>,
}

/// The objects of a request, read as pods in the same pass as the rest of the review.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // `Pods` is the common case; boxing it would allocate on every request.
pub enum Objects<'a> {
    /// The object and the old object (`{}` where a request has none), read as pods.
    Pods {
        /// The object as it would be stored.
        object: Pod<'a>,
        /// The object before an update.
        old_object: Pod<'a>,
    },
    /// Not pod-shaped (a kind this webhook does not act on, or a malformed pod): why.
    Unreadable(String),
}

/// The parts of an admission request this webhook reads.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request's uid, echoed in the response.
    pub uid: Cow<'a, str>,
    /// The resource.
    pub resource: GroupVersionResource<'a>,
    /// The subresource, such as `ephemeralcontainers`.
    pub sub_resource: Option<Cow<'a, str>>,
    /// The namespace.
    pub namespace: Option<Cow<'a, str>>,
    /// The object's name (empty for generated names).
    pub name: Option<Cow<'a, str>>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Cow<'a, str>,
    /// A dry run: nothing is stored.
    pub dry_run: Option<bool>,
    /// The objects, read as pods.
    pub objects: Objects<'a>,
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
    /// The request.
    pub request: Request<'a>,
}

/// Parses and checks an AdmissionReview body, reading the objects as pods in the same pass.
pub fn parse(body: &[u8]) -> Result<Review<'_>, AdmissionError> {
    // serde reads a struct from a JSON array too; a review is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdmissionError::NotAnObject);
    }
    // serde_json checks UTF-8 only in the strings it reads, not in those it skips; checking the whole body first
    // means a review is accepted only if all of it is valid UTF-8, as any other JSON reader would require.
    let body = std::str::from_utf8(body).map_err(AdmissionError::NotUtf8)?;
    match serde_json::from_str::<ReviewIn<'_, Pod<'_>>>(body) {
        Ok(review) => check(review, |object, old_object| Objects::Pods {
            object: object.unwrap_or_default(),
            old_object: old_object.unwrap_or_default(),
        }),
        // Rare: either the body is not a review at all, or its objects are not pod-shaped. A second pass
        // that skips the objects tells which.
        Err(pod_error) => {
            let review: ReviewIn<'_, IgnoredAny> =
                serde_json::from_str(body).map_err(AdmissionError::ParseReview)?;
            check(review, |_, _| Objects::Unreadable(pod_error.to_string()))
        }
    }
}

fn check<'a, O>(
    review: ReviewIn<'a, O>,
    objects: impl FnOnce(Option<O>, Option<O>) -> Objects<'a>,
) -> Result<Review<'a>, AdmissionError> {
    let api_version = review.api_version.unwrap_or(Cow::Borrowed(""));
    if api_version != API_VERSION {
        return Err(AdmissionError::UnsupportedVersion(api_version.into_owned()));
    }
    let kind = review.kind.unwrap_or(Cow::Borrowed(""));
    if kind != "AdmissionReview" {
        return Err(AdmissionError::UnsupportedKind(kind.into_owned()));
    }
    let r = review.request.ok_or(AdmissionError::MissingRequest)?;
    let request = Request {
        uid: r.uid,
        resource: r.resource,
        sub_resource: r.sub_resource,
        namespace: r.namespace,
        name: r.name,
        operation: r.operation,
        dry_run: r.dry_run,
        objects: objects(r.object, r.old_object),
    };
    Ok(Review {
        api_version,
        request,
    })
}

impl Review<'_> {
    /// What the request asks of this webhook.
    pub fn route(&self) -> Route {
        let r = &self.request;
        if !r.resource.group.is_empty() || r.resource.resource != "pods" {
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
            _ => self
                .request
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty()),
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
    /// Report-only mode: something would have been set; allowed unchanged, with what would have been set said.
    Reported,
}

impl Verdict {
    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Reported => "reported",
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
    /// How it ended.
    pub verdict: Verdict,
    /// What the engine did.
    pub outcome: Outcome,
}

/// Decides a review: the engine's outcome, wrapped as an AdmissionReview response.
pub fn respond(
    review: &Review<'_>,
    policy: &Policy,
    labels: NamespaceLabels<'_>,
) -> Result<Response, AdmissionError> {
    respond_with(review, policy, labels, &Images::default())
}

/// [`respond`], with what the pod's images say of their users ([`images_to_look_up`] names them).
pub fn respond_with(
    review: &Review<'_>,
    policy: &Policy,
    labels: NamespaceLabels<'_>,
    images: &Images,
) -> Result<Response, AdmissionError> {
    let (verdict, outcome) = default_review(review, policy, labels, images);
    let body = encode(review, verdict, &outcome)?;
    Ok(Response {
        body,
        verdict,
        outcome,
    })
}

/// The images whose users the engine would use for this review, and the platform to read them for (the pod's
/// `kubernetes.io/arch` node selector, else none: the policy's): nothing where the policy has no `images:`
/// section, the namespace is exempt or report-only, the pod is left alone or states its own `runAsUser`, or
/// every container states one.
pub fn images_to_look_up<'r>(
    review: &'r Review<'_>,
    policy: &Policy,
    labels: NamespaceLabels<'_>,
) -> (Vec<&'r str>, Option<Platform>) {
    let none = (Vec::new(), None);
    let (Some(section), Some(namespace)) = (&policy.images, review.namespace()) else {
        return none;
    };
    let Decision::Apply(plan) = policy.for_namespace(namespace, labels) else {
        return none;
    };
    let Objects::Pods { object, old_object } = &review.request.objects else {
        return none;
    };
    let Some(spec) = &object.spec else {
        return none;
    };
    if plan.report
        || engine::left_alone_because(object).is_some()
        || fields::stated(spec.security_context.as_ref(), &["runAsUser"])
    {
        return none;
    }
    let new = engine::new_ephemeral_names(object, old_object);
    let images = spec
        .all_containers()
        .filter(|(list, _, c)| match review.route() {
            Route::AddEphemeral => {
                *list == ContainerList::EphemeralContainers && new.contains(&c.name())
            }
            _ => true,
        })
        .filter(|(_, _, c)| c.value(&["runAsUser"]).is_none())
        .filter_map(|(_, _, c)| c.image.as_deref())
        .collect();
    let platform = spec
        .node_selector
        .as_ref()
        .and_then(|s| s.arch.as_deref())
        .map(|arch| Platform {
            os: section.platform.os.clone(),
            architecture: arch.to_owned(),
            variant: None,
        });
    (images, platform)
}

fn default_review(
    review: &Review<'_>,
    policy: &Policy,
    labels: NamespaceLabels<'_>,
    images: &Images,
) -> (Verdict, Outcome) {
    let route = review.route();
    let Some(namespace) = review.namespace() else {
        return (Verdict::Ignored, Outcome::default());
    };
    let plan = match policy.for_namespace(namespace, labels) {
        Decision::Exempt(why) => return (Verdict::Exempt(why), Outcome::default()),
        Decision::Apply(plan) => plan,
    };
    let (pod, old) = match &review.request.objects {
        Objects::Pods { object, old_object } => (object, old_object),
        Objects::Unreadable(error) => return unreadable(error),
    };
    let skip = pod.annotations().and_then(|a| a.skip.as_deref());
    let asked = exceptions::asked(skip, &plan.exceptions, &plan.defaults);
    // The policy's defaults as they are, unless the pod opts out of some: then a copy without those.
    let mut defaults = Cow::Borrowed(&plan.defaults);
    for field in &asked.honoured {
        defaults.to_mut().clear(*field);
    }
    let mut outcome = match route {
        Route::CreatePod => engine::default_pod_with(pod, &defaults, images),
        Route::AddEphemeral => engine::default_new_ephemeral_with(pod, old, &defaults, images),
        Route::Ignore => Outcome::default(),
    };
    // A pod the engine leaves alone gets nothing else either: no record of its exceptions, no warnings about them.
    let alone = engine::left_alone_because(pod).is_some();
    if !asked.warnings.is_empty() && !alone {
        outcome.warnings.splice(0..0, asked.warnings);
    }
    if route == Route::CreatePod && !asked.honoured.is_empty() && !alone {
        engine::record_exceptions(pod, &asked.honoured, &mut outcome);
    }
    if plan.enforces_restricted
        && !alone
        && let Some(spec) = &pod.spec
    {
        // Only an ephemeral-container update needs the names of what it adds.
        let new = match route {
            Route::AddEphemeral => engine::new_ephemeral_names(pod, old),
            _ => Vec::new(),
        };
        let scope = match route {
            Route::AddEphemeral => restricted::Scope::Containers(&new),
            _ => restricted::Scope::Pod,
        };
        outcome.warnings.extend(restricted::warnings(spec, scope));
    }
    if plan.report {
        // The same decision as when enforcing; only the answer differs.
        outcome.patch.clear();
        if outcome.applied.is_empty() {
            return (Verdict::Unchanged, outcome);
        }
        let would = format!(
            "secure-defaults (report): would set {}",
            outcome.applied.readable()
        );
        outcome.warnings.insert(0, would);
        return (Verdict::Reported, outcome);
    }
    let verdict = if outcome.patch.is_empty() {
        Verdict::Unchanged
    } else {
        Verdict::Patched
    };
    (verdict, outcome)
}

fn unreadable(error: &str) -> (Verdict, Outcome) {
    let outcome = Outcome {
        warnings: vec![format!(
            "secure-defaults: pod left unchanged: cannot read the pod: {error}"
        )],
        ..Outcome::default()
    };
    (Verdict::Unreadable, outcome)
}

/// Writes the response review with kube's admission types. kube builds a response from its own parsed
/// `AdmissionRequest<T>`; this webhook reads the request into a borrowed view instead (see `pod`), so it starts
/// from [`AdmissionResponse::invalid`] and fills in what `From<&AdmissionRequest>` would.
fn encode(
    review: &Review<'_>,
    verdict: Verdict,
    outcome: &Outcome,
) -> Result<Vec<u8>, AdmissionError> {
    let mut response = AdmissionResponse::invalid("");
    response.types = TypeMeta {
        api_version: review.api_version.clone().into_owned(),
        kind: "AdmissionReview".to_owned(),
    };
    response.uid = review.request.uid.clone().into_owned();
    response.allowed = true;
    response.result = Status::default();
    if !outcome.warnings.is_empty() {
        response.warnings = Some(outcome.warnings.clone());
    }
    if !outcome.summary.is_empty() {
        let key = match verdict {
            Verdict::Reported => REPORT_AUDIT_KEY,
            _ => AUDIT_KEY,
        };
        response
            .audit_annotations
            .insert(key.to_owned(), outcome.summary.clone());
    }
    if !outcome.patch.is_empty() {
        response = response
            .with_patch(json_patch::Patch(outcome.patch.clone()))
            .map_err(AdmissionError::EncodePatch)?;
    }
    let patch = response.patch.take().map(|bytes| BASE64.encode(bytes));
    let review = Answer {
        types: &response.types,
        response: Base64Patch {
            response: &response,
            patch,
        },
    };
    serde_json::to_vec(&review).map_err(AdmissionError::EncodeResponse)
}

/// kube's response review, with the patch as the base64 string the admission API documents. kube-core writes
/// the patch's `Vec<u8>` as a JSON array of numbers (kube-rs issue 1781), three to four times as long, which the
/// API server also reads, but parses number by number.
#[derive(serde::Serialize)]
struct Answer<'a> {
    #[serde(flatten)]
    types: &'a TypeMeta,
    response: Base64Patch<'a>,
}

/// [`AdmissionResponse`] (its own patch taken out) and the patch in base64.
#[derive(serde::Serialize)]
struct Base64Patch<'a> {
    #[serde(flatten)]
    response: &'a AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

/// What was set, for logs.
pub fn summary_for_log(outcome: &Outcome) -> &str {
    if outcome.summary.is_empty() {
        "nothing"
    } else {
        &outcome.summary
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use kube::core::DynamicObject;
    use kube::core::admission::AdmissionReview;
    use serde_json::{Value, json};

    use super::*;
    use crate::policy::INJECT_LABEL;

    const POLICY: &str = "defaults: {runAsUser: 65532, allowPrivilegeEscalation: false}";
    const EXCEPTIONS: &str = "podExceptions: [fsGroup]\ndefaults: {runAsUser: 65532, fsGroup: 65532, allowPrivilegeEscalation: false}";

    fn policy(rest: &str) -> Policy {
        let text = format!(
            "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\n{rest}\n"
        );
        crate::policy::parse(text.as_bytes(), Path::new("p.yaml")).unwrap()
    }

    fn review(operation: &str, sub_resource: Option<&str>, object: Value, old: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "subResource": sub_resource,
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p",
                "namespace": "app",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
    }

    fn create(object: Value) -> Value {
        review("CREATE", None, object, Value::Null)
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "app"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    }

    /// `pod()` with these annotations.
    fn annotated(annotations: Value) -> Value {
        let mut object = pod();
        object["metadata"]["annotations"] = annotations;
        object
    }

    /// The response to `body` under `policy` in a namespace whose inject label has `inject` (none if empty).
    fn respond_in(body: &Value, policy: &Policy, inject: &str) -> (Response, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let parsed = parse(&bytes).unwrap();
        let mut labels = BTreeMap::new();
        if !inject.is_empty() {
            labels.insert(INJECT_LABEL.to_owned(), inject.to_owned());
        }
        let r = respond(&parsed, policy, NamespaceLabels::Known(&labels)).unwrap();
        let out = serde_json::from_slice(&r.body).unwrap();
        (r, out)
    }

    fn answer(body: &Value) -> (Verdict, Value) {
        let (r, out) = respond_in(body, &policy(POLICY), "enabled");
        (r.verdict, out)
    }

    /// The patch document of a response, from its base64.
    fn decoded_patch(response: &Value) -> Option<Value> {
        let text = response.pointer("/response/patch")?.as_str().unwrap();
        Some(serde_json::from_slice(&BASE64.decode(text).unwrap()).unwrap())
    }

    #[test]
    fn create_is_patched_and_echoes_uid_and_version() {
        let (verdict, out) = answer(&create(pod()));
        assert_eq!(verdict, Verdict::Patched);
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(
            out["response"]["auditAnnotations"]["defaulted"],
            "runAsUser=65532,allowPrivilegeEscalation=false(c)"
        );
        let patch = decoded_patch(&out).unwrap();
        assert_eq!(
            patch[0],
            json!({"op": "add", "path": "/spec/securityContext", "value": {"runAsUser": 65532}})
        );
    }

    #[test]
    fn response_matches_what_kube_would_send() {
        let body = create(pod());
        let (_, ours) = answer(&body);
        let typed: AdmissionReview<DynamicObject> = serde_json::from_value(body).unwrap();
        let request: kube::core::admission::AdmissionRequest<DynamicObject> =
            typed.try_into().unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(decoded_patch(&ours).unwrap()).unwrap();
        let theirs = kube::core::admission::AdmissionResponse::from(&request)
            .with_patch(patch)
            .unwrap()
            .into_review();
        let theirs = serde_json::to_value(theirs).unwrap();
        for field in [
            "/apiVersion",
            "/kind",
            "/response/uid",
            "/response/allowed",
            "/response/patchType",
        ] {
            assert_eq!(ours.pointer(field), theirs.pointer(field), "{field}");
        }
        // kube's value form holds the patch as bytes; compare the patch documents themselves.
        let their_bytes: Vec<u8> =
            serde_json::from_value(theirs["response"]["patch"].clone()).unwrap();
        let their_patch: Value = serde_json::from_slice(&their_bytes).unwrap();
        assert_eq!(decoded_patch(&ours).unwrap(), their_patch);
    }

    #[test]
    fn kube_built_request_is_understood() {
        // A request as kube's own types serialise it.
        let typed: AdmissionReview<DynamicObject> = serde_json::from_value(create(pod())).unwrap();
        let bytes = serde_json::to_vec(&typed).unwrap();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.route(), Route::CreatePod);
        assert_eq!(parsed.namespace(), Some("app"));
    }

    #[test]
    fn routes() {
        let ephemeral_old = json!({"spec": {"containers": [{"name": "c"}]}});
        let ephemeral_new = json!({"spec": {"containers": [{"name": "c"}], "ephemeralContainers": [{"name": "debugger"}]}});
        // (review, verdict, paths in the patch)
        let cases = vec![
            (create(pod()), Verdict::Patched, 3),
            (review("UPDATE", None, pod(), pod()), Verdict::Ignored, 0),
            (
                review("DELETE", None, Value::Null, pod()),
                Verdict::Ignored,
                0,
            ),
            (
                review(
                    "CREATE",
                    Some("binding"),
                    json!({"kind": "Binding"}),
                    Value::Null,
                ),
                Verdict::Ignored,
                0,
            ),
            (
                review("UPDATE", Some("status"), pod(), pod()),
                Verdict::Ignored,
                0,
            ),
            (
                review(
                    "UPDATE",
                    Some("ephemeralcontainers"),
                    ephemeral_new,
                    ephemeral_old,
                ),
                Verdict::Patched,
                1,
            ),
        ];
        for (body, want, ops) in cases {
            let (verdict, out) = answer(&body);
            assert_eq!(verdict, want, "{body}");
            assert_eq!(out["response"]["allowed"], true);
            let n = decoded_patch(&out)
                .map(|p| p.as_array().unwrap().len())
                .unwrap_or(0);
            assert_eq!(n, ops, "{body}");
        }
        let mut other = create(pod());
        other["request"]["resource"] =
            json!({"group": "apps", "version": "v1", "resource": "deployments"});
        assert_eq!(answer(&other).0, Verdict::Ignored);
    }

    #[test]
    fn ephemeral_update_never_touches_pod_level_fields() {
        let old = json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}});
        let new = json!({"metadata": {}, "spec": {"containers": [{"name": "c"}], "ephemeralContainers": [{"name": "d"}]}});
        let (_, out) = answer(&review("UPDATE", Some("ephemeralcontainers"), new, old));
        let patch = decoded_patch(&out).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/spec/ephemeralContainers/0/securityContext", "value": {"allowPrivilegeEscalation": false}}])
        );
    }

    #[test]
    fn exempt_namespace_is_allowed_unchanged() {
        let (r, out) = respond_in(&create(pod()), &policy(POLICY), "");
        assert_eq!(r.verdict, Verdict::Exempt(Exemption::NotOptedIn));
        assert_eq!(
            out["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true, "status": {}})
        );
    }

    #[test]
    fn unreadable_pod_is_allowed_with_a_warning() {
        let (verdict, out) = answer(&review(
            "CREATE",
            None,
            json!({"spec": {"containers": "nope"}}),
            Value::Null,
        ));
        assert_eq!(verdict, Verdict::Unreadable);
        assert_eq!(out["response"]["allowed"], true);
        assert!(
            out["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("cannot read the pod")
        );
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn escaped_strings_are_read_unescaped() {
        // JSON may escape any character; keys and names must compare after unescaping.
        let body = br#"{"apiVersion":"admission.k8s.io\/v1","kind":"AdmissionReview","request":{"uid":"u\u0031",
            "resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","namespace":"app",
            "object":{"metadata":{"annotations":{"kubernetes.io\/config.mirror":"x"}},
                      "spec":{"containers":[{"name":"a\"b"}]}}}}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.request.uid, "u1");
        let Objects::Pods { object, .. } = &parsed.request.objects else {
            panic!("pod not read");
        };
        assert!(
            object.annotations().is_some_and(|a| a.mirror),
            "escaped mirror key recognised"
        );
        let on = BTreeMap::from([(INJECT_LABEL.to_owned(), "enabled".to_owned())]);
        let r = respond(&parsed, &policy(POLICY), NamespaceLabels::Known(&on)).unwrap();
        assert_eq!(r.verdict, Verdict::Unchanged, "mirror pods are left alone");
        let out: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(out["response"]["uid"], "u1");
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "not an AdmissionReview"),
            (b"{", "not an AdmissionReview"),
            (b"[]", "not an AdmissionReview: expected a JSON object"),
            (b" [{\"apiVersion\":\"admission.k8s.io/v1\"}]", "expected a JSON object"),
            (b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\"}", "only admission.k8s.io/v1 is served"),
            (b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"Pod\"}", "expected AdmissionReview"),
            (b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}", "has no request"),
            (b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":1}}", "not an AdmissionReview"),
            // Invalid UTF-8 in a string nothing reads.
            (b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"x\":\"\xff\"}", "not UTF-8"),
        ];
        for (body, words) in cases {
            let err = parse(body).unwrap_err();
            assert!(
                err.to_string().contains(words),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn pods_opt_out_of_the_fields_the_policy_allows_and_it_is_recorded() {
        let object = annotated(json!({"secure-defaults.io/skip": "fsGroup,runAsUser"}));
        let (r, out) = respond_in(&create(object.clone()), &policy(EXCEPTIONS), "enabled");
        let mut patched = object;
        let patch: json_patch::Patch =
            serde_json::from_value(decoded_patch(&out).unwrap()).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(
            patched["spec"]["securityContext"],
            json!({"runAsUser": 65532})
        );
        assert_eq!(
            patched["metadata"]["annotations"]["secure-defaults.io/exceptions"],
            "fsGroup"
        );
        let warnings = out["response"]["warnings"].to_string();
        assert!(
            warnings.contains("fsGroup not defaulted: the pod opts out"),
            "{warnings}"
        );
        assert!(warnings.contains("leave out runAsUser"), "{warnings}");
        assert_eq!(r.outcome.exceptions.len(), 1);
    }

    #[test]
    fn pods_left_alone_get_no_record_of_their_exceptions() {
        // (pod's annotations, its os, the one warning it gets)
        let cases = [
            (
                json!({"secure-defaults.io/skip": "fsGroup,runAsUser", "kubernetes.io/config.mirror": "x"}),
                Value::Null,
                "secure-defaults: mirror pod of a static pod left unchanged",
            ),
            (
                json!({"secure-defaults.io/skip": "fsGroup,nonsense"}),
                json!({"name": "windows"}),
                "secure-defaults: Windows pod (spec.os.name is windows) left unchanged",
            ),
        ];
        for (annotations, os, warning) in cases {
            let mut object = annotated(annotations);
            object["spec"]["os"] = os;
            let (r, out) = respond_in(&create(object), &policy(EXCEPTIONS), "enabled");
            assert_eq!(r.verdict, Verdict::Unchanged, "{out}");
            assert!(out["response"].get("patch").is_none(), "{out}");
            assert_eq!(out["response"]["warnings"], json!([warning]), "{out}");
        }
    }

    #[test]
    fn report_mode_says_what_it_would_set_and_sets_nothing() {
        let (r, out) = respond_in(&create(pod()), &policy(POLICY), "report");
        assert_eq!(r.verdict, Verdict::Reported);
        assert!(out["response"].get("patch").is_none(), "{out}");
        assert_eq!(
            out["response"]["warnings"][0],
            "secure-defaults (report): would set runAsUser=65532, allowPrivilegeEscalation=false (c)"
        );
        assert_eq!(
            out["response"]["auditAnnotations"],
            json!({"would-default": "runAsUser=65532,allowPrivilegeEscalation=false(c)"})
        );
        let warnings = &r.outcome.warnings;
        assert_eq!(
            r.outcome.guard_warnings, 0,
            "the report line is no guard warning: {warnings:?}"
        );
    }

    #[test]
    fn only_guard_warnings_count_as_guard_warnings() {
        // One exception honoured, one refused (two exception warnings), one privileged container (a guard).
        let mut object = annotated(json!({"secure-defaults.io/skip": "fsGroup,runAsUser"}));
        object["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let (r, _) = respond_in(&create(object), &policy(EXCEPTIONS), "enabled");
        assert!(r.outcome.warnings.len() >= 2, "{:?}", r.outcome.warnings);
        assert_eq!(r.outcome.guard_warnings, 1, "{:?}", r.outcome.warnings);
    }

    #[test]
    fn the_images_looked_up_are_those_whose_user_would_be_used() {
        let images = "images: {registries: [\"reg/*\"]}";
        let with = policy(&format!("{POLICY}\n{images}"));
        let spec = json!({"nodeSelector": {"kubernetes.io/arch": "arm64"},
            "initContainers": [{"name": "i", "image": "reg/init:1"}],
            "containers": [{"name": "a", "image": "reg/a:1"}, {"name": "b", "image": "reg/b:1", "securityContext": {"runAsUser": 5}}]});
        let mut object = pod();
        object["spec"] = spec;
        let wanted = |body: &Value, policy: &Policy, inject: &str| {
            let bytes = serde_json::to_vec(body).unwrap();
            let parsed = parse(&bytes).unwrap();
            let labels = BTreeMap::from([(INJECT_LABEL.to_owned(), inject.to_owned())]);
            let (images, platform) =
                images_to_look_up(&parsed, policy, NamespaceLabels::Known(&labels));
            let images: Vec<String> = images.into_iter().map(str::to_owned).collect();
            (images, platform.map(|p| p.architecture))
        };
        let body = create(object.clone());
        assert_eq!(
            wanted(&body, &with, "enabled"),
            (
                vec!["reg/a:1".to_owned(), "reg/init:1".to_owned()],
                Some("arm64".to_owned())
            )
        );
        assert_eq!(
            wanted(&body, &policy(POLICY), "enabled").0,
            Vec::<String>::new(),
            "no images: section"
        );
        assert_eq!(
            wanted(&body, &with, "report").0,
            Vec::<String>::new(),
            "report-only"
        );
        assert_eq!(
            wanted(&body, &with, "disabled").0,
            Vec::<String>::new(),
            "not opted in"
        );
        let mut own = object.clone();
        own["spec"]["securityContext"] = json!({"runAsUser": 7});
        assert_eq!(
            wanted(&create(own), &with, "enabled").0,
            Vec::<String>::new(),
            "the pod states its user"
        );
        let old = json!({"spec": {"containers": [{"name": "a", "image": "reg/a:1"}]}});
        let new = json!({"spec": {"containers": [{"name": "a", "image": "reg/a:1"}],
            "ephemeralContainers": [{"name": "dbg", "image": "reg/debug:1"}]}});
        let update = review("UPDATE", Some("ephemeralcontainers"), new, old);
        assert_eq!(
            wanted(&update, &with, "enabled").0,
            vec!["reg/debug:1".to_owned()]
        );

        // What the lookups found reaches the patch.
        let mut found = Images::default();
        found.users.insert(
            "reg/a:1".to_owned(),
            Ok(crate::images::ImageUser::Id {
                uid: 1001,
                gid: None,
            }),
        );
        let bytes = serde_json::to_vec(&body).unwrap();
        let parsed = parse(&bytes).unwrap();
        let on = BTreeMap::from([(INJECT_LABEL.to_owned(), "enabled".to_owned())]);
        let r = respond_with(&parsed, &with, NamespaceLabels::Known(&on), &found).unwrap();
        let out: Value = serde_json::from_slice(&r.body).unwrap();
        let patch = decoded_patch(&out).unwrap();
        let op = patch
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/spec/containers/0/securityContext");
        assert_eq!(
            op.map(|op| &op["value"]),
            Some(&json!({"runAsUser": 1001, "allowPrivilegeEscalation": false})),
            "{patch}"
        );
        assert_eq!(
            out["response"]["auditAnnotations"]["defaulted"],
            "runAsUser=65532,allowPrivilegeEscalation=false(a,b,i),imageUser=1001(a)"
        );
    }
}
