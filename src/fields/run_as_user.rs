use serde_json::json;

use super::{Backstop, FieldDef, Level, id};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "runAsUser",
    level: Level::Pod,
    shipped: Some(|| json!(65532)),
    when: "absent at pod level. A container's own value always wins over the pod's in Kubernetes, so this never overrides a container.",
    backstop: Some(Backstop::Plain),
    check: |value| id::non_root(value).map(drop),
    examples: || (vec![json!(65532), json!(1), json!(id::MAX)], json!(0)),
    ..FieldDef::BASE
};
