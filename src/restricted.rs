//! Pod Security "restricted", as far as a pod's own values go: what defaulting cannot fix (an explicit value that
//! "restricted" forbids), said as warnings before the API server's PodSecurity admission refuses the pod, and the
//! whole check, which the property tests run on defaulted pods. Pure functions over the pod view.
//!
//! Follows the Pod Security Standards' "restricted" profile for Linux pods: no host namespaces, no hostPath volumes,
//! no privileged containers, only `NET_BIND_SERVICE` added and `ALL` dropped, `allowPrivilegeEscalation: false`,
//! `runAsNonRoot: true` and no `runAsUser: 0`, and a `RuntimeDefault` or `Localhost` seccomp profile.

use serde_json::Value;

use crate::pod::{Container, Spec};

/// The namespace label whose value `restricted` makes the API server enforce the profile.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The one capability "restricted" lets a container add.
const ALLOWED_ADD: &str = "NET_BIND_SERVICE";

/// Which containers to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'n> {
    /// The whole pod (a pod being created).
    Pod,
    /// Only the named ephemeral containers (those an update adds), since the rest of the pod already passed.
    Containers(&'n [&'n str]),
}

/// What "restricted" forbids that the pod states explicitly, one line per problem; defaulting never changes a
/// stated value, so these stay whatever the policy says.
pub fn explicit_violations(spec: &Spec<'_>, scope: Scope<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let sc = spec.security_context.as_ref();
    let pod_value = |key: &str| sc.and_then(|sc| sc.get(key)).filter(|v| !v.is_null());
    if scope == Scope::Pod {
        for (key, set) in [
            ("hostNetwork", spec.host_network),
            ("hostPID", spec.host_pid),
            ("hostIPC", spec.host_ipc),
        ] {
            if set == Some(true) {
                out.push(format!("the pod sets {key}: true"));
            }
        }
        for volume in spec.volumes.iter().flatten() {
            if volume.host_path.is_some() {
                let name = volume.name.as_deref().unwrap_or("");
                out.push(format!("volume {name:?} is a hostPath volume"));
            }
        }
        if pod_value("runAsUser").and_then(Value::as_i64) == Some(0) {
            out.push("the pod sets runAsUser: 0".to_owned());
        }
        if pod_value("runAsNonRoot") == Some(&Value::Bool(false)) {
            out.push("the pod sets runAsNonRoot: false".to_owned());
        }
        if pod_value("seccompProfile").is_some_and(unconfined) {
            out.push("the pod sets an Unconfined seccomp profile".to_owned());
        }
    }
    for container in containers(spec, scope) {
        container_violations(container, &mut out);
    }
    out
}

fn unconfined(profile: &Value) -> bool {
    profile.get("type").and_then(Value::as_str) == Some("Unconfined")
}

fn containers<'s, 'a>(
    spec: &'s Spec<'a>,
    scope: Scope<'s>,
) -> impl Iterator<Item = &'s Container<'a>> {
    spec.all_containers()
        .map(|(_, _, c)| c)
        .filter(move |c| match scope {
            Scope::Pod => true,
            Scope::Containers(names) => names.contains(&c.name()),
        })
}

fn container_violations(c: &Container<'_>, out: &mut Vec<String>) {
    let name = c.name();
    if c.privileged() {
        out.push(format!("container {name:?} is privileged"));
    }
    if let Some(Value::Array(add)) = c.value(&["capabilities", "add"]) {
        for cap in add.iter().filter_map(Value::as_str) {
            let bare = cap
                .get(..4)
                .filter(|p| p.eq_ignore_ascii_case("CAP_"))
                .map_or(cap, |_| cap.get(4..).unwrap_or(cap));
            if !bare.eq_ignore_ascii_case(ALLOWED_ADD) {
                out.push(format!("container {name:?} adds capability {cap}"));
            }
        }
    }
    if let Some(drop) = c.value(&["capabilities", "drop"])
        && !drops_all(drop)
    {
        out.push(format!("container {name:?} drops capabilities without ALL"));
    }
    if c.value(&["allowPrivilegeEscalation"]) == Some(&Value::Bool(true)) {
        out.push(format!(
            "container {name:?} sets allowPrivilegeEscalation: true"
        ));
    }
    if c.value(&["runAsUser"]).and_then(Value::as_i64) == Some(0) {
        out.push(format!("container {name:?} sets runAsUser: 0"));
    }
    if c.value(&["runAsNonRoot"]) == Some(&Value::Bool(false)) {
        out.push(format!("container {name:?} sets runAsNonRoot: false"));
    }
    if c.value(&["seccompProfile"]).is_some_and(unconfined) {
        out.push(format!(
            "container {name:?} sets an Unconfined seccomp profile"
        ));
    }
}

