//! JSON Pointers (RFC 6901) built from escaped tokens, and the `add`-only JSON Patch (RFC 6902) operations the engine emits.

use serde::Serialize;
use serde::ser::SerializeStruct;
use serde_json::Value;

/// A JSON Pointer assembled token by token, so that `~` and `/` inside a token are always escaped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pointer(String);

impl Pointer {
    /// The pointer to the whole document.
    pub fn root() -> Self {
        // Room for the deepest path the engine writes, `/spec/initContainers/N/securityContext/...`, so a
        // pointer is allocated once.
        Self(String::with_capacity(72))
    }

    /// Appends an object member name, escaping `~` as `~0` and `/` as `~1`.
    #[must_use]
    pub fn key(mut self, token: &str) -> Self {
        self.0.reserve(token.len() + 1);
        self.0.push('/');
        // A byte scan: the tokens are short, and `~` and `/` are ASCII.
        if !token.bytes().any(|b| b == b'~' || b == b'/') {
            self.0.push_str(token);
            return self;
        }
        for c in token.chars() {
            match c {
                '~' => self.0.push_str("~0"),
                '/' => self.0.push_str("~1"),
                c => self.0.push(c),
            }
        }
        self
    }

    /// Appends an array index.
    #[must_use]
    pub fn index(mut self, index: usize) -> Self {
        self.0.push('/');
        crate::json::push_decimal(&mut self.0, index as u64, 1);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `add` operation. The engine never emits `remove` or `replace`: it only fills in what is absent.
#[derive(Clone, Debug, PartialEq)]
pub struct Add {
    pub path: Pointer,
    pub value: Value,
}

impl Add {
    pub fn new(path: Pointer, value: impl Into<Value>) -> Self {
        Self {
            path,
            value: value.into(),
        }
    }
}

impl Serialize for Add {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut op = serializer.serialize_struct("Add", 3)?;
        op.serialize_field("op", "add")?;
        op.serialize_field("path", self.path.as_str())?;
        op.serialize_field("value", &self.value)?;
        op.end()
    }
}

/// Serialises operations as an RFC 6902 document (a JSON array). Written out by hand into one buffer of the
/// right size: this runs for every pod.
pub fn to_json(ops: &[Add]) -> Vec<u8> {
    let size: usize = ops.iter().map(|op| op.path.0.len() + 64).sum();
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"op\":\"add\",\"path\":\"");
        crate::json::escape(op.path.as_str(), |piece| {
            out.extend_from_slice(piece.as_bytes())
        });
        out.extend_from_slice(b"\",\"value\":");
        // Numbers, bools and maps with string keys into memory: cannot fail.
        let _ = serde_json::to_writer(&mut out, &op.value);
        out.push(b'}');
    }
    out.push(b']');
    out
}

/// Applies operations to a document, as the API server would. Used by the offline preview and by tests.
pub fn apply(doc: &mut Value, ops: &[Add]) -> Result<(), json_patch::PatchError> {
    let patch: json_patch::Patch = serde_json::from_slice(&to_json(ops)).unwrap_or_default();
    json_patch::patch(doc, &patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_same_document_as_serde() {
        let ops = vec![
            Add::new(Pointer::root().key("spec").key("a\"b\\c"), 1),
            Add::new(
                Pointer::root().key("m").index(3),
                serde_json::json!({"x": [true, null, "é"]}),
            ),
        ];
        let ours: Value = serde_json::from_slice(&to_json(&ops)).unwrap();
        assert_eq!(ours, serde_json::to_value(&ops).unwrap());
        assert_eq!(to_json(&[]), b"[]");
    }

    #[test]
    fn escapes_tokens() {
        let cases = [
            ("plain", "/plain"),
            (
                "secure-defaults.io/defaulted",
                "/secure-defaults.io~1defaulted",
            ),
            ("a~b", "/a~0b"),
            ("~/", "/~0~1"),
            ("~1", "/~01"),
            ("", "/"),
        ];
        for (token, want) in cases {
            assert_eq!(Pointer::root().key(token).as_str(), want, "token {token:?}");
        }
        assert_eq!(
            Pointer::root()
                .key("spec")
                .key("containers")
                .index(12)
                .as_str(),
            "/spec/containers/12"
        );
    }

    #[test]
    fn serialises_as_rfc6902() {
        let ops = vec![Add::new(Pointer::root().key("a/b"), false)];
        assert_eq!(
            String::from_utf8(to_json(&ops)).unwrap(),
            r#"[{"op":"add","path":"/a~1b","value":false}]"#
        );
    }

    #[test]
    fn applies_escaped_paths() {
        let mut doc = serde_json::json!({"m": {"x~y/z": 1}});
        apply(
            &mut doc,
            &[Add::new(Pointer::root().key("m").key("a~b/c"), 2)],
        )
        .unwrap();
        assert_eq!(doc, serde_json::json!({"m": {"x~y/z": 1, "a~b/c": 2}}));
    }
}
