//! `runAsUser` at pod level: the user every container runs as unless it names its own. A container's own value
//! always wins over the pod's in Kubernetes, so setting it here never overrides a container.

use serde_json::{Value, json};

use super::{Backstop, FieldDef, Level, id};

pub struct RunAsUser;

impl FieldDef for RunAsUser {
    fn name(&self) -> &'static str {
        "runAsUser"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn shipped(&self) -> Option<Value> {
        Some(json!(65532))
    }

    fn when(&self) -> &'static str {
        "absent at pod level. A container's own value always wins over the pod's in Kubernetes, so this never overrides a container."
    }

    fn backstop(&self) -> Option<Backstop> {
        Some(Backstop::Plain)
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        id::non_root(value).map(drop)
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(65532), json!(1), json!(id::MAX)], json!(0))
    }
}
