//! The defaulting engine: given a pod and the defaults that apply to its namespace, the `add` operations that
//! fill in what the pod leaves absent. It walks the field table ([`crate::fields`]) and knows no field by name.
//! Pure functions: no I/O, no async.
//!
//! The engine never touches a value the pod states, falsy ones included, and skips (with a warning) whatever a
//! field's guard says would make the pod invalid or unrunnable. Running it again on its own result yields nothing.

use std::collections::{BTreeSet, HashSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Map, Value, json};

use crate::fields::{Applied, Defaults, Field, Guard, ImageSet, Level, PodState, stated};
use crate::images::Images;
use crate::pod::{self, Container, ContainerList, Pod, SecurityContext};

/// What the engine did to one pod.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// The JSON Patch: `add` operations only.
    pub patch: Vec<PatchOperation>,
    /// What was set, as recorded in the pod's annotation (`runAsUser=65532,...`); empty when nothing was.
    pub summary: String,
    /// One line per skipped default, naming the container (where there is one) and the reason; callers add
    /// their own lines (report mode, exceptions, what Pod Security will refuse).
    pub warnings: Vec<String>,
    /// How many of `warnings` the field guards gave (a default skipped or set with a note, a pod left alone).
    pub guard_warnings: usize,
    /// What was set, field by field.
    pub applied: Applied,
    /// The fields left out because the pod opted out of them, as its policy allows.
    pub exceptions: BTreeSet<Field>,
}

/// Defaults a pod being created.
pub fn default_pod(pod: &Pod<'_>, defaults: &Defaults) -> Outcome {
    default_pod_with(pod, defaults, &Images::default())
}

/// Defaults a pod being created, with what its images' configurations say of their users ([`crate::images`]).
pub fn default_pod_with(pod: &Pod<'_>, defaults: &Defaults, images: &Images) -> Outcome {
    let mut out = Outcome::default();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if left_alone(pod, &mut out) {
        return out;
    }
    let pod_user = stated(spec.security_context.as_ref(), &["runAsUser"]);
    if !pod_user {
        let containers = spec.all_containers().map(|(_, _, c)| c);
        from_images(containers, images, &mut out);
    }
    pod_level(spec, pod.annotations(), defaults, &mut out);
    // The container guards see the pod with its pod-level fields decided.
    let pod_applied = out.applied.clone();
    let state = PodState {
        spec,
        annotations: pod.annotations(),
        applied: &pod_applied,
    };
    for (list, index, container) in spec.all_containers() {
        container_level(list, index, container, &state, defaults, &mut out);
    }
    if !out.applied.is_empty() {
        out.summary = out.applied.summary();
        annotate(pod, &out.summary, &mut out.patch);
    }
    out
}

/// Defaults the ephemeral containers that an update of the `ephemeralcontainers` subresource adds
/// (`kubectl debug`). Only containers absent from `old` are touched; the pod's own fields are immutable by now,
/// and the API server keeps only the ephemeral containers of such an update, so nothing else is patched.
pub fn default_new_ephemeral(pod: &Pod<'_>, old: &Pod<'_>, defaults: &Defaults) -> Outcome {
    default_new_ephemeral_with(pod, old, defaults, &Images::default())
}

/// [`default_new_ephemeral`], with what the new containers' images say of their users.
pub fn default_new_ephemeral_with(
    pod: &Pod<'_>,
    old: &Pod<'_>,
    defaults: &Defaults,
    images: &Images,
) -> Outcome {
    let mut out = Outcome::default();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if !Field::all().any(|f| f.level() == Level::Container && defaults.get(f).is_some()) {
        return out;
    }
    if left_alone(pod, &mut out) {
        return out;
    }
    let existing = ephemeral_names(old);
    let list = ContainerList::EphemeralContainers;
    if !stated(spec.security_context.as_ref(), &["runAsUser"]) {
        let new = spec
            .list(list)
            .iter()
            .filter(|c| !existing.contains(c.name()));
        from_images(new, images, &mut out);
    }
    // The pod's own fields are all there is at pod level now: nothing is defaulted there on this update.
    let applied = out.applied.clone();
    let state = PodState {
        spec,
        annotations: pod.annotations(),
        applied: &applied,
    };
    for (index, container) in spec.list(list).iter().enumerate() {
        if !existing.contains(container.name()) {
            container_level(list, index, container, &state, defaults, &mut out);
        }
    }
    out.summary = out.applied.summary();
    out
}

