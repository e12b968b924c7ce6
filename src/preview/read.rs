//! Reading manifests the way kubectl reads them: files, directories and standard input split into documents,
//! each kept with its byte range so that `-o object` can write back untouched documents exactly as they were.
//!
//! - A `.json` file is JSON, a `.yaml`/`.yml` file is YAML whatever its first byte, and anything else (standard
//!   input, a file named otherwise) is JSON if it reads as a stream of JSON values, else YAML.
//! - A YAML stream is split into documents at the lines kubectl splits at: `---` in the first column, followed
//!   by nothing but spaces or a comment. A document is read with YAML 1.1's scalars, as kubectl's YAML reader
//!   (go-yaml v2) reads them: `0644` is the octal 420, `0x1F` is 31, `1_000` is 1000, `yes`/`on`/`y` are true.
//!   Duplicate keys keep the last value, as kubectl does.
//! - A document that is empty or holds only comments carries no object and is skipped, as kubectl skips it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The input format of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON: one value, or a stream of them.
    Json,
    /// YAML: one or more documents.
    Yaml,
}

/// One input: its name for messages, its bytes, and its format where its name says it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file's path, or `-` for standard input.
    pub name: String,
    /// What it holds.
    pub bytes: Vec<u8>,
    /// The format its name gives (`.json`, `.yaml`, `.yml`); `None` to tell by its content.
    pub format: Option<Format>,
    /// Found by walking a directory: an empty one is skipped with a note rather than refused.
    pub in_directory: bool,
}

impl Source {
    /// Standard input's bytes, or a file's, its format told by its content.
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Source {
        Source {
            name: name.into(),
            bytes,
            format: None,
            in_directory: false,
        }
    }
}

/// Why an input could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory holds no `.yaml`, `.yml` or `.json` file.
    #[error("{path}: no .yaml, .yml or .json file in this directory")]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
}

/// Why one document could not be read; the other documents of its source are still previewed.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The input is not UTF-8.
    #[error("not UTF-8 text (at byte {at})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        at: usize,
    },
    /// Not valid JSON.
    #[error("not valid JSON")]
    ParseJson(#[source] serde_json::Error),
    /// Not valid YAML; the message gives the line in the whole source.
    #[error("not valid YAML: {0}")]
    ParseYaml(String),
    /// A `---` line followed by content: kubectl refuses it too.
    #[error("invalid document separator {line:?}: only spaces or a comment may follow `---`")]
    Separator {
        /// The separator line.
        line: String,
    },
    /// A document, or an item of a `kind: List`, is not an object.
    #[error("not an object but {found}")]
    NotAnObject {
        /// What it is.
        found: &'static str,
    },
}

/// One document of a source.
#[derive(Debug)]
pub struct Document {
    /// Its place in the source, from 1.
    pub number: usize,
    /// Its bytes in the source (for YAML, without the separator lines around it).
    pub span: Range<usize>,
    /// What it holds.
    pub content: Result<Option<Value>, DocumentError>,
}

/// The sources under `path`: the file itself, or every `.yaml`, `.yml` and `.json` file below a directory, in
/// path order.
pub fn read_path(path: &Path) -> Result<Vec<Source>, ReadError> {
    let read_error = |path: &Path, source| ReadError::ReadFile {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
        return Ok(vec![Source {
            name: path.display().to_string(),
            bytes,
            format: format_of(path),
            in_directory: false,
        }]);
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| read_error(path, e.into()))?;
        let Some(format) = format_of(entry.path()) else {
            continue;
        };
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).map_err(|e| read_error(entry.path(), e))?;
            files.push(Source {
                name: entry.path().display().to_string(),
                bytes,
                format: Some(format),
                in_directory: true,
            });
        }
    }
    if files.is_empty() {
        return Err(ReadError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// The format a file's name gives.
fn format_of(path: &Path) -> Option<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Some(Format::Json),
        Some("yaml" | "yml") => Some(Format::Yaml),
        _ => None,
    }
}

/// The format of `source`, and its documents.
pub fn documents(source: &Source) -> (Format, Vec<Document>) {
    let text = match std::str::from_utf8(&source.bytes) {
        Ok(text) => text,
        Err(e) => {
            let format = source.format.unwrap_or(Format::Yaml);
            let whole = Document {
                number: 1,
                span: 0..source.bytes.len(),
                content: Err(DocumentError::NotUtf8 {
                    at: e.valid_up_to(),
                }),
            };
            return (format, vec![whole]);
        }
    };
    // kubectl drops a byte-order mark before reading.
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    match source.format {
        Some(Format::Json) => (Format::Json, json_documents(text, start)),
        Some(Format::Yaml) => (Format::Yaml, yaml_documents(text, start)),
        None => {
            let json = json_documents(text, start);
            let is_json = !json.is_empty() && json.iter().all(|d| d.content.is_ok());
            if is_json {
                (Format::Json, json)
            } else {
                (Format::Yaml, yaml_documents(text, start))
            }
        }
    }
}

