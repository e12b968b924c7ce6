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

use crate::fields::{Applied, Defaults, Field, Guard, Level, PodState, stated};
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
    let mut out = Outcome::default();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if left_alone(pod, &mut out) {
        return out;
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
    // The pod's own fields are all there is at pod level now: nothing is defaulted there on this update.
    let applied = Applied::default();
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
    use serde_json::{Value, json};

    use super::*;

    fn field(name: &str) -> Field {
        Field::by_name(name).unwrap()
    }

    fn full() -> Defaults {
        let mut d = Defaults::default();
        for (name, value) in [
            ("runAsUser", json!(65532)),
            ("runAsGroup", json!(65533)),
            ("fsGroup", json!(65534)),
            ("fsGroupChangePolicy", json!("OnRootMismatch")),
            ("allowPrivilegeEscalation", json!(false)),
        ] {
            d.set(field(name), value);
        }
        d
    }

    fn without(name: &str) -> Defaults {
        let mut d = full();
        d.clear(field(name));
        d
    }

    fn paths(outcome: &Outcome) -> Vec<String> {
        outcome
            .patch
            .iter()
            .map(|op| op.path().to_string())
            .collect()
    }

    /// Runs the engine on `pod`, applies the patch, checks that a second run adds nothing, and returns both.
    fn run(pod: &Value, defaults: &Defaults) -> (Value, Outcome) {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let outcome = default_pod(&view, defaults);
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &outcome.patch).unwrap();
        let again_text = patched.to_string();
        let again: Pod = serde_json::from_str(&again_text).unwrap();
        assert_eq!(
            default_pod(&again, defaults).patch,
            vec![],
            "second run must add nothing"
        );
        (patched, outcome)
    }

    fn annotation(pod: &Value) -> Option<&str> {
        pod.pointer("/metadata/annotations/secure-defaults.io~1defaulted")
            .and_then(Value::as_str)
    }

    #[test]
    fn pod_level_fields_and_containers() {
        // (name, pod, pointer -> expected value after defaulting; Value::Null means "must stay absent")
        let cases: Vec<(&str, Value, Vec<(&str, Value)>)> = vec![
            (
                "bare pod gets every default",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init-db"}]}}),
                vec![
                    ("/spec/securityContext/runAsUser", json!(65532)),
                    ("/spec/securityContext/runAsGroup", json!(65533)),
                    ("/spec/securityContext/fsGroup", json!(65534)),
                    (
                        "/spec/securityContext/fsGroupChangePolicy",
                        json!("OnRootMismatch"),
                    ),
                    (
                        "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                        json!(false),
                    ),
                    (
                        "/spec/initContainers/0/securityContext/allowPrivilegeEscalation",
                        json!(false),
                    ),
                    (
                        "/metadata/annotations/secure-defaults.io~1defaulted",
                        json!(
                            "runAsUser=65532,runAsGroup=65533,fsGroup=65534,fsGroupChangePolicy=OnRootMismatch,allowPrivilegeEscalation=false(app,init-db)"
                        ),
                    ),
                ],
            ),
            (
                "explicit falsy values are kept",
                json!({"metadata": {}, "spec": {
                    "securityContext": {"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0, "fsGroupChangePolicy": "Always"},
                    "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": true}}]}}),
                vec![
                    (
                        "/spec/securityContext",
                        json!({"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0, "fsGroupChangePolicy": "Always"}),
                    ),
                    (
                        "/spec/containers/0/securityContext",
                        json!({"allowPrivilegeEscalation": true}),
                    ),
                    ("/metadata/annotations", Value::Null),
                ],
            ),
            (
                "null counts as absent, at every level",
                json!({"metadata": {"annotations": null}, "spec": {
                    "securityContext": {"runAsUser": null, "seLinuxOptions": {"level": "s0"}},
                    "containers": [{"name": "a", "securityContext": null}, {"name": "b", "securityContext": {"allowPrivilegeEscalation": null}}]}}),
                vec![
                    ("/spec/securityContext/runAsUser", json!(65532)),
                    (
                        "/spec/securityContext/seLinuxOptions",
                        json!({"level": "s0"}),
                    ),
                    (
                        "/spec/containers/0/securityContext",
                        json!({"allowPrivilegeEscalation": false}),
                    ),
                    (
                        "/spec/containers/1/securityContext",
                        json!({"allowPrivilegeEscalation": false}),
                    ),
                ],
            ),
            (
                "null securityContext is replaced by the defaults",
                json!({"metadata": {}, "spec": {"securityContext": null, "containers": []}}),
                vec![(
                    "/spec/securityContext",
                    json!({"runAsUser": 65532, "runAsGroup": 65533, "fsGroup": 65534, "fsGroupChangePolicy": "OnRootMismatch"}),
                )],
            ),
            (
                "explicit false on a container is kept and not recorded",
                json!({"metadata": {}, "spec": {"securityContext": {"runAsUser": 1, "runAsGroup": 1, "fsGroup": 1, "fsGroupChangePolicy": "Always"},
                    "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false}}]}}),
                vec![("/metadata/annotations", Value::Null)],
            ),
            (
                "fsGroupChangePolicy follows an explicit fsGroup",
                json!({"metadata": {}, "spec": {"securityContext": {"fsGroup": 7}, "containers": []}}),
                vec![
                    ("/spec/securityContext/fsGroup", json!(7)),
                    (
                        "/spec/securityContext/fsGroupChangePolicy",
                        json!("OnRootMismatch"),
                    ),
                ],
            ),
            (
                "ephemeral containers present at creation are defaulted too",
                json!({"metadata": {}, "spec": {"containers": [], "ephemeralContainers": [{"name": "dbg"}]}}),
                vec![(
                    "/spec/ephemeralContainers/0/securityContext/allowPrivilegeEscalation",
                    json!(false),
                )],
            ),
            (
                "unknown fields survive",
                json!({"metadata": {"futureMeta": [1]}, "spec": {"futureSpec": {"x": null}, "securityContext": {"futureSc": true},
                    "containers": [{"name": "a", "futureC": "v", "securityContext": {"futureCsc": 1}}]}}),
                vec![
                    ("/metadata/futureMeta", json!([1])),
                    ("/spec/futureSpec", json!({"x": null})),
                    ("/spec/securityContext/futureSc", json!(true)),
                    ("/spec/containers/0/futureC", json!("v")),
                    ("/spec/containers/0/securityContext/futureCsc", json!(1)),
                    (
                        "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                        json!(false),
                    ),
                ],
            ),
        ];
        for (name, pod, expectations) in cases {
            let (patched, outcome) = run(&pod, &full());
            for (pointer, want) in expectations {
                let got = patched.pointer(pointer).cloned().unwrap_or(Value::Null);
                assert_eq!(got, want, "{name}: {pointer}");
            }
            assert!(
                outcome.warnings.is_empty(),
                "{name}: {:?}",
                outcome.warnings
            );
        }
    }

    #[test]
    fn pods_that_may_run_on_linux_or_say_runtime_default_are_defaulted() {
        let mut defaults = full();
        defaults.set(field("seccompProfile"), json!({"type": "RuntimeDefault"}));
        let cases = [
            (
                "one term admits any node",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]}}}, "containers": [{"name": "a"}]}}),
            ),
            (
                "Linux or Windows",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows", "linux"]}]}
                ]}}}, "containers": [{"name": "a"}]}}),
            ),
            (
                "a preferred Windows affinity only",
                json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}}
                ]}}, "containers": [{"name": "a"}]}}),
            ),
            (
                "a Linux nodeSelector",
                json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a"}]}}),
            ),
            (
                "seccomp annotations that ask for the runtime's default",
                json!({"metadata": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "runtime/default",
                    "container.seccomp.security.alpha.kubernetes.io/a": "docker/default"}},
                    "spec": {"containers": [{"name": "a"}]}}),
            ),
            (
                "a container annotation beside the container's own field",
                json!({"metadata": {"annotations": {"container.seccomp.security.alpha.kubernetes.io/a": "localhost/x.json"}},
                    "spec": {"containers": [{"name": "a", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}}]}}),
            ),
        ];
        for (name, pod) in cases {
            let (patched, _) = run(&pod, &defaults);
            assert_eq!(
                patched.pointer("/spec/securityContext/seccompProfile/type"),
                Some(&json!("RuntimeDefault")),
                "{name}: {patched}"
            );
        }
    }

    #[test]
    fn guards_skip_with_a_warning() {
        // (name, pod, pointer that must stay absent, words the warning must contain)
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "privileged container",
                json!({"spec": {"containers": [{"name": "vpn", "securityContext": {"privileged": true}}]}}),
                "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                "\"vpn\" is privileged",
            ),
            (
                "CAP_SYS_ADMIN",
                json!({"spec": {"containers": [{"name": "fuse", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CAP_SYS_ADMIN"]}}}]}}),
                "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                "\"fuse\" adds CAP_SYS_ADMIN",
            ),
            (
                "SYS_ADMIN in an init container",
                json!({"spec": {"containers": [], "initContainers": [{"name": "mnt", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}}),
                "/spec/initContainers/0/securityContext/allowPrivilegeEscalation",
                "\"mnt\" adds CAP_SYS_ADMIN",
            ),
            (
                "Windows by spec.os",
                json!({"spec": {"os": {"name": "windows"}, "containers": [{"name": "a"}]}}),
                "/spec/securityContext",
                "Windows pod",
            ),
            (
                "Windows host process container",
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"windowsOptions": {"hostProcess": true}}}]}}),
                "/spec/securityContext",
                "hostProcess",
            ),
            (
                "mirror pod",
                json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}, "spec": {"containers": [{"name": "a"}]}}),
                "/spec/securityContext",
                "mirror pod",
            ),
            (
                "Windows by nodeSelector",
                json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": [{"name": "a"}]}}),
                "/spec/securityContext",
                "Windows pod (nodeSelector kubernetes.io/os is windows) left unchanged; set spec.os.name: windows",
            ),
            (
                "Windows by the older nodeSelector label",
                json!({"spec": {"nodeSelector": {"beta.kubernetes.io/os": "windows"}, "containers": [{"name": "a"}]}}),
                "/spec/securityContext",
                "spec.os.name",
            ),
            (
                "Windows by a required node affinity in every term",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["linux"]}]}
                ]}}}, "containers": [{"name": "a"}]}}),
                "/spec/securityContext",
                "required node affinity admits only Windows nodes",
            ),
            (
                "a pod-level seccomp annotation naming another profile",
                json!({"metadata": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "localhost/profiles/audit.json"}},
                    "spec": {"containers": [{"name": "a"}]}}),
                "/spec/securityContext/seccompProfile",
                "seccompProfile not defaulted: the pod states its profile \"localhost/profiles/audit.json\" in the deprecated annotation",
            ),
            (
                "a container's seccomp annotation naming another profile",
                json!({"metadata": {"annotations": {"container.seccomp.security.alpha.kubernetes.io/a": "unconfined"}},
                    "spec": {"containers": [{"name": "a"}]}}),
                "/spec/securityContext/seccompProfile",
                "container \"a\" states its profile \"unconfined\" in the deprecated annotation container.seccomp.security.alpha.kubernetes.io/a",
            ),
        ];
        let mut defaults = full();
        defaults.set(field("seccompProfile"), json!({"type": "RuntimeDefault"}));
        for (name, pod, absent, words) in cases {
            let (patched, outcome) = run(&pod, &defaults);
            assert!(
                patched.pointer(absent).is_none(),
                "{name}: {absent} was set: {patched}"
            );
            assert!(
                outcome.warnings.iter().any(|w| w.contains(words)),
                "{name}: no warning with {words:?} in {:?}",
                outcome.warnings
            );
        }
    }

    #[test]
    fn privileged_container_does_not_stop_the_others() {
        let pod = json!({"spec": {"containers": [{"name": "vpn", "securityContext": {"privileged": true}}, {"name": "app"}]}});
        let (patched, outcome) = run(&pod, &full());
        assert_eq!(
            patched.pointer("/spec/containers/1/securityContext/allowPrivilegeEscalation"),
            Some(&json!(false))
        );
        assert_eq!(
            patched.pointer("/spec/securityContext/runAsUser"),
            Some(&json!(65532))
        );
        assert_eq!(
            outcome.applied.sets().last().map(|s| s.containers.clone()),
            Some(vec!["app".to_owned()])
        );
    }

    #[test]
    fn run_as_group_needs_a_user_for_every_container() {
        let no_user = without("runAsUser");
        // No pod user, no default user, one container without its own: no group.
        let pod = json!({"spec": {"containers": [{"name": "a", "securityContext": {"runAsUser": 5}}, {"name": "b"}]}});
        let (patched, outcome) = run(&pod, &no_user);
        assert!(
            patched
                .pointer("/spec/securityContext/runAsGroup")
                .is_none()
        );
        assert!(
            outcome
                .warnings
                .iter()
                .any(|w| w.contains("\"b\" has no runAsUser")),
            "{:?}",
            outcome.warnings
        );
        // Every container has its own user: the group is set.
        let pod = json!({"spec": {"containers": [{"name": "a", "securityContext": {"runAsUser": 5}}],
            "initContainers": [{"name": "i", "securityContext": {"runAsUser": 0}}]}});
        let (patched, _) = run(&pod, &no_user);
        assert_eq!(
            patched.pointer("/spec/securityContext/runAsGroup"),
            Some(&json!(65533))
        );
        // The pod's own user covers every container.
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a"}]}});
        let (patched, _) = run(&pod, &no_user);
        assert_eq!(
            patched.pointer("/spec/securityContext/runAsGroup"),
            Some(&json!(65533))
        );
        assert_eq!(
            patched.pointer("/spec/securityContext/runAsUser"),
            Some(&json!(1000))
        );
    }

    #[test]
    fn fs_group_change_policy_needs_an_fs_group() {
        let no_fs_group = without("fsGroup");
        let (patched, _) = run(&json!({"spec": {"containers": []}}), &no_fs_group);
        assert!(
            patched
                .pointer("/spec/securityContext/fsGroupChangePolicy")
                .is_none()
        );
    }

    #[test]
    fn annotation_parents_are_created_or_reused() {
        let cases = [
            (
                json!({"spec": {"containers": [{"name": "a"}]}}),
                "no metadata",
            ),
            (
                json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}),
                "no annotations",
            ),
            (
                json!({"metadata": {"annotations": {"team": "x"}}, "spec": {"containers": [{"name": "a"}]}}),
                "other annotations",
            ),
        ];
        for (pod, name) in &cases {
            let (patched, _) = run(pod, &full());
            assert!(
                annotation(&patched).is_some_and(|a| a.starts_with("runAsUser=65532")),
                "{name}: {patched}"
            );
        }
        let (patched, _) = run(&cases[2].0, &full());
        assert_eq!(
            patched.pointer("/metadata/annotations/team"),
            Some(&json!("x"))
        );
    }

    #[test]
    fn an_existing_record_is_never_overwritten() {
        let pod = json!({"metadata": {"annotations": {"secure-defaults.io/defaulted": "copied"}}, "spec": {"containers": [{"name": "a"}]}});
        let (patched, outcome) = run(&pod, &full());
        assert_eq!(annotation(&patched), Some("copied"));
        assert!(!outcome.patch.is_empty());
    }

    #[test]
    fn nothing_to_default_means_no_patch_and_no_record() {
        let (patched, outcome) = run(
            &json!({"spec": {"containers": [{"name": "a"}]}}),
            &Defaults::default(),
        );
        assert!(outcome.patch.is_empty());
        assert!(annotation(&patched).is_none());
    }

    #[test]
    fn only_new_ephemeral_containers_are_defaulted() {
        let old = json!({"spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "dbg1"}]}});
        let new = json!({"spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "dbg1"}, {"name": "dbg2"},
            {"name": "dbg3", "securityContext": {"privileged": true}}]}});
        let (old_text, new_text) = (old.to_string(), new.to_string());
        let old_view: Pod = serde_json::from_str(&old_text).unwrap();
        let new_view: Pod = serde_json::from_str(&new_text).unwrap();
        let outcome = default_new_ephemeral(&new_view, &old_view, &full());
        assert_eq!(
            paths(&outcome),
            vec!["/spec/ephemeralContainers/1/securityContext"]
        );
        assert_eq!(outcome.summary, "allowPrivilegeEscalation=false(dbg2)");
        assert!(
            outcome
                .warnings
                .iter()
                .any(|w| w.contains("\"dbg3\" is privileged"))
        );
    }

    #[test]
    fn mirror_pods_get_no_ephemeral_container_defaults() {
        let old = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "hash"}},
            "spec": {"containers": [{"name": "app"}]}});
        let new = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "hash"}},
            "spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "dbg"}]}});
        let (old_text, new_text) = (old.to_string(), new.to_string());
        let old_view: Pod = serde_json::from_str(&old_text).unwrap();
        let new_view: Pod = serde_json::from_str(&new_text).unwrap();
        let outcome = default_new_ephemeral(&new_view, &old_view, &full());
        assert!(outcome.patch.is_empty(), "{:?}", outcome.patch);
        assert!(
            outcome.warnings.iter().any(|w| w.contains("mirror pod")),
            "{:?}",
            outcome.warnings
        );
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

    fn restricted() -> Defaults {
        let mut d = Defaults::default();
        for (name, value) in [
            ("runAsNonRoot", json!(true)),
            ("seccompProfile", json!({"type": "RuntimeDefault"})),
            ("allowPrivilegeEscalation", json!(false)),
            ("capabilities.drop", json!(["ALL"])),
        ] {
            d.set(field(name), value);
        }
        d
    }

    #[test]
    fn restricted_fields_follow_their_guards() {
        // (name, pod, pointer -> value after defaulting (Null: stays absent), words a warning must hold or "")
        let cases: Vec<(&str, Value, Vec<(&str, Value)>, &str)> = vec![
            (
                "bare pod",
                json!({"spec": {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "app"}]}}),
                vec![
                    ("/spec/securityContext/runAsNonRoot", json!(true)),
                    (
                        "/spec/securityContext/seccompProfile",
                        json!({"type": "RuntimeDefault"}),
                    ),
                    (
                        "/spec/containers/0/securityContext/capabilities",
                        json!({"drop": ["ALL"]}),
                    ),
                ],
                "",
            ),
            (
                "an added capability stays and the drop list joins it",
                json!({"spec": {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "web",
                    "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}}),
                vec![(
                    "/spec/containers/0/securityContext/capabilities",
                    json!({"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}),
                )],
                "",
            ),
            (
                "an explicit drop list stays",
                json!({"spec": {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "web",
                    "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]}}),
                vec![(
                    "/spec/containers/0/securityContext/capabilities/drop",
                    json!(["NET_RAW"]),
                )],
                "",
            ),
            (
                "a container running as root keeps the pod from runAsNonRoot",
                json!({"spec": {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "db",
                    "securityContext": {"runAsUser": 0}}]}}),
                vec![("/spec/securityContext/runAsNonRoot", Value::Null)],
                "runAsNonRoot not defaulted: container \"db\" runs as user 0",
            ),
            (
                "a pod running as root keeps the pod from runAsNonRoot",
                json!({"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "app"}]}}),
                vec![("/spec/securityContext/runAsNonRoot", Value::Null)],
                "container \"app\" runs as user 0",
            ),
            (
                "no user anywhere: set, with a warning",
                json!({"spec": {"containers": [{"name": "app"}]}}),
                vec![("/spec/securityContext/runAsNonRoot", json!(true))],
                "runAsNonRoot set: container \"app\" has no runAsUser",
            ),
            (
                "a container's own seccomp profile stays, and the pod gets the default",
                json!({"spec": {"securityContext": {"runAsUser": 1}, "containers": [{"name": "app",
                    "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}]}}),
                vec![
                    (
                        "/spec/containers/0/securityContext/seccompProfile/type",
                        json!("Localhost"),
                    ),
                    (
                        "/spec/securityContext/seccompProfile/type",
                        json!("RuntimeDefault"),
                    ),
                ],
                "",
            ),
            (
                "privileged containers get no drop list",
                json!({"spec": {"securityContext": {"runAsUser": 1}, "containers": [{"name": "vpn",
                    "securityContext": {"privileged": true}}]}}),
                vec![(
                    "/spec/containers/0/securityContext/capabilities",
                    Value::Null,
                )],
                "capabilities.drop not defaulted: container \"vpn\" is privileged",
            ),
        ];
        for (name, pod, expectations, words) in cases {
            let (patched, outcome) = run(&pod, &restricted());
            for (pointer, want) in expectations {
                let got = patched.pointer(pointer).cloned().unwrap_or(Value::Null);
                assert_eq!(got, want, "{name}: {pointer}: {patched}");
            }
            if words.is_empty() {
                assert!(
                    outcome.warnings.is_empty(),
                    "{name}: {:?}",
                    outcome.warnings
                );
            } else {
                assert!(
                    outcome.warnings.iter().any(|w| w.contains(words)),
                    "{name}: no {words:?} in {:?}",
                    outcome.warnings
                );
            }
        }
    }

    #[test]
    fn new_ephemeral_containers_get_the_container_level_restricted_fields_only() {
        let old = json!({"spec": {"containers": [{"name": "app"}]}});
        let new = json!({"spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "debugger",
            "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}});
        let (old_text, new_text) = (old.to_string(), new.to_string());
        let old_view: Pod = serde_json::from_str(&old_text).unwrap();
        let new_view: Pod = serde_json::from_str(&new_text).unwrap();
        let outcome = default_new_ephemeral(&new_view, &old_view, &restricted());
        assert_eq!(
            paths(&outcome),
            vec![
                "/spec/ephemeralContainers/0/securityContext/allowPrivilegeEscalation",
                "/spec/ephemeralContainers/0/securityContext/capabilities/drop"
            ]
        );
        assert_eq!(
            outcome.summary,
            "allowPrivilegeEscalation=false(debugger),capabilities.drop=ALL(debugger)"
        );
        assert_eq!(new_ephemeral_names(&new_view, &old_view), vec!["debugger"]);
    }
}
