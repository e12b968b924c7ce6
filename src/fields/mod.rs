//! The fields secure-defaults can fill in, as one table: each field is one file here stating its [`FieldDef`], and
//! everything else (the policy parser, `check`, the engine, the annotation, metrics, the property tests, the
//! generated files) iterates [`Field::all`].
//!
//! A field's value is kept as the JSON value the patch adds, checked once when the policy is read.
//!
//! # Adding a field
//!
//! What a person writes:
//! - the field's file here: its name, level, path, value check, examples (valid ones and one the policy refuses),
//!   and, as it needs them, its restricted value, shipped value, the README's "when" sentence and restricted
//!   row, its guard, the conditions it is left out under ([`ContainerCondition`], [`PodCondition`]) and which
//!   backstop checks it ([`Backstop`]);
//! - its `mod` line and its entry in [`TABLE`] (and a handle such as [`RUN_AS_USER`] if another field's guard
//!   reads it).
//!
//! What is then generated or follows by itself: `make generate` writes the README's field and restricted tables,
//! the `defaults:` of every shipped policy (where the field has a shipped value) and both backstops' CEL (the
//! kustomize components and the chart), then `install.yaml`; `cargo test` fails while any of them is stale. The
//! policy parser, `check`, the patch, the annotation, the metrics' field label and the property tests (which
//! generate the field as explicit from its examples) take it from the table without a change.

mod allow_privilege_escalation;
mod condition;
mod drop_capabilities;
mod fs_group;
mod fs_group_change_policy;
mod run_as_group;
mod run_as_non_root;
mod run_as_user;
mod seccomp_profile;

use std::fmt;

use serde_json::{Map, Value};

pub use condition::{Backstop, ContainerCondition, PodCondition};

use crate::pod::{Annotations, Container, Spec};

/// Where a field lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `spec.securityContext`.
    Pod,
    /// Each container's `securityContext` (containers, init containers, new ephemeral containers).
    Container,
}

/// One defaultable field: its name, where it lives, what values a policy may give it, and the guards that keep
/// it off pods it would break. Each field's file states one, from [`FieldDef::BASE`] for what it leaves out.
pub struct FieldDef {
    /// The key in the policy (`defaults:`, `set:`, `skip:`), the annotation, `check` and the metrics label.
    name: &'static str,
    /// Pod or container level.
    level: Level,
    /// The keys below the `securityContext` it sits at, where it is nested (else its name).
    path: Option<&'static [&'static str]>,
    /// Checks a value from the policy file; the reason is shown with the field's path and line.
    check: fn(&Value) -> Result<(), String>,
    /// Valid policy values, then one the policy must refuse: used by `check`'s tests and the property tests.
    examples: fn() -> (Vec<Value>, Value),
    /// The value Pod Security "restricted" needs, for fields it needs: what `profile: restricted` and
    /// `followPodSecurityLabels` turn on.
    restricted: Option<fn() -> Value>,
    /// The value of the shipped policy (`config/policy.yaml` and the manifests'), if it defaults the field.
    shipped: Option<fn() -> Value>,
    /// When the field is set, for the README's table: the conditions besides "the pod states none".
    when: &'static str,
    /// For a field "restricted" needs: what it requires, and what defaulting cannot fix (warned about).
    restricted_doc: Option<(&'static str, &'static str)>,
    /// Pod level: whether the field may be set on this pod, with the warnings to give either way.
    pod_guard: fn(&PodState<'_, '_>) -> Guard,
    /// Container level, where none of [`FieldDef::container_skips`] holds: whether the field may be set on this
    /// container of this pod (with its pod-level fields decided), with the warnings to give either way; each
    /// names the container.
    container_guard: fn(&PodState<'_, '_>, &Container<'_>) -> Guard,
    /// Container level: the conditions under which the field is left out of a container, for its guard and the
    /// backstop's CEL alike.
    container_skips: &'static [ContainerCondition],
    /// Pod level: the conditions under which the backstop lets a pod without the field pass (the field's guard
    /// leaves it out there, saying why).
    pod_skips: &'static [PodCondition],
    /// Which backstop checks that the field was set, if one does.
    backstop: Option<Backstop>,
    /// The value as the annotation and `check` show it.
    show: fn(&Value) -> String,
}

