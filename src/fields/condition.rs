//! The conditions under which a field is left out, stated once as data: the engine's guards evaluate them on the
//! pod, and the backstops' CEL is written from them (`make generate`), so the two cannot drift apart.

use serde_json::{Value, json};

use crate::pod::{Container, SECCOMP_POD_ANNOTATION};

/// A condition on one container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerCondition {
    /// `privileged: true`.
    Privileged,
    /// `capabilities.add` holds the capability, with or without its `CAP_` prefix, in any case.
    AddsCapability(&'static str),
}

impl ContainerCondition {
    /// Whether it holds for `container`.
    pub fn holds(self, container: &Container<'_>) -> bool {
        match self {
            ContainerCondition::Privileged => container.privileged(),
            ContainerCondition::AddsCapability(name) => container.adds_capability(name),
        }
    }

    /// Why a field is left out of `container`, for the warning.
    pub fn reason(self, container: &Container<'_>) -> String {
        match self {
            ContainerCondition::Privileged => {
                format!("container {:?} is privileged", container.name())
            }
            ContainerCondition::AddsCapability(name) => {
                format!("container {:?} adds CAP_{name}", container.name())
            }
        }
    }

    /// The condition of a container, for the backstops' comments: `it is privileged`.
    pub fn text(self) -> String {
        match self {
            ContainerCondition::Privileged => "it is privileged".to_owned(),
            ContainerCondition::AddsCapability(name) => format!("it adds {name}"),
        }
    }

    /// A container `securityContext` under which it holds: the unit tests and the e2e backstop test build their
    /// pods from it.
    pub fn example(self) -> Value {
        match self {
            ContainerCondition::Privileged => json!({"privileged": true}),
            ContainerCondition::AddsCapability(name) => json!({"capabilities": {"add": [name]}}),
        }
    }

    /// The condition in CEL, on the container `c`.
    pub fn cel(self) -> String {
        match self {
            ContainerCondition::Privileged => {
                "(has(c.securityContext) && has(c.securityContext.privileged) && c.securityContext.privileged)"
                    .to_owned()
            }
            ContainerCondition::AddsCapability(name) => format!(
                "(has(c.securityContext) && has(c.securityContext.capabilities) && \
                 has(c.securityContext.capabilities.add) &&\n  \
                 c.securityContext.capabilities.add.exists(a, a.upperAscii() in ['{name}', 'CAP_{name}']))"
            ),
        }
    }
}

/// A condition on the whole pod under which a pod-level field is left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCondition {
    /// Some container runs as user 0: its own `runAsUser`, else the pod's.
    SomeContainerRunsAsRoot,
    /// The pod states a seccomp profile in a deprecated annotation (pod-level or a container's).
    SeccompAnnotation,
}

impl PodCondition {
    /// The condition, for the backstops' comments.
    pub fn text(self) -> &'static str {
        match self {
            PodCondition::SomeContainerRunsAsRoot => {
                "some container runs as user 0 (the pod could never start)"
            }
            PodCondition::SeccompAnnotation => {
                "the pod states a profile in a deprecated seccomp annotation"
            }
        }
    }

    /// A JSON merge patch that makes it hold on a pod: the unit tests and the e2e backstop test build their pods
    /// from it.
    pub fn example(self) -> Value {
        match self {
            PodCondition::SomeContainerRunsAsRoot => {
                json!({"spec": {"securityContext": {"runAsUser": 0}}})
            }
            PodCondition::SeccompAnnotation => json!({"metadata": {"annotations": {
                SECCOMP_POD_ANNOTATION: "localhost/profiles/audit.json"}}}),
        }
    }

    /// The condition in CEL, on `object` (the pod) and `variables.containers` (all its containers).
    pub fn cel(self) -> &'static str {
        match self {
            PodCondition::SomeContainerRunsAsRoot => {
                "variables.containers.exists(c, has(c.securityContext) && has(c.securityContext.runAsUser) ?\n  \
                 c.securityContext.runAsUser == 0 :\n  \
                 has(object.spec.securityContext) && has(object.spec.securityContext.runAsUser) &&\n  \
                 object.spec.securityContext.runAsUser == 0)"
            }
            PodCondition::SeccompAnnotation => {
                "(has(object.metadata.annotations) && object.metadata.annotations.exists(k,\n  \
                 k == 'seccomp.security.alpha.kubernetes.io/pod' ||\n  \
                 k.startsWith('container.seccomp.security.alpha.kubernetes.io/')))"
            }
        }
    }
}

/// Which backstop checks that a field was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backstop {
    /// `secure-defaults-backstop`, for every served namespace.
    Plain,
    /// `secure-defaults-backstop-restricted`, with `profile: restricted`.
    Restricted,
}

impl Backstop {
    /// Both backstops.
    pub const ALL: [Backstop; 2] = [Backstop::Plain, Backstop::Restricted];

    /// The ValidatingAdmissionPolicy's name.
    pub fn policy_name(self) -> &'static str {
        match self {
            Backstop::Plain => "secure-defaults-backstop",
            Backstop::Restricted => "secure-defaults-backstop-restricted",
        }
    }

    /// Its files: the kustomize component's policy, then the chart's template.
    pub fn files(self) -> [&'static str; 2] {
        match self {
            Backstop::Plain => [
                "manifests/components/backstop/policy.yaml",
                "manifests/chart/secure-defaults/templates/backstop.yaml",
            ],
            Backstop::Restricted => [
                "manifests/components/backstop-restricted/policy.yaml",
                "manifests/chart/secure-defaults/templates/backstop-restricted.yaml",
            ],
        }
    }
}
