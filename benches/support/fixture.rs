//! Deterministic, realistic pod fixtures for the benchmarks: a pod as a Deployment's ReplicaSet controller creates
//! it (labels, owner reference, managedFields, env vars, probes, resources, volume mounts, the projected service
//! account token volume the ServiceAccount admission plugin adds) and the `admission.k8s.io/v1` AdmissionReview
//! the API server sends a mutating webhook for it.
//!
//! Shared by `benches/engine.rs` and the load generator (`bench/loadgen`, through `#[path]`), so the engine
//! benchmark, the server benchmark and the end-to-end benchmark all use the same objects. Only `serde_json`.
//!
//! Sizes of the serialised review: 7.5 KB (1 container), 19 KB (5) and 62 KB (20).

#![allow(dead_code)]

use serde_json::{Map, Value, json};

/// The namespace the fixtures live in.
pub const NAMESPACE: &str = "bench";
/// The uid of the admission request (the server must echo it).
pub const REQUEST_UID: &str = "0f6c2b1e-8d4a-4c3b-9a51-7e2d1c0b9f42";

const TEMPLATE_HASH: &str = "7c9d8f6b5d";
const IMAGES: [&str; 4] = [
    "registry.example.com/shop/checkout:1.4.2",
    "registry.example.com/platform/envoy:1.31.2",
    "registry.example.com/platform/log-shipper:3.2.0",
    "registry.example.com/platform/metrics-agent:0.9.7",
];

fn container_name(i: usize) -> String {
    match i {
        0 => "checkout".to_owned(),
        _ => format!("sidecar-{i:02}"),
    }
}

/// Env vars of container `i`: a mix of literal values, secret and field references.
fn env(i: usize) -> Vec<Value> {
    let mut vars = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}),
        json!({"name": "DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "checkout-db", "key": "password"}}}),
    ];
    // The application container carries more configuration than its sidecars.
    let literals = if i == 0 { 6 } else { 1 };
    for k in 0..literals {
        vars.push(json!({
            "name": format!("SETTING_{i:02}_{k:02}"),
            "value": format!("https://svc-{k}.shop.svc:8443/v{k}?timeout={}ms", 250 * (k + 1)),
        }));
    }
    vars
}

