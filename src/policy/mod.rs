//! The policy: which namespaces are defaulted and with what. Pure data and decisions; `file` turns YAML into a
//! validated [`Policy`]; the server keeps the current one live (`server::policy_store`, `server::policy_reload`).

pub mod describe;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use describe::describe;
pub use file::{PolicyError, load, parse};

/// The namespace label that opts a namespace in (`enabled`) or, in cluster-wide mode, out (`disabled`).
pub const INJECT_LABEL: &str = "secure-defaults.io/inject";
/// Namespaces that are never defaulted, whatever the policy says: the cluster's own.
pub const ALWAYS_EXEMPT: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only namespaces labelled `secure-defaults.io/inject=enabled`.
    OptIn,
    /// Every namespace except those labelled `secure-defaults.io/inject=disabled`.
    ClusterWide,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::OptIn => "opt-in",
            Mode::ClusterWide => "cluster-wide",
        })
    }
}

/// A user or group ID in the range Kubernetes accepts, 0..=2147483647.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(i64);

impl Id {
    pub const MAX: i64 = 2_147_483_647;

    pub fn new(value: i64) -> Option<Self> {
        (0..=Self::MAX).contains(&value).then_some(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum FsGroupChangePolicy {
    OnRootMismatch,
    Always,
}

impl FsGroupChangePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsGroupChangePolicy::OnRootMismatch => "OnRootMismatch",
            FsGroupChangePolicy::Always => "Always",
        }
    }
}

/// A field the engine can default; also the names used in a rule's `skip` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Field {
    RunAsUser,
    RunAsGroup,
    FsGroup,
    FsGroupChangePolicy,
    AllowPrivilegeEscalation,
}

impl Field {
    pub const ALL: [Field; 5] = [
        Field::RunAsUser,
        Field::RunAsGroup,
        Field::FsGroup,
        Field::FsGroupChangePolicy,
        Field::AllowPrivilegeEscalation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::RunAsUser => "runAsUser",
            Field::RunAsGroup => "runAsGroup",
            Field::FsGroup => "fsGroup",
            Field::FsGroupChangePolicy => "fsGroupChangePolicy",
            Field::AllowPrivilegeEscalation => "allowPrivilegeEscalation",
        }
    }
}

/// The values to fill in where a pod leaves a field absent. `None` (or `false`) means "do not default this field".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    pub run_as_user: Option<Id>,
    pub run_as_group: Option<Id>,
    pub fs_group: Option<Id>,
    pub fs_group_change_policy: Option<FsGroupChangePolicy>,
    /// Add `allowPrivilegeEscalation: false` to containers that leave it absent.
    pub disallow_privilege_escalation: bool,
}

impl Defaults {
    pub fn is_empty(&self) -> bool {
        *self == Defaults::default()
    }

    /// Overlays the fields `other` names onto `self` (later rules win).
    fn overlay(&mut self, other: &Defaults) {
        if other.run_as_user.is_some() {
            self.run_as_user = other.run_as_user;
        }
        if other.run_as_group.is_some() {
            self.run_as_group = other.run_as_group;
        }
        if other.fs_group.is_some() {
            self.fs_group = other.fs_group;
        }
        if other.fs_group_change_policy.is_some() {
            self.fs_group_change_policy = other.fs_group_change_policy;
        }
        if other.disallow_privilege_escalation {
            self.disallow_privilege_escalation = true;
        }
    }

    fn clear(&mut self, field: Field) {
        match field {
            Field::RunAsUser => self.run_as_user = None,
            Field::RunAsGroup => self.run_as_group = None,
            Field::FsGroup => self.fs_group = None,
            Field::FsGroupChangePolicy => self.fs_group_change_policy = None,
            Field::AllowPrivilegeEscalation => self.disallow_privilege_escalation = false,
        }
    }

    pub fn names(&self, field: Field) -> bool {
        match field {
            Field::RunAsUser => self.run_as_user.is_some(),
            Field::RunAsGroup => self.run_as_group.is_some(),
            Field::FsGroup => self.fs_group.is_some(),
            Field::FsGroupChangePolicy => self.fs_group_change_policy.is_some(),
            Field::AllowPrivilegeEscalation => self.disallow_privilege_escalation,
        }
    }
}

