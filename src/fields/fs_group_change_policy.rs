use serde_json::{Value, json};

use super::{FieldDef, Guard, Level, id};

const VALUES: [&str; 2] = ["OnRootMismatch", "Always"];

pub(super) const FIELD: FieldDef = FieldDef {
    name: "fsGroupChangePolicy",
    level: Level::Pod,
    shipped: Some(|| json!("OnRootMismatch")),
    when: "absent, and the pod ends up with an `fsGroup` (its own or the default)",
    check,
    examples: || {
        (
            vec![json!("OnRootMismatch"), json!("Always")],
            json!("Sometimes"),
        )
    },
    // Skipped without a warning: the policy simply sets no fsGroup for this pod.
    pod_guard: |pod| match pod.value(super::FS_GROUP) {
        Some(_) => Guard::Set(Vec::new()),
        None => Guard::Skip(Vec::new()),
    },
    ..FieldDef::BASE
};

fn check(value: &Value) -> Result<(), String> {
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
