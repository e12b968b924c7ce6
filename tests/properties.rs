//! Property tests of the defaulting engine over generated pods: the patch applies to the raw input, holds only
//! `add`s on absent paths, leaves every explicit value as it was, keeps the pod valid, and a second run adds nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use std::collections::BTreeMap;

use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeSet;
use std::sync::Mutex;

use secure_defaults::admission;
use secure_defaults::engine::default_pod;
use secure_defaults::fields::{Defaults, Field, Level};
use secure_defaults::pod::Pod;
use secure_defaults::policy::{NamespaceLabels, Policy, Profile};
use secure_defaults::restricted;
use serde_json::{Map, Value, json};

/// Absent, null, or a value.
fn optional(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![Just(None), Just(Some(Value::Null)), value.prop_map(Some)].boxed()
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![Just(json!(0)), (1i64..70_000).prop_map(|v| json!(v))]
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect::<Map<_, _>>(),
    )
}

/// Explicit values of the table's fields at `level`, each at its own path: left out, or one of the values its
/// own file gives (the valid ones and the one a policy must refuse, such as `runAsUser: 0`). A field added to the
/// table is generated as explicit here without a change, so "never overwrite" is checked for it too.
fn explicit(level: Level) -> BoxedStrategy<Vec<(Field, Value)>> {
    let per_field: Vec<BoxedStrategy<Option<(Field, Value)>>> = Field::all()
        .filter(|f| f.level() == level)
        .map(|field| {
            let (mut values, refused) = field.examples();
            values.push(refused);
            prop::option::of(prop::sample::select(values).prop_map(move |v| (field, v))).boxed()
        })
        .collect();
    per_field
        .prop_map(|chosen| chosen.into_iter().flatten().collect())
        .boxed()
}

/// `object` (a securityContext, or absent) with `values` put at their fields' paths.
fn with_explicit(object: Option<Value>, values: Vec<(Field, Value)>) -> Option<Value> {
    if values.is_empty() {
        return object;
    }
    let mut object = match object {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for (field, value) in values {
        let path = field.path();
        let (last, parents) = path.split_last().unwrap();
        let mut map = &mut object;
        for key in parents {
            let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            map = entry.as_object_mut().unwrap();
        }
        map.insert(last.to_string(), value);
    }
    Some(Value::Object(object))
}

fn container_security_context() -> impl Strategy<Value = Value> {
    let add = prop::sample::subsequence(
        vec![
            "NET_ADMIN",
            "SYS_ADMIN",
            "CAP_SYS_ADMIN",
            "CHOWN",
            "NET_BIND_SERVICE",
        ],
        0..3,
    )
    .prop_map(|add| json!(add));
    let caps = optional(add).prop_map(|add| object(vec![("add", add)]));
    let seccomp = prop_oneof![
        Just(json!({"type": "RuntimeDefault"})),
        Just(json!({"type": "Unconfined"}))
    ];
    (
        (
            optional(any::<bool>().prop_map(Value::Bool)),
            optional(caps),
            optional(id()),
        ),
        (
            optional(Just(json!({"hostProcess": true}))),
            optional(Just(json!({"level": "s0:c1"}))),
            optional(any::<bool>().prop_map(Value::Bool)),
            optional(seccomp),
        ),
    )
        .prop_map(
            |((privileged, caps, user), (windows, selinux, non_root, seccomp))| {
                // Windows host process containers are rare; keep most pods Linux pods.
                let windows = windows.filter(|_| matches!(selinux, Some(Value::Null)));
                object(vec![
                    ("privileged", privileged),
                    ("capabilities", caps),
                    ("runAsUser", user),
                    ("windowsOptions", windows),
                    ("seLinuxOptions", selinux),
                    ("runAsNonRoot", non_root),
                    ("seccompProfile", seccomp),
                ])
            },
        )
}

fn container() -> impl Strategy<Value = Value> {
    (
        "[a-z~/]{1,6}",
        optional(container_security_context()),
        explicit(Level::Container),
        optional(Just(json!({"future": [1, null]}))),
    )
        .prop_map(|(name, sc, fields, unknown)| {
            object(vec![
                ("name", Some(json!(name))),
                ("image", Some(json!("img"))),
                ("securityContext", with_explicit(sc, fields)),
                ("futureField", unknown),
            ])
        })
}

fn containers(max: usize) -> BoxedStrategy<Option<Value>> {
    optional(prop::collection::vec(container(), 0..max).prop_map(Value::Array))
}

fn pod() -> impl Strategy<Value = Value> {
    // The pod-level fields, each at its own path, from the table; or a securityContext that is null or empty.
    let pod_sc = prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => explicit(Level::Pod).prop_map(|fields| with_explicit(Some(json!({})), fields)),
    ];
    let annotations = optional((any::<bool>(), any::<bool>()).prop_map(|(ours, mirror)| {
        let mut m = Map::new();
        m.insert("a/b~c".into(), json!("v"));
        if ours {
            m.insert("secure-defaults.io/defaulted".into(), json!("earlier"));
        }
        if mirror {
            m.insert("kubernetes.io/config.mirror".into(), json!("hash"));
        }
        Value::Object(m)
    }));
    let os = optional(
        prop_oneof![4 => Just(json!({"name": "linux"})), 1 => Just(json!({"name": "windows"}))],
    );
    (
        pod_sc,
        containers(4),
        containers(3),
        containers(2),
        annotations,
        os,
    )
        .prop_map(|(sc, c, init, eph, annotations, os)| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": object(vec![("name", Some(json!("p"))), ("annotations", annotations)]),
                "spec": object(vec![
                    ("securityContext", sc),
                    ("containers", Some(c.unwrap_or_else(|| json!([])))),
                    ("initContainers", init),
                    ("ephemeralContainers", eph),
                    ("os", os),
                ]),
            })
        })
}

