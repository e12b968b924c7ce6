//! The policy: which namespaces are defaulted and with what. Pure data and decisions; `file` turns YAML into a
//! validated [`Policy`]; the server keeps the current one live (`server::policy_store`, `server::policy_reload`).

mod explain;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::core::{Selector, SelectorExt as _};

pub use explain::{explain, explain_namespace};
pub use file::{PolicyError, load, parse};

use crate::fields::{Defaults, Field};
use crate::images::ImagesPolicy;

/// The namespace label that opts a namespace in (`enabled`), into report-only mode (`report`) or, in cluster-wide
/// mode, out (`disabled`).
pub const INJECT_LABEL: &str = "secure-defaults.io/inject";
/// Namespaces that are never defaulted, whatever the policy says: the cluster's own.
pub const ALWAYS_EXEMPT: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
/// Which namespaces are served.
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

/// What a matching `namespaces:` entry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No defaulting at all in matching namespaces.
    Exempt,
    /// Override some defaults and drop others.
    Adjust {
        /// Fields set to other values (or defaulted only here).
        set: Defaults,
        /// Fields not defaulted here.
        skip: BTreeSet<Field>,
        /// Report what would be set instead of setting it.
        report: bool,
        /// Fields a pod here may opt out of with its `secure-defaults.io/skip` annotation.
        exceptions: BTreeSet<Field>,
    },
}

/// One entry of `namespaces:`. A match with both names and labels needs both to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The namespace names it matches, if it matches by name.
    pub names: Option<BTreeSet<String>>,
    /// The label selector it matches, if it matches by labels (never empty: that would match everything).
    pub labels: Option<Selector>,
    /// What it does where it matches.
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
    /// The namespace's labels.
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
            Exemption::NotOptedIn => write!(
                f,
                "not labelled {INJECT_LABEL}=enabled or {INJECT_LABEL}=report (opt-in mode)"
            ),
            Exemption::OptedOut => write!(f, "labelled {INJECT_LABEL}=disabled"),
            Exemption::Rule(i) => write!(f, "exempted by namespaces[{i}]"),
        }
    }
}

/// What applies to a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Fill in these defaults.
    Apply(Defaulting),
    /// Leave the pod alone, for this reason.
    Exempt(Exemption),
}

/// What a served namespace gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaulting {
    /// The values to fill in.
    pub defaults: Defaults,
    /// The namespace enforces Pod Security "restricted" (its `pod-security.kubernetes.io/enforce` label), so
    /// explicit values that profile forbids are warned about.
    pub enforces_restricted: bool,
    /// Report-only: say what would be set, set nothing (the `report` label value, or a matching entry).
    pub report: bool,
    /// The fields a pod may opt out of with its `secure-defaults.io/skip` annotation.
    pub exceptions: BTreeSet<Field>,
}

impl fmt::Display for Defaulting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.defaults.fmt(f)
    }
}

/// The value of `profile:`: a named set of fields turned on together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every field Pod Security "restricted" needs, with the value it needs.
    Restricted,
}

impl Profile {
    /// The fields and values the profile turns on, from the field table.
    pub fn defaults(self) -> Defaults {
        let mut defaults = Defaults::default();
        for field in Field::all() {
            if let Some(value) = field.restricted() {
                defaults.set(field, value);
            }
        }
        defaults
    }
}

/// A validated policy. Built only by [`parse`] or [`load`], so every value in it has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Opt-in or cluster-wide.
    pub mode: Mode,
    /// The listed exempt namespaces (the system ones are always exempt in addition).
    pub exempt_namespaces: BTreeSet<String>,
    /// What every served namespace gets, before its entries adjust it.
    pub defaults: Defaults,
    /// The `namespaces:` entries, in file order.
    pub rules: Vec<Rule>,
    /// The `profile:` the defaults include, if any.
    pub profile: Option<Profile>,
    /// A namespace labelled `pod-security.kubernetes.io/enforce: restricted` gets what "restricted" needs even
    /// where the defaults do not list it (an entry's `skip` still wins).
    pub follow_pod_security_labels: bool,
    /// The fields any pod may opt out of with its `secure-defaults.io/skip` annotation (entries may add more).
    pub pod_exceptions: BTreeSet<Field>,
    /// Image-aware defaults: off without an `images:` section.
    pub images: Option<ImagesPolicy>,
}

