use serde_json::json;

use super::{Backstop, FieldDef, Guard, Level, PodCondition, PodState, id};

pub(super) const FIELD: FieldDef = FieldDef {
    name: "runAsNonRoot",
    level: Level::Pod,
    restricted: Some(|| json!(true)),
    when: "absent, and no container would run as user 0 (its own `runAsUser`, else the pod's)",
    restricted_doc: Some((
        "run as non-root, never `runAsUser: 0`",
        "an explicit `runAsUser: 0` or `runAsNonRoot: false`",
    )),
    check: id::only::<true>,
    examples: || (vec![json!(true)], json!(false)),
    pod_guard,
    pod_skips: &[PodCondition::SomeContainerRunsAsRoot],
    backstop: Some(Backstop::Restricted),
    ..FieldDef::BASE
};

fn pod_guard(pod: &PodState<'_, '_>) -> Guard {
    let pod_user = pod.value(super::RUN_AS_USER);
    let mut as_root = Vec::new();
    let mut unknown = Vec::new();
    for container in pod.containers() {
        match pod.container_user(container).or(pod_user) {
            Some(user) if user.as_i64() == Some(0) => as_root.push(container.name()),
            Some(_) => {}
            None => unknown.push(container.name()),
        }
    }
    if !as_root.is_empty() {
        return Guard::Skip(
            as_root
                .into_iter()
                .map(|name| {
                    format!("container {name:?} runs as user 0, so the pod could not start")
                })
                .collect(),
        );
    }
    Guard::Set(
        unknown
            .into_iter()
            .map(|name| {
                format!(
                    "container {name:?} has no runAsUser, so it fails to start if its image's USER is root or not numeric"
                )
            })
            .collect(),
    )
}