/// Defaults drawn from the field table: each field left out, or set to one of the values its own file gives as
/// valid. A field added to the table is covered here without a change.
fn defaults() -> impl Strategy<Value = Defaults> {
    let per_field: Vec<BoxedStrategy<Option<(Field, Value)>>> = Field::all()
        .map(|field| {
            let (values, _) = field.examples();
            prop::option::of(prop::sample::select(values).prop_map(move |v| (field, v))).boxed()
        })
        .collect();
    per_field.prop_map(|chosen| {
        let mut defaults = Defaults::default();
        for (field, value) in chosen.into_iter().flatten() {
            defaults.set(field, value);
        }
        defaults
    })
}

/// Every non-null leaf of `doc`, by pointer.
fn leaves(doc: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match doc {
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            leaves(
                v,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                out,
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| leaves(v, format!("{at}/{i}"), out)),
        Value::Null => {}
        leaf => out.push((at, leaf.clone())),
    }
}

fn containers_of(doc: &Value) -> Vec<&Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| doc.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect()
}

/// Every field the table has, once set on some generated pod: a field the generators never reach is a field the
/// properties below never checked.
static COVERED: Mutex<BTreeSet<Field>> = Mutex::new(BTreeSet::new());
/// Generated pods that had nothing "restricted" forbids and so were checked to pass it after defaulting.
static RESTRICTED_PASSES: Mutex<usize> = Mutex::new(0);

#[test]
fn defaulting_is_additive_safe_and_idempotent() {
    let mut runner = TestRunner::new(Config::with_cases(2000));
    runner
        .run(&(pod(), defaults()), |(input, defaults)| {
            check(&input, &defaults)
        })
        .unwrap();
    let covered = COVERED.lock().unwrap();
    for field in Field::all() {
        assert!(covered.contains(&field), "no generated pod got {field}");
    }
    let passes = *RESTRICTED_PASSES.lock().unwrap();
    assert!(
        passes >= 50,
        "only {passes} pods were checked against restricted"
    );
}

