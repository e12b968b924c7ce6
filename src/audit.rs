//! `secure-defaults audit`: the running pods that the policy would change if they were created now, which
//! mutation can never fix in place, grouped by the workload that owns them. It only lists (pods, namespaces, and
//! the ReplicaSets and Jobs it resolves owners through) and never writes.
//!
//! Each pod is judged by exactly the server's code: it is wrapped in a CREATE review and answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, ListParams, ObjectList};
use serde::Serialize;
use serde_json::{Value, json};

use crate::admission::{self, Verdict};
use crate::images::Images;
use crate::images::lookup::Lookup;
use crate::policy::{self, NamespaceLabels, Policy};

/// Why an audit failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No kubeconfig or in-cluster credentials.
    #[error("no cluster credentials (KUBECONFIG, ~/.kube/config or an in-cluster service account)")]
    FindCluster(#[source] kube::config::InferConfigError),
    /// The client could not be built from the credentials found.
    #[error("cannot connect to the cluster")]
    ConnectCluster(#[source] kube::Error),
    /// A list call failed.
    #[error("cannot list {0}")]
    List(&'static str, #[source] kube::Error),
    /// The policy ConfigMap could not be read.
    #[error("cannot read the policy ConfigMap {0}")]
    ReadPolicyConfigMap(String, #[source] kube::Error),
    /// The policy ConfigMap lacks the key.
    #[error("the policy ConfigMap {0} has no key {1}")]
    NoPolicyKey(String, String),
    /// The policy in the ConfigMap is invalid.
    #[error("the policy in ConfigMap {0} is invalid")]
    ParsePolicy(String, #[source] policy::PolicyError),
}

/// How long to wait on the cluster: for a connection (TCP and TLS), and for each read or write once connected.
/// A cluster that accepts a connection and then never answers fails the call after `read`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting.
    pub connect: Duration,
    /// Each read or write of a request.
    pub read: Duration,
}

/// A client for the cluster of the kubeconfig (or the in-cluster service account), with `timeouts`. kube's own
/// default has no read timeout, so a silent API server would hold `audit` for ever.
pub async fn connect(timeouts: Timeouts) -> Result<kube::Client, AuditError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(AuditError::FindCluster)?;
    config.connect_timeout = Some(timeouts.connect);
    config.read_timeout = Some(timeouts.read);
    config.write_timeout = Some(timeouts.read);
    kube::Client::try_from(config).map_err(AuditError::ConnectCluster)
}

/// Pods of one owner that would get the same fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Their namespace.
    pub namespace: String,
    /// The workload that owns them: Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, or the pod itself.
    pub owner: Owner,
    /// Their names.
    pub pods: Vec<String>,
    /// What each would get: `runAsUser=65532, allowPrivilegeEscalation=false (app)`.
    pub would_set: String,
}

/// A pod's top owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Owner {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What the policy would set on `pod` (a stored Pod) if it were created now in a namespace with `labels`; `None`
/// when nothing, or the namespace is not served.
pub fn judge(pod: &Value, labels: &BTreeMap<String, String>, policy: &Policy) -> Option<String> {
    judge_with(pod, labels, policy, None)
}

/// [`judge`], reading the pod's images' users through `lookup` as the server would.
pub async fn judge_with_images(
    pod: &Value,
    labels: &BTreeMap<String, String>,
    policy: &Policy,
    lookup: &Lookup,
) -> Option<String> {
    let body = serde_json::to_vec(&review_of(pod)?).ok()?;
    let parsed = admission::parse(&body).ok()?;
    let (wanted, platform) =
        admission::images_to_look_up(&parsed, policy, NamespaceLabels::Known(labels));
    let images = lookup.users(wanted, platform.as_ref()).await;
    judge_with(pod, labels, policy, Some(&images))
}

fn review_of(pod: &Value) -> Option<Value> {
    let namespace = pod.pointer("/metadata/namespace")?.as_str()?;
    Some(json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": "audit",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    }))
}

fn judge_with(
    pod: &Value,
    labels: &BTreeMap<String, String>,
    policy: &Policy,
    images: Option<&Images>,
) -> Option<String> {
    let body = serde_json::to_vec(&review_of(pod)?).ok()?;
    let parsed = admission::parse(&body).ok()?;
    let none = Images::default();
    let labels = NamespaceLabels::Known(labels);
    let response =
        admission::respond_with(&parsed, policy, labels, images.unwrap_or(&none)).ok()?;
    match response.verdict {
        Verdict::Patched | Verdict::Reported if !response.outcome.applied.is_empty() => {
            Some(response.outcome.applied.readable())
        }
        _ => None,
    }
}

fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|r| r.controller == Some(true))
}

