use serde_json::json;

use super::{FieldDef, Guard, Level, PodState, id};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "runAsGroup",
    level: Level::Pod,
    shipped: Some(|| json!(65532)),
    when: "absent at pod level, and every container ends up with a `runAsUser` (its own, the pod's, or the default): container runtimes refuse a group without a user",
    check: |value| id::non_root(value).map(drop),
    examples: || (vec![json!(65532), json!(3000)], json!(-1)),
    pod_guard,
    ..FieldDef::BASE
};

fn pod_guard(pod: &PodState<'_, '_>) -> Guard {
    if pod.value(super::RUN_AS_USER).is_some() {
        return Guard::Set(Vec::new());
    }
    let without_user: Vec<String> = pod
        .containers()
        .filter(|c| pod.container_user(c).is_none())
        .map(|c| {
            format!(
                "container {:?} has no runAsUser and none is defaulted",
                c.name()
            )
        })
        .collect();
    if without_user.is_empty() {
        Guard::Set(Vec::new())
    } else {
        Guard::Skip(without_user)
    }
}