/// Container `i`; `admitted` adds the service account token mount the ServiceAccount admission plugin adds.
fn container(i: usize, admitted: bool) -> Value {
    let name = container_name(i);
    let mut mounts = vec![
        json!({"name": "config", "readOnly": true, "mountPath": "/etc/checkout"}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if admitted {
        mounts.push(json!({"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
    }
    json!({
        "name": name,
        "image": IMAGES[i % IMAGES.len()],
        "args": ["--config=/etc/checkout/config.yaml", "--log-format=json", format!("--listen=:{}", 8080 + i)],
        "ports": [
            {"name": "http", "containerPort": 8080 + i, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090 + i, "protocol": "TCP"}
        ],
        "env": env(i),
        "resources": {
            "limits": {"cpu": "1", "memory": "512Mi"},
            "requests": {"cpu": "250m", "memory": "256Mi"}
        },
        "volumeMounts": mounts,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
            "initialDelaySeconds": 10, "timeoutSeconds": 2, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent"
    })
}

/// The managedFields entry of the ReplicaSet controller for one container: the shape a real pod carries.
fn managed_container(i: usize) -> Value {
    let mut env_fields = Map::new();
    env_fields.insert(".".into(), json!({}));
    for var in env(i) {
        let key = format!(
            "k:{{\"name\":\"{}\"}}",
            var["name"].as_str().unwrap_or_default()
        );
        let value = if var.get("valueFrom").is_some() {
            json!({".": {}, "f:name": {}, "f:valueFrom": {".": {}, "f:fieldRef": {}}})
        } else {
            json!({".": {}, "f:name": {}, "f:value": {}})
        };
        env_fields.insert(key, value);
    }
    json!({
        ".": {},
        "f:args": {},
        "f:env": env_fields,
        "f:image": {},
        "f:imagePullPolicy": {},
        "f:livenessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}},
            "f:initialDelaySeconds": {}, "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
        "f:name": {},
        "f:ports": {".": {},
            format!("k:{{\"containerPort\":{},\"protocol\":\"TCP\"}}", 8080 + i): {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}},
            format!("k:{{\"containerPort\":{},\"protocol\":\"TCP\"}}", 9090 + i): {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
        "f:readinessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}},
            "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
        "f:resources": {".": {}, "f:limits": {".": {}, "f:cpu": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
        "f:terminationMessagePath": {},
        "f:terminationMessagePolicy": {},
        "f:volumeMounts": {".": {},
            "k:{\"mountPath\":\"/etc/checkout\"}": {".": {}, "f:mountPath": {}, "f:name": {}, "f:readOnly": {}},
            "k:{\"mountPath\":\"/tmp\"}": {".": {}, "f:mountPath": {}, "f:name": {}}}
    })
}

fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": "checkout",
        "app.kubernetes.io/instance": "checkout-prod",
        "app.kubernetes.io/version": "1.4.2",
        "app.kubernetes.io/component": "api",
        "app.kubernetes.io/part-of": "shop",
        "pod-template-hash": TEMPLATE_HASH
    })
}

fn annotations() -> Value {
    json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "kubectl.kubernetes.io/restartedAt": "2025-11-20T09:14:03Z"
    })
}

/// The pod spec as its template states it (before the API server's defaulting and admission plugins).
fn template_spec(containers: usize, admitted: bool) -> Value {
    json!({
        "volumes": [
            {"name": "config", "configMap": {"name": "checkout-config"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
        ],
        "containers": (0..containers).map(|i| container(i, admitted)).collect::<Vec<_>>(),
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "checkout"}}
        }]
    })
}

/// A pod as the API server hands it to a mutating webhook: created by a ReplicaSet, defaulted, with the service
/// account token volume added. `securityContext: {}` at the pod level and none on the containers, as is common,
/// so the full policy patches every container.
pub fn admitted_pod(containers: usize) -> Value {
    let mut spec = template_spec(containers, true);
    let fields = spec.as_object_mut().expect("spec is an object");
    if let Some(Value::Array(volumes)) = fields.get_mut("volumes") {
        volumes.push(json!({"name": "kube-api-access-x7k2p", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ], "defaultMode": 420}}));
        volumes[0]["configMap"]["defaultMode"] = json!(420);
    }
    for (k, v) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        (
            "tolerations",
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]),
        ),
        ("priority", json!(0)),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ] {
        fields.insert(k.to_owned(), v);
    }
    let mut managed_containers = Map::new();
    for i in 0..containers {
        managed_containers.insert(
            format!("k:{{\"name\":\"{}\"}}", container_name(i)),
            managed_container(i),
        );
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": format!("checkout-{TEMPLATE_HASH}-"),
            "namespace": NAMESPACE,
            "creationTimestamp": null,
            "labels": labels(),
            "annotations": annotations(),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("checkout-{TEMPLATE_HASH}"),
                "uid": "3b0d2f8e-5c1a-4e7b-8f0d-2a6c9e4b1d73", "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-11-20T09:14:05Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {".": {}, "f:kubectl.kubernetes.io/restartedAt": {}, "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {}},
                        "f:generateName": {},
                        "f:labels": {".": {}, "f:app.kubernetes.io/component": {}, "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {},
                            "f:app.kubernetes.io/part-of": {}, "f:app.kubernetes.io/version": {}, "f:pod-template-hash": {}},
                        "f:ownerReferences": {".": {}, "k:{\"uid\":\"3b0d2f8e-5c1a-4e7b-8f0d-2a6c9e4b1d73\"}": {}}
                    },
                    "f:spec": {
                        "f:containers": managed_containers,
                        "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                        "f:securityContext": {}, "f:terminationGracePeriodSeconds": {},
                        "f:topologySpreadConstraints": {".": {}, "k:{\"topologyKey\":\"topology.kubernetes.io/zone\",\"whenUnsatisfiable\":\"ScheduleAnyway\"}": {
                            ".": {}, "f:labelSelector": {}, "f:maxSkew": {}, "f:topologyKey": {}, "f:whenUnsatisfiable": {}}},
                        "f:volumes": {".": {},
                            "k:{\"name\":\"config\"}": {".": {}, "f:configMap": {".": {}, "f:defaultMode": {}, "f:name": {}}, "f:name": {}},
                            "k:{\"name\":\"tmp\"}": {".": {}, "f:emptyDir": {".": {}, "f:sizeLimit": {}}, "f:name": {}}}
                    }
                }
            }]
        },
        "spec": spec,
        "status": {}
    })
}

/// The pod to POST to the API server in the end-to-end benchmark: the same template, named, without the parts
/// the API server or a controller fill in (an owner reference to a missing ReplicaSet would get it collected).
pub fn create_pod(containers: usize, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels(), "annotations": annotations()},
        "spec": template_spec(containers, false)
    })
}

/// The AdmissionReview for creating [`admitted_pod`], as the API server sends it.
pub fn review(containers: usize) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": REQUEST_UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "9e1b7c44-0d2f-4a8e-b6c3-5f7a1d2e8c90",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/credential-id": ["JTI=4f7d2a9c-1b3e-4c5d-8e6f-7a8b9c0d1e2f"]
                }
            },
            "object": admitted_pod(containers),
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// [`review`] serialised compactly, as the API server sends it.
pub fn review_bytes(containers: usize) -> Vec<u8> {
    serde_json::to_vec(&review(containers)).expect("a JSON value serialises")
}

/// The container counts the benchmarks use.
pub const SIZES: [usize; 3] = [1, 5, 20];