/// Lists every object of a kind, `page` at a time, calling `seen` with the running count.
async fn list_all<K>(
    api: &Api<K>,
    what: &'static str,
    page: u32,
    seen: &mut impl FnMut(&'static str, usize),
) -> Result<Vec<K>, AuditError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(page);
    loop {
        let list: ObjectList<K> = api
            .list(&params)
            .await
            .map_err(|e| AuditError::List(what, e))?;
        out.extend(list.items);
        seen(what, out.len());
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Reads the policy from a ConfigMap (`NAMESPACE/NAME`, key `key`).
pub async fn policy_from_cluster(
    client: &kube::Client,
    configmap: &str,
    key: &str,
) -> Result<Policy, AuditError> {
    let (namespace, name) = configmap
        .split_once('/')
        .unwrap_or(("secure-defaults", configmap));
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get(name)
        .await
        .map_err(|e| AuditError::ReadPolicyConfigMap(configmap.to_owned(), e))?;
    let text = cm
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| AuditError::NoPolicyKey(configmap.to_owned(), key.to_owned()))?;
    let path = std::path::PathBuf::from(format!("configmap {configmap} key {key}"));
    policy::parse(text.as_bytes(), &path)
        .map_err(|e| AuditError::ParsePolicy(configmap.to_owned(), e))
}

/// Audits the cluster: every pod in a namespace the policy serves, judged as if created now.
pub async fn run(
    client: &kube::Client,
    policy: &Policy,
    page: u32,
    images: Option<&Lookup>,
) -> Result<Vec<Group>, AuditError> {
    let started = Instant::now();
    let mut last_said = Instant::now();
    let mut progress = |what: &'static str, n: usize| {
        // Said on standard error once a listing takes more than a moment, at most every second.
        if started.elapsed() > Duration::from_secs(1)
            && last_said.elapsed() >= Duration::from_secs(1)
        {
            eprintln!("listed {n} {what} ...");
            last_said = Instant::now();
        }
    };
    let namespaces = list_all(
        &Api::<Namespace>::all(client.clone()),
        "namespaces",
        page,
        &mut progress,
    )
    .await?;
    let labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .into_iter()
        .filter_map(|ns| Some((ns.metadata.name?, ns.metadata.labels.unwrap_or_default())))
        .collect();
    let served = |ns: &str| {
        let labels = labels.get(ns).cloned().unwrap_or_default();
        matches!(
            policy.for_namespace(ns, NamespaceLabels::Known(&labels)),
            policy::Decision::Apply(_)
        )
    };
    let pods = list_all(
        &Api::<Pod>::all(client.clone()),
        "pods",
        page,
        &mut progress,
    )
    .await?;
    let mut findings = Vec::new();
    for pod in pods {
        let Some(namespace) = pod.metadata.namespace.clone() else {
            continue;
        };
        if !served(&namespace) {
            continue;
        }
        let value = serde_json::to_value(&pod).unwrap_or(Value::Null);
        let no_labels = BTreeMap::new();
        let ns_labels = labels.get(&namespace).unwrap_or(&no_labels);
        let would = match images {
            Some(lookup) => judge_with_images(&value, ns_labels, policy, lookup).await,
            None => judge(&value, ns_labels, policy),
        };
        if let Some(would) = would {
            findings.push((pod, would));
        }
    }
    // Owners, through the kinds that own pods for another: only listed when some finding needs them.
    let needs = |kind: &str| {
        findings.iter().any(|(p, _)| {
            controller(p.metadata.owner_references.as_ref()).is_some_and(|o| o.kind == kind)
        })
    };
    let replica_sets = if needs("ReplicaSet") {
        list_all(
            &Api::<ReplicaSet>::all(client.clone()),
            "replicasets",
            page,
            &mut progress,
        )
        .await?
    } else {
        Vec::new()
    };
    let jobs = if needs("Job") {
        list_all(
            &Api::<Job>::all(client.clone()),
            "jobs",
            page,
            &mut progress,
        )
        .await?
    } else {
        Vec::new()
    };
    let parents: BTreeMap<(String, String, String), Owner> = replica_sets
        .iter()
        .map(|rs| (rs.meta(), "ReplicaSet"))
        .chain(jobs.iter().map(|j| (j.meta(), "Job")))
        .filter_map(|(meta, kind)| {
            let parent = controller(meta.owner_references.as_ref())?;
            Some((
                (meta.namespace.clone()?, kind.to_owned(), meta.name.clone()?),
                Owner {
                    kind: parent.kind.clone(),
                    name: parent.name.clone(),
                },
            ))
        })
        .collect();
    let mut groups: BTreeMap<(String, Owner, String), Vec<String>> = BTreeMap::new();
    for (pod, would) in findings {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let owner = match controller(pod.metadata.owner_references.as_ref()) {
            None => Owner {
                kind: "Pod".to_owned(),
                name: name.clone(),
            },
            Some(direct) => parents
                .get(&(namespace.clone(), direct.kind.clone(), direct.name.clone()))
                .cloned()
                .unwrap_or_else(|| Owner {
                    kind: direct.kind.clone(),
                    name: direct.name.clone(),
                }),
        };
        groups
            .entry((namespace, owner, would))
            .or_default()
            .push(name);
    }
    Ok(groups
        .into_iter()
        .map(|((namespace, owner, would_set), mut pods)| {
            pods.sort();
            Group {
                namespace,
                owner,
                pods,
                would_set,
            }
        })
        .collect())
}

