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

impl fmt::Display for Applied {
    /// `runAsUser=65532,fsGroup=65532,allowPrivilegeEscalation=false(app,init-db)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{args}");
            sep = ",";
            r
        };
        if let Some(id) = self.run_as_user {
            item(f, format_args!("runAsUser={id}"))?;
        }
        if let Some(id) = self.run_as_group {
            item(f, format_args!("runAsGroup={id}"))?;
        }
        if let Some(id) = self.fs_group {
            item(f, format_args!("fsGroup={id}"))?;
        }
        if let Some(p) = self.fs_group_change_policy {
            item(f, format_args!("fsGroupChangePolicy={}", p.as_str()))?;
        }
        if !self.no_escalation.is_empty() {
            item(f, format_args!("allowPrivilegeEscalation=false({})", self.no_escalation.join(",")))?;
        }
        Ok(())
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
        out.warnings
            .push(format!("secure-defaults: Windows pod ({reason}) left unchanged"));
        return out;
    }

    pod_level(spec, defaults, &mut out);
    if defaults.disallow_privilege_escalation {
        for (list, index, container) in spec.all_containers() {
            no_escalation(list, index, container, &mut out);
        }
    }
    if !out.applied.is_empty() {
        annotate(pod, &out.applied, &mut out.patch);
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
        out.warnings
            .push(format!("secure-defaults: Windows pod ({reason}) left unchanged"));
        return out;
    }
    let existing: HashSet<&str> = old
        .spec
        .as_ref()
        .map(|s| s.list(ContainerList::EphemeralContainers).iter().map(Container::name).collect())
        .unwrap_or_default();
    for (index, container) in spec.list(ContainerList::EphemeralContainers).iter().enumerate() {
        if !existing.contains(container.name()) {
            no_escalation(ContainerList::EphemeralContainers, index, container, &mut out);
        }
    }
    out
}

/// Why a pod counts as a Windows pod, where the Linux fields this engine sets are invalid.
fn windows(pod: &Pod<'_>) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    if spec.os.as_ref().and_then(|os| os.name.as_deref()) == Some("windows") {
        return Some("spec.os.name is windows");
    }
    let host_process = |w: &Option<pod::WindowsOptions>| w.as_ref().and_then(|w| w.host_process) == Some(true);
    let pod_hpc = spec.security_context.as_ref().is_some_and(|sc| host_process(&sc.windows_options));
    let container_hpc = spec
        .all_containers()
        .any(|(_, _, c)| c.security_context.as_ref().is_some_and(|sc| host_process(&sc.windows_options)));
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
            .filter(|(_, _, c)| !pod_user && !c.security_context.as_ref().is_some_and(|sc| sc.run_as_user.is_some()))
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

    let mut fields = Map::new();
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
            add.iter()
                .any(|cap| cap.eq_ignore_ascii_case("SYS_ADMIN") || cap.eq_ignore_ascii_case("CAP_SYS_ADMIN"))
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
fn annotate(pod: &Pod<'_>, applied: &Applied, patch: &mut Vec<Add>) {
    let value = applied.to_string();
    let meta = Pointer::root().key("metadata");
    let op = match (&pod.metadata, pod.annotations()) {
        (_, Some(a)) if a.defaulted => return,
        (_, Some(_)) => Add::new(meta.key("annotations").key(pod::DEFAULTED_ANNOTATION), value),
        (Some(_), None) => Add::new(meta.key("annotations"), json!({ pod::DEFAULTED_ANNOTATION: value })),
        (None, None) => Add::new(meta, json!({"annotations": { pod::DEFAULTED_ANNOTATION: value }})),
    };
    patch.push(op);
}