fn drops_all(drop: &Value) -> bool {
    drop.as_array().is_some_and(|d| {
        d.iter()
            .filter_map(Value::as_str)
            .any(|c| c.eq_ignore_ascii_case("ALL"))
    })
}

/// Everything "restricted" would refuse in the pod, explicit or missing: empty when it passes.
pub fn check(spec: &Spec<'_>) -> Vec<String> {
    let mut out = explicit_violations(spec, Scope::Pod);
    let sc = spec.security_context.as_ref();
    let pod_value = |key: &str| sc.and_then(|sc| sc.get(key)).filter(|v| !v.is_null());
    let pod_non_root = pod_value("runAsNonRoot") == Some(&Value::Bool(true));
    let pod_seccomp = pod_value("seccompProfile").is_some();
    for (_, _, c) in spec.all_containers() {
        let name = c.name();
        if c.value(&["allowPrivilegeEscalation"]) != Some(&Value::Bool(false)) {
            out.push(format!(
                "container {name:?} does not set allowPrivilegeEscalation: false"
            ));
        }
        if !c.value(&["capabilities", "drop"]).is_some_and(drops_all) {
            out.push(format!("container {name:?} does not drop ALL capabilities"));
        }
        let non_root = match c.value(&["runAsNonRoot"]) {
            Some(v) => *v == Value::Bool(true),
            None => pod_non_root,
        };
        if !non_root {
            out.push(format!(
                "container {name:?} may run as root (no runAsNonRoot: true)"
            ));
        }
        if !pod_seccomp && c.value(&["seccompProfile"]).is_none() {
            out.push(format!("container {name:?} has no seccomp profile"));
        }
    }
    out
}

/// The warnings for a pod in a namespace that enforces "restricted".
pub fn warnings(spec: &Spec<'_>, scope: Scope<'_>) -> Vec<String> {
    explicit_violations(spec, scope)
        .into_iter()
        .map(|problem| {
            format!(
                "secure-defaults: Pod Security \"restricted\" refuses this: {problem}; defaulting never changes an explicit value"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pod::Pod;

    fn explicit(pod: &Value) -> Vec<String> {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        explicit_violations(view.spec.as_ref().unwrap(), Scope::Pod)
    }

    #[test]
    fn explicit_values_that_restricted_forbids_are_named() {
        // (pod, words one of the problems must contain)
        let cases = [
            (
                json!({"spec": {"hostNetwork": true, "containers": []}}),
                "hostNetwork: true",
            ),
            (
                json!({"spec": {"hostPID": true, "containers": []}}),
                "hostPID: true",
            ),
            (
                json!({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": []}}),
                "volume \"root\" is a hostPath volume",
            ),
            (
                json!({"spec": {"securityContext": {"runAsUser": 0}, "containers": []}}),
                "the pod sets runAsUser: 0",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"runAsUser": 0}}]}}),
                "container \"a\" sets runAsUser: 0",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"privileged": true}}]}}),
                "container \"a\" is privileged",
            ),
            (
                json!({"spec": {"ephemeralContainers": [{"name": "debugger", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}}),
                "container \"debugger\" adds capability SYS_PTRACE",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]}}),
                "drops capabilities without ALL",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": true}}]}}),
                "allowPrivilegeEscalation: true",
            ),
        ];
        for (pod, words) in cases {
            let problems = explicit(&pod);
            assert!(
                problems.iter().any(|p| p.contains(words)),
                "{pod}: {problems:?}"
            );
        }
    }

    #[test]
    fn what_restricted_allows_is_not_a_problem() {
        let pod = json!({"spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}],
            "containers": [{"name": "web", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}, "runAsUser": 1000}}]}});
        assert_eq!(explicit(&pod), Vec::<String>::new());
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        assert_eq!(check(view.spec.as_ref().unwrap()), Vec::<String>::new());
    }

    #[test]
    fn missing_fields_fail_the_whole_check() {
        let text = json!({"spec": {"containers": [{"name": "a"}]}}).to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let problems = check(view.spec.as_ref().unwrap());
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn an_ephemeral_update_is_judged_by_its_new_containers() {
        let text = json!({"spec": {"securityContext": {"runAsUser": 0},
            "ephemeralContainers": [{"name": "old", "securityContext": {"privileged": true}},
                                    {"name": "new", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}})
        .to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let problems =
            explicit_violations(view.spec.as_ref().unwrap(), Scope::Containers(&["new"]));
        assert_eq!(
            problems,
            vec!["container \"new\" adds capability SYS_PTRACE".to_owned()]
        );
    }
}