/// A stream of JSON values, each one document; a value that does not parse ends the stream as a broken
/// document.
fn json_documents(text: &str, start: usize) -> Vec<Document> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    let mut from = start;
    loop {
        let next = stream.next();
        let to = start + stream.byte_offset();
        let content = match next {
            None => break,
            Some(Ok(value)) => Ok(Some(value)),
            Some(Err(e)) => Err(DocumentError::ParseJson(e)),
        };
        let failed = content.is_err();
        out.push(Document {
            number: out.len() + 1,
            span: from..if failed { text.len() } else { to },
            content,
        });
        if failed {
            break;
        }
        from = to;
    }
    out
}

/// The YAML documents of a stream, split where kubectl splits it.
fn yaml_documents(text: &str, start: usize) -> Vec<Document> {
    let mut out = Vec::new();
    let mut from = start;
    let mut at = start;
    let mut separator_error = None;
    let mut push = |from: usize, to: usize, error: Option<DocumentError>| {
        let content = match error {
            Some(e) => Err(e),
            None => parse_yaml(&text[from..to], text[..from].matches('\n').count()),
        };
        out.push(Document {
            number: out.len() + 1,
            span: from..to,
            content,
        });
    };
    while at < text.len() {
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
        let line = &text[at..end];
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            push(from, at, separator_error.take());
            if !rest.is_empty() && !rest.starts_with('#') {
                separator_error = Some(DocumentError::Separator {
                    line: line.trim_end().to_owned(),
                });
            }
            from = end;
        }
        at = end;
    }
    push(from, text.len(), separator_error.take());
    out
}

/// One YAML document as kubectl's reader sees it; `None` when it holds nothing. `lines_before` is the number of
/// lines of the source before it, so that an error names the line in the whole source.
fn parse_yaml(text: &str, lines_before: usize) -> Result<Option<Value>, DocumentError> {
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    let mut documents = serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .map_err(|e| {
            let options = serde_saphyr::render_options! {
                snippets: serde_saphyr::SnippetMode::Off,
                line_offset: lines_before as u64,
            };
            let message = e.render_with_options(options);
            DocumentError::ParseYaml(message.lines().next().unwrap_or_default().to_owned())
        })?
        .into_iter();
    // go-yaml reads the first document of a chunk; what follows a `...` end marker is ignored, as there.
    Ok(documents.next().filter(|v| !v.is_null()))
}

/// The objects a document holds: itself, or the items of a `kind: List`.
pub fn objects(document: Value) -> Result<Vec<Value>, DocumentError> {
    let not_an_object = |v: &Value| DocumentError::NotAnObject {
        found: match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a sequence",
            Value::Object(_) => "an object",
        },
    };
    if !document.is_object() {
        return Err(not_an_object(&document));
    }
    if is_list(&document) {
        let items = match document.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(other) => return Err(not_an_object(other)),
        };
        return Ok(items);
    }
    Ok(vec![document])
}

/// A `kind: List` (or `FooList`, as `kubectl get -o yaml` prints): a document whose objects are its items.
pub fn is_list(document: &Value) -> bool {
    document
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && document.get("items").is_some()
}

