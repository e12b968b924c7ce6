//! `seccompProfile: {type: RuntimeDefault}` at pod level: the container runtime's default system-call filter.
//! Only set where the pod states no profile; a container's own profile (Localhost ones included) always wins.

use serde_json::{Value, json};

use super::{FieldDef, Level, id};

pub struct SeccompProfile;

impl FieldDef for SeccompProfile {
    fn name(&self) -> &'static str {
        "seccompProfile"
    }

    fn level(&self) -> Level {
        Level::Pod
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        let Some(map) = value.as_object() else {
            return Err(format!(
                "invalid type: {}, expected {{type: RuntimeDefault}}",
                id::kind(value)
            ));
        };
        match map.get("type").and_then(Value::as_str) {
            Some("RuntimeDefault") if map.len() == 1 => Ok(()),
            Some("RuntimeDefault") => {
                Err("a RuntimeDefault profile takes no other keys".to_owned())
            }
            Some(other) => Err(format!(
                "type {other:?} is not a secure default; only RuntimeDefault is (a Localhost profile names a file that exists only on some nodes)"
            )),
            None => Err("expected {type: RuntimeDefault}".to_owned()),
        }
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (
            vec![json!({"type": "RuntimeDefault"})],
            json!({"type": "Unconfined"}),
        )
    }

    fn restricted(&self) -> Option<Value> {
        Some(json!({"type": "RuntimeDefault"}))
    }

    fn show(&self, value: &Value) -> String {
        value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}
