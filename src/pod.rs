//! A borrowed, minimal view of a Pod, read with serde_json: the pod's structure down to each `securityContext`,
//! which is kept whole as a JSON map so every field in [`crate::fields`] can look up its own keys. Everything
//! else (managedFields, env, probes, volumes) is validated and skipped without being built.
//!
//! A key that is missing and a key whose value is `null` both read as absent, which is exactly the engine's
//! meaning of "absent".

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value, json};

/// The annotation the kubelet puts on mirror pods of static pods; those are never defaulted.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The annotation that records on the pod what was defaulted.
pub const DEFAULTED_ANNOTATION: &str = "secure-defaults.io/defaulted";
/// The annotation by which a pod (in practice its template) asks not to get some fields: `fsGroup,runAsUser`, or
/// `*` for every field. Honoured only for the fields the policy's `podExceptions` allow.
pub const SKIP_ANNOTATION: &str = "secure-defaults.io/skip";
/// The annotation that records on the pod which of the fields it asked to skip were left out.
pub const EXCEPTIONS_ANNOTATION: &str = "secure-defaults.io/exceptions";
/// The deprecated pod-level seccomp annotation. The API server still refuses a pod whose
/// `securityContext.seccompProfile` does not match it; the kubelet ignores it since Kubernetes 1.27.
pub const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
/// The prefix of the deprecated per-container seccomp annotation (`…/NAME`), ignored by the kubelet since 1.27.
pub const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str =
    "container.seccomp.security.alpha.kubernetes.io/";
/// The node labels that say a node's operating system.
const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];
/// The node label of a node's architecture.
const ARCH_LABEL: &str = "kubernetes.io/arch";

/// A `securityContext`, as the pod states it.
pub type SecurityContext = Map<String, Value>;

/// The pod, or `{}` where a review carries none.
#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    /// `metadata`.
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    /// `spec`.
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

/// What the engine reads of `metadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// `generateName`, the name's stand-in before the API server picks one.
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    /// `annotations`.
    #[serde(default)]
    pub annotations: Option<Annotations>,
}

/// What the engine needs to know of `metadata.annotations`: that the map exists, whether some keys are in it,
/// and the value of the skip annotation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The pod is a mirror pod.
    pub mirror: bool,
    /// The pod already records what was defaulted.
    pub defaulted: bool,
    /// The pod already records the exceptions it got.
    pub exceptions: bool,
    /// The value of the skip annotation.
    pub skip: Option<String>,
    /// The value of the deprecated pod-level seccomp annotation.
    pub seccomp_pod: Option<String>,
    /// The deprecated per-container seccomp annotations: container name and value.
    pub seccomp_containers: Vec<(String, String)>,
}