/// Reads YAML text into JSON values as kubectl's reader does, for callers outside the preview.
pub fn yaml_values(text: &str) -> Result<Vec<Value>, DocumentError> {
    yaml_documents(text, 0)
        .into_iter()
        .filter_map(|d| d.content.transpose())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn yaml(text: &str) -> Vec<Result<Option<Value>, String>> {
        yaml_documents(text, 0)
            .into_iter()
            .map(|d| d.content.map_err(|e| crate::error_chain(&e)))
            .collect()
    }

    #[test]
    fn yaml_scalars_read_as_kubectl_reads_them() {
        let cases = [
            ("0644", json!(420)),
            ("0o644", json!(420)),
            ("0x1F", json!(31)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("+12", json!(12)),
            ("yes", json!(true)),
            ("y", json!(true)),
            ("On", json!(true)),
            ("NO", json!(false)),
            ("off", json!(false)),
            ("~", json!(null)),
            ("'0644'", json!("0644")),
            ("!!str 0644", json!("0644")),
            ("2001-12-14", json!("2001-12-14")),
            ("1:20", json!("1:20")),
        ];
        for (scalar, want) in cases {
            let got = yaml(&format!("a: {scalar}\n"));
            assert_eq!(got, vec![Ok(Some(json!({ "a": want })))], "{scalar}");
        }
    }

    #[test]
    fn documents_split_where_kubectl_splits_them() {
        let text = "# header only\n---\na: 1\n--- # comment\nb: 2\n---\n\n---\nc: |\n  x\n--- {d: 1}\ne: 1\n----\n";
        let docs = yaml(text);
        assert_eq!(docs[0], Ok(None), "comments only");
        assert_eq!(docs[1], Ok(Some(json!({"a": 1}))));
        assert_eq!(docs[2], Ok(Some(json!({"b": 2}))));
        assert_eq!(docs[3], Ok(None), "empty");
        assert_eq!(docs[4], Ok(Some(json!({"c": "x\n"}))));
        for (doc, line) in [(&docs[5], "--- {d: 1}"), (&docs[6], "----")] {
            assert!(
                doc.as_ref().is_err_and(|e| e.contains(line)),
                "kubectl refuses content after `---`: {doc:?}"
            );
        }
        assert_eq!(docs.len(), 7);
    }

    #[test]
    fn spans_cover_each_document_without_its_separators() {
        let text = "a: 1\n---\nb: 2\n";
        let spans: Vec<_> = yaml_documents(text, 0)
            .into_iter()
            .map(|d| d.span)
            .collect();
        assert_eq!(spans, vec![0..5, 9..14]);
        assert_eq!(&text[9..14], "b: 2\n");
    }

    #[test]
    fn formats_follow_the_name_else_the_content() {
        let source = |name: &str, text: &str, format| Source {
            name: name.to_owned(),
            bytes: text.as_bytes().to_vec(),
            format,
            in_directory: false,
        };
        let flow = "{apiVersion: v1, kind: Pod}\n";
        let (format, docs) = documents(&source("pod.yaml", flow, Some(Format::Yaml)));
        assert_eq!(format, Format::Yaml);
        assert_eq!(
            docs[0].content.as_ref().unwrap(),
            &Some(json!({"apiVersion": "v1", "kind": "Pod"}))
        );
        let (format, _) = documents(&source("-", flow, None));
        assert_eq!(format, Format::Yaml, "flow YAML is not JSON");
        let (format, docs) = documents(&source("-", "{\"a\": 1}\n{\"b\": 2}", None));
        assert_eq!(format, Format::Json);
        assert_eq!(docs.len(), 2, "a JSON stream");
        let (_, docs) = documents(&source("x.json", "{\"a\": 1} {", Some(Format::Json)));
        assert!(docs[0].content.is_ok());
        assert!(docs[1].content.is_err());
        let (_, docs) = documents(&source("-", "\u{feff}a: 1\n", None));
        assert_eq!(docs[0].content.as_ref().unwrap(), &Some(json!({"a": 1})));
    }

    #[test]
    fn a_list_without_items_holds_nothing_and_reads_back_as_it_was() {
        let text = "kind: List\nitems:";
        let mut source = Source::new("-", text.as_bytes().to_vec());
        source.format = Some(Format::Yaml);
        let policy = crate::policy::parse(
            b"apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: cluster-wide\ndefaults: {runAsUser: 1}\n",
            std::path::Path::new("p"),
        )
        .unwrap();
        let labels = std::collections::BTreeMap::new();
        let options = super::super::Options {
            namespace: None,
            labels: &labels,
            images: None,
        };
        let run = super::super::run(vec![source], &policy, &options);
        assert_eq!(
            run.sources[0].documents[0].value,
            Some(json!({"kind": "List", "items": null})),
            "the document as read, not with an empty list put in"
        );
        assert_eq!(super::super::render(&run, true), text);
    }

    #[test]
    fn later_duplicate_keys_win() {
        assert_eq!(yaml("a: 1\na: 2\n"), vec![Ok(Some(json!({"a": 2})))]);
    }

    #[test]
    fn lists_hold_their_items() {
        let list = json!({"kind": "List", "items": [{"kind": "Pod"}, {"kind": "Service"}]});
        assert_eq!(objects(list).unwrap().len(), 2);
        let pods = json!({"kind": "PodList", "apiVersion": "v1", "items": [{"kind": "Pod"}]});
        assert_eq!(objects(pods).unwrap().len(), 1);
        assert!(objects(json!(["a"])).is_err());
        assert!(objects(json!({"kind": "List", "items": 3})).is_err());
    }
}