fn ephemeral_names<'p>(pod: &'p Pod<'_>) -> HashSet<&'p str> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.list(ContainerList::EphemeralContainers)
                .iter()
                .map(Container::name)
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the ephemeral containers `pod` has and `old` does not: those an ephemeral-container update adds.
pub fn new_ephemeral_names<'p>(pod: &'p Pod<'_>, old: &Pod<'_>) -> Vec<&'p str> {
    let existing = ephemeral_names(old);
    ephemeral_names(pod)
        .into_iter()
        .filter(|name| !existing.contains(name))
        .collect()
}

/// Why the pod is never defaulted: a mirror pod of a static pod, or a Windows pod. Nothing is added to such a pod,
/// not even a record of its exceptions, and no other warning is given for it.
pub fn left_alone_because(pod: &Pod<'_>) -> Option<String> {
    if pod.is_mirror() {
        return Some("mirror pod of a static pod left unchanged".to_owned());
    }
    pod.spec
        .as_ref()
        .and_then(pod::Spec::windows)
        .map(|by| match by.hint() {
            Some(hint) => format!("Windows pod ({by}) left unchanged; {hint}"),
            None => format!("Windows pod ({by}) left unchanged"),
        })
}

/// Mirror pods and Windows pods are never defaulted; says so in a warning.
fn left_alone(pod: &Pod<'_>, out: &mut Outcome) -> bool {
    match left_alone_because(pod) {
        Some(why) => {
            out.warnings.push(format!("secure-defaults: {why}"));
            out.guard_warnings += 1;
            true
        }
        None => false,
    }
}

/// The users the containers without their own `runAsUser` get from their images (the pod states none), and the
/// notes that say so. Recorded before any field is decided, so every guard sees them.
fn from_images<'c, 'a: 'c>(
    containers: impl Iterator<Item = &'c Container<'a>>,
    images: &Images,
    out: &mut Outcome,
) {
    for container in containers {
        if container.value(&["runAsUser"]).is_some() {
            continue;
        }
        let Some(image) = container.image.as_deref() else {
            continue;
        };
        let Some(decision) = images.decide(container.name(), image) else {
            continue;
        };
        out.warnings
            .push(format!("secure-defaults: {}", decision.note));
        if let Some((uid, gid)) = decision.set {
            let gid = gid.filter(|_| container.value(&["runAsGroup"]).is_none());
            out.applied.image(ImageSet {
                container: container.name().to_owned(),
                uid: json!(uid),
                gid: gid.map(|g| json!(g)),
            });
        }
    }
}

/// Records what a guard said about `field` as warnings; whether the field may be set.
fn heed(field: Field, guard: Guard, out: &mut Outcome) -> bool {
    let (set, lines) = match guard {
        Guard::Set(notes) => (true, notes),
        Guard::Skip(reasons) => (false, reasons),
    };
    out.guard_warnings += lines.len();
    out.warnings.extend(lines.iter().map(|line| {
        if set {
            format!("secure-defaults: {field} set: {line}")
        } else {
            format!("secure-defaults: {field} not defaulted: {line}")
        }
    }));
    set
}

fn pod_level(
    spec: &pod::Spec<'_>,
    annotations: Option<&pod::Annotations>,
    defaults: &Defaults,
    out: &mut Outcome,
) {
    let sc = spec.security_context.as_ref();
    let mut added = Map::new();
    for (field, value) in defaults.iter() {
        if field.level() != Level::Pod {
            continue;
        }
        let path = field.path();
        if stated(sc, &path) {
            continue;
        }
        let state = PodState {
            spec,
            annotations,
            applied: &out.applied,
        };
        let guard = field.pod_guard(&state);
        if heed(field, guard, out) {
            insert(&mut added, &path, value.clone());
            out.applied.pod(field, value.clone());
        }
    }
    let at = PointerBuf::from_tokens(["spec", "securityContext"]);
    add_below(at, sc, added, &mut out.patch);
}

