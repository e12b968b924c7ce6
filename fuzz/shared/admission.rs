//! The admission fuzz target's input handling and checks, shared by the target (`fuzz_targets/admission.rs`) and the
//! replay of its seeds in the normal test suite (`tests/fuzz_seeds.rs`): the review bytes go through
//! `admission::parse` and `respond` with the targets' fixed policy (`policy.rs`) and known namespace labels. Never a
//! panic; every answer is an AdmissionReview, and its patch holds only `add` operations that apply to the request's
//! object.

#[path = "policy.rs"]
mod policy;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use json_patch::PatchOperation;
use secure_defaults::admission;
use secure_defaults::policy::NamespaceLabels;
use serde_json::Value;

static LABELS: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    BTreeMap::from([
        (
            "kubernetes.io/metadata.name".to_owned(),
            "default".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/enforce".to_owned(),
            "restricted".to_owned(),
        ),
    ])
});

/// Runs one input through the admission path and checks the answers (with the namespace's labels known, and
/// unknown); panics on a finding. Returns how many of the two answers carried a patch (0 for a body that is not a
/// review).
pub fn run(data: &[u8]) -> usize {
    let policy = policy::policy();
    let Ok(review) = admission::parse(data) else {
        return 0;
    };
    let mut patched = 0;
    for labels in [NamespaceLabels::Known(&LABELS), NamespaceLabels::Unknown] {
        let response = match admission::respond(&review, policy, labels) {
            Ok(response) => response,
            // Encoding can fail only for a patch that does not serialise; that would be a bug worth seeing.
            Err(error) => panic!("respond failed: {error}"),
        };
        check(data, &response);
        patched += usize::from(!response.outcome.patch.is_empty());
    }
    patched
}

fn check(request: &[u8], response: &admission::Response) {
    for op in &response.outcome.patch {
        assert!(matches!(op, PatchOperation::Add(_)), "not an add: {op:?}");
    }
    let answer: Value = serde_json::from_slice(&response.body).expect("the response is JSON");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["allowed"], true);
    let bytes: Vec<u8> = match &answer["response"]["patch"] {
        Value::Null => {
            assert!(
                response.outcome.patch.is_empty(),
                "a patch that was not sent"
            );
            return;
        }
        Value::String(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("the patch is base64"),
        other => panic!("the patch is not a base64 string: {other}"),
    };
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch: json_patch::Patch =
        serde_json::from_slice(&bytes).expect("the patch is a JSON Patch");
    assert!(!patch.0.is_empty(), "an empty patch was sent");
    for op in &patch.0 {
        assert!(matches!(op, PatchOperation::Add(_)), "not an add: {op:?}");
    }
    // `admission::parse` accepts only UTF-8, but does not check the escapes of strings it skips (a lone surrogate
    // `\ud800`), as serde does for ignored values; the API server never sends those. Check the patch against the
    // object wherever the review reads as JSON.
    let Ok(review) = serde_json::from_slice::<Value>(request) else {
        return;
    };
    let mut object = review["request"]["object"].clone();
    if let Err(error) = json_patch::patch(&mut object, &patch) {
        panic!(
            "the patch does not apply to the object: {error}\npatch: {patch:?}\nobject: {object}"
        );
    }
}