/// A map key, borrowed from the input when it has no escapes (a plain `Cow` would always copy it).
#[derive(Deserialize)]
#[serde(transparent)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationsVisitor;
        impl<'de> Visitor<'de> for AnnotationsVisitor {
            type Value = Annotations;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut seen = Annotations::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        MIRROR_ANNOTATION => seen.mirror = true,
                        DEFAULTED_ANNOTATION => seen.defaulted = true,
                        EXCEPTIONS_ANNOTATION => seen.exceptions = true,
                        SKIP_ANNOTATION => {
                            seen.skip = map.next_value::<Option<String>>()?;
                            continue;
                        }
                        SECCOMP_POD_ANNOTATION => {
                            seen.seccomp_pod = map.next_value::<Option<String>>()?;
                            continue;
                        }
                        other => {
                            if let Some(name) =
                                other.strip_prefix(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
                            {
                                let name = name.to_owned();
                                if let Some(value) = map.next_value::<Option<String>>()? {
                                    seen.seccomp_containers.push((name, value));
                                }
                                continue;
                            }
                        }
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(seen)
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

/// What the engine reads of `spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    /// The pod-level `securityContext`.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// `os`.
    #[serde(borrow, default)]
    pub os: Option<Os<'a>>,
    /// `containers`.
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
    /// `initContainers`.
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    /// `ephemeralContainers`.
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Vec<Container<'a>>>,
    /// `hostNetwork`.
    #[serde(default)]
    pub host_network: Option<bool>,
    /// `hostPID`.
    #[serde(default, rename = "hostPID")]
    pub host_pid: Option<bool>,
    /// `hostIPC`.
    #[serde(default, rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    /// `volumes`.
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Volume<'a>>>,
    /// `nodeSelector`: only the operating system and architecture labels are kept.
    #[serde(default)]
    pub node_selector: Option<NodeSelector>,
    /// `affinity`: only the required node affinity's terms on the operating system are read.
    #[serde(default)]
    pub affinity: Option<Affinity>,
}

/// What the engine reads of `nodeSelector`: whether it asks for Windows nodes.
#[derive(Debug, Default)]
pub struct NodeSelector {
    /// `kubernetes.io/os` (or the older `beta.kubernetes.io/os`) is `windows`.
    pub windows: bool,
    /// `kubernetes.io/arch`: the platform of a multi-arch image's configuration.
    pub arch: Option<String>,
}

impl<'de> Deserialize<'de> for NodeSelector {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SelectorVisitor;
        impl<'de> Visitor<'de> for SelectorVisitor {
            type Value = NodeSelector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of node labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeSelector, A::Error> {
                let mut seen = NodeSelector::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if OS_LABELS.contains(&key.as_ref()) {
                        let value = map.next_value::<Value>()?;
                        seen.windows |= value.as_str() == Some("windows");
                    } else if key == ARCH_LABEL {
                        seen.arch = map.next_value::<Value>()?.as_str().map(str::to_owned);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(seen)
            }
        }
        deserializer.deserialize_map(SelectorVisitor)
    }
}

/// `affinity`, down to the required node affinity's terms.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// `nodeAffinity`.
    #[serde(default)]
    pub node_affinity: Option<NodeAffinity>,
}

/// `affinity.nodeAffinity`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    /// `requiredDuringSchedulingIgnoredDuringExecution`.
    #[serde(default)]
    pub required_during_scheduling_ignored_during_execution: Option<RequiredNodes>,
}

/// The node selector a pod's nodes must match: any one of its terms.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequiredNodes {
    /// `nodeSelectorTerms`, ORed.
    #[serde(default)]
    pub node_selector_terms: Option<Vec<NodeSelectorTerm>>,
}

/// One term: its expressions, ANDed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    /// `matchExpressions`.
    #[serde(default)]
    pub match_expressions: Option<Vec<Requirement>>,
}

/// One node selector requirement; values the engine does not need are read as they come.
#[derive(Debug, Default, Deserialize)]
pub struct Requirement {
    /// `key`.
    #[serde(default)]
    pub key: Option<Value>,
    /// `operator`.
    #[serde(default)]
    pub operator: Option<Value>,
    /// `values`.
    #[serde(default)]
    pub values: Option<Value>,
}

impl Requirement {
    /// Whether this requirement admits only Windows nodes: `In [windows]`, or `NotIn` a list holding `linux`.
    fn only_windows(&self) -> bool {
        let key = self.key.as_ref().and_then(Value::as_str);
        if !key.is_some_and(|k| OS_LABELS.contains(&k)) {
            return false;
        }
        let values: Vec<&str> = match &self.values {
            Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        match self.operator.as_ref().and_then(Value::as_str) {
            Some("In") => !values.is_empty() && values.iter().all(|v| *v == "windows"),
            Some("NotIn") => values.contains(&"linux"),
            _ => false,
        }
    }
}

/// Why a pod counts as a Windows pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowsBy {
    /// `spec.os.name: windows`.
    OsName,
    /// `windowsOptions.hostProcess: true` on the pod or a container.
    HostProcess,
    /// `nodeSelector` asks for `kubernetes.io/os: windows`.
    NodeSelector,
    /// Every term of the required node affinity admits only Windows nodes.
    NodeAffinity,
}

