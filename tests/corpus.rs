//! The preview on manifests nobody on the team wrote: every file of `tests/corpus/` (published examples of several
//! projects; see its README) previewed under the shipped policy and under `profile: restricted`.
//!
//! For every file: it previews without an error; every operation only adds, at a path the object did not have,
//! below a `securityContext` or at the defaulted annotation; objects with no pod come out value for value and
//! documents that do not change byte for byte; what `-o object` writes reads back as the values that were
//! previewed; and that output, previewed again, changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use json_patch::PatchOperation;
use secure_defaults::policy::{self, Policy};
use secure_defaults::preview::{self, Format, Options, Run, Source};
use serde_json::Value;

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    files
}

fn policies() -> Vec<(&'static str, Policy)> {
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.yaml")).unwrap();
    let restricted = String::from_utf8(shipped.clone())
        .unwrap()
        .replace("mode: opt-in", "mode: opt-in\nprofile: restricted");
    vec![
        (
            "shipped",
            policy::parse(&shipped, Path::new("policy.yaml")).unwrap(),
        ),
        (
            "restricted",
            policy::parse(restricted.as_bytes(), Path::new("restricted.yaml")).unwrap(),
        ),
    ]
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("secure-defaults.io/inject".to_owned(), "enabled".to_owned())])
}

fn source(path: &Path) -> Source {
    preview::read_path(path).unwrap().remove(0)
}

fn preview_all(sources: Vec<Source>, policy: &Policy) -> Run {
    let labels = labels();
    // The namespace is fixed: some published manifests name kube-system, which is always exempt.
    let options = Options {
        namespace: Some("corpus"),
        labels: &labels,
        images: None,
    };
    preview::run(sources, policy, &options)
}

/// Where an operation may add: below a securityContext, or the defaulted annotation (and the maps leading to it).
fn allowed(path: &str) -> bool {
    path.contains("/securityContext")
        || path.ends_with("/metadata/annotations/secure-defaults.io~1defaulted")
        || path.ends_with("/metadata/annotations")
        || path.ends_with("/template/metadata")
}

#[test]
fn every_published_manifest_previews_and_only_adds_security_context() {
    let files = corpus();
    assert!(files.len() >= 100, "the corpus has {} files", files.len());
    let mut changed_objects = 0;
    let mut passed_through = 0;
    for (name, policy) in policies() {
        for file in &files {
            let source = source(file);
            let bytes = source.bytes.clone();
            let run = preview_all(vec![source.clone()], &policy);
            let errors: Vec<String> = run
                .errors
                .iter()
                .map(|e| secure_defaults::error_chain(e))
                .collect();
            assert!(errors.is_empty(), "{name}: {}: {errors:?}", file.display());
            passed_through += run.passed_through;

            // Every operation adds where the object had nothing, below a securityContext or at the annotation.
            let (_, documents) = preview::read::documents(&source);
            let originals: Vec<Value> = documents
                .iter()
                .filter_map(|d| d.content.as_ref().ok().cloned().flatten())
                .flat_map(|v| preview::read::objects(v).unwrap())
                .collect();
            for p in &run.previews {
                let original = originals
                    .iter()
                    .find(|o| {
                        o.get("kind").and_then(Value::as_str).unwrap_or("Pod") == p.object.kind
                            && o.pointer("/metadata/name")
                                .or_else(|| o.pointer("/metadata/generateName"))
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                == p.object.name
                    })
                    .unwrap_or_else(|| panic!("{}: {:?} not found", file.display(), p.object));
                for op in &p.patch {
                    let PatchOperation::Add(add) = op else {
                        panic!("{name}: {}: not an add: {op:?}", file.display());
                    };
                    let path = add.path.to_string();
                    assert!(allowed(&path), "{name}: {}: adds at {path}", file.display());
                    let before = original.pointer(&path);
                    assert!(
                        before.is_none_or(Value::is_null),
                        "{name}: {}: {path} was already {before:?}",
                        file.display()
                    );
                }
                if !p.patch.is_empty() {
                    changed_objects += 1;
                }
            }

            // Unchanged documents come out byte for byte; the whole output reads back as what was previewed.
            let written = preview::render(&run, true);
            let out = &run.sources[0];
            if !out.documents.iter().any(|d| d.changed) {
                assert_eq!(
                    written.as_bytes(),
                    bytes.as_slice(),
                    "{name}: {}",
                    file.display()
                );
            } else if out.format == Format::Yaml {
                for d in out.documents.iter().filter(|d| !d.changed) {
                    let text = String::from_utf8_lossy(&bytes[d.span.clone()]);
                    assert!(
                        written.contains(text.as_ref()),
                        "{name}: {}: lost {text:?}",
                        file.display()
                    );
                }
            }
            let mut again = Source::new(file.display().to_string(), written.clone().into_bytes());
            again.format = Some(out.format);
            let (_, reread) = preview::read::documents(&again);
            let reread: Vec<Value> = reread
                .into_iter()
                .filter_map(|d| d.content.unwrap())
                .collect();
            let previewed: Vec<Value> = out
                .documents
                .iter()
                .filter_map(|d| d.value.clone())
                .collect();
            assert_eq!(
                reread,
                previewed,
                "{name}: {}: written back as\n{written}",
                file.display()
            );

            // Fed back in, nothing changes.
            let second = preview_all(vec![again], &policy);
            assert!(second.errors.is_empty(), "{name}: {}", file.display());
            assert!(
                !second.changes(),
                "{name}: {}: a second preview changes {:?}",
                file.display(),
                second
                    .previews
                    .iter()
                    .filter(|p| !p.patch.is_empty())
                    .map(|p| (&p.object, &p.patch))
                    .collect::<Vec<_>>()
            );
        }
    }
    assert!(changed_objects > 100, "{changed_objects} objects defaulted");
    assert!(
        passed_through > 100,
        "{passed_through} objects passed through"
    );
}

#[test]
fn the_corpus_previews_as_one_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    for (name, policy) in policies() {
        let run = preview_all(preview::read_path(&root).unwrap(), &policy);
        assert!(run.errors.is_empty(), "{name}: {:?}", run.errors);
        assert!(run.changes());
        let written = preview::render(&run, true);
        let mut again = Source::new("all", written.into_bytes());
        again.format = Some(Format::Yaml);
        let second = preview_all(vec![again], &policy);
        assert!(second.errors.is_empty(), "{name}: {:?}", second.errors);
        assert!(
            !second.changes(),
            "{name}: the whole corpus, written back, changes nothing"
        );
        assert_eq!(second.previews.len(), run.previews.len());
    }
}
