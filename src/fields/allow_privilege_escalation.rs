//! `allowPrivilegeEscalation: false` on each container: no setuid binary or file capability can raise a
//! process's privileges. Privilege escalation is always allowed for a privileged container or one with
//! `CAP_SYS_ADMIN`, so those containers are skipped: the API server refuses the field beside `privileged: true`
//! or an added `CAP_SYS_ADMIN`, and accepts it beside the `SYS_ADMIN` spelling of the same capability, where it
//! would only say something untrue (`make bench-peers` shows the peers setting it there).

use serde_json::{Value, json};

use super::{Backstop, ContainerCondition, FieldDef, Level};

pub struct AllowPrivilegeEscalation;

impl FieldDef for AllowPrivilegeEscalation {
    fn name(&self) -> &'static str {
        "allowPrivilegeEscalation"
    }

    fn level(&self) -> Level {
        Level::Container
    }

    fn shipped(&self) -> Option<Value> {
        Some(json!(false))
    }

    fn when(&self) -> &'static str {
        "absent; `containers`, `initContainers` and `ephemeralContainers`, except a privileged one or one that adds `SYS_ADMIN` or `CAP_SYS_ADMIN` (escalation is always allowed there; the API server refuses the field beside `privileged` and `CAP_SYS_ADMIN`)"
    }

    fn restricted_doc(&self) -> Option<(&'static str, &'static str)> {
        Some((
            "no privilege escalation",
            "an explicit `allowPrivilegeEscalation: true`",
        ))
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        match value {
            Value::Bool(false) => Ok(()),
            Value::Bool(true) => Err(
                "true is not a secure default; use false, or leave the field out to not default it"
                    .to_owned(),
            ),
            other => Err(format!(
                "invalid type: {}, expected false",
                super::id::kind(other)
            )),
        }
    }

    fn examples(&self) -> (Vec<Value>, Value) {
        (vec![json!(false)], json!(true))
    }

    fn restricted(&self) -> Option<Value> {
        Some(json!(false))
    }

    fn container_skips(&self) -> &'static [ContainerCondition] {
        &[
            ContainerCondition::Privileged,
            ContainerCondition::AddsCapability("SYS_ADMIN"),
        ]
    }

    fn backstop(&self) -> Option<Backstop> {
        Some(Backstop::Plain)
    }
}
