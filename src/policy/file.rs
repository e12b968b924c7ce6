//! The policy file (`config/policy.yaml`): its YAML shape, and validation into a [`Policy`].
//!
//! Validation happens while deserialising, through newtypes, so every error carries the field path and the
//! line and column where the YAML parser was when it failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, IntoDeserializer};

use super::{Action, Defaults, Field, FsGroupChangePolicy, Id, LabelSelector, Mode, Operator, Policy, Requirement, Rule};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    ReadPolicy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy file {path}")]
    ParsePolicy {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
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
    let file: PolicyFile = serde_yaml::from_slice(text).map_err(|source| PolicyError::ParsePolicy {
        path: path.to_owned(),
        source,
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
                deserializer.deserialize_any(CheckedVisitor::<$ty, $raw>(std::marker::PhantomData))
            }
        }
    };
}

struct CheckedVisitor<T, R>(std::marker::PhantomData<(T, R)>);

impl<T, R> CheckedVisitor<T, R>
where
    T: TryFrom<R>,
    T::Error: std::fmt::Display,
{
    fn check<'de, E: de::Error>(raw: Result<R, E>) -> Result<T, E> {
        T::try_from(raw?).map_err(E::custom)
    }
}

impl<'de, T, R> de::Visitor<'de> for CheckedVisitor<T, R>
where
    T: TryFrom<R>,
    T::Error: std::fmt::Display,
    R: Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<R>().rsplit("::").next().unwrap_or("a value"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Self::check(R::deserialize(v.into_deserializer()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::check(R::deserialize(v.into_deserializer()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::check(R::deserialize(v.into_deserializer()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Self::check(R::deserialize(v.into_deserializer()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Self::check(R::deserialize(v.into_deserializer()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Self::check(R::deserialize(().into_deserializer()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        Self::check(R::deserialize(de::value::SeqAccessDeserializer::new(seq)))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        Self::check(R::deserialize(de::value::MapAccessDeserializer::new(map)))
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
    defaults: Values,
    #[serde(default)]
    namespaces: Vec<RuleFile>,
}

impl PolicyFile {
    fn into_policy(self) -> Policy {
        Policy {
            mode: self.mode,
            exempt_namespaces: self.exempt_namespaces.into_iter().map(|n| n.0).collect(),
            defaults: self.defaults.into_defaults(),
            rules: self.namespaces.into_iter().map(|r| r.0).collect(),
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

/// The fields of `defaults:` and of a rule's `set:`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Values {
    #[serde(default)]
    run_as_user: Option<NonRootId>,
    #[serde(default)]
    run_as_group: Option<NonRootId>,
    #[serde(default)]
    fs_group: Option<AnyId>,
    #[serde(default)]
    fs_group_change_policy: Option<FsGroupChangePolicy>,
    #[serde(default)]
    allow_privilege_escalation: Option<NoEscalation>,
}

impl Values {
    fn into_defaults(self) -> Defaults {
        Defaults {
            run_as_user: self.run_as_user.map(|i| i.0),
            run_as_group: self.run_as_group.map(|i| i.0),
            fs_group: self.fs_group.map(|i| i.0),
            fs_group_change_policy: self.fs_group_change_policy,
            disallow_privilege_escalation: self.allow_privilege_escalation.is_some(),
        }
    }
}

/// An ID in 0..=2147483647.
struct AnyId(Id);
checked_from!(AnyId, i64);

impl TryFrom<i64> for AnyId {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        Id::new(value)
            .map(AnyId)
            .ok_or_else(|| format!("{value} is outside the valid ID range 0..={}", Id::MAX))
    }
}

/// An ID in 1..=2147483647: root (0) is not a secure default for runAsUser or runAsGroup.
struct NonRootId(Id);
checked_from!(NonRootId, i64);

impl TryFrom<i64> for NonRootId {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        if value == 0 {
            return Err("0 is root, which is not a secure default; choose a non-zero ID".to_owned());
        }
        AnyId::try_from(value).map(|id| NonRootId(id.0))
    }
}

/// `allowPrivilegeEscalation` may only be defaulted to `false`.
struct NoEscalation;
checked_from!(NoEscalation, bool);

impl TryFrom<bool> for NoEscalation {
    type Error = &'static str;
    fn try_from(value: bool) -> Result<Self, &'static str> {
        if value {
            Err("true is not a secure default; use false, or leave the field out to not default it")
        } else {
            Ok(NoEscalation)
        }
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
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
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
    skip: Vec<Field>,
    #[serde(default)]
    exempt: bool,
}

struct RuleFile(Rule);
checked_from!(RuleFile, RuleFields);

impl TryFrom<RuleFields> for RuleFile {
    type Error = String;
    fn try_from(raw: RuleFields) -> Result<Self, String> {
        let MatchFile { names, labels } = raw.match_;
        if names.is_none() && labels.is_none() {
            return Err("match needs `names`, `labels` or both; to change every namespace, edit `defaults`".to_owned());
        }
        let names = names.map(|n| n.into_iter().map(|n| n.0).collect::<BTreeSet<_>>());
        if names.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err("match.names is empty, so the entry would never apply".to_owned());
        }
        let set = raw.set.map(Values::into_defaults).unwrap_or_default();
        let skip: BTreeSet<Field> = raw.skip.into_iter().collect();
        let action = if raw.exempt {
            if !set.is_empty() || !skip.is_empty() {
                return Err("an entry with `exempt: true` cannot also have `set` or `skip`".to_owned());
            }
            Action::Exempt
        } else {
            if let Some(field) = skip.iter().find(|f| set.names(**f)) {
                return Err(format!("{} is both in `set` and in `skip`", field.as_str()));
            }
            if set.is_empty() && skip.is_empty() {
                return Err("the entry has none of `set`, `skip` or `exempt: true`, so it does nothing".to_owned());
            }
            Action::Adjust { set, skip }
        };
        Ok(RuleFile(Rule {
            names,
            labels: labels.map(|l| l.0),
            action,
        }))
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

struct SelectorFile(LabelSelector);
checked_from!(SelectorFile, SelectorFields);

impl TryFrom<SelectorFields> for SelectorFile {
    type Error = String;
    fn try_from(raw: SelectorFields) -> Result<Self, String> {
        if raw.match_labels.is_empty() && raw.match_expressions.is_empty() {
            return Err("labels needs matchLabels or matchExpressions; an empty selector would match every namespace".to_owned());
        }
        Ok(SelectorFile(LabelSelector {
            match_labels: raw.match_labels,
            match_expressions: raw.match_expressions.into_iter().map(|e| e.0).collect(),
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionFields {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

struct ExpressionFile(Requirement);
checked_from!(ExpressionFile, ExpressionFields);

impl TryFrom<ExpressionFields> for ExpressionFile {
    type Error = String;
    fn try_from(raw: ExpressionFields) -> Result<Self, String> {
        match raw.operator {
            Operator::In | Operator::NotIn if raw.values.is_empty() => {
                return Err(format!("operator {:?} on key {:?} needs at least one value", raw.operator, raw.key));
            }
            Operator::Exists | Operator::DoesNotExist if !raw.values.is_empty() => {
                return Err(format!("operator {:?} on key {:?} takes no values", raw.operator, raw.key));
            }
            _ => {}
        }
        if raw.key.is_empty() {
            return Err("a match expression needs a non-empty key".to_owned());
        }
        Ok(ExpressionFile(Requirement {
            key: raw.key,
            operator: raw.operator,
            values: raw.values.into_iter().collect(),
        }))
    }
}
