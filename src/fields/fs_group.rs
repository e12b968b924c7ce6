use serde_json::json;

use super::{FieldDef, Level, id};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "fsGroup",
    level: Level::Pod,
    shipped: Some(|| json!(65532)),
    when: "absent at pod level",
    check: |value| id::any(value).map(drop),
    examples: || (vec![json!(65532), json!(0)], json!(2_147_483_648_i64)),
    ..FieldDef::BASE
};
