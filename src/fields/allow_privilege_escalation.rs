use serde_json::json;

use super::{Backstop, ContainerCondition, FieldDef, Level, id};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "allowPrivilegeEscalation",
    level: Level::Container,
    shipped: Some(|| json!(false)),
    restricted: Some(|| json!(false)),
    when: "absent; `containers`, `initContainers` and `ephemeralContainers`, except a privileged one or one that adds `SYS_ADMIN` or `CAP_SYS_ADMIN` (escalation is always allowed there; the API server refuses the field beside `privileged` and `CAP_SYS_ADMIN`)",
    restricted_doc: Some((
        "no privilege escalation",
        "an explicit `allowPrivilegeEscalation: true`",
    )),
    check: id::only::<false>,
    examples: || (vec![json!(false)], json!(true)),
    container_skips: &[
        ContainerCondition::Privileged,
        ContainerCondition::AddsCapability("SYS_ADMIN"),
    ],
    backstop: Some(Backstop::Plain),
    ..FieldDef::BASE
};
