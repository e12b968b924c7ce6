//! The policy file (`config/policy.yaml`): its YAML shape, and validation into a [`Policy`].
//!
//! Validation happens while deserialising, through newtypes, so every error carries the field path (kept by
//! serde_path_to_error) and the line and column where the YAML parser (serde-saphyr) was when it failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, IntoDeserializer};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::Selector;

use super::{Action, Mode, Policy, Profile, Rule};
use crate::fields::{Defaults, Field};
use crate::images::ImagesPolicy;

/// Why a policy file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}")]
    ReadPolicy {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy; the message names the field and line.
    #[error("invalid policy file {path}: {message}")]
    ParsePolicy {
        /// The file.
        path: PathBuf,
        /// The field's path, what is wrong with it, and the line and column.
        message: String,
    },
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read(path).map_err(|source| PolicyError::ReadPolicy {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates policy text; `path` is only used to name the file in errors.
pub fn parse(text: &[u8], path: &Path) -> Result<Policy, PolicyError> {
    // serde_path_to_error follows the path; serde-saphyr gives the line and column where it stopped.
    let mut field = String::new();
    let file = serde_saphyr::with_deserializer_from_slice(text, |de| {
        serde_path_to_error::deserialize::<_, PolicyFile>(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
        let what = e.render_with_options(options);
        let what = what.lines().next().unwrap_or_default();
        let message = match field.as_str() {
            "" | "." => what.to_owned(),
            field => format!("{field}: {what}"),
        };
        PolicyError::ParsePolicy {
            path: path.to_owned(),
            message,
        }
    })?;
    Ok(file.into_policy())
}

/// Implements `Deserialize` for a validated newtype through `TryFrom<$raw>`, raising the validation error from
/// inside the visitor of the value itself. (`#[serde(try_from)]` raises it one level up, so the YAML parser
/// would report the parent's path and line instead of the offending field's.)
macro_rules! checked_from {
    ($ty:ty, $raw:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any($crate::policy::file::CheckedVisitor::new(
                    |raw: $raw| <$ty>::try_from(raw).map_err(|e| e.to_string()),
                ))
            }
        }
    };
}

pub(crate) use checked_from;

/// Deserialises an `R` from whatever the YAML holds, then checks it into a `T` within the same visit.
pub(crate) struct CheckedVisitor<R, T, F> {
    check: F,
    types: std::marker::PhantomData<fn(R) -> T>,
}

impl<R, T, F: FnOnce(R) -> Result<T, String>> CheckedVisitor<R, T, F> {
    pub(crate) fn new(check: F) -> Self {
        Self {
            check,
            types: std::marker::PhantomData,
        }
    }

    fn check<E: de::Error>(self, raw: Result<R, E>) -> Result<T, E> {
        (self.check)(raw?).map_err(E::custom)
    }
}

impl<'de, R, T, F> de::Visitor<'de> for CheckedVisitor<R, T, F>
where
    R: Deserialize<'de>,
    F: FnOnce(R) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            std::any::type_name::<R>()
                .rsplit("::")
                .next()
                .unwrap_or("a value"),
        )
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.check(R::deserialize(v.into_deserializer()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.check(R::deserialize(v.into_deserializer()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.check(R::deserialize(v.into_deserializer()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.check(R::deserialize(v.into_deserializer()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.check(R::deserialize(v.into_deserializer()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.check(R::deserialize(().into_deserializer()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        self.check(R::deserialize(de::value::SeqAccessDeserializer::new(seq)))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        self.check(R::deserialize(de::value::MapAccessDeserializer::new(map)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[allow(dead_code)]
    api_version: ApiVersion,
    #[allow(dead_code)]
    kind: Kind,
    mode: Mode,
    #[serde(default)]
    exempt_namespaces: Vec<NamespaceName>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    follow_pod_security_labels: bool,
    #[serde(default)]
    pod_exceptions: Vec<FieldName>,
    #[serde(default)]
    defaults: Values,
    #[serde(default)]
    namespaces: Vec<RuleFile>,
    #[serde(default)]
    images: Option<ImagesPolicy>,
}

impl PolicyFile {
    fn into_policy(self) -> Policy {
        // The profile's fields come first; `defaults:` may only name the same values for them (each of those
        // fields accepts just the one secure value), and adds others.
        let mut defaults = self.profile.map(Profile::defaults).unwrap_or_default();
        defaults.overlay(&self.defaults.into_defaults());
        Policy {
            mode: self.mode,
            exempt_namespaces: self.exempt_namespaces.into_iter().map(|n| n.0).collect(),
            defaults,
            rules: self.namespaces.into_iter().map(|r| r.0).collect(),
            profile: self.profile,
            follow_pod_security_labels: self.follow_pod_security_labels,
            pod_exceptions: self.pod_exceptions.into_iter().map(|f| f.0).collect(),
            images: self.images,
        }
    }
}

#[derive(Deserialize)]
enum ApiVersion {
    #[serde(rename = "secure-defaults.io/v1alpha1")]
    V1Alpha1,
}

#[derive(Deserialize)]
enum Kind {
    Policy,
}

/// The fields of `defaults:` and of a rule's `set:`: a map from field names of the table to values each field
/// checks itself, so a field added to the table is read here without a change.
#[derive(Default)]
struct Values(Defaults);

impl Values {
    fn into_defaults(self) -> Defaults {
        self.0
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> de::Visitor<'de> for ValuesVisitor {
            type Value = Values;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a map of fields: {}", Field::names())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
                let mut values = Defaults::default();
                while let Some(name) = map.next_key::<String>()? {
                    let Some(field) = Field::by_name(&name) else {
                        return Err(de::Error::custom(format!(
                            "unknown field `{name}`, expected one of {}",
                            Field::names()
                        )));
                    };
                    if values.get(field).is_some() {
                        return Err(de::Error::custom(format!("duplicate field `{name}`")));
                    }
                    // Checked inside the value's own deserialisation, so the error names its path and line.
                    let value = map.next_value_seed(FieldValue(field))?;
                    values.set(field, value);
                }
                Ok(Values(values))
            }
        }
        deserializer.deserialize_map(ValuesVisitor)
    }
}

/// One field's value, checked by the field.
struct FieldValue(Field);

impl<'de> de::DeserializeSeed<'de> for FieldValue {
    type Value = serde_json::Value;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let field = self.0;
        deserializer.deserialize_any(CheckedVisitor::new(move |raw: serde_json::Value| {
            field.check(&raw).map(|()| raw)
        }))
    }
}

/// A namespace name: a DNS-1123 label.
struct NamespaceName(String);
checked_from!(NamespaceName, String);

impl TryFrom<String> for NamespaceName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        if valid {
            Ok(NamespaceName(name))
        } else {
            Err(format!(
                "{name:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63 characters)"
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFields {
    #[serde(rename = "match")]
    match_: MatchFile,
    #[serde(default)]
    set: Option<Values>,
    #[serde(default)]
    skip: Vec<FieldName>,
    #[serde(default)]
    exempt: bool,
    #[serde(default)]
    report: bool,
    #[serde(default)]
    pod_exceptions: Vec<FieldName>,
}

struct RuleFile(Rule);
checked_from!(RuleFile, RuleFields);

impl TryFrom<RuleFields> for RuleFile {
    type Error = String;
    fn try_from(raw: RuleFields) -> Result<Self, String> {
        let MatchFile { names, labels } = raw.match_;
        if names.is_none() && labels.is_none() {
            return Err(
                "match needs `names`, `labels` or both; to change every namespace, edit `defaults`"
                    .to_owned(),
            );
        }
        let names = names.map(|n| n.into_iter().map(|n| n.0).collect::<BTreeSet<_>>());
        if names.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err("match.names is empty, so the entry would never apply".to_owned());
        }
        let set = raw.set.map(Values::into_defaults).unwrap_or_default();
        let skip: BTreeSet<Field> = raw.skip.into_iter().map(|f| f.0).collect();
        let exceptions: BTreeSet<Field> = raw.pod_exceptions.into_iter().map(|f| f.0).collect();
        let action = if raw.exempt {
            if !set.is_empty() || !skip.is_empty() || raw.report || !exceptions.is_empty() {
                return Err(
                    "an entry with `exempt: true` cannot also have `set`, `skip`, `report` or `podExceptions`"
                        .to_owned(),
                );
            }
            Action::Exempt
        } else {
            if let Some(field) = skip.iter().find(|f| set.get(**f).is_some()) {
                return Err(format!("{field} is both in `set` and in `skip`"));
            }
            if set.is_empty() && skip.is_empty() && !raw.report && exceptions.is_empty() {
                return Err(
                    "the entry has none of `set`, `skip`, `report: true`, `podExceptions` or `exempt: true`, so it does nothing"
                        .to_owned(),
                );
            }
            Action::Adjust {
                set,
                skip,
                report: raw.report,
                exceptions,
            }
        };
        Ok(RuleFile(Rule {
            names,
            labels: labels.map(|l| l.0),
            action,
        }))
    }
}

/// A field named in a `skip:` list.
struct FieldName(Field);
checked_from!(FieldName, String);

impl TryFrom<String> for FieldName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Field::by_name(&name).map(FieldName).ok_or_else(|| {
            format!(
                "unknown variant `{name}`, expected one of {}",
                Field::names()
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    #[serde(default)]
    names: Option<Vec<NamespaceName>>,
    #[serde(default)]
    labels: Option<SelectorFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorFields {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<ExpressionFile>,
}

struct SelectorFile(Selector);
checked_from!(SelectorFile, SelectorFields);

impl TryFrom<SelectorFields> for SelectorFile {
    type Error = String;
    fn try_from(raw: SelectorFields) -> Result<Self, String> {
        if raw.match_labels.is_empty() && raw.match_expressions.is_empty() {
            return Err("labels needs matchLabels or matchExpressions; an empty selector would match every namespace".to_owned());
        }
        let selector = LabelSelector {
            match_labels: Some(raw.match_labels),
            match_expressions: Some(raw.match_expressions.into_iter().map(|e| e.0).collect()),
        };
        Selector::try_from(selector)
            .map(SelectorFile)
            .map_err(|e| e.to_string())
    }
}

/// The operators of a label selector expression, read as an enum so that a typo is refused at its own line.
#[derive(Clone, Copy, Debug, Deserialize)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionFields {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

struct ExpressionFile(LabelSelectorRequirement);
checked_from!(ExpressionFile, ExpressionFields);

impl TryFrom<ExpressionFields> for ExpressionFile {
    type Error = String;
    fn try_from(raw: ExpressionFields) -> Result<Self, String> {
        match raw.operator {
            Operator::In | Operator::NotIn if raw.values.is_empty() => {
                return Err(format!(
                    "operator {:?} on key {:?} needs at least one value",
                    raw.operator, raw.key
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !raw.values.is_empty() => {
                return Err(format!(
                    "operator {:?} on key {:?} takes no values",
                    raw.operator, raw.key
                ));
            }
            _ => {}
        }
        if raw.key.is_empty() {
            return Err("a match expression needs a non-empty key".to_owned());
        }
        Ok(ExpressionFile(LabelSelectorRequirement {
            key: raw.key,
            operator: format!("{:?}", raw.operator),
            values: Some(raw.values),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\n";

    fn error_of(body: &str) -> String {
        let text = format!("{HEAD}{body}");
        let err = parse(text.as_bytes(), Path::new("p.yaml")).expect_err(body);
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        message
    }

    #[derive(serde::Deserialize)]
    struct Refused {
        body: String,
        error: String,
    }

    #[derive(serde::Deserialize)]
    struct Cases {
        refused: Vec<Refused>,
    }

    #[test]
    fn errors_name_file_field_and_line() {
        let cases: Cases =
            serde_saphyr::from_str(include_str!("../../tests/cases/policies.yaml")).unwrap();
        for Refused { body, error } in cases.refused {
            let message = error_of(&body);
            assert!(
                message.starts_with("invalid policy file p.yaml: "),
                "{message}"
            );
            assert!(
                message.contains(&error),
                "{body:?}: {message:?} lacks {error:?}"
            );
            assert!(
                message.contains(" at line "),
                "{body:?}: {message:?} has no line"
            );
        }
    }

    #[test]
    fn head_is_checked() {
        for (text, words) in [
            (
                "apiVersion: v1\nkind: Policy\nmode: opt-in\n",
                "apiVersion: unknown variant `v1`",
            ),
            (
                "apiVersion: secure-defaults.io/v1alpha1\nkind: Pod\nmode: opt-in\n",
                "kind: unknown variant `Pod`",
            ),
            (
                "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\n",
                "missing field `mode`",
            ),
            ("mode: [\n", "invalid policy file"),
            ("", "invalid policy file"),
        ] {
            let err = parse(text.as_bytes(), Path::new("p.yaml")).expect_err(text);
            let message = format!(
                "{err}: {}",
                std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            assert!(message.contains(words), "{text:?}: {message}");
        }
    }

    #[test]
    fn full_example_parses() {
        let text = format!(
            "{HEAD}exemptNamespaces: [kube-system, kube-public, kube-node-lease]
defaults:
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  allowPrivilegeEscalation: false
namespaces:
  - match:
      names: [payments, billing]
      labels:
        matchLabels: {{team: data}}
        matchExpressions: [{{key: tier, operator: In, values: [web]}}]
    set: {{runAsUser: 10001, fsGroup: 10001}}
    skip: [fsGroupChangePolicy]
  - match: {{names: [legacy-batch]}}
    exempt: true
"
        );
        let policy = parse(text.as_bytes(), Path::new("p.yaml")).unwrap();
        assert_eq!(policy.rules.len(), 2);
        let field = |name| Field::by_name(name).unwrap();
        assert_eq!(
            policy.defaults.get(field("runAsUser")),
            Some(&serde_json::json!(65532))
        );
        assert_eq!(
            policy.defaults.get(field("allowPrivilegeEscalation")),
            Some(&serde_json::json!(false))
        );
        assert_eq!(policy.rules[1].action, Action::Exempt);
    }

    #[test]
    fn shipped_policy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.yaml");
        let policy = load(&path).unwrap();
        assert_eq!(policy.mode, Mode::OptIn);
        assert!(!policy.defaults.is_empty());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        assert!(matches!(err, PolicyError::ReadPolicy { .. }));
        assert_eq!(
            err.to_string(),
            "cannot read policy file /nonexistent/policy.yaml"
        );
    }
}
