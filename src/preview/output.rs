//! What `mutate` prints: the patches, or the whole input written back with each pod-bearing object defaulted and
//! everything else as it was; and the notes on standard error.
//!
//! With `-o object`, a document that does not change is written back byte for byte (comments, key order, quoting
//! and `0644`-style numbers included). A document that changes is written anew from its value: its key order and
//! the comment lines before it are kept, comments inside it are not. Strings that YAML 1.1 would read as something
//! else (`"0644"`, `"yes"`, `"on"`) are quoted, so kubectl reads back exactly the values that were read.

use serde_json::{Value, json};

use super::{Format, Run, SourceOut};
use crate::admission::Verdict;

/// What `mutate` prints on standard output. With `objects` false: the patch (a JSON array) when there is one
/// pod-bearing object, else a JSON array of `{source, document, kind, name, namespace, patch}`, one per
/// pod-bearing object. With `objects` true: the input with the previewed objects defaulted, in its format (a
/// JSON `List` when several JSON files were read, a YAML stream when any input was YAML).
pub fn render(run: &Run, objects: bool) -> String {
    if !objects {
        return match run.previews.as_slice() {
            [one] => pretty(&one.patch),
            many => {
                let results: Vec<Value> = many
                    .iter()
                    .map(|p| {
                        let mut record =
                            json!({"source": p.place.source, "document": p.place.document});
                        if let Some(item) = p.place.item {
                            record["item"] = json!(item);
                        }
                        record["kind"] = json!(p.object.kind);
                        record["name"] = json!(p.object.name);
                        record["namespace"] = json!(p.namespace);
                        record["patch"] = json!(p.patch);
                        record
                    })
                    .collect();
                pretty(&results)
            }
        };
    }
    let all_json = run.sources.iter().all(|s| s.format == Format::Json);
    match run.sources.as_slice() {
        [one] => written_back(one),
        many if all_json => {
            let mut items = Vec::new();
            for document in many.iter().flat_map(|s| &s.documents) {
                match &document.value {
                    Some(value) if super::read::is_list(value) => {
                        let list = value.get("items").and_then(Value::as_array);
                        items.extend(list.into_iter().flatten().cloned());
                    }
                    Some(value) => items.push(value.clone()),
                    None => {}
                }
            }
            pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        }
        many => {
            let mut out = String::new();
            for source in many {
                let text = match source.format {
                    Format::Yaml => written_back(source),
                    Format::Json => source
                        .documents
                        .iter()
                        .filter_map(|d| d.value.as_ref())
                        .map(yaml)
                        .collect::<Vec<_>>()
                        .join("---\n"),
                };
                if text.trim().is_empty() {
                    continue;
                }
                if !out.is_empty() {
                    if !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str("---\n");
                }
                out.push_str(&text);
            }
            out
        }
    }
}

/// A source written back: its bytes, with each document that changed written anew in its place.
fn written_back(source: &SourceOut) -> String {
    let text = String::from_utf8_lossy(&source.source.bytes);
    let mut out = String::with_capacity(text.len() + 256);
    let mut at = 0;
    for document in &source.documents {
        let Some(value) = document.value.as_ref().filter(|_| document.changed) else {
            continue;
        };
        let span = document.span.clone();
        out.push_str(&text[at..span.start]);
        let original = &text[span.clone()];
        match source.format {
            Format::Yaml => {
                out.push_str(leading_comments(original));
                out.push_str(&yaml(value));
            }
            Format::Json => {
                // Keep the whitespace before the value, so a stream keeps its layout between values.
                let trimmed = original.trim_start();
                out.push_str(&original[..original.len() - trimmed.len()]);
                out.push_str(&pretty(value));
            }
        }
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The blank and comment lines a YAML document starts with.
fn leading_comments(document: &str) -> &str {
    let mut end = 0;
    for line in document.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if !(trimmed.is_empty() || trimmed.starts_with('#')) {
            break;
        }
        end += line.len();
    }
    &document[..end]
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// A value as a YAML document; strings YAML 1.1 would read otherwise are quoted. A long string stays on its line
/// (no folding: a diff shows what changed), one with line breaks is a literal block. A document with a line that
/// starts with `---` (a top-level key such as `---metadata`, valid YAML) would be split there by kubectl's reader,
/// so it is written as one line of JSON instead, which YAML reads as the same value.
pub(super) fn yaml(value: &Value) -> String {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    let mut text = serde_saphyr::to_string_with_options(value, options).unwrap_or_default();
    if text.lines().any(|line| line.starts_with("---")) {
        text = serde_json::to_string(value).unwrap_or_default();
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// What `mutate` says on standard error, per pod-bearing object: what it would get, or why nothing, and its
/// warnings; then what passed through and what was skipped. Errors are printed by the caller.
pub fn notes(run: &Run) -> Vec<String> {
    let several = run.previews.len() > 1;
    let mut out = Vec::new();
    for p in &run.previews {
        let who = if several {
            format!("{}: {}/{}: ", p.place.source, p.object.kind, p.object.name)
        } else {
            String::new()
        };
        for warning in &p.warnings {
            out.push(format!("warning: {who}{warning}"));
        }
        match p.verdict {
            Verdict::Exempt(why) => {
                out.push(format!(
                    "note: {who}namespace {:?} is exempt: {why}",
                    p.namespace
                ));
            }
            _ if several && p.patch.is_empty() => out.push(format!("{who}unchanged")),
            _ if several => out.push(format!("{who}would set {}", p.summary)),
            _ => {}
        }
    }
    for name in &run.skipped {
        out.push(format!("note: {name}: no objects, skipped"));
    }
    match run.passed_through {
        0 => {}
        1 => out.push("note: 1 object carries no pod and passes through unchanged".to_owned()),
        n => out.push(format!(
            "note: {n} objects carry no pod and pass through unchanged"
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_comments_stop_at_content() {
        assert_eq!(
            leading_comments("\n# a\n  # b\nkind: Pod\n# c\n"),
            "\n# a\n  # b\n"
        );
        assert_eq!(leading_comments("kind: Pod\n"), "");
    }

    #[test]
    fn yaml_never_writes_a_line_that_kubectl_splits_at() {
        // Found by the mutate_input fuzz target: a top-level key `---metadata` written plain at column 0.
        let value =
            serde_json::json!({"kind": "Pod", "---metadata": {"name": "a"}, "spec": {"a": "---b"}});
        let text = yaml(&value);
        assert!(!text.lines().any(|l| l.starts_with("---")), "{text}");
        let mut source = super::super::read::Source::new("again", text.into_bytes());
        source.format = Some(super::super::read::Format::Yaml);
        let (_, documents) = super::super::read::documents(&source);
        let read: Vec<_> = documents.into_iter().map(|d| d.content.unwrap()).collect();
        assert_eq!(read, vec![Some(value)]);
    }

    #[test]
    fn yaml_quotes_what_yaml_1_1_reads_otherwise() {
        for s in [
            "0644", "yes", "y", "on", "1_000", "0x1F", "1e3", "~", "", "null", "1:20",
        ] {
            let text = yaml(&json!({ "k": s }));
            let back = super::super::read::yaml_values(&text).unwrap();
            assert_eq!(back, vec![json!({ "k": s })], "{s:?} came out as {text:?}");
        }
    }
}