impl FieldDef {
    /// What a field leaves out: no restricted or shipped value, no guard, no backstop, values shown as JSON
    /// (strings bare). Every field states its own name, level, check, examples and "when" (the table's tests
    /// fail on an empty name or "when", and on a check that accepts its counterexample).
    const BASE: FieldDef = FieldDef {
        name: "",
        level: Level::Pod,
        path: None,
        check: |_| Ok(()),
        examples: || (Vec::new(), Value::Null),
        restricted: None,
        shipped: None,
        when: "",
        restricted_doc: None,
        pod_guard: |_| Guard::Set(Vec::new()),
        container_guard: |_, _| Guard::Set(Vec::new()),
        container_skips: &[],
        pod_skips: &[],
        backstop: None,
        show: |value| match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    };
}

/// A guard's answer; each string is a warning, naming the container where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Set the field, and say these things about it.
    Set(Vec<String>),
    /// Do not set it, for these reasons (none: a silent skip).
    Skip(Vec<String>),
}

/// The table, in the order fields are decided, shown and patched. A pod-level field may read the fields before it
/// (`runAsGroup` reads `runAsUser`).
static TABLE: &[FieldDef] = &[
    run_as_user::FIELD,
    run_as_group::FIELD,
    fs_group::FIELD,
    fs_group_change_policy::FIELD,
    run_as_non_root::FIELD,
    seccomp_profile::FIELD,
    allow_privilege_escalation::FIELD,
    drop_capabilities::FIELD,
];

/// How many fields there are.
pub const COUNT: usize = TABLE.len();

/// Handles of the fields other fields' guards read, by their place in [`TABLE`] (a unit test checks each).
pub const RUN_AS_USER: Field = Field(0);
/// See [`RUN_AS_USER`].
pub const FS_GROUP: Field = Field(2);

/// A field of the table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Field(usize);

impl Field {
    /// Every field, in table order.
    pub fn all() -> impl Iterator<Item = Field> {
        (0..COUNT).map(Field)
    }

    /// The field of a policy key.
    pub fn by_name(name: &str) -> Option<Field> {
        Field::all().find(|f| f.name() == name)
    }

    /// Its place in the table, for arrays indexed by field.
    pub fn index(self) -> usize {
        self.0
    }

