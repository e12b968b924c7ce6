//! The opt-in NetworkPolicy component (`manifests/components/network-policy`): an overlay that includes it
//! renders with kubectl's kustomize, gains exactly one NetworkPolicy and nothing else changes; the policy
//! selects the webhook's pods and admits the webhook port only from the control plane's range and the admin
//! port only from the monitoring namespace; and the real API server accepts it as rendered.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_network_policy_component_admits_only_the_control_plane_and_monitoring() {
    let env = cluster_env().await;
    let with = render(&env, "e2e/manifests/network-policy");
    let without = render(&env, "manifests/overlays/opt-in");

    // The component adds one object and changes nothing else.
    let (policies, rest): (Vec<Value>, Vec<Value>) =
        with.into_iter().partition(|d| d["kind"] == "NetworkPolicy");
    assert_eq!(rest, without, "the component changed other objects");
    assert_eq!(policies.len(), 1, "{policies:?}");
    let policy = &policies[0];
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(policy["metadata"]["namespace"], "secure-defaults");

    // It selects the webhook's pods: its selector's labels are all on the Deployment's pod template.
    let deployment = crate::manifests::deployment(&rest);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("podSelector.matchLabels");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&pod_labels[key], value, "pod label {key}");
    }
    // The ports it names are the container's.
    let ports: Vec<&Value> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports, [&json!(8443), &json!(8080)]);

    // Ingress only (the server's own calls to the API server stay open), in exactly two rules.
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([
            {
                "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 8443}]
            },
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"protocol": "TCP", "port": 8080}]
            }
        ]),
        "{policy}"
    );

    // Unpatched, the component carries the documentation-range placeholder the README says to replace.
    let component = std::fs::read_to_string(
        repo().join("manifests/components/network-policy/networkpolicy.yaml"),
    )
    .unwrap();
    assert!(component.contains("cidr: 192.0.2.0/24"));

    // The API server accepts it as rendered. It goes to a namespace of this test: `secure-defaults` belongs to
    // the manifests test, which may be running beside this one.
    let ns = TestNamespace::create(&env, "network-policy", "e2e-network-policy", &[]).await;
    let mut object = policy.clone();
    object["metadata"]["namespace"] = json!(ns.name);
    env.kubectl_ok(
        &["apply", "-f", "-", "-o", "json"],
        Some(&object.to_string()),
    );
    let get = format!("get networkpolicy secure-defaults -n {} -o json", ns.name);
    let stored: Value = serde_json::from_str(&env.kubectl_ok(&words(&get), None)).unwrap();
    assert_eq!(
        stored["spec"], policy["spec"],
        "the API server changed the policy"
    );
}