/// The backstops' match condition that leaves mirror pods out (true for every other pod): its name and CEL.
pub const NOT_A_MIRROR_POD: (&str, &str) = (
    "not-a-mirror-pod",
    "!has(object.metadata.annotations) ||\n!('kubernetes.io/config.mirror' in object.metadata.annotations)",
);

impl WindowsBy {
    /// Every way a pod counts as a Windows pod.
    pub const ALL: [WindowsBy; 4] = [
        WindowsBy::OsName,
        WindowsBy::HostProcess,
        WindowsBy::NodeSelector,
        WindowsBy::NodeAffinity,
    ];

    /// The backstops' match condition that leaves these Windows pods out, as the engine does (true for every
    /// other pod): its name and CEL, next to the Rust check in [`Spec::windows`].
    pub fn not_matching(self) -> (&'static str, &'static str) {
        match self {
            WindowsBy::OsName => (
                "not-a-windows-pod",
                "!has(object.spec.os) || !has(object.spec.os.name) || object.spec.os.name != 'windows'",
            ),
            WindowsBy::HostProcess => (
                "not-a-windows-host-process-pod",
                "!(has(object.spec.securityContext) && has(object.spec.securityContext.windowsOptions) &&\n  \
                 has(object.spec.securityContext.windowsOptions.hostProcess) &&\n  \
                 object.spec.securityContext.windowsOptions.hostProcess) &&\n\
                 !object.spec.containers.exists(c, has(c.securityContext) && has(c.securityContext.windowsOptions) &&\n  \
                 has(c.securityContext.windowsOptions.hostProcess) && c.securityContext.windowsOptions.hostProcess) &&\n\
                 !(has(object.spec.initContainers) && object.spec.initContainers.exists(c, has(c.securityContext) &&\n  \
                 has(c.securityContext.windowsOptions) && has(c.securityContext.windowsOptions.hostProcess) &&\n  \
                 c.securityContext.windowsOptions.hostProcess))",
            ),
            WindowsBy::NodeSelector => (
                "not-pinned-to-windows-nodes-by-its-node-selector",
                "!(has(object.spec.nodeSelector) && object.spec.nodeSelector.exists(k,\n  \
                 k in ['kubernetes.io/os', 'beta.kubernetes.io/os'] && object.spec.nodeSelector[k] == 'windows'))",
            ),
            WindowsBy::NodeAffinity => (
                "not-pinned-to-windows-nodes-by-its-node-affinity",
                "!(has(object.spec.affinity) && has(object.spec.affinity.nodeAffinity) &&\n  \
                 has(object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution) &&\n  \
                 size(object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms) > 0 &&\n  \
                 object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms.all(t,\n    \
                 has(t.matchExpressions) && t.matchExpressions.exists(e,\n      \
                 e.key in ['kubernetes.io/os', 'beta.kubernetes.io/os'] && has(e.values) &&\n      \
                 ((e.operator == 'In' && size(e.values) > 0 && e.values.all(v, v == 'windows')) ||\n       \
                 (e.operator == 'NotIn' && 'linux' in e.values)))))",
            ),
        }
    }

    /// A JSON merge patch that makes a pod count as a Windows pod this way: the unit tests and the e2e backstop
    /// test build their pods from it.
    pub fn example(self) -> Value {
        match self {
            WindowsBy::OsName => json!({"spec": {"os": {"name": "windows"}}}),
            WindowsBy::HostProcess => {
                json!({"spec": {"hostNetwork": true, "securityContext": {"windowsOptions": {
                "hostProcess": true, "runAsUserName": "NT AUTHORITY\\SYSTEM"}}}})
            }
            WindowsBy::NodeSelector => {
                json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}}})
            }
            WindowsBy::NodeAffinity => json!({"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}}}}),
        }
    }

    /// What the pod should say instead, where the API server cannot tell it is a Windows pod.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            WindowsBy::NodeSelector | WindowsBy::NodeAffinity => {
                Some("set spec.os.name: windows to say so")
            }
            WindowsBy::OsName | WindowsBy::HostProcess => None,
        }
    }
}