    fn def(self) -> &'static FieldDef {
        &TABLE[self.0]
    }

    /// See [`FieldDef::name`].
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// See [`FieldDef::level`].
    pub fn level(self) -> Level {
        self.def().level
    }

    /// See [`FieldDef::path`].
    pub fn path(self) -> Vec<&'static str> {
        self.def()
            .path
            .map_or_else(|| vec![self.name()], <[_]>::to_vec)
    }

    /// See [`FieldDef::restricted`].
    pub fn restricted(self) -> Option<Value> {
        self.def().restricted.map(|value| value())
    }

    /// See [`FieldDef::check`].
    pub fn check(self, value: &Value) -> Result<(), String> {
        (self.def().check)(value)
    }

    /// See [`FieldDef::examples`].
    pub fn examples(self) -> (Vec<Value>, Value) {
        (self.def().examples)()
    }

    /// See [`FieldDef::show`].
    pub fn show(self, value: &Value) -> String {
        (self.def().show)(value)
    }

    /// See [`FieldDef::shipped`].
    pub fn shipped(self) -> Option<Value> {
        self.def().shipped.map(|value| value())
    }

    /// See [`FieldDef::when`].
    pub fn when(self) -> &'static str {
        self.def().when
    }

    /// See [`FieldDef::container_skips`].
    pub fn container_skips(self) -> &'static [ContainerCondition] {
        self.def().container_skips
    }

    /// See [`FieldDef::pod_skips`].
    pub fn pod_skips(self) -> &'static [PodCondition] {
        self.def().pod_skips
    }

    /// See [`FieldDef::backstop`].
    pub fn backstop(self) -> Option<Backstop> {
        self.def().backstop
    }

    /// See [`FieldDef::restricted_doc`].
    pub fn restricted_doc(self) -> Option<(&'static str, &'static str)> {
        self.def().restricted_doc
    }

    pub(crate) fn pod_guard(self, pod: &PodState<'_, '_>) -> Guard {
        (self.def().pod_guard)(pod)
    }

    pub(crate) fn container_guard(
        self,
        pod: &PodState<'_, '_>,
        container: &Container<'_>,
    ) -> Guard {
        match self.container_skips().iter().find(|c| c.holds(container)) {
            Some(condition) => Guard::Skip(vec![condition.reason(container)]),
            None => (self.def().container_guard)(pod, container),
        }
    }

    /// The comma-separated list of every field's name, for error messages.
    pub fn names() -> String {
        Field::all().map(Field::name).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the value at `path` below `object` counts as stated. Missing or `null` is absent; a non-object on the
/// way down counts as stated, so nothing is ever added beneath a value the pod sets.
pub fn stated(object: Option<&Map<String, Value>>, path: &[&str]) -> bool {
    let mut current = object;
    for (i, key) in path.iter().enumerate() {
        let Some(map) = current else { return false };
        match map.get(*key) {
            None | Some(Value::Null) => return false,
            Some(Value::Object(inner)) if i + 1 < path.len() => current = Some(inner),
            Some(_) => return true,
        }
    }
    true
}

/// The values to fill in, one slot per field; `None` means "do not default this field". Boxed, so a decision
/// that carries it stays small.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Defaults(Box<[Option<Value>; COUNT]>);

impl Defaults {
    /// The value for `field`, if it is defaulted.
    pub fn get(&self, field: Field) -> Option<&Value> {
        self.0[field.0].as_ref()
    }

    /// Sets a value that [`Field::check`] accepted.
    pub fn set(&mut self, field: Field, value: Value) {
        self.0[field.0] = Some(value);
    }

    /// Stops defaulting `field`.
    pub fn clear(&mut self, field: Field) {
        self.0[field.0] = None;
    }

    /// True when no field is defaulted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// The defaulted fields and their values, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Field, &Value)> {
        Field::all().filter_map(|f| self.get(f).map(|v| (f, v)))
    }

    /// Overlays the fields `other` sets onto `self` (later policy entries win).
    pub fn overlay(&mut self, other: &Defaults) {
        for (field, value) in other.iter() {
            self.set(field, value.clone());
        }
    }
}

impl fmt::Debug for Defaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Defaults({self})")
    }
}

impl fmt::Display for Defaults {
    /// `runAsUser=65532,fsGroup=65532,allowPrivilegeEscalation=false`, or `nothing`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let mut out = String::new();
        for (field, value) in self.iter() {
            push_item(&mut out, field, value, &[], Style::Compact);
        }
        f.write_str(&out)
    }
}

/// One field set on a pod: its value, and for a container-level field the containers that got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// The field.
    pub field: Field,
    /// The value added.
    pub value: Value,
    /// The containers that got it (container-level fields only).
    pub containers: Vec<String>,
}

/// A container's user (and group) stated from its image's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    /// The container.
    pub container: String,
    /// Its `runAsUser`.
    pub uid: Value,
    /// Its `runAsGroup`, where the image gives one and the container states none.
    pub gid: Option<Value>,
}

/// What was set on one pod, in table order (then the users from images): for its annotation, the audit log, logs
/// and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied(Vec<Set>, Vec<ImageSet>);

