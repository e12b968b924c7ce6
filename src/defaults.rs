//! The defaulting rules: given a pod and the defaults that apply to its namespace, the `add` operations that
//! fill in what the pod leaves absent. Pure functions: no I/O, no async.
//!
//! The rules never touch a value the pod states, falsy ones included, and skip (with a warning) whatever would
//! make the pod invalid or unrunnable. Running them again on their own result yields nothing.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value, json};

use crate::patch::{Add, Pointer};
use crate::pod::{self, Container, ContainerList, Pod};
use crate::policy::{Defaults, Field, FsGroupChangePolicy, Id};

/// What the engine did to one pod.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub patch: Vec<Add>,
    /// What was set, as recorded in the pod's annotation (`runAsUser=65532,...`); empty when nothing was.
    pub summary: String,
    /// One line per skipped default, naming the container (where there is one) and the reason.
    pub warnings: Vec<String>,
    pub applied: Applied,
}

/// The defaults that were set, for the pod's annotation, the audit log and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub run_as_user: Option<Id>,
    pub run_as_group: Option<Id>,
    pub fs_group: Option<Id>,
    pub fs_group_change_policy: Option<FsGroupChangePolicy>,
    /// Names of the containers that got `allowPrivilegeEscalation: false`.
    pub no_escalation: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        *self == Applied::default()
    }

    /// The fields that were set, each once.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL.into_iter().filter(|f| match f {
            Field::RunAsUser => self.run_as_user.is_some(),
            Field::RunAsGroup => self.run_as_group.is_some(),
            Field::FsGroup => self.fs_group.is_some(),
            Field::FsGroupChangePolicy => self.fs_group_change_policy.is_some(),
            Field::AllowPrivilegeEscalation => !self.no_escalation.is_empty(),
        })
    }
}

