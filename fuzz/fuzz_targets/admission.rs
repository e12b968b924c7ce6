//! The admission path, bytes in, response out: `admission::parse` then `respond` with a fixed policy and known
//! namespace labels. Never a panic; every answer is an AdmissionReview, and its patch holds only `add` operations
//! that apply to the request's object. The checks live in `fuzz/shared/admission.rs`, which the normal test suite
//! also runs over this target's seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../shared/admission.rs"]
mod shared;

fuzz_target!(|data: &[u8]| {
    shared::run(data);
});
