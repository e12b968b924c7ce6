//! The `mutate` input reader: any bytes read as a manifest (`preview::objects`), then previewed (`preview::run`)
//! with the targets' fixed policy (`fuzz/shared/policy.rs`) and rendered. Errors are fine; a panic is not.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use secure_defaults::preview::{self, Options, Source};

#[path = "../shared/policy.rs"]
mod policy;

fuzz_target!(|data: &[u8]| {
    let policy = policy::policy();
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