impl std::fmt::Display for WindowsBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowsBy::OsName => "spec.os.name is windows",
            WindowsBy::HostProcess => "windowsOptions.hostProcess is set",
            WindowsBy::NodeSelector => "nodeSelector kubernetes.io/os is windows",
            WindowsBy::NodeAffinity => "its required node affinity admits only Windows nodes",
        })
    }
}

/// What the engine reads of a volume: its name, and whether it is a hostPath volume.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// `hostPath`, present or not.
    #[serde(default)]
    pub host_path: Option<IgnoredAny>,
}

/// `spec.os`.
#[derive(Debug, Default, Deserialize)]
pub struct Os<'a> {
    /// `linux` or `windows`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

/// One container, of any of the three lists.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// `image`, as the pod names it.
    #[serde(borrow, default)]
    pub image: Option<Cow<'a, str>>,
    /// Its `securityContext`.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
}

impl Container<'_> {
    /// The container's name, or "" for a nameless one.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The stated (non-null) value at `path` below the container's `securityContext`.
    pub fn value(&self, path: &[&str]) -> Option<&Value> {
        let (last, parents) = path.split_last()?;
        let mut map = self.security_context.as_ref()?;
        for key in parents {
            map = map.get(*key)?.as_object()?;
        }
        map.get(*last).filter(|v| !v.is_null())
    }

    /// `privileged: true`.
    pub fn privileged(&self) -> bool {
        self.value(&["privileged"]) == Some(&Value::Bool(true))
    }

    /// Whether `capabilities.add` holds `name`, with or without its `CAP_` prefix, in any case.
    pub fn adds_capability(&self, name: &str) -> bool {
        let Some(Value::Array(add)) = self.value(&["capabilities", "add"]) else {
            return false;
        };
        add.iter().filter_map(Value::as_str).any(|cap| {
            let cap = cap
                .get(..4)
                .filter(|p| p.eq_ignore_ascii_case("CAP_"))
                .map_or(cap, |_| &cap[4..]);
            cap.eq_ignore_ascii_case(name)
        })
    }

    /// `windowsOptions.hostProcess: true`.
    pub fn host_process(&self) -> bool {
        self.value(&["windowsOptions", "hostProcess"]) == Some(&Value::Bool(true))
    }
}

/// Which of the pod's container lists a container is in; the token is its key under `spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    /// `containers`.
    Containers,
    /// `initContainers`.
    InitContainers,
    /// `ephemeralContainers`.
    EphemeralContainers,
}

impl ContainerList {
    /// The three lists, in the order the annotation names their containers.
    pub const ALL: [ContainerList; 3] = [
        ContainerList::Containers,
        ContainerList::InitContainers,
        ContainerList::EphemeralContainers,
    ];

    /// The list's key under `spec`.
    pub fn key(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
            ContainerList::EphemeralContainers => "ephemeralContainers",
        }
    }
}

impl<'a> Spec<'a> {
    /// The containers of one list (empty when the list is absent).
    pub fn list(&self, list: ContainerList) -> &[Container<'a>] {
        let containers = match list {
            ContainerList::Containers => &self.containers,
            ContainerList::InitContainers => &self.init_containers,
            ContainerList::EphemeralContainers => &self.ephemeral_containers,
        };
        containers.as_deref().unwrap_or(&[])
    }

    /// Every container of the pod, with the list it is in and its index there.
    pub fn all_containers(&self) -> impl Iterator<Item = (ContainerList, usize, &Container<'a>)> {
        ContainerList::ALL.into_iter().flat_map(move |list| {
            self.list(list)
                .iter()
                .enumerate()
                .map(move |(i, c)| (list, i, c))
        })
    }

