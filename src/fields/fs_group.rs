//! `fsGroup` at pod level: the group that owns the pod's volumes. Any ID is accepted, 0 included, since a group
//! gives no privilege on its own.

use serde_json::{Value, json};

use super::{FieldDef, Level, id};

pub struct FsGroup;

impl FieldDef for FsGroup {
    fn name(&self) -> &'static str {
        "fsGroup"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn shipped(&self) -> Option<Value> {
        Some(json!(65532))
    }

    fn when(&self) -> &'static str {
        "absent at pod level"
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        id::any(value).map(drop)
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(65532), json!(0)], json!(2_147_483_648_i64))
    }
}
