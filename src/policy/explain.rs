//! Plain-words description of a policy, for `secure-defaults check`.

use std::fmt::Write as _;

use super::{ALWAYS_EXEMPT, Action, Decision, INJECT_LABEL, Mode, Policy, Profile};
use crate::restricted::ENFORCE_LABEL;

/// What applies to one namespace, in plain words: exempt and why, or the defaults, whether they are only reported,
/// and what its pods may opt out of (the policy's `podExceptions` and those of the entries that match it).
pub fn explain_namespace(namespace: &str, decision: &Decision) -> String {
    let plan = match decision {
        Decision::Exempt(why) => return format!("namespace {namespace:?}: exempt, {why}\n"),
        Decision::Apply(plan) => plan,
    };
    let mut out = format!("namespace {namespace:?}: defaults {plan}\n");
    if plan.report {
        out.push_str("  report-only: what would be set is said, nothing is set\n");
    }
    if !plan.exceptions.is_empty() {
        let names: Vec<&str> = plan.exceptions.iter().map(|f| f.name()).collect();
        let _ = writeln!(
            out,
            "  its pods may opt out of {} with the annotation {}",
            names.join(", "),
            crate::pod::SKIP_ANNOTATION
        );
    }
    out
}

/// The policy in plain words, one line per statement.
pub fn explain(policy: &Policy) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_description(policy, &mut out);
    out
}

fn write_description(policy: &Policy, out: &mut String) -> std::fmt::Result {
    match policy.mode {
        Mode::OptIn => writeln!(
            out,
            "mode opt-in: only namespaces labelled {INJECT_LABEL}=enabled are defaulted"
        )?,
        Mode::ClusterWide => writeln!(
            out,
            "mode cluster-wide: every namespace is defaulted except those labelled {INJECT_LABEL}=disabled"
        )?,
    }
    let mut exempt: Vec<&str> = ALWAYS_EXEMPT.to_vec();
    exempt.extend(
        policy
            .exempt_namespaces
            .iter()
            .map(String::as_str)
            .filter(|n| !ALWAYS_EXEMPT.contains(n)),
    );
    writeln!(out, "never defaulted: {}", exempt.join(", "))?;
    if let Some(profile) = policy.profile {
        let fields: Vec<&str> = profile.defaults().iter().map(|(f, _)| f.name()).collect();
        writeln!(
            out,
            "profile {}: the defaults include {}",
            format!("{profile:?}").to_lowercase(),
            fields.join(", ")
        )?;
    }
    writeln!(out, "defaults: {}", policy.defaults)?;
    writeln!(
        out,
        "namespaces labelled {INJECT_LABEL}=report are served in report-only mode: what would be set is said, nothing is set"
    )?;
    if !policy.pod_exceptions.is_empty() {
        let names: Vec<&str> = policy.pod_exceptions.iter().map(|f| f.name()).collect();
        writeln!(
            out,
            "pods may opt out of {} with the annotation {}",
            names.join(", "),
            crate::pod::SKIP_ANNOTATION
        )?;
    }
    if policy.follow_pod_security_labels {
        let fields: Vec<String> = Profile::Restricted
            .defaults()
            .iter()
            .map(|(f, v)| format!("{f}={}", f.show(v)))
            .collect();
        writeln!(
            out,
            "namespaces labelled {ENFORCE_LABEL}=restricted also get {} where the defaults leave them out",
            fields.join(",")
        )?;
    }
    if let Some(images) = &policy.images {
        writeln!(
            out,
            "images: a container that states no runAsUser, in a pod that states none, runs as its image's numeric user, read from {} (a review waits at most {} ms; a root image gets {}; {} images cached, a tag for {} s; platform {} unless the pod pins kubernetes.io/arch)",
            images.registries,
            images.timeout_ms.0,
            match images.root {
                crate::images::RootImages::Default => "the default",
                crate::images::RootImages::Keep => "runAsUser 0",
            },
            images.cache_entries.0,
            images.tag_ttl_seconds.0,
            images.platform
        )?;
    }
    if policy.rules.is_empty() {
        writeln!(
            out,
            "no per-namespace entries: every served namespace gets the defaults"
        )?;
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut conditions = Vec::new();
        if let Some(names) = &rule.names {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            conditions.push(format!("named {}", names.join(" or ")));
        }
        if let Some(labels) = &rule.labels {
            conditions.push(format!("with labels {labels}"));
        }
        let what = match &rule.action {
            Action::Exempt => "no defaulting at all".to_owned(),
            Action::Adjust {
                set,
                skip,
                report,
                exceptions,
            } => {
                let mut parts = Vec::new();
                if *report {
                    parts.push("report only: say what would be set, set nothing".to_owned());
                }
                if !exceptions.is_empty() {
                    let names: Vec<&str> = exceptions.iter().map(|f| f.name()).collect();
                    parts.push(format!("pods may opt out of {}", names.join(", ")));
                }
                if !set.is_empty() {
                    parts.push(format!("set {set}"));
                }
                if !skip.is_empty() {
                    let skip: Vec<&str> = skip.iter().map(|f| f.name()).collect();
                    parts.push(format!("do not default {}", skip.join(", ")));
                }
                parts.join("; ")
            }
        };
        writeln!(
            out,
            "namespaces[{i}]: in namespaces {}: {what}",
            conditions.join(" and ")
        )?;
    }
    if policy.rules.len() > 1 {
        writeln!(
            out,
            "(entries apply in order and later ones win; any matching exempt entry exempts the namespace)"
        )?;
    }
    Ok(())
}
