use serde_json::json;

use super::{Backstop, ContainerCondition, FieldDef, Level};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "capabilities.drop",
    level: Level::Container,
    path: Some(&["capabilities", "drop"]),
    restricted: Some(|| json!(["ALL"])),
    when: "the container has no `drop` list and is not privileged; its own `add` list stays (Kubernetes drops first, then adds)",
    restricted_doc: Some((
        "capabilities: drop `ALL`, add at most `NET_BIND_SERVICE`",
        "an added capability other than `NET_BIND_SERVICE` (such as the `SYS_PTRACE` of `kubectl debug`'s default profile); a `drop` list without `ALL`",
    )),
    check: |value| match value.as_array().map(Vec::as_slice) {
        Some([all]) if all == "ALL" => Ok(()),
        _ => Err(format!(
            "{value} is not a secure default; use [ALL] (a container that needs a capability adds it back)"
        )),
    },
    examples: || (vec![json!(["ALL"])], json!(["NET_RAW"])),
    show: |_| "ALL".to_owned(),
    container_skips: &[ContainerCondition::Privileged],
    backstop: Some(Backstop::Restricted),
    ..FieldDef::BASE
};
