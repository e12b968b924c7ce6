//! `capabilities.drop: [ALL]` on each container that has no `drop` list of its own. A container's own `add` list
//! stays: Kubernetes applies the drop first, then the adds. Privileged containers are skipped, since they get
//! every capability whatever the lists say.

use serde_json::{Value, json};

use super::{Backstop, ContainerCondition, FieldDef, Level};

pub struct DropCapabilities;

impl FieldDef for DropCapabilities {
    fn name(&self) -> &'static str {
        "capabilities.drop"
    }

    fn level(&self) -> Level {
        Level::Container
    }

    fn when(&self) -> &'static str {
        "the container has no `drop` list and is not privileged; its own `add` list stays (Kubernetes drops first, then adds)"
    }

    fn restricted_doc(&self) -> Option<(&'static str, &'static str)> {
        Some((
            "capabilities: drop `ALL`, add at most `NET_BIND_SERVICE`",
            "an added capability other than `NET_BIND_SERVICE` (such as the `SYS_PTRACE` of `kubectl debug`'s default profile); a `drop` list without `ALL`",
        ))
    }

    fn path(&self) -> Vec<&'static str> {
        vec!["capabilities", "drop"]
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        if *value == json!(["ALL"]) {
            Ok(())
        } else {
            Err(format!(
                "{value} is not a secure default; use [ALL] (a container that needs a capability adds it back)"
            ))
        }
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(["ALL"])], json!(["NET_RAW"]))
    }

    fn restricted(&self) -> Option<Value> {
        Some(json!(["ALL"]))
    }

    fn show(&self, _value: &Value) -> String {
        "ALL".to_owned()
    }

    fn container_skips(&self) -> &'static [ContainerCondition] {
        &[ContainerCondition::Privileged]
    }

    fn backstop(&self) -> Option<Backstop> {
        Some(Backstop::Restricted)
    }
}
