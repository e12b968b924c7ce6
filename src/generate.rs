//! The files written from the field table ([`crate::fields`]): the README's field tables, the `defaults:` of
//! every shipped policy, and the checks of the two backstops (kustomize components and chart), whose CEL comes
//! from the same conditions the engine's guards evaluate ([`crate::fields::ContainerCondition`],
//! [`crate::fields::PodCondition`], [`crate::pod::WindowsBy`]). Each is a region between two marker lines in a file that is otherwise written by hand;
//! `secure-defaults generate` rewrites the regions (`make generate`), and `cargo test` fails while one is stale.
//!
//! Pure: the caller reads and writes the files.

use serde_json::Value;

use crate::fields::{Backstop, Field, Level};
use crate::pod::{NOT_A_MIRROR_POD, WindowsBy};

/// Why a region could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The file has no such region, or its markers are out of order.
    #[error(
        "{file}: no region {name:?} (a line with `BEGIN generated: {name}` and a later line with `END generated: {name}`)"
    )]
    FindRegion {
        /// The file.
        file: &'static str,
        /// The region.
        name: &'static str,
    },
}

/// One generated region of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The file, relative to the repository root.
    pub file: &'static str,
    /// The region's name, as its markers say it.
    pub name: &'static str,
    /// What goes between the markers, without indentation: each line gets the BEGIN marker's.
    pub text: String,
}

/// The shipped policies: every file whose `defaults:` is the shipped one.
const POLICIES: [&str; 5] = [
    "config/policy.yaml",
    "manifests/base/policy.yaml",
    "manifests/components/opt-in/policy.yaml",
    "manifests/components/cluster-wide/policy.yaml",
    "manifests/chart/secure-defaults/values.yaml",
];

/// Every generated region.
pub fn regions() -> Vec<Region> {
    let mut out = vec![
        Region {
            file: "README.md",
            name: "fields",
            text: fields_table(),
        },
        Region {
            file: "README.md",
            name: "restricted",
            text: restricted_table(),
        },
    ];
    out.extend(POLICIES.iter().map(|file| Region {
        file,
        name: "defaults",
        text: shipped_defaults(),
    }));
    for (backstop, file) in Backstop::ALL
        .into_iter()
        .flat_map(|b| b.files().map(|file| (b, file)))
    {
        out.push(Region {
            file,
            name: "backstop-fields",
            text: backstop_fields(backstop),
        });
        out.push(Region {
            file,
            name: "backstop-match",
            text: backstop_match(),
        });
        out.push(Region {
            file,
            name: "backstop-checks",
            text: backstop_checks(backstop),
        });
    }
    out
}

/// A CEL expression as a YAML literal block under `key`, at `indent` spaces.
fn block(out: &mut String, indent: usize, key: &str, cel: &str) {
    let pad = " ".repeat(indent);
    out.push_str(&format!("{pad}{key}: |-\n"));
    for line in cel.lines() {
        out.push_str(&format!("{pad}  {line}\n"));
    }
}

/// The pods the backstops leave out, as the engine leaves them alone: mirror pods and every kind of Windows pod.
fn backstop_match() -> String {
    let mut out = String::from("matchConditions:\n");
    let conditions =
        std::iter::once(NOT_A_MIRROR_POD).chain(WindowsBy::ALL.map(WindowsBy::not_matching));
    for (name, cel) in conditions {
        out.push_str(&format!("  - name: {name}\n"));
        block(&mut out, 4, "expression", cel);
    }
    out
}

/// The backstop's fields and when each may be missing, as comment lines for the top of its file.
fn backstop_fields(backstop: Backstop) -> String {
    let lines: Vec<String> = Field::all()
        .filter(|f| f.backstop() == Some(backstop))
        .map(|field| {
            let (at, unless) = match field.level() {
                Level::Pod => (
                    "at pod level, or on every container",
                    field
                        .pod_skips()
                        .iter()
                        .map(|c| c.text().to_owned())
                        .collect::<Vec<_>>(),
                ),
                Level::Container => (
                    "on every container",
                    field.container_skips().iter().map(|c| c.text()).collect(),
                ),
            };
            let mut line = format!(
                "#   - {} {at} (init and ephemeral included)",
                field.path().join(".")
            );
            if !unless.is_empty() {
                line += &format!(", unless {}", unless.join(" or "));
            }
            line
        })
        .collect();
    lines.join(";\n") + ".\n"
}

