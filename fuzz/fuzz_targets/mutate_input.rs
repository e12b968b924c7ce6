//! The `mutate` input reader: any bytes read as a manifest (`preview::read`), as a YAML file, a JSON file and
//! standard input, then previewed (`preview::run`) with the targets' fixed policy (`fuzz/shared/policy.rs`) and
//! rendered both ways. Errors are fine; a panic is not. A document written back must read as it was previewed.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use secure_defaults::preview::{self, Format, Options, Source};

#[path = "../shared/policy.rs"]
mod policy;

fuzz_target!(|data: &[u8]| {
    let policy = policy::policy();
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    )]);
    let options = Options {
        namespace: None,
        labels: &labels,
        images: None,
    };
    for format in [Some(Format::Yaml), Some(Format::Json), None] {
        let mut source = Source::new("fuzz", data.to_vec());
        source.format = format;
        let run = preview::run(vec![source], policy, &options);
        let _ = preview::render(&run, false);
        let _ = preview::notes(&run);
        let written = preview::render(&run, true);
        // What is written back reads as the documents that came out of the preview.
        if run.errors.is_empty() && format == Some(Format::Yaml) {
            let mut again = Source::new("again", written.into_bytes());
            again.format = format;
            let (_, documents) = preview::read::documents(&again);
            let read: Vec<_> = documents
                .into_iter()
                .filter_map(|d| d.content.ok().flatten())
                .collect();
            let expected: Vec<_> = run.sources[0]
                .documents
                .iter()
                .filter_map(|d| d.value.clone())
                .collect();
            assert_eq!(
                read, expected,
                "written back differs from what was previewed"
            );
        }
    }
});
