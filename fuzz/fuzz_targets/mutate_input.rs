//! The `mutate` input reader: any bytes read as a manifest (`preview::objects`), then previewed with a fixed
//! policy (`preview::run`) and rendered. Errors are fine; a panic is not.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use secure_defaults::policy::Policy;
use secure_defaults::preview::{self, Options, Source};

const POLICY: &str = "\
apiVersion: secure-defaults.io/v1alpha1
kind: Policy
mode: cluster-wide
followPodSecurityLabels: true
podExceptions: [runAsUser]
defaults:
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  allowPrivilegeEscalation: false
namespaces:
  - match: {names: [audit]}
    report: true
";

static POLICY_PARSED: LazyLock<Option<Policy>> = LazyLock::new(|| {
    secure_defaults::policy::parse(POLICY.as_bytes(), Path::new("fuzz-policy.yaml")).ok()
});

fuzz_target!(|data: &[u8]| {
    let Some(policy) = POLICY_PARSED.as_ref() else {
        panic!("the fuzz target's own policy does not parse");
    };
    let source = Source {
        name: "fuzz.yaml".to_owned(),
        bytes: data.to_vec(),
    };
    if preview::objects(&source).is_err() {
        return;
    }
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    )]);
    let options = Options {
        namespace: None,
        labels: &labels,
    };
    if let Ok(previews) = preview::run(std::slice::from_ref(&source), policy, &options) {
        let _ = preview::render(&previews, false);
        let _ = preview::render(&previews, true);
        let _ = preview::notes(&previews);
    }
});