fn container_level(
    list: ContainerList,
    index: usize,
    container: &Container<'_>,
    state: &PodState<'_, '_>,
    defaults: &Defaults,
    out: &mut Outcome,
) {
    let sc = container.security_context.as_ref();
    let mut added = Map::new();
    let image = state
        .applied
        .images()
        .iter()
        .find(|i| i.container == container.name());
    if let Some(set) = image {
        added.insert("runAsUser".to_owned(), set.uid.clone());
        if let Some(gid) = &set.gid {
            added.insert("runAsGroup".to_owned(), gid.clone());
        }
    }
    for (field, value) in defaults.iter() {
        if field.level() != Level::Container {
            continue;
        }
        let path = field.path();
        if stated(sc, &path) {
            continue;
        }
        if heed(field, field.container_guard(state, container), out) {
            insert(&mut added, &path, value.clone());
            out.applied.container(field, value, container.name());
        }
    }
    let at = PointerBuf::from_tokens(["spec", list.key()])
        .with_trailing_token(index)
        .with_trailing_token("securityContext");
    add_below(at, sc, added, &mut out.patch);
}

/// Puts `value` into `tree` at `path`, creating the objects on the way.
fn insert(tree: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut map = tree;
    for key in parents {
        let entry = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = entry else { return };
        map = inner;
    }
    map.insert((*last).to_owned(), value);
}

