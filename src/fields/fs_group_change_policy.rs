//! `fsGroupChangePolicy` at pod level: how volume ownership is changed. It means nothing without an `fsGroup`, so
//! it is only set when the pod ends up with one (its own or the one being defaulted).

use serde_json::{Value, json};

use super::{FieldDef, Guard, Level, PodState, id};

pub struct FsGroupChangePolicy;

const VALUES: [&str; 2] = ["OnRootMismatch", "Always"];

impl FieldDef for FsGroupChangePolicy {
    fn name(&self) -> &'static str {
        "fsGroupChangePolicy"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn shipped(&self) -> Option<Value> {
        Some(json!("OnRootMismatch"))
    }

    fn when(&self) -> &'static str {
        "absent, and the pod ends up with an `fsGroup` (its own or the default)"
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        match value.as_str() {
            Some(s) if VALUES.contains(&s) => Ok(()),
            Some(s) => Err(format!(
                "unknown variant `{s}`, expected `OnRootMismatch` or `Always`"
            )),
            None => Err(format!(
                "invalid type: {}, expected `OnRootMismatch` or `Always`",
                id::kind(value)
            )),
        }
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (
            vec![json!("OnRootMismatch"), json!("Always")],
            json!("Sometimes"),
        )
    }

    fn pod_guard(&self, pod: &PodState<'_, '_>) -> Guard {
        // Skipped without a warning: the policy simply sets no fsGroup for this pod.
        if pod.value(super::FS_GROUP).is_some() {
            Guard::Set(Vec::new())
        } else {
            Guard::Skip(Vec::new())
        }
    }
}