/// `runAsUser` -> `RunAsUser`, `capabilities.drop` -> `CapabilitiesDrop`: a CEL variable's suffix.
fn pascal(name: &str) -> String {
    name.split('.')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `has(...)` down the field's path below `context`.
fn has_path(context: &str, field: Field) -> String {
    let mut at = context.to_owned();
    let mut parts = vec![format!("has({at})")];
    for key in field.path() {
        at = format!("{at}.{key}");
        parts.push(format!("has({at})"));
    }
    parts.join(" && ")
}

/// The variables and validations of one backstop: for each of its fields, the containers left without it where
/// the webhook would have set it.
fn backstop_checks(backstop: Backstop) -> String {
    let mut variables = String::from("variables:\n");
    variables.push_str("  - name: reportOnly\n");
    block(
        &mut variables,
        4,
        "expression",
        "has(namespaceObject.metadata.labels) &&\n\
         'secure-defaults.io/inject' in namespaceObject.metadata.labels &&\n\
         namespaceObject.metadata.labels['secure-defaults.io/inject'] == 'report'",
    );
    variables.push_str("  - name: containers\n");
    block(
        &mut variables,
        4,
        "expression",
        "object.spec.containers +\n\
         (has(object.spec.initContainers) ? object.spec.initContainers : []) +\n\
         (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers : [])",
    );
    let mut validations = String::from("validations:\n");
    for field in Field::all().filter(|f| f.backstop() == Some(backstop)) {
        let var = format!("without{}", pascal(field.name()));
        let path = field.path().join(".");
        let on_container = has_path("c.securityContext", field);
        let (cel, message) = match field.level() {
            Level::Pod => {
                let mut pass = vec![has_path("object.spec.securityContext", field)];
                pass.extend(field.pod_skips().iter().map(|c| c.cel().to_owned()));
                (
                    format!(
                        "({}) ? [] :\nvariables.containers.filter(c, !({on_container})).map(c, c.name)",
                        pass.join(" ||\n")
                    ),
                    format!(
                        "'secure-defaults backstop: no {path} for container(s) ' +\n\
                         variables.{var}.map(n, '\"' + n + '\"').join(', ') +\n\
                         ' and none at pod level; set spec.securityContext.{path}' +\n\
                         ' (the secure-defaults webhook fills it in when it is running)'"
                    ),
                )
            }
            Level::Container => {
                let mut keep = vec![format!("!({on_container})")];
                keep.extend(
                    field
                        .container_skips()
                        .iter()
                        .map(|c| format!("!{}", c.cel())),
                );
                (
                    format!(
                        "variables.containers.filter(c,\n  {}).map(c, c.name)",
                        keep.join(" &&\n  ")
                    ),
                    format!(
                        "'secure-defaults backstop: no {path} on container(s) ' +\n\
                         variables.{var}.map(n, '\"' + n + '\"').join(', ') +\n\
                         '; set securityContext.{path} on each' +\n\
                         ' (the secure-defaults webhook fills it in when it is running)'"
                    ),
                )
            }
        };
        variables.push_str(&format!("  - name: {var}\n"));
        block(&mut variables, 4, "expression", &cel);
        validations.push_str(&format!(
            "  - expression: variables.reportOnly || size(variables.{var}) == 0\n    reason: Forbidden\n    message: \"secure-defaults backstop: {path} is missing where the secure-defaults webhook would have set it\"\n"
        ));
        validations.push_str("    messageExpression: >-\n");
        for line in message.lines() {
            validations.push_str(&format!("      {line}\n"));
        }
    }
    variables + &validations
}

/// A value as it reads in YAML flow style: `true`, `65532`, `[ALL]`, `{type: RuntimeDefault}`.
fn flow(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k}: {}", flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// The field as the tables name it: with its value where that value is fixed (`runAsNonRoot: true`).
fn named(field: Field) -> String {
    match field.restricted() {
        Some(value) => format!("`{}: {}`", field.name(), flow(&value)),
        None => format!("`{}`", field.name()),
    }
}

fn fields_table() -> String {
    let mut out = String::from("| field | where | when |\n|---|---|---|\n");
    for field in Field::all() {
        let at = match field.level() {
            Level::Pod => "`spec.securityContext`",
            Level::Container => "each container's `securityContext`",
        };
        out.push_str(&format!("| {} | {at} | {} |\n", named(field), field.when()));
    }
    out
}

fn restricted_table() -> String {
    let mut out = String::from(
        "| \"restricted\" requires | secure-defaults sets, where the pod leaves it out | what defaulting cannot fix (warned about) |\n|---|---|---|\n",
    );
    for field in Field::all() {
        let Some((requires, cannot_fix)) = field.restricted_doc() else {
            continue;
        };
        let at = match field.level() {
            Level::Pod => "at pod level",
            Level::Container => "on every container",
        };
        out.push_str(&format!(
            "| {requires} | {} {at} | {cannot_fix} |\n",
            named(field)
        ));
    }
    out.push_str("| baseline: no privileged containers, host namespaces or hostPath volumes | nothing | `privileged: true`, `hostNetwork`/`hostPID`/`hostIPC`, hostPath volumes |\n");
    out
}

fn shipped_defaults() -> String {
    let mut out = String::from("defaults:\n");
    for field in Field::all() {
        if let Some(value) = field.shipped() {
            out.push_str(&format!("  {}: {}\n", field.name(), flow(&value)));
        }
    }
    out
}

/// `text` with `region` written between its markers, indented like the BEGIN marker line.
pub fn apply(text: &str, region: &Region) -> Result<String, GenerateError> {
    let not_found = || GenerateError::FindRegion {
        file: region.file,
        name: region.name,
    };
    let begin = format!("BEGIN generated: {}", region.name);
    let end = format!("END generated: {}", region.name);
    let start = text.find(&begin).ok_or_else(not_found)?;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let body_start = text[start..]
        .find('\n')
        .map(|i| start + i + 1)
        .ok_or_else(not_found)?;
    let stop = text[body_start..]
        .find(&end)
        .map(|i| body_start + i)
        .ok_or_else(not_found)?;
    let body_end = text[..stop]
        .rfind('\n')
        .map_or(body_start, |i| i + 1)
        .max(body_start);
    let indent: String = text[line_start..start]
        .chars()
        .take_while(|c| c.is_whitespace())
        .collect();
    let body: String = region
        .text
        .lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("{indent}{line}\n")
            }
        })
        .collect();
    Ok(format!(
        "{}{body}{}",
        &text[..body_start],
        &text[body_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_replaced_between_its_markers_with_their_indentation() {
        let region = Region {
            file: "f",
            name: "defaults",
            text: "defaults:\n  a: 1\n".to_owned(),
        };
        let text = "policy:\n  # BEGIN generated: defaults\n  old: x\n  # END generated: defaults\nrest: 1\n";
        assert_eq!(
            apply(text, &region).unwrap(),
            "policy:\n  # BEGIN generated: defaults\n  defaults:\n    a: 1\n  # END generated: defaults\nrest: 1\n"
        );
        let again = apply(&apply(text, &region).unwrap(), &region).unwrap();
        assert_eq!(again, apply(text, &region).unwrap(), "idempotent");
        assert!(apply("no markers\n", &region).is_err());
    }

    #[test]
    fn the_shipped_defaults_are_a_valid_policy() {
        let text = format!(
            "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\n{}",
            shipped_defaults()
        );
        let policy =
            crate::policy::parse(text.as_bytes(), std::path::Path::new("shipped")).unwrap();
        let shipped = Field::all().filter(|f| f.shipped().is_some()).count();
        assert_eq!(policy.defaults.iter().count(), shipped);
    }
}
