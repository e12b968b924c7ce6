//! The admission fuzz target's seeds (`fuzz/corpus/admission/`), replayed in the normal suite with the target's own
//! checks (`fuzz/shared/admission.rs`), so every input that once needed fixing stays fixed without a nightly
//! toolchain or a sanitizer build.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/shared/admission.rs"]
mod shared;

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn every_admission_seed_passes_the_fuzz_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/admission");
    let mut patched = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        patched.insert(name, shared::run(&data));
    }
    // What some seeds must come to, so that the replay is known to reach the engine and its guards.
    for (seed, answers_with_a_patch) in [
        ("create-default.json", 2),
        ("create-kube-system.json", 0),
        ("create-mirror.json", 0),
        ("create-mirror-skip.json", 0),
        ("create-windows-skip.json", 0),
        ("create-bad-utf8.json", 0),
    ] {
        assert_eq!(
            patched.get(seed),
            Some(&answers_with_a_patch),
            "{seed}: {patched:?}"
        );
    }
}
