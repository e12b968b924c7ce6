//! `seccompProfile: {type: RuntimeDefault}` at pod level: the container runtime's default system-call filter.
//! Only set where the pod states no profile; a container's own profile (Localhost ones included) always wins.
//!
//! The deprecated seccomp annotations count as stated profiles. The API server refuses a pod whose pod-level
//! annotation and field disagree ("seccomp type in annotation and field must match"), so a pod with the pod-level
//! annotation gets no field, unless the annotation itself says `runtime/default` (then the field makes it take
//! effect: the kubelet has ignored the annotations since 1.27). A container whose annotation names another profile
//! keeps the pod without a pod-level default: that profile (often a Localhost one allowing more) was meant for it,
//! and RuntimeDefault could stop it.

use serde_json::{Value, json};

use super::{Backstop, FieldDef, Guard, Level, PodCondition, PodState, id};
use crate::pod::{SECCOMP_CONTAINER_ANNOTATION_PREFIX, SECCOMP_POD_ANNOTATION};

/// Annotation values that mean the runtime's default profile.
fn runtime_default(value: &str) -> bool {
    matches!(value, "runtime/default" | "docker/default")
}

pub(super) const FIELD: FieldDef = FieldDef {
    name: "seccompProfile",
    level: Level::Pod,
    restricted: Some(|| json!({"type": "RuntimeDefault"})),
    when: "absent at pod level, and no deprecated seccomp annotation names another profile; a container's own profile (Localhost ones included) stays and wins",
    restricted_doc: Some((
        "seccomp `RuntimeDefault` or `Localhost`",
        "an explicit `Unconfined` profile",
    )),
    check,
    examples: || {
        (
            vec![json!({"type": "RuntimeDefault"})],
            json!({"type": "Unconfined"}),
        )
    },
    pod_guard,
    pod_skips: &[PodCondition::SeccompAnnotation],
    backstop: Some(Backstop::Restricted),
    show: |value| {
        value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    },
    ..FieldDef::BASE
};

fn check(value: &Value) -> Result<(), String> {
    let Some(map) = value.as_object() else {
        return Err(format!(
            "invalid type: {}, expected {{type: RuntimeDefault}}",
            id::kind(value)
        ));
    };
    match map.get("type").and_then(Value::as_str) {
        Some("RuntimeDefault") if map.len() == 1 => Ok(()),
        Some("RuntimeDefault") => Err("a RuntimeDefault profile takes no other keys".to_owned()),
        Some(other) => Err(format!(
            "type {other:?} is not a secure default; only RuntimeDefault is (a Localhost profile names a file that exists only on some nodes)"
        )),
        None => Err("expected {type: RuntimeDefault}".to_owned()),
    }
}

fn pod_guard(pod: &PodState<'_, '_>) -> Guard {
    let Some(annotations) = pod.annotations() else {
        return Guard::Set(Vec::new());
    };
    let mut notes = Vec::new();
    if let Some(value) = &annotations.seccomp_pod {
        if !runtime_default(value) {
            return Guard::Skip(vec![format!(
                "the pod states its profile {value:?} in the deprecated annotation {SECCOMP_POD_ANNOTATION}, which \
                 the field must match; set spec.securityContext.seccompProfile instead"
            )]);
        }
        notes.push(format!(
            "the deprecated annotation {SECCOMP_POD_ANNOTATION} asks for {value:?}, which the kubelet ignores \
             since Kubernetes 1.27; the field makes it take effect"
        ));
    }
    let own_profile = |name: &str| {
        pod.containers()
            .any(|c| c.name() == name && c.value(&["seccompProfile"]).is_some())
    };
    let other: Vec<String> = annotations
        .seccomp_containers
        .iter()
        .filter(|(name, value)| !runtime_default(value) && !own_profile(name))
        .map(|(name, value)| {
            format!(
                "container {name:?} states its profile {value:?} in the deprecated annotation \
                 {SECCOMP_CONTAINER_ANNOTATION_PREFIX}{name}, which the kubelet ignores since Kubernetes 1.27; \
                 set its securityContext.seccompProfile instead"
            )
        })
        .collect();
    if !other.is_empty() {
        return Guard::Skip(other);
    }
    Guard::Set(notes)
}