/// How to print the findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
    /// A YAML list.
    Yaml,
}

/// The findings in `format`.
pub fn render(groups: &[Group], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(groups).unwrap_or_default() + "\n",
        Format::Yaml => serde_saphyr::to_string(&groups).unwrap_or_default(),
        Format::Table => {
            if groups.is_empty() {
                return "no running pod would be changed by the policy\n".to_owned();
            }
            let rows: Vec<[String; 4]> = groups
                .iter()
                .map(|g| {
                    [
                        g.namespace.clone(),
                        format!("{}/{}", g.owner.kind, g.owner.name),
                        g.pods.len().to_string(),
                        g.would_set.clone(),
                    ]
                })
                .collect();
            let header = ["NAMESPACE", "OWNER", "PODS", "WOULD SET"].map(str::to_owned);
            let widths: Vec<usize> = (0..3)
                .map(|i| {
                    rows.iter()
                        .chain(std::iter::once(&header))
                        .map(|r| r[i].len())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut out = String::new();
            for row in std::iter::once(&header).chain(rows.iter()) {
                for (i, width) in widths.iter().enumerate() {
                    out.push_str(&format!("{:<width$}   ", row[i]));
                }
                out.push_str(&row[3]);
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_pod_is_judged_as_if_created_now() {
        let policy = policy::parse(
            b"apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: opt-in\ndefaults: {runAsUser: 65532, allowPrivilegeEscalation: false}\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old", "namespace": "app"},
            "spec": {"securityContext": {}, "containers": [{"name": "web", "image": "x"}]}});
        let on = BTreeMap::from([(policy::INJECT_LABEL.to_owned(), "enabled".to_owned())]);
        assert_eq!(
            judge(&pod, &on, &policy).as_deref(),
            Some("runAsUser=65532, allowPrivilegeEscalation=false (web)")
        );
        assert_eq!(judge(&pod, &BTreeMap::new(), &policy), None, "not opted in");
        let done = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new", "namespace": "app"},
            "spec": {"securityContext": {"runAsUser": 1}, "containers": [{"name": "web", "image": "x",
                "securityContext": {"allowPrivilegeEscalation": false}}]}});
        assert_eq!(judge(&done, &on, &policy), None);
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let groups = vec![
            Group {
                namespace: "shop".into(),
                owner: Owner {
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                pods: vec!["web-1".into(), "web-2".into()],
                would_set: "runAsUser=65532".into(),
            },
            Group {
                namespace: "a".into(),
                owner: Owner {
                    kind: "Pod".into(),
                    name: "x".into(),
                },
                pods: vec!["x".into()],
                would_set: "fsGroup=1".into(),
            },
        ];
        assert_eq!(
            render(&groups, Format::Table),
            "NAMESPACE   OWNER            PODS   WOULD SET\nshop        Deployment/web   2      runAsUser=65532\na           Pod/x            1      fsGroup=1\n"
        );
        let json: Value = serde_json::from_str(&render(&groups, Format::Json)).unwrap();
        assert_eq!(json[0]["wouldSet"], "runAsUser=65532");
        assert_eq!(
            json[0]["owner"],
            json!({"kind": "Deployment", "name": "web"})
        );
    }
}
