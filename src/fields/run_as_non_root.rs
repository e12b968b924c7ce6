//! `runAsNonRoot: true` at pod level: the kubelet refuses to start a container that would run as root. It is
//! skipped when some container's effective `runAsUser` is 0 (its own, else the pod's), since that pod could never
//! start; and when some container has no numeric user at all, it is set with a warning, because an image whose
//! `USER` is root or a name fails to start under it.

use serde_json::{Value, json};

use super::{Backstop, FieldDef, Guard, Level, PodCondition, PodState, id};

pub struct RunAsNonRoot;

impl FieldDef for RunAsNonRoot {
    fn name(&self) -> &'static str {
        "runAsNonRoot"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn when(&self) -> &'static str {
        "absent, and no container would run as user 0 (its own `runAsUser`, else the pod's)"
    }

    fn backstop(&self) -> Option<Backstop> {
        Some(Backstop::Restricted)
    }

    fn pod_skips(&self) -> &'static [PodCondition] {
        &[PodCondition::SomeContainerRunsAsRoot]
    }

    fn restricted_doc(&self) -> Option<(&'static str, &'static str)> {
        Some((
            "run as non-root, never `runAsUser: 0`",
            "an explicit `runAsUser: 0` or `runAsNonRoot: false`",
        ))
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        match value {
            Value::Bool(true) => Ok(()),
            Value::Bool(false) => Err(
                "false is not a secure default; use true, or leave the field out to not default it"
                    .to_owned(),
            ),
            other => Err(format!("invalid type: {}, expected true", id::kind(other))),
        }
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(true)], json!(false))
    }

    fn restricted(&self) -> Option<Value> {
        Some(json!(true))
    }

    fn pod_guard(&self, pod: &PodState<'_, '_>) -> Guard {
        let pod_user = pod.value(super::RUN_AS_USER);
        let mut as_root = Vec::new();
        let mut unknown = Vec::new();
        for container in pod.containers() {
            match container.value(&["runAsUser"]).or(pod_user) {
                Some(user) if user.as_i64() == Some(0) => as_root.push(container.name()),
                Some(_) => {}
                None => unknown.push(container.name()),
            }
        }
        if !as_root.is_empty() {
            return Guard::Skip(
                as_root
                    .into_iter()
                    .map(|name| {
                        format!("container {name:?} runs as user 0, so the pod could not start")
                    })
                    .collect(),
            );
        }
        Guard::Set(
            unknown
                .into_iter()
                .map(|name| {
                    format!(
                        "container {name:?} has no runAsUser, so it fails to start if its image's USER is root or not numeric"
                    )
                })
                .collect(),
        )
    }
}