impl Applied {
    /// `runAsUser=65532,fsGroup=65532,allowPrivilegeEscalation=false(app,init-db)`; written by hand, as it is
    /// for every patched pod.
    pub fn summary(&self) -> String {
        let mut out = String::with_capacity(128);
        let item = |out: &mut String, name: &str| {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
            out.push('=');
        };
        for (name, id) in [
            ("runAsUser", self.run_as_user),
            ("runAsGroup", self.run_as_group),
            ("fsGroup", self.fs_group),
        ] {
            if let Some(id) = id {
                item(&mut out, name);
                crate::json::push_decimal(&mut out, id.get().unsigned_abs(), 1);
            }
        }
        if let Some(p) = self.fs_group_change_policy {
            item(&mut out, "fsGroupChangePolicy");
            out.push_str(p.as_str());
        }
        if !self.no_escalation.is_empty() {
            item(&mut out, "allowPrivilegeEscalation");
            out.push_str("false(");
            for (i, name) in self.no_escalation.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
            }
            out.push(')');
        }
        out
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Defaults a pod being created.
pub fn default_pod(pod: &Pod<'_>, defaults: &Defaults) -> Outcome {
    let mut out = Outcome::default();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if pod.annotations().is_some_and(|a| a.mirror) {
        out.warnings
            .push("secure-defaults: mirror pod of a static pod left unchanged".to_owned());
        return out;
    }
    if let Some(reason) = windows(pod) {
        out.warnings.push(format!(
            "secure-defaults: Windows pod ({reason}) left unchanged"
        ));
        return out;
    }

    pod_level(spec, defaults, &mut out);
    if defaults.disallow_privilege_escalation {
        for (list, index, container) in spec.all_containers() {
            no_escalation(list, index, container, &mut out);
        }
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
    if !defaults.disallow_privilege_escalation {
        return out;
    }
    if let Some(reason) = windows(pod) {
        out.warnings.push(format!(
            "secure-defaults: Windows pod ({reason}) left unchanged"
        ));
        return out;
    }
    let existing: HashSet<&str> = old
        .spec
        .as_ref()
        .map(|s| {
            s.list(ContainerList::EphemeralContainers)
                .iter()
                .map(Container::name)
                .collect()
        })
        .unwrap_or_default();
    for (index, container) in spec
        .list(ContainerList::EphemeralContainers)
        .iter()
        .enumerate()
    {
        if !existing.contains(container.name()) {
            no_escalation(
                ContainerList::EphemeralContainers,
                index,
                container,
                &mut out,
            );
        }
    }
    if !out.applied.is_empty() {
        out.summary = out.applied.summary();
    }
    out
}

/// Why a pod counts as a Windows pod, where the Linux fields this engine sets are invalid.
fn windows(pod: &Pod<'_>) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    if spec.os.as_ref().and_then(|os| os.name.as_deref()) == Some("windows") {
        return Some("spec.os.name is windows");
    }
    let host_process =
        |w: &Option<pod::WindowsOptions>| w.as_ref().and_then(|w| w.host_process) == Some(true);
    let pod_hpc = spec
        .security_context
        .as_ref()
        .is_some_and(|sc| host_process(&sc.windows_options));
    let container_hpc = spec.all_containers().any(|(_, _, c)| {
        c.security_context
            .as_ref()
            .is_some_and(|sc| host_process(&sc.windows_options))
    });
    (pod_hpc || container_hpc).then_some("windowsOptions.hostProcess is true")
}

fn pod_level(spec: &pod::Spec<'_>, defaults: &Defaults, out: &mut Outcome) {
    let sc = spec.security_context.as_ref();
    let has = |present: fn(&pod::PodSecurityContext) -> bool| sc.is_some_and(present);
    let applied = &mut out.applied;

    if !has(|s| s.run_as_user.is_some()) {
        applied.run_as_user = defaults.run_as_user;
    }
    if !has(|s| s.run_as_group.is_some())
        && let Some(group) = defaults.run_as_group
    {
        // A runtime refuses a group without a user, so every container must end up with a runAsUser.
        let pod_user = has(|s| s.run_as_user.is_some()) || applied.run_as_user.is_some();
        let without_user: Vec<&str> = spec
            .all_containers()
            .filter(|(_, _, c)| {
                !(pod_user
                    || c.security_context
                        .as_ref()
                        .is_some_and(|sc| sc.run_as_user.is_some()))
            })
            .map(|(_, _, c)| c.name())
            .collect();
        if without_user.is_empty() {
            applied.run_as_group = Some(group);
        } else {
            for name in without_user {
                out.warnings.push(format!(
                    "secure-defaults: runAsGroup not defaulted: container {name:?} has no runAsUser and none is defaulted"
                ));
            }
        }
    }
    if !has(|s| s.fs_group.is_some()) {
        applied.fs_group = defaults.fs_group;
    }
    let has_fs_group = has(|s| s.fs_group.is_some()) || applied.fs_group.is_some();
    if !has(|s| s.fs_group_change_policy.is_some()) && has_fs_group {
        applied.fs_group_change_policy = defaults.fs_group_change_policy;
    }

    let mut fields = Map::with_capacity(4);
    if let Some(id) = applied.run_as_user {
        fields.insert("runAsUser".into(), id.get().into());
    }
    if let Some(id) = applied.run_as_group {
        fields.insert("runAsGroup".into(), id.get().into());
    }
    if let Some(id) = applied.fs_group {
        fields.insert("fsGroup".into(), id.get().into());
    }
    if let Some(p) = applied.fs_group_change_policy {
        fields.insert("fsGroupChangePolicy".into(), p.as_str().into());
    }
    if fields.is_empty() {
        return;
    }
    let path = Pointer::root().key("spec").key("securityContext");
    if sc.is_some() {
        for (key, value) in fields {
            out.patch.push(Add::new(path.clone().key(&key), value));
        }
    } else {
        out.patch.push(Add::new(path, Value::Object(fields)));
    }
}

fn no_escalation(list: ContainerList, index: usize, container: &Container<'_>, out: &mut Outcome) {
    let sc = container.security_context.as_ref();
    if sc.is_some_and(|sc| sc.allow_privilege_escalation.is_some()) {
        return;
    }
    let name = container.name();
    // The API server rejects allowPrivilegeEscalation=false together with either of these.
    if sc.and_then(|sc| sc.privileged) == Some(true) {
        out.warnings.push(format!(
            "secure-defaults: allowPrivilegeEscalation not defaulted: container {name:?} is privileged"
        ));
        return;
    }
    let adds_sys_admin = sc
        .and_then(|sc| sc.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .is_some_and(|add| {
            add.iter().any(|cap| {
                cap.eq_ignore_ascii_case("SYS_ADMIN") || cap.eq_ignore_ascii_case("CAP_SYS_ADMIN")
            })
        });
    if adds_sys_admin {
        out.warnings.push(format!(
            "secure-defaults: allowPrivilegeEscalation not defaulted: container {name:?} adds CAP_SYS_ADMIN"
        ));
        return;
    }
    let path = Pointer::root()
        .key("spec")
        .key(list.key())
        .index(index)
        .key("securityContext");
    out.patch.push(match sc {
        Some(_) => Add::new(path.key("allowPrivilegeEscalation"), false),
        None => Add::new(path, json!({"allowPrivilegeEscalation": false})),
    });
    out.applied.no_escalation.push(name.to_owned());
}

/// Records what was defaulted in the pod's annotation, unless the pod already carries one: the engine only
/// adds, so an earlier record (from a first invocation, or copied from another pod) is left as it is.
fn annotate(pod: &Pod<'_>, summary: &str, patch: &mut Vec<Add>) {
    let value = summary;
    let meta = Pointer::root().key("metadata");
    let op = match (&pod.metadata, pod.annotations()) {
        (_, Some(a)) if a.defaulted => return,
        (_, Some(_)) => Add::new(
            meta.key("annotations").key(pod::DEFAULTED_ANNOTATION),
            value,
        ),
        (Some(_), None) => Add::new(
            meta.key("annotations"),
            json!({ pod::DEFAULTED_ANNOTATION: value }),
        ),
        (None, None) => Add::new(
            meta,
            json!({"annotations": { pod::DEFAULTED_ANNOTATION: value }}),
        ),
    };
    patch.push(op);
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::patch;

    fn full() -> Defaults {
        Defaults {
            run_as_user: Id::new(65532),
            run_as_group: Id::new(65533),
            fs_group: Id::new(65534),
            fs_group_change_policy: Some(FsGroupChangePolicy::OnRootMismatch),
            disallow_privilege_escalation: true,
        }
    }

    /// Runs the engine on `pod`, applies the patch, checks that a second run adds nothing, and returns both.
    fn run(pod: &Value, defaults: &Defaults) -> (Value, Outcome) {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let outcome = default_pod(&view, defaults);
        let mut patched = pod.clone();
        patch::apply(&mut patched, &outcome.patch).unwrap();
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
        ];
        for (name, pod, absent, words) in cases {
            let (patched, outcome) = run(&pod, &full());
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
        assert_eq!(outcome.applied.no_escalation, vec!["app".to_owned()]);
    }

    #[test]
    fn run_as_group_needs_a_user_for_every_container() {
        let no_user = Defaults {
            run_as_user: None,
            ..full()
        };
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
        let no_fs_group = Defaults {
            fs_group: None,
            ..full()
        };
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
        let paths: Vec<&str> = outcome.patch.iter().map(|op| op.path.as_str()).collect();
        assert_eq!(paths, vec!["/spec/ephemeralContainers/1/securityContext"]);
        assert_eq!(outcome.applied.no_escalation, vec!["dbg2".to_owned()]);
        assert!(
            outcome
                .warnings
                .iter()
                .any(|w| w.contains("\"dbg3\" is privileged"))
        );
    }

    #[test]
    fn applied_summary_is_short_and_readable() {
        let applied = Applied {
            run_as_user: Id::new(65532),
            fs_group: Id::new(1),
            no_escalation: vec!["app".into(), "init-db".into()],
            ..Applied::default()
        };
        assert_eq!(
            applied.to_string(),
            "runAsUser=65532,fsGroup=1,allowPrivilegeEscalation=false(app,init-db)"
        );
        assert_eq!(
            applied.fields().collect::<Vec<_>>(),
            vec![
                Field::RunAsUser,
                Field::FsGroup,
                Field::AllowPrivilegeEscalation
            ]
        );
    }

    #[test]
    fn summary_covers_every_field_and_the_edges_of_ids() {
        let applied = Applied {
            run_as_user: Id::new(0),
            run_as_group: Id::new(Id::MAX),
            fs_group: Id::new(10),
            fs_group_change_policy: Some(FsGroupChangePolicy::OnRootMismatch),
            no_escalation: vec!["one".into()],
        };
        assert_eq!(
            applied.summary(),
            "runAsUser=0,runAsGroup=2147483647,fsGroup=10,fsGroupChangePolicy=OnRootMismatch,allowPrivilegeEscalation=false(one)"
        );
        assert_eq!(Applied::default().summary(), "");
        let only_escalation = Applied {
            no_escalation: vec!["a".into(), "b".into()],
            ..Applied::default()
        };
        assert_eq!(
            only_escalation.summary(),
            "allowPrivilegeEscalation=false(a,b)"
        );
    }
}