    /// Why the pod counts as a Windows pod, where the Linux fields this engine sets are invalid or break it (a
    /// Windows kubelet refuses `runAsNonRoot` for ContainerAdministrator). A pod pinned to Windows nodes by its
    /// node selection counts too, though the API server knows it only by `spec.os.name`.
    pub fn windows(&self) -> Option<WindowsBy> {
        if self.os.as_ref().and_then(|os| os.name.as_deref()) == Some("windows") {
            return Some(WindowsBy::OsName);
        }
        let pod_hpc = self
            .security_context
            .as_ref()
            .and_then(|sc| sc.get("windowsOptions"))
            .and_then(|w| w.get("hostProcess"))
            == Some(&Value::Bool(true));
        if pod_hpc || self.all_containers().any(|(_, _, c)| c.host_process()) {
            return Some(WindowsBy::HostProcess);
        }
        if self.node_selector.as_ref().is_some_and(|s| s.windows) {
            return Some(WindowsBy::NodeSelector);
        }
        let terms = self
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .and_then(|r| r.node_selector_terms.as_deref())
            .unwrap_or_default();
        let pinned = !terms.is_empty()
            && terms.iter().all(|t| {
                t.match_expressions
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(Requirement::only_windows)
            });
        pinned.then_some(WindowsBy::NodeAffinity)
    }
}

impl Pod<'_> {
    /// The pod's name, else its generateName, else "".
    pub fn name(&self) -> &str {
        let meta = self.metadata.as_ref();
        meta.and_then(|m| m.name.as_deref())
            .or_else(|| meta.and_then(|m| m.generate_name.as_deref()))
            .unwrap_or("")
    }

    /// What the engine knows of its annotations; `None` when the pod has none.
    pub fn annotations(&self) -> Option<&Annotations> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    /// A mirror pod of a static pod, which is never defaulted.
    pub fn is_mirror(&self) -> bool {
        self.annotations().is_some_and(|a| a.mirror)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_reads_as_absent() {
        let pod: Pod = serde_json::from_slice(
            br#"{"metadata":{"annotations":null},"spec":{"securityContext":{"runAsUser":null,"fsGroup":0},
                "containers":[{"name":"a","securityContext":null}]}}"#,
        )
        .unwrap();
        assert!(pod.annotations().is_none());
        let spec = pod.spec.unwrap();
        let sc = spec.security_context.unwrap();
        assert!(
            crate::fields::stated(Some(&sc), &["fsGroup"]),
            "0 is a value"
        );
        assert!(!crate::fields::stated(Some(&sc), &["runAsUser"]));
        assert!(spec.containers.unwrap()[0].security_context.is_none());
    }

    #[test]
    fn annotations_report_only_the_keys_that_matter() {
        let pod: Pod = serde_json::from_slice(
            br#"{"metadata":{"annotations":{"a":"b","kubernetes.io/config.mirror":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(
            pod.annotations(),
            Some(&Annotations {
                mirror: true,
                ..Annotations::default()
            })
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let pod: Pod = serde_json::from_slice(
            br#"{"spec":{"futureField":{"deep":[1,2,{"x":null}]},"containers":[{"name":"a","resizePolicy":[]}]}}"#,
        )
        .unwrap();
        assert_eq!(
            pod.spec.unwrap().list(ContainerList::Containers)[0].name(),
            "a"
        );
    }

    #[test]
    fn capabilities_match_with_or_without_their_prefix() {
        let c: Container = serde_json::from_str(
            r#"{"securityContext":{"capabilities":{"add":["NET_ADMIN","cap_sys_admin"]}}}"#,
        )
        .unwrap();
        assert!(c.adds_capability("SYS_ADMIN"));
        assert!(c.adds_capability("NET_ADMIN"));
        assert!(!c.adds_capability("CHOWN"));
    }
}