impl Applied {
    /// True when nothing was set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_empty()
    }

    /// The users stated from images, container by container.
    pub fn images(&self) -> &[ImageSet] {
        &self.1
    }

    /// Records a container's user from its image.
    pub(crate) fn image(&mut self, set: ImageSet) {
        self.1.push(set);
    }

    /// What was set, field by field.
    pub fn sets(&self) -> &[Set] {
        &self.0
    }

    /// The fields that were set, each once.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.0.iter().map(|s| s.field)
    }

    /// The value set for `field`, if it was.
    pub fn get(&self, field: Field) -> Option<&Value> {
        self.0.iter().find(|s| s.field == field).map(|s| &s.value)
    }

    /// Records a pod-level field.
    pub fn pod(&mut self, field: Field, value: Value) {
        self.insert(Set {
            field,
            value,
            containers: Vec::new(),
        });
    }

    /// Records a container-level field on one more container.
    pub(crate) fn container(&mut self, field: Field, value: &Value, name: &str) {
        match self.0.iter_mut().find(|s| s.field == field) {
            Some(set) => set.containers.push(name.to_owned()),
            None => self.insert(Set {
                field,
                value: value.clone(),
                containers: vec![name.to_owned()],
            }),
        }
    }

    fn insert(&mut self, set: Set) {
        let at = self.0.partition_point(|s| s.field < set.field);
        self.0.insert(at, set);
    }

    /// `runAsUser=65532,fsGroup=65532,allowPrivilegeEscalation=false(app,init-db)`, or empty: the annotation's
    /// and the audit log's form.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for set in &self.0 {
            push_item(
                &mut out,
                set.field,
                &set.value,
                &set.containers,
                Style::Compact,
            );
        }
        push_images(&mut out, &self.1, Style::Compact);
        out
    }

    /// `runAsUser=65532, allowPrivilegeEscalation=false (app, init-db)`: the same, for people to read.
    pub fn readable(&self) -> String {
        let mut out = String::new();
        for set in &self.0 {
            push_item(
                &mut out,
                set.field,
                &set.value,
                &set.containers,
                Style::Readable,
            );
        }
        push_images(&mut out, &self.1, Style::Readable);
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Compact,
    Readable,
}

/// The one formatter of `name=value` items, shared by the policy's description, the pod's annotation and the
/// report-mode warning.
fn push_item(out: &mut String, field: Field, value: &Value, containers: &[String], style: Style) {
    let separator = match style {
        Style::Compact => ",",
        Style::Readable => ", ",
    };
    if !out.is_empty() {
        out.push_str(separator);
    }
    out.push_str(field.name());
    out.push('=');
    out.push_str(&field.show(value));
    if !containers.is_empty() {
        if style == Style::Readable {
            out.push(' ');
        }
        out.push('(');
        out.push_str(&containers.join(separator));
        out.push(')');
    }
}

/// The users from images, as `imageUser=1001:1001(app)`: one item per container, after the fields.
fn push_images(out: &mut String, images: &[ImageSet], style: Style) {
    for set in images {
        if !out.is_empty() {
            out.push_str(if style == Style::Readable { ", " } else { "," });
        }
        out.push_str("imageUser=");
        out.push_str(&set.uid.to_string());
        if let Some(gid) = &set.gid {
            out.push(':');
            out.push_str(&gid.to_string());
        }
        if style == Style::Readable {
            out.push(' ');
        }
        out.push('(');
        out.push_str(&set.container);
        out.push(')');
    }
}

/// What a guard may read: the pod, and the pod-level fields decided before it (for a container guard, all of
/// them).
pub struct PodState<'s, 'a> {
    pub(crate) spec: &'s Spec<'a>,
    pub(crate) annotations: Option<&'s Annotations>,
    pub(crate) applied: &'s Applied,
}

/// Where it differs from the container's own: the `runAsUser` each container gets from its image.
fn image_user<'v>(applied: &'v Applied, container: &Container<'_>) -> Option<&'v Value> {
    applied
        .images()
        .iter()
        .find(|i| i.container == container.name())
        .map(|i| &i.uid)
}

impl<'a> PodState<'_, 'a> {
    /// The pod-level value of `field` after defaulting so far: the pod's own, else the one being set.
    pub fn value(&self, field: Field) -> Option<&Value> {
        let path = field.path();
        let (last, parents) = path.split_last()?;
        let mut map = self.spec.security_context.as_ref();
        for key in parents {
            map = map.and_then(|m| m.get(*key)).and_then(Value::as_object);
        }
        let own = map.and_then(|m| m.get(*last)).filter(|v| !v.is_null());
        own.or_else(|| self.applied.get(field))
    }

    /// What the engine knows of the pod's annotations.
    pub fn annotations(&self) -> Option<&Annotations> {
        self.annotations
    }

    /// The `runAsUser` a container runs as, where it states one or gets one from its image (else the pod's
    /// applies).
    pub fn container_user<'v>(&'v self, container: &'v Container<'_>) -> Option<&'v Value> {
        container
            .value(&["runAsUser"])
            .or_else(|| image_user(self.applied, container))
    }

    /// Every container of the pod.
    pub fn containers(&self) -> impl Iterator<Item = &Container<'a>> {
        self.spec.all_containers().map(|(_, _, c)| c)
    }
}

/// Checks shared by the ID fields.
mod id {
    use serde_json::Value;