impl fmt::Display for Defaults {
    /// `runAsUser=65532,fsGroup=65532,allowPrivilegeEscalation=false`, or `nothing`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(id) = self.run_as_user {
            parts.push(format!("runAsUser={id}"));
        }
        if let Some(id) = self.run_as_group {
            parts.push(format!("runAsGroup={id}"));
        }
        if let Some(id) = self.fs_group {
            parts.push(format!("fsGroup={id}"));
        }
        if let Some(p) = self.fs_group_change_policy {
            parts.push(format!("fsGroupChangePolicy={}", p.as_str()));
        }
        if self.disallow_privilege_escalation {
            parts.push("allowPrivilegeEscalation=false".to_owned());
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({values})", r.key),
                Operator::NotIn => format!("{} notin ({values})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No defaulting at all in matching namespaces.
    Exempt,
    /// Override some defaults and drop others.
    Adjust {
        set: Defaults,
        skip: BTreeSet<Field>,
    },
}

/// One entry of `namespaces:`. A match with both names and labels needs both to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub names: Option<BTreeSet<String>>,
    pub labels: Option<LabelSelector>,
    pub action: Action,
}

impl Rule {
    fn matches(&self, namespace: &str, labels: NamespaceLabels<'_>) -> bool {
        let names_hold = self.names.as_ref().is_none_or(|n| n.contains(namespace));
        let labels_hold = self.labels.as_ref().is_none_or(|sel| match labels {
            NamespaceLabels::Known(labels) => sel.matches(labels),
            // Without the labels a selector cannot be shown to hold.
            NamespaceLabels::Unknown => false,
        });
        names_hold && labels_hold
    }
}

/// What is known of a namespace's labels when a pod in it is admitted.
#[derive(Clone, Copy, Debug)]
pub enum NamespaceLabels<'a> {
    Known(&'a BTreeMap<String, String>),
    /// Label lookups are switched off: the mode check is left to the webhook's namespaceSelector,
    /// and label selectors in rules never match.
    Unknown,
}

/// Why a namespace gets no defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exemption {
    /// kube-system, kube-public, kube-node-lease.
    System,
    /// Listed in `exemptNamespaces`.
    Listed,
    /// Opt-in mode and the namespace is not labelled `secure-defaults.io/inject=enabled`.
    NotOptedIn,
    /// Cluster-wide mode and the namespace is labelled `secure-defaults.io/inject=disabled`.
    OptedOut,
    /// A `namespaces:` entry (0-based index) with `exempt: true` matched.
    Rule(usize),
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exemption::System => f.write_str("a system namespace, always exempt"),
            Exemption::Listed => f.write_str("listed in exemptNamespaces"),
            Exemption::NotOptedIn => write!(f, "not labelled {INJECT_LABEL}=enabled (opt-in mode)"),
            Exemption::OptedOut => write!(f, "labelled {INJECT_LABEL}=disabled"),
            Exemption::Rule(i) => write!(f, "exempted by namespaces[{i}]"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Apply(Defaults),
    Exempt(Exemption),
}

