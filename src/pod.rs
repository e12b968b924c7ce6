//! A borrowed, minimal view of a Pod: only the fields the defaulting rules read, so parsing skips the rest
//! (managedFields, env, probes, volumes) without building it.
//!
//! Every field here is `Option`: a key that is missing and a key whose value is `null` both read as `None`,
//! which is exactly the engine's meaning of "absent". Presence-only fields use [`IgnoredAny`] so their value
//! is never materialised.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

/// The annotation the kubelet puts on mirror pods of static pods; those are never defaulted.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The annotation that records on the pod what was defaulted.
pub const DEFAULTED_ANNOTATION: &str = "secure-defaults.io/defaulted";

#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(default)]
    pub annotations: Option<Annotations>,
}

/// What the engine needs to know of `metadata.annotations`: that the map exists, and whether two keys are in it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Annotations {
    pub mirror: bool,
    pub defaulted: bool,
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
                        _ => {}
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(seen)
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(default)]
    pub security_context: Option<PodSecurityContext>,
    #[serde(borrow, default)]
    pub os: Option<Os<'a>>,
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Vec<Container<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default)]
    pub run_as_user: Option<IgnoredAny>,
    #[serde(default)]
    pub run_as_group: Option<IgnoredAny>,
    #[serde(default)]
    pub fs_group: Option<IgnoredAny>,
    #[serde(default)]
    pub fs_group_change_policy: Option<IgnoredAny>,
    #[serde(default)]
    pub windows_options: Option<WindowsOptions>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Os<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowsOptions {
    #[serde(default)]
    pub host_process: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub security_context: Option<ContainerSecurityContext<'a>>,
}

impl Container<'_> {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSecurityContext<'a> {
    #[serde(default)]
    pub allow_privilege_escalation: Option<IgnoredAny>,
    #[serde(default)]
    pub privileged: Option<bool>,
    #[serde(borrow, default)]
    pub capabilities: Option<Capabilities<'a>>,
    #[serde(default)]
    pub run_as_user: Option<IgnoredAny>,
    #[serde(default)]
    pub windows_options: Option<WindowsOptions>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Capabilities<'a> {
    #[serde(borrow, default)]
    pub add: Option<Vec<Cow<'a, str>>>,
}

/// Which of the pod's container lists a container is in; the token is its key under `spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl ContainerList {
    pub const ALL: [ContainerList; 3] = [
        ContainerList::Containers,
        ContainerList::InitContainers,
        ContainerList::EphemeralContainers,
    ];

    pub fn key(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
            ContainerList::EphemeralContainers => "ephemeralContainers",
        }
    }
}

impl<'a> Spec<'a> {
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
}

impl Pod<'_> {
    pub fn name(&self) -> &str {
        let meta = self.metadata.as_ref();
        meta.and_then(|m| m.name.as_deref())
            .or_else(|| meta.and_then(|m| m.generate_name.as_deref()))
            .unwrap_or("")
    }

    pub fn annotations(&self) -> Option<Annotations> {
        self.metadata.as_ref().and_then(|m| m.annotations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_reads_as_absent() {
        let pod: Pod = crate::json::from_slice(
            br#"{"metadata":{"annotations":null},"spec":{"securityContext":{"runAsUser":null,"fsGroup":0},
                "containers":[{"name":"a","securityContext":null}]}}"#,
        )
        .unwrap();
        assert!(pod.annotations().is_none());
        let spec = pod.spec.unwrap();
        let sc = spec.security_context.unwrap();
        assert!(sc.run_as_user.is_none());
        assert!(sc.fs_group.is_some(), "0 is a value, not absence");
        assert!(spec.containers.unwrap()[0].security_context.is_none());
    }

    #[test]
    fn annotations_report_only_the_keys_that_matter() {
        let pod: Pod = crate::json::from_slice(
            br#"{"metadata":{"annotations":{"a":"b","kubernetes.io/config.mirror":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(
            pod.annotations(),
            Some(Annotations {
                mirror: true,
                defaulted: false
            })
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let pod: Pod = crate::json::from_slice(
            br#"{"spec":{"futureField":{"deep":[1,2,{"x":null}]},"containers":[{"name":"a","resizePolicy":[]}]}}"#,
        )
        .unwrap();
        assert_eq!(
            pod.spec.unwrap().list(ContainerList::Containers)[0].name(),
            "a"
        );
    }
}