fn check(input: &Value, defaults: &Defaults) -> Result<(), TestCaseError> {
    let (input, defaults) = (input.clone(), defaults.clone());
    {
        let text = input.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        let outcome = default_pod(&view, &defaults);
        COVERED.lock().unwrap().extend(outcome.applied.fields());

        // Only adds, each on a path that was absent or null.
        let ops: Value = serde_json::to_value(&outcome.patch).unwrap();
        for op in ops.as_array().unwrap() {
            prop_assert_eq!(&op["op"], "add");
            let path = op["path"].as_str().unwrap();
            prop_assert!(
                input.pointer(path).is_none_or(Value::is_null),
                "add on present path {}",
                path
            );
        }

        // The patch applies to the raw input.
        let mut output = input.clone();
        json_patch::patch(&mut output, &outcome.patch).unwrap();

        // Every explicit value is unchanged, and nothing moved (array lengths are the same).
        let mut before = Vec::new();
        leaves(&input, String::new(), &mut before);
        for (pointer, value) in &before {
            prop_assert_eq!(output.pointer(pointer), Some(value), "changed {}", pointer);
        }
        for (a, b) in containers_of(&input)
            .iter()
            .zip(containers_of(&output).iter())
        {
            prop_assert_eq!(a.get("name"), b.get("name"));
        }
        prop_assert_eq!(containers_of(&input).len(), containers_of(&output).len());

        // The result stays valid: allowPrivilegeEscalation=false is never added beside privileged or CAP_SYS_ADMIN.
        for (before, after) in containers_of(&input)
            .iter()
            .zip(containers_of(&output).iter())
        {
            let sc = before.get("securityContext");
            let privileged = sc.and_then(|s| s.get("privileged")) == Some(&json!(true));
            let sys_admin = sc
                .and_then(|s| s.pointer("/capabilities/add"))
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"));
            let absent = |c: &Value| {
                c.pointer("/securityContext/allowPrivilegeEscalation")
                    .is_none_or(Value::is_null)
            };
            if (privileged || sys_admin) && absent(before) {
                prop_assert!(
                    absent(after),
                    "allowPrivilegeEscalation added to a privileged container: {}",
                    after
                );
            }
        }
        // A group is only added when every container ends up with a user.
        if outcome
            .applied
            .get(Field::by_name("runAsGroup").unwrap())
            .is_some()
        {
            let pod_user = output
                .pointer("/spec/securityContext/runAsUser")
                .is_some_and(|v| !v.is_null());
            for c in containers_of(&output) {
                prop_assert!(
                    pod_user
                        || c.pointer("/securityContext/runAsUser")
                            .is_some_and(|v| !v.is_null())
                );
            }
        }
        // No drop list is added to a privileged container.
        for (before, after) in containers_of(&input)
            .iter()
            .zip(containers_of(&output).iter())
        {
            let privileged = before.pointer("/securityContext/privileged") == Some(&json!(true));
            let absent = |c: &Value| {
                c.pointer("/securityContext/capabilities/drop")
                    .is_none_or(Value::is_null)
            };
            if privileged && absent(before) {
                prop_assert!(
                    absent(after),
                    "capabilities.drop added to a privileged container: {}",
                    after
                );
            }
        }
        // runAsNonRoot is only added when no container would run as user 0.
        if outcome
            .applied
            .get(Field::by_name("runAsNonRoot").unwrap())
            .is_some()
        {
            let pod_user = output.pointer("/spec/securityContext/runAsUser").cloned();
            for c in containers_of(&output) {
                let user = c
                    .pointer("/securityContext/runAsUser")
                    .filter(|v| !v.is_null())
                    .cloned()
                    .or(pod_user.clone());
                prop_assert_ne!(
                    user,
                    Some(json!(0)),
                    "runAsNonRoot beside user 0: {}",
                    output
                );
            }
        }
        // Windows and mirror pods are left alone.
        let windows = input.pointer("/spec/os/name") == Some(&json!("windows"))
            || containers_of(&input).iter().any(|c| {
                c.pointer("/securityContext/windowsOptions/hostProcess") == Some(&json!(true))
            });
        let mirror = input
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some();
        if windows || mirror {
            prop_assert!(outcome.patch.is_empty());
        }

        // The server's path (the review parser, then the response encoder) yields the very same patch.
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u", "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "namespace": "app", "object": input}});
        let body = serde_json::to_vec(&review).unwrap();
        let parsed = admission::parse(&body).unwrap();
        let labels =
            BTreeMap::from([("secure-defaults.io/inject".to_owned(), "enabled".to_owned())]);
        let policy = policy_with(&defaults);
        let response =
            admission::respond(&parsed, &policy, NamespaceLabels::Known(&labels)).unwrap();
        prop_assert_eq!(&response.outcome.patch, &outcome.patch);
        let answer: Value = serde_json::from_slice(&response.body).unwrap();
        prop_assert_eq!(&answer["response"]["allowed"], &json!(true));
        if let Some(encoded) = answer["response"].get("patch") {
            let decoded = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                encoded.as_str().expect("the patch is a base64 string"),
            )
            .unwrap();
            prop_assert_eq!(serde_json::from_slice::<Value>(&decoded).unwrap(), ops);
        } else {
            prop_assert!(outcome.patch.is_empty());
        }

        // Report-only mode runs the same decision: no patch, and what it says would be set is exactly what
        // enforcing mode sets.
        let report =
            BTreeMap::from([("secure-defaults.io/inject".to_owned(), "report".to_owned())]);
        let reported =
            admission::respond(&parsed, &policy, NamespaceLabels::Known(&report)).unwrap();
        let said: Value = serde_json::from_slice(&reported.body).unwrap();
        prop_assert!(said["response"].get("patch").is_none(), "{}", said);
        prop_assert_eq!(&reported.outcome.summary, &outcome.summary);
        prop_assert_eq!(&reported.outcome.applied, &outcome.applied);
        if outcome.applied.is_empty() {
            prop_assert!(said["response"].get("auditAnnotations").is_none());
        } else {
            prop_assert_eq!(
                &said["response"]["auditAnnotations"]["would-default"],
                &answer["response"]["auditAnnotations"]["defaulted"]
            );
            let warning = format!(
                "secure-defaults (report): would set {}",
                outcome.applied.readable()
            );
            prop_assert_eq!(&said["response"]["warnings"][0], &json!(warning));
        }

        // A second run adds nothing.
        let again_text = output.to_string();
        let again: Pod = serde_json::from_str(&again_text).unwrap();
        prop_assert_eq!(default_pod(&again, &defaults).patch, vec![]);

        // With the restricted profile on top of these defaults, a pod with nothing explicit that "restricted"
        // forbids comes out passing the whole "restricted" check.
        let mut with_profile = Profile::Restricted.defaults();
        with_profile.overlay(&defaults);
        let outcome = default_pod(&view, &with_profile);
        let mut output = input.clone();
        json_patch::patch(&mut output, &outcome.patch).unwrap();
        let spec = view.spec.as_ref().unwrap();
        if !windows
            && !mirror
            && restricted::explicit_violations(spec, restricted::Scope::Pod).is_empty()
        {
            let text = output.to_string();
            let patched: Pod = serde_json::from_str(&text).unwrap();
            let problems = restricted::check(patched.spec.as_ref().unwrap());
            prop_assert!(problems.is_empty(), "{:?} in {}", problems, output);
            *RESTRICTED_PASSES.lock().unwrap() += 1;
        }
    }
    Ok(())
}

/// A policy whose defaults are exactly `defaults`, through the real file parser.
fn policy_with(d: &Defaults) -> Policy {
    let mut text = String::from(
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\ndefaults:\n",
    );
    for (field, value) in d.iter() {
        // JSON is YAML.
        text += &format!("  {field}: {value}\n");
    }
    if text.ends_with("defaults:\n") {
        text += "  {}\n";
    }
    let policy =
        secure_defaults::policy::parse(text.as_bytes(), std::path::Path::new("p.yaml")).unwrap();
    assert_eq!(&policy.defaults, d);
    policy
}