/// A validated policy. Built only by [`parse`] or [`load`], so every value in it has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// The listed exempt namespaces (the system ones are always exempt in addition).
    pub exempt_namespaces: BTreeSet<String>,
    pub defaults: Defaults,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// What applies to pods in `namespace`.
    pub fn decide(&self, namespace: &str, labels: NamespaceLabels<'_>) -> Decision {
        if ALWAYS_EXEMPT.contains(&namespace) {
            return Decision::Exempt(Exemption::System);
        }
        if self.exempt_namespaces.contains(namespace) {
            return Decision::Exempt(Exemption::Listed);
        }
        if let NamespaceLabels::Known(labels) = labels {
            let inject = labels.get(INJECT_LABEL).map(String::as_str);
            match self.mode {
                Mode::OptIn if inject != Some("enabled") => {
                    return Decision::Exempt(Exemption::NotOptedIn);
                }
                Mode::ClusterWide if inject == Some("disabled") => {
                    return Decision::Exempt(Exemption::OptedOut);
                }
                _ => {}
            }
        }
        let mut effective = self.defaults.clone();
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches(namespace, labels) {
                continue;
            }
            match &rule.action {
                Action::Exempt => return Decision::Exempt(Exemption::Rule(index)),
                Action::Adjust { set, skip } => {
                    effective.overlay(set);
                    for field in skip {
                        effective.clear(*field);
                    }
                }
            }
        }
        Decision::Apply(effective)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(mode: &str, rest: &str) -> Policy {
        let text = format!(
            "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: {mode}\ndefaults: {{runAsUser: 1000, fsGroup: 2000, allowPrivilegeEscalation: false}}\n{rest}"
        );
        parse(text.as_bytes(), Path::new("p.yaml")).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn modes_and_exemptions() {
        let rules = "exemptNamespaces: [tools]\nnamespaces:\n  - match: {names: [legacy]}\n    exempt: true\n";
        let opt_in = policy("opt-in", rules);
        let wide = policy("cluster-wide", rules);
        let enabled = labels(&[(INJECT_LABEL, "enabled")]);
        let disabled = labels(&[(INJECT_LABEL, "disabled")]);
        let none = labels(&[]);
        // (policy, namespace, labels, expected exemption or None for "applies")
        let cases: Vec<(&Policy, &str, &BTreeMap<String, String>, Option<Exemption>)> = vec![
            (&opt_in, "app", &enabled, None),
            (&opt_in, "app", &none, Some(Exemption::NotOptedIn)),
            (&opt_in, "app", &disabled, Some(Exemption::NotOptedIn)),
            (&opt_in, "kube-system", &enabled, Some(Exemption::System)),
            (
                &opt_in,
                "kube-node-lease",
                &enabled,
                Some(Exemption::System),
            ),
            (&opt_in, "tools", &enabled, Some(Exemption::Listed)),
            (&opt_in, "legacy", &enabled, Some(Exemption::Rule(0))),
            (&wide, "app", &none, None),
            (&wide, "app", &enabled, None),
            (&wide, "app", &disabled, Some(Exemption::OptedOut)),
            (&wide, "kube-public", &none, Some(Exemption::System)),
            (&wide, "legacy", &none, Some(Exemption::Rule(0))),
        ];
        for (p, ns, l, want) in cases {
            let got = p.decide(ns, NamespaceLabels::Known(l));
            match want {
                None => assert!(
                    matches!(got, Decision::Apply(_)),
                    "{} {ns} {l:?}: {got:?}",
                    p.mode
                ),
                Some(why) => assert_eq!(got, Decision::Exempt(why), "{} {ns} {l:?}", p.mode),
            }
        }
    }

    #[test]
    fn rules_apply_in_order_and_later_wins() {
        let p = policy(
            "cluster-wide",
            "namespaces:
  - match: {labels: {matchLabels: {team: data}}}
    set: {runAsUser: 10001, fsGroup: 10001}
  - match: {names: [payments], labels: {matchExpressions: [{key: tier, operator: In, values: [web]}]}}
    skip: [fsGroup]
  - match: {names: [payments]}
    set: {runAsGroup: 3000}
",
        );
        let decide =
            |ns: &str, l: &[(&str, &str)]| match p.decide(ns, NamespaceLabels::Known(&labels(l))) {
                Decision::Apply(d) => d.to_string(),
                Decision::Exempt(why) => format!("exempt: {why}"),
            };
        assert_eq!(
            decide("other", &[]),
            "runAsUser=1000,fsGroup=2000,allowPrivilegeEscalation=false"
        );
        assert_eq!(
            decide("other", &[("team", "data")]),
            "runAsUser=10001,fsGroup=10001,allowPrivilegeEscalation=false"
        );
        // Names alone hold, labels do not: entry 1 does not apply, entry 2 does.
        assert_eq!(
            decide("payments", &[("team", "data")]),
            "runAsUser=10001,runAsGroup=3000,fsGroup=10001,allowPrivilegeEscalation=false"
        );
        assert_eq!(
            decide("payments", &[("team", "data"), ("tier", "web")]),
            "runAsUser=10001,runAsGroup=3000,allowPrivilegeEscalation=false"
        );
    }

    #[test]
    fn selector_operators() {
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        let l = labels(&[("tier", "web"), ("env", "prod")]);
        let cases = [
            (req("tier", Operator::In, &["web", "api"]), true),
            (req("tier", Operator::In, &["api"]), false),
            (req("missing", Operator::In, &["x"]), false),
            (req("tier", Operator::NotIn, &["api"]), true),
            (req("tier", Operator::NotIn, &["web"]), false),
            (req("missing", Operator::NotIn, &["x"]), true),
            (req("env", Operator::Exists, &[]), true),
            (req("missing", Operator::Exists, &[]), false),
            (req("missing", Operator::DoesNotExist, &[]), true),
            (req("env", Operator::DoesNotExist, &[]), false),
        ];
        for (r, want) in cases {
            let sel = LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![r.clone()],
            };
            assert_eq!(sel.matches(&l), want, "{r:?}");
        }
    }

    #[test]
    fn unknown_labels_leave_the_mode_to_the_api_server() {
        let p = policy(
            "opt-in",
            "namespaces:\n  - match: {labels: {matchLabels: {team: x}}}\n    exempt: true\n",
        );
        assert!(matches!(
            p.decide("app", NamespaceLabels::Unknown),
            Decision::Apply(_)
        ));
        assert_eq!(
            p.decide("kube-system", NamespaceLabels::Unknown),
            Decision::Exempt(Exemption::System)
        );
    }

    #[test]
    fn describe_speaks_plainly() {
        let p = policy(
            "opt-in",
            "namespaces:\n  - match: {names: [a, b], labels: {matchLabels: {team: x}}}\n    skip: [fsGroup]\n",
        );
        let text = describe(&p);
        assert!(
            text.contains("only namespaces labelled secure-defaults.io/inject=enabled"),
            "{text}"
        );
        assert!(text.contains("namespaces[0]: in namespaces named a or b and with labels team=x: do not default fsGroup"), "{text}");
    }
}