    /// The largest user or group ID Kubernetes accepts.
    pub const MAX: i64 = 2_147_483_647;

    /// An ID in 0..=2147483647.
    pub fn any(value: &Value) -> Result<i64, String> {
        let Some(n) = value.as_i64() else {
            return Err(format!(
                "invalid type: {}, expected an integer ID",
                kind(value)
            ));
        };
        if (0..=MAX).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is outside the valid ID range 0..={MAX}"))
        }
    }

    /// An ID in 1..=2147483647: root (0) is not a secure default.
    pub fn non_root(value: &Value) -> Result<i64, String> {
        match any(value)? {
            0 => Err("0 is root, which is not a secure default; choose a non-zero ID".to_owned()),
            n => Ok(n),
        }
    }

    /// Only `SECURE` (a flag whose other value is never a secure default).
    pub fn only<const SECURE: bool>(value: &Value) -> Result<(), String> {
        match value {
            Value::Bool(b) if *b == SECURE => Ok(()),
            Value::Bool(b) => Err(format!(
                "{b} is not a secure default; use {SECURE}, or leave the field out to not default it"
            )),
            other => Err(format!("invalid type: {}, expected {SECURE}", kind(other))),
        }
    }

    /// How a value's type reads in an error.
    pub fn kind(value: &Value) -> String {
        match value {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => format!("boolean `{b}`"),
            Value::Number(n) => format!("number {n}"),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(_) => "sequence".to_owned(),
            Value::Object(_) => "map".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn handles_are_the_fields_they_are_named_for() {
        assert_eq!(RUN_AS_USER.name(), "runAsUser");
        assert_eq!(FS_GROUP.name(), "fsGroup");
    }

    #[test]
    fn names_are_unique_and_found() {
        let names: std::collections::BTreeSet<&str> = Field::all().map(Field::name).collect();
        assert_eq!(names.len(), COUNT);
        for field in Field::all() {
            assert_eq!(Field::by_name(field.name()), Some(field));
            assert!(!field.name().is_empty() && !field.when().is_empty());
        }
        assert_eq!(Field::by_name("runAsUsr"), None);
    }

    #[test]
    fn every_field_accepts_its_examples_and_refuses_its_counterexample() {
        for field in Field::all() {
            let (good, bad) = field.examples();
            assert!(!good.is_empty(), "{field}");
            for value in good {
                assert_eq!(field.check(&value), Ok(()), "{field} {value}");
            }
            assert!(field.check(&bad).is_err(), "{field} accepted {bad}");
        }
    }

    #[test]
    fn stated_follows_the_path() {
        let sc = json!({"a": null, "b": 0, "c": {"d": false}, "e": "x"});
        let sc = sc.as_object();
        assert!(!stated(sc, &["a"]));
        assert!(!stated(sc, &["missing"]));
        assert!(stated(sc, &["b"]), "falsy values are stated");
        assert!(stated(sc, &["c", "d"]));
        assert!(!stated(sc, &["c", "z"]));
        assert!(
            stated(sc, &["e", "z"]),
            "nothing is added beneath a non-object"
        );
        assert!(!stated(None, &["b"]));
    }

    #[test]
    fn summary_lists_fields_in_table_order_with_their_containers() {
        let field = |name| Field::by_name(name).unwrap();
        let mut applied = Applied::default();
        applied.container(field("allowPrivilegeEscalation"), &json!(false), "app");
        applied.pod(field("fsGroup"), json!(1));
        applied.pod(field("runAsUser"), json!(65532));
        applied.container(field("allowPrivilegeEscalation"), &json!(false), "init-db");
        assert_eq!(
            applied.summary(),
            "runAsUser=65532,fsGroup=1,allowPrivilegeEscalation=false(app,init-db)"
        );
        assert_eq!(Applied::default().summary(), "");
        let mut defaults = Defaults::default();
        assert_eq!(defaults.to_string(), "nothing");
        defaults.set(field("fsGroupChangePolicy"), json!("OnRootMismatch"));
        defaults.set(field("runAsGroup"), json!(2147483647));
        assert_eq!(
            defaults.to_string(),
            "runAsGroup=2147483647,fsGroupChangePolicy=OnRootMismatch"
        );
    }
}
