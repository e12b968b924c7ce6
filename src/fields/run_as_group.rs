//! `runAsGroup` at pod level. Container runtimes refuse a group without a user, so it is only set when every
//! container ends up with a `runAsUser` (its own, the pod's, or the one being defaulted).

use serde_json::{Value, json};

use super::{FieldDef, Guard, Level, PodState, id};

pub struct RunAsGroup;

impl FieldDef for RunAsGroup {
    fn name(&self) -> &'static str {
        "runAsGroup"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn shipped(&self) -> Option<Value> {
        Some(json!(65532))
    }

    fn when(&self) -> &'static str {
        "absent at pod level, and every container ends up with a `runAsUser` (its own, the pod's, or the default): container runtimes refuse a group without a user"
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        id::non_root(value).map(drop)
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(65532), json!(3000)], json!(-1))
    }

    fn pod_guard(&self, pod: &PodState<'_, '_>) -> Guard {
        if pod.value(super::RUN_AS_USER).is_some() {
            return Guard::Set(Vec::new());
        }
        let without_user: Vec<String> = pod
            .containers()
            .filter(|c| c.value(&["runAsUser"]).is_none())
            .map(|c| {
                format!(
                    "container {:?} has no runAsUser and none is defaulted",
                    c.name()
                )
            })
            .collect();
        if without_user.is_empty() {
            Guard::Set(Vec::new())
        } else {
            Guard::Skip(without_user)
        }
    }
}
