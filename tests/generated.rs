//! The files written from the field table are current: each generated region of the README and of the shipped
//! policies is what `make generate` would write now.

use std::path::Path;

use secure_defaults::generate;

#[test]
fn generated_regions_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for region in generate::regions() {
        let text = std::fs::read_to_string(root.join(region.file))
            .unwrap_or_else(|e| panic!("{}: {e}", region.file));
        let written = generate::apply(&text, &region).unwrap_or_else(|e| panic!("{e}"));
        if written != text {
            stale.push(format!("{} ({})", region.file, region.name));
        }
    }
    assert!(
        stale.is_empty(),
        "stale, generated from the field table: {}; run `make generate`",
        stale.join(", ")
    );
}
