//! Client certificate verification against the real API server: the server started with `--tls-client-ca`
//! defaults pods the API server sends it (cluster.sh gives the API server a client certificate for every
//! webhook), while a client without a certificate, or with one from another CA, is refused at the handshake.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::*;

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client certificate from a CA made here, which the server does not trust.
fn stranger() -> Identity {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "another CA");
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "stranger");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// The API server's own webhook client certificate, from the cluster's files.
fn apiserver_identity(env: &ClusterEnv) -> Identity {
    let pki = env.dir.join("pki");
    let cert = CertificateDer::from_pem_file(pki.join("webhook-client.crt")).unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join("webhook-client.key")).unwrap();
    (vec![cert], key)
}

fn tls_client(server_ca_pem: &str, identity: Option<Identity>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// Sends one review straight to the webhook over HTTP/1.1; the status line, or why there was none.
async fn post_review(port: u16, tls: Arc<ClientConfig>, namespace: &str) -> Result<String, String> {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "direct",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": bare_pod("direct")
        }
    })
    .to_string();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // With TLS 1.3 the client finishes its side of the handshake before the server has checked its
    // certificate; a refusal then arrives as an alert on the first read.
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

#[tokio::test]
async fn only_the_api_server_with_its_client_certificate_is_served() {
    let env = cluster_env().await;
    let test = "client-auth";
    let client_ca = PathBuf::from(env.var("WEBHOOK_CLIENT_CA"));
    let hook = Webhook::start_with_args(
        &env,
        test,
        &policy_yaml("opt-in", ""),
        FailurePolicy::Fail,
        &["--tls-client-ca", client_ca.to_str().unwrap()],
    )
    .await;
    let ns = TestNamespace::create(&env, test, "e2e-client-auth", &[(INJECT, "enabled")]).await;
    // The API server's calls carry its client certificate, so pods are defaulted (and with failurePolicy Fail,
    // a refused call would have refused the pod instead).
    hook.wait_effective(&ns).await;
    let pod = ns.create_pod(bare_pod("defaulted")).await;
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532, "{pod}");

    let handshake_failures = async || {
        hook.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("secure_defaults_tls_handshake_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = handshake_failures().await;
    let anonymous = post_review(hook.port, tls_client(&hook.certs.ca_pem, None), &ns.name).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served: {anonymous:?}"
    );
    let foreign = post_review(
        hook.port,
        tls_client(&hook.certs.ca_pem, Some(stranger())),
        &ns.name,
    )
    .await;
    assert!(
        foreign.is_err(),
        "a client with another CA's certificate was served: {foreign:?}"
    );
    eventually("both refusals counted", DEADLINE, || async {
        (handshake_failures().await >= before + 2.0).then_some(())
    })
    .await;
    // The same request with the API server's certificate is answered: the refusals were the certificate's.
    let trusted = post_review(
        hook.port,
        tls_client(&hook.certs.ca_pem, Some(apiserver_identity(&env))),
        &ns.name,
    )
    .await;
    assert_eq!(trusted.as_deref(), Ok("HTTP/1.1 200 OK"));
}