impl Policy {
    /// What applies to pods in `namespace`.
    pub fn for_namespace(&self, namespace: &str, labels: NamespaceLabels<'_>) -> Decision {
        if ALWAYS_EXEMPT.contains(&namespace) {
            return Decision::Exempt(Exemption::System);
        }
        if self.exempt_namespaces.contains(namespace) {
            return Decision::Exempt(Exemption::Listed);
        }
        let mut report = false;
        if let NamespaceLabels::Known(labels) = labels {
            let inject = labels.get(INJECT_LABEL).map(String::as_str);
            report = inject == Some("report");
            match self.mode {
                Mode::OptIn if inject != Some("enabled") && !report => {
                    return Decision::Exempt(Exemption::NotOptedIn);
                }
                Mode::ClusterWide if inject == Some("disabled") => {
                    return Decision::Exempt(Exemption::OptedOut);
                }
                _ => {}
            }
        }
        let mut effective = self.defaults.clone();
        let mut skipped = BTreeSet::new();
        let mut exceptions = self.pod_exceptions.clone();
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches(namespace, labels) {
                continue;
            }
            match &rule.action {
                Action::Exempt => return Decision::Exempt(Exemption::Rule(index)),
                Action::Adjust {
                    set,
                    skip,
                    report: entry_reports,
                    exceptions: entry_exceptions,
                } => {
                    effective.overlay(set);
                    for field in skip {
                        effective.clear(*field);
                        skipped.insert(*field);
                    }
                    report |= entry_reports;
                    exceptions.extend(entry_exceptions);
                }
            }
        }
        let enforces_restricted = match labels {
            NamespaceLabels::Known(labels) => {
                labels
                    .get(crate::restricted::ENFORCE_LABEL)
                    .map(String::as_str)
                    == Some("restricted")
            }
            NamespaceLabels::Unknown => false,
        };
        if enforces_restricted && self.follow_pod_security_labels {
            for (field, value) in Profile::Restricted.defaults().iter() {
                if effective.get(field).is_none() && !skipped.contains(&field) {
                    effective.set(field, value.clone());
                }
            }
        }
        Decision::Apply(Defaulting {
            defaults: effective,
            enforces_restricted,
            report,
            exceptions,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Cases {
        decisions: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        policy: String,
        namespaces: Vec<Namespace>,
        #[serde(default)]
        explain: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Namespace {
        name: String,
        /// The namespace's labels, or `unknown`.
        labels: serde_json::Value,
        apply: Option<String>,
        #[serde(default)]
        restricted: bool,
        exempt: Option<String>,
    }

    #[test]
    fn policies_decide_what_each_namespace_gets() {
        let cases: Cases =
            serde_saphyr::from_str(include_str!("../../tests/cases/policies.yaml")).unwrap();
        for case in cases.decisions {
            let policy = parse(case.policy.as_bytes(), Path::new("p.yaml")).unwrap();
            for ns in &case.namespaces {
                let known: Option<BTreeMap<String, String>> =
                    serde_json::from_value(ns.labels.clone()).ok();
                let labels = known
                    .as_ref()
                    .map_or(NamespaceLabels::Unknown, NamespaceLabels::Known);
                let got = match policy.for_namespace(&ns.name, labels) {
                    Decision::Apply(d) => (Some(d.to_string()), d.enforces_restricted, None),
                    Decision::Exempt(why) => (None, false, Some(why.to_string())),
                };
                let want = (ns.apply.clone(), ns.restricted, ns.exempt.clone());
                assert_eq!(
                    got, want,
                    "{} {:?} under\n{}",
                    ns.name, ns.labels, case.policy
                );
            }
            let text = explain(&policy);
            for words in &case.explain {
                assert!(text.contains(words.as_str()), "{words:?} not in {text}");
            }
        }
    }
}