/// The `add` operations that put `added` into the object at `at`, whose current value is `existing`: one `add`
/// of the whole object where it is absent, else one per key, going down into objects the pod already has. Only
/// absent (or null) keys are ever added, so a stated value is never replaced.
fn add_below(
    at: PointerBuf,
    existing: Option<&SecurityContext>,
    added: Map<String, Value>,
    patch: &mut Vec<PatchOperation>,
) {
    if added.is_empty() {
        return;
    }
    let Some(existing) = existing else {
        patch.push(add(at, Value::Object(added)));
        return;
    };
    for (key, value) in added {
        let path = at.with_trailing_token(&key);
        match (existing.get(&key), value) {
            (Some(Value::Object(inner)), Value::Object(more)) => {
                add_below(path, Some(inner), more, patch);
            }
            (_, value) => patch.push(add(path, value)),
        }
    }
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Records on the pod, in its exceptions annotation, the fields it opted out of (unless it already carries a
/// record). The pod names them in its skip annotation, so its annotations exist.
pub fn record_exceptions(pod: &Pod<'_>, honoured: &BTreeSet<Field>, out: &mut Outcome) {
    out.exceptions.clone_from(honoured);
    if pod.annotations().is_none_or(|a| a.exceptions) {
        return;
    }
    let names: Vec<&str> = honoured.iter().map(|f| f.name()).collect();
    out.patch.push(add(
        PointerBuf::from_tokens(["metadata", "annotations", pod::EXCEPTIONS_ANNOTATION]),
        json!(names.join(",")),
    ));
}

/// Records what was defaulted in the pod's annotation, unless the pod already carries one: the engine only
/// adds, so an earlier record (from a first invocation, or copied from another pod) is left as it is.
fn annotate(pod: &Pod<'_>, summary: &str, patch: &mut Vec<PatchOperation>) {
    let op = match (&pod.metadata, pod.annotations()) {
        (_, Some(a)) if a.defaulted => return,
        (_, Some(_)) => add(
            PointerBuf::from_tokens(["metadata", "annotations", pod::DEFAULTED_ANNOTATION]),
            json!(summary),
        ),
        (Some(_), None) => add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            json!({ pod::DEFAULTED_ANNOTATION: summary }),
        ),
        (None, None) => add(
            PointerBuf::from_tokens(["metadata"]),
            json!({"annotations": { pod::DEFAULTED_ANNOTATION: summary }}),
        ),
    };
    patch.push(op);
}
#[cfg(test)]
mod tests {
    //! The cases are data (`tests/cases/engine.yaml`), shared with `make bench-peers`; this runs each.
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cases {
        defaults: BTreeMap<String, Map<String, Value>>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        case: String,
        #[serde(default)]
        #[allow(dead_code, reason = "read by make bench-peers")]
        peers: bool,
        #[serde(default = "full")]
        defaults: String,
        #[serde(default)]
        set: Map<String, Value>,
        #[serde(default)]
        unset: Vec<String>,
        pod: Value,
        old: Option<Value>,
        #[serde(default)]
        expect: Map<String, Value>,
        warning: Option<String>,
        summary: Option<String>,
        paths: Option<Vec<String>>,
        /// Image -> its configuration's `User`.
        #[serde(default)]
        images: BTreeMap<String, String>,
        /// Image -> why its user is not known.
        #[serde(default)]
        unknown: BTreeMap<String, String>,
        #[serde(default)]
        root_images: Option<crate::images::RootImages>,
    }

    fn images(case: &Case) -> Images {
        let mut images = Images::default();
        for (image, user) in &case.images {
            let user = crate::images::ImageUser::parse(user);
            images.users.insert(image.clone(), Ok(user));
        }
        for (image, why) in &case.unknown {
            let why = crate::images::Unknown::ALL
                .into_iter()
                .find(|u| u.as_str() == why);
            images.users.insert(image.clone(), Err(why.unwrap()));
        }
        images.root = case.root_images.unwrap_or_default();
        images
    }

    fn full() -> String {
        "full".to_owned()
    }

    fn field(name: &str) -> Field {
        Field::by_name(name).unwrap_or_else(|| panic!("no field {name}"))
    }

    fn record(pod: &Value) -> Option<&str> {
        pod.pointer("/metadata/annotations/secure-defaults.io~1defaulted")
            .and_then(Value::as_str)
    }

    /// Runs the engine as the case says, applies the patch and checks that a second run adds nothing.
    fn run(case: &Case, defaults: &Defaults) -> (Value, Outcome) {
        let text = case.pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let old_text = case.old.as_ref().map(Value::to_string);
        let old: Option<Pod> = old_text
            .as_deref()
            .map(|t| serde_json::from_str(t).unwrap());
        let images = images(case);
        let engine = |pod: &Pod| match &old {
            Some(old) => default_new_ephemeral_with(pod, old, defaults, &images),
            None => default_pod_with(pod, defaults, &images),
        };
        let outcome = engine(&view);
        let mut patched = case.pod.clone();
        json_patch::patch(&mut patched, &outcome.patch).unwrap();
        let again_text = patched.to_string();
        let again: Pod = serde_json::from_str(&again_text).unwrap();
        assert_eq!(engine(&again).patch, vec![], "{}: a second run", case.case);
        (patched, outcome)
    }

    #[test]
    fn cases() {
        let cases: Cases =
            serde_saphyr::from_str(include_str!("../tests/cases/engine.yaml")).unwrap();
        for case in &cases.cases {
            let name = &case.case;
            let mut defaults = Defaults::default();
            let named = cases.defaults.get(&case.defaults).unwrap();
            for (key, value) in named.iter().chain(&case.set) {
                defaults.set(field(key), value.clone());
            }
            for key in &case.unset {
                defaults.clear(field(key));
            }
            let (patched, outcome) = run(case, &defaults);
            for (pointer, want) in &case.expect {
                let got = patched.pointer(pointer).unwrap_or(&Value::Null);
                assert_eq!(got, want, "{name}: {pointer}: {patched}");
            }
            match &case.warning {
                Some(words) => assert!(
                    outcome.warnings.iter().any(|w| w.contains(words.as_str())),
                    "{name}: no warning with {words:?} in {:?}",
                    outcome.warnings
                ),
                None => assert!(
                    outcome.warnings.is_empty(),
                    "{name}: {:?}",
                    outcome.warnings
                ),
            }
            if let Some(summary) = &case.summary {
                assert_eq!(&outcome.summary, summary, "{name}");
            }
            if let Some(paths) = &case.paths {
                let got: Vec<String> = outcome
                    .patch
                    .iter()
                    .map(|op| op.path().to_string())
                    .collect();
                assert_eq!(&got, paths, "{name}");
            }
            let want = match record(&case.pod) {
                Some(kept) => Some(kept),
                None if case.old.is_none() && !outcome.summary.is_empty() => {
                    Some(outcome.summary.as_str())
                }
                None => None,
            };
            assert_eq!(record(&patched), want, "{name}: the record");
        }
    }

    #[test]
    fn nested_fields_are_added_beneath_what_the_container_has() {
        // A container-level field below a nested key, through the same tree builder the table uses.
        let mut tree = Map::new();
        insert(&mut tree, &["capabilities", "drop"], json!(["ALL"]));
        insert(&mut tree, &["allowPrivilegeEscalation"], json!(false));
        let existing = json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}});
        let mut patch = Vec::new();
        add_below(
            PointerBuf::from_tokens(["c"]),
            existing.as_object(),
            tree.clone(),
            &mut patch,
        );
        let got: Vec<String> = patch.iter().map(|op| op.path().to_string()).collect();
        assert_eq!(
            got,
            vec!["/c/capabilities/drop", "/c/allowPrivilegeEscalation"]
        );
        let mut patch = Vec::new();
        add_below(PointerBuf::from_tokens(["c"]), None, tree, &mut patch);
        assert_eq!(
            patch.len(),
            1,
            "one add of the whole object where it is absent"
        );
    }
}
