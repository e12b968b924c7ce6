//! Per-workload exceptions: a pod (in practice its template) may ask, with its `secure-defaults.io/skip`
//! annotation, not to get some fields. Only the fields the policy's `podExceptions` allow are left out, so no
//! workload can opt out unless the platform team says so; every request, honoured or not, is said in a warning.
//! Pure functions.

use std::collections::BTreeSet;

use crate::fields::{Defaults, Field};
use crate::pod::SKIP_ANNOTATION;

/// What a pod's skip annotation comes to under the policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exceptions {
    /// The fields left out for this pod: asked for, allowed, and defaulted by the policy here.
    pub honoured: BTreeSet<Field>,
    /// One line per honoured, refused or unknown name.
    pub warnings: Vec<String>,
}

/// Reads the skip annotation's value (`fsGroup,runAsUser`, or `*` for every field) against the fields the policy
/// lets pods opt out of; only fields `defaults` would set matter.
pub fn asked(skip: Option<&str>, allowed: &BTreeSet<Field>, defaults: &Defaults) -> Exceptions {
    let mut out = Exceptions::default();
    let Some(skip) = skip else {
        return out;
    };
    let mut asked = BTreeSet::new();
    for name in skip.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "*" {
            asked.extend(Field::all());
        } else if let Some(field) = Field::by_name(name) {
            asked.insert(field);
        } else {
            out.warnings.push(format!(
                "secure-defaults: {SKIP_ANNOTATION} names {name:?}, which is not a field; ignored (fields: {})",
                Field::names()
            ));
        }
    }
    for field in asked {
        if defaults.get(field).is_none() {
            continue;
        }
        if allowed.contains(&field) {
            out.warnings.push(format!(
                "secure-defaults: {field} not defaulted: the pod opts out with {SKIP_ANNOTATION}"
            ));
            out.honoured.insert(field);
        } else {
            out.warnings.push(format!(
                "secure-defaults: {SKIP_ANNOTATION} asks to leave out {field}, which the policy's podExceptions do not allow; it is defaulted"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(name: &str) -> Field {
        Field::by_name(name).unwrap()
    }

    #[test]
    fn only_allowed_fields_that_would_be_set_are_left_out() {
        let mut defaults = Defaults::default();
        defaults.set(field("runAsUser"), json!(65532));
        defaults.set(field("fsGroup"), json!(65532));
        let allowed = BTreeSet::from([field("fsGroup"), field("runAsGroup")]);
        // (annotation, honoured, words each warning must hold, in order)
        let cases: Vec<(Option<&str>, Vec<&str>, Vec<&str>)> = vec![
            (None, vec![], vec![]),
            (
                Some("fsGroup"),
                vec!["fsGroup"],
                vec!["fsGroup not defaulted"],
            ),
            (
                Some(" fsGroup , runAsUser"),
                vec!["fsGroup"],
                vec![
                    "leave out runAsUser, which the policy's podExceptions do not allow",
                    "fsGroup not defaulted",
                ],
            ),
            (Some("runAsGroup"), vec![], vec![]),
            (
                Some("fsGrup"),
                vec![],
                vec!["names \"fsGrup\", which is not a field"],
            ),
            (
                Some("*"),
                vec!["fsGroup"],
                vec!["leave out runAsUser", "fsGroup not defaulted"],
            ),
        ];
        for (skip, honoured, words) in cases {
            let out = asked(skip, &allowed, &defaults);
            let want: BTreeSet<Field> = honoured.iter().map(|n| field(n)).collect();
            assert_eq!(out.honoured, want, "{skip:?}");
            assert_eq!(
                out.warnings.len(),
                words.len(),
                "{skip:?}: {:?}",
                out.warnings
            );
            for (warning, words) in out.warnings.iter().zip(&words) {
                assert!(
                    warning.contains(words),
                    "{skip:?}: {warning:?} lacks {words:?}"
                );
            }
        }
    }
}
