//! The cluster side of self-managed certificates: every replica serves the certificate in the Secret, and the
//! replica holding the Lease (elected in [`super::lease`]) issues, rotates and injects it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use rustls::sign::CertifiedKey;

use super::lease;
use super::store::{CertStore, certified_key, validity};
use super::{Authority, CertError, Material, SecretAction, Settings};
use crate::metrics::Metrics;
use crate::watch::{Every, Outage, Report};

/// Why a round of certificate management failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCertError {
    /// The Secret could not be read.
    #[error("cannot read Secret {0}")]
    ReadSecret(String, #[source] kube::Error),
    /// The Secret could not be written.
    #[error("cannot write Secret {0}")]
    WriteSecret(String, #[source] kube::Error),
    /// The Lease could not be taken or renewed.
    #[error("cannot take or renew Lease {0}")]
    Lease(String, #[source] kube::Error),
    /// The CA bundle could not be injected.
    #[error("cannot update caBundle of MutatingWebhookConfiguration {0}")]
    InjectBundle(String, #[source] kube::Error),
    /// A certificate could not be issued.
    #[error("cannot issue a certificate")]
    Issue(#[source] CertError),
}

/// Where the certificate lives and who this replica is.
#[derive(Clone, Debug)]
pub struct Target {
    /// The namespace of the Secret and the Lease.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The Lease's name.
    pub lease: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    pub webhook_configuration: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// How often the holder checks the Secret.
    pub check_interval: Duration,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn read_material(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let next = match (
        text(data, super::NEXT_CA_CERT),
        text(data, super::NEXT_CA_KEY),
        text(data, super::NEXT_SINCE),
    ) {
        (Some(cert), Some(key), Some(since)) => {
            Some((Authority { cert, key }, since.trim().parse().ok()?))
        }
        _ => None,
    };
    let bundle = text(data, super::BUNDLE)?;
    Some(Material {
        ca: Authority {
            cert: text(data, super::CA_CERT)?,
            key: text(data, super::CA_KEY)?,
        },
        tls_cert: text(data, super::TLS_CERT)?,
        tls_key: text(data, super::TLS_KEY)?,
        bundle: split_pem(&bundle),
        next,
    })
}

fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim)
        .filter(|p| p.ends_with(END))
        .map(|p| format!("{p}\n"))
        .collect()
}

fn secret_data(m: &Material) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put(super::CA_CERT, &m.ca.cert);
    put(super::CA_KEY, &m.ca.key);
    put(super::TLS_CERT, &m.tls_cert);
    put(super::TLS_KEY, &m.tls_key);
    put(super::BUNDLE, &m.bundle.concat());
    if let Some((next, since)) = &m.next {
        put(super::NEXT_CA_CERT, &next.cert);
        put(super::NEXT_CA_KEY, &next.key);
        put(super::NEXT_SINCE, &since.to_string());
    }
    data
}

/// Every replica: serve what the Secret holds, swapping it in when it changes. A watch on the one Secret (a
/// field selector on its name, which is what lets RBAC restrict list and watch to that name) rather than a
/// read per second per replica: a rotation reaches every replica as soon as it is written.
pub async fn follow(
    client: kube::Client,
    target: Target,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &target.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", target.secret));
    let secrets = watcher(api, config)
        .backoff(crate::watch::retry_backoff())
        .applied_objects();
    let mut secrets = std::pin::pin!(secrets);
    let mut served: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut outage = Outage::new(crate::watch::REPORT_EVERY);
    loop {
        let next = tokio::select! {
            next = secrets.next() => next,
            () = stop.cancelled() => return,
        };
        let secret = match next {
            Some(Ok(secret)) => {
                if let Some(lasted) = outage.succeeded(Instant::now()) {
                    tracing::info!(
                        secret = target.secret,
                        ?lasted,
                        "watching the certificate Secret again"
                    );
                }
                secret
            }
            // The watcher retries with backoff; the certificate in use stays.
            Some(Err(error)) => {
                match outage.failed(Instant::now()) {
                    Some(Report::Began) => {
                        tracing::warn!(error = %crate::error_chain(&error), secret = target.secret, "cannot watch the certificate Secret; serving the current certificate and retrying")
                    }
                    Some(Report::Continuing { failures, for_ }) => {
                        tracing::warn!(error = %crate::error_chain(&error), secret = target.secret, failures, failing_for = ?for_, "still cannot watch the certificate Secret; serving the current certificate")
                    }
                    None => {}
                }
                continue;
            }
            None => return,
        };
        let Some(data) = secret.data else { continue };
        let (Some(cert), Some(key)) = (data.get(super::TLS_CERT), data.get(super::TLS_KEY)) else {
            continue;
        };
        // A re-list after a reconnect delivers the Secret again, unchanged.
        if served
            .as_ref()
            .is_some_and(|(c, k)| *c == cert.0 && *k == key.0)
        {
            continue;
        }
        let name = std::path::Path::new(&target.secret);
        match certified_key(name, &cert.0, name, &key.0) {
            Ok(certified) => {
                record_times(&metrics, &certified, &data);
                store.replace(certified);
                Metrics::count_reload(&metrics.certificate_reloads, true);
                tracing::info!(
                    secret = target.secret,
                    "serving certificate loaded from Secret"
                );
            }
            Err(error) => {
                Metrics::count_reload(&metrics.certificate_reloads, false);
                tracing::error!(error = %crate::error_chain(&error), "certificate in Secret refused; keeping the one in use");
            }
        }
        served = Some((cert.0.clone(), key.0.clone()));
    }
}

/// The serving certificate's expiry and issue time, and its CA's expiry, for the metrics. Every replica reads
/// them from the certificates themselves, so all report the same times, and a restart does not reset them. The
/// issue time is the certificate's notBefore plus the backdate `issue` gives it.
fn record_times(metrics: &Metrics, certified: &CertifiedKey, data: &BTreeMap<String, ByteString>) {
    if let Some((not_before, not_after)) = validity(certified) {
        metrics.certificate_expiry.set(not_after);
        metrics
            .certificate_last_rotation
            .set(not_before.saturating_add(super::BACKDATE));
    }
    if let Some(ca_expiry) = text(data, super::CA_CERT).and_then(|pem| super::not_after(&pem)) {
        metrics.ca_expiry.set(ca_expiry);
    }
}

/// The replica holding the Lease: issue, rotate, inject.
pub async fn manage(
    client: kube::Client,
    target: Target,
    settings: Settings,
    stop: CancellationToken,
) {
    // The holder renews at least three times per lease duration, so that the others, who judge expiry by how
    // long they have seen the Lease unchanged, never see a live holder's Lease unchanged for that long.
    let period = target.check_interval.min(target.lease_duration / 3);
    let mut every = Every::new(period.max(Duration::from_millis(100)), stop);
    let mut seen = None;
    while every.tick().await {
        if let Err(error) = round(&client, &target, &settings, &mut seen).await {
            tracing::warn!(error = %crate::error_chain(&error), "certificate management round failed; retrying");
        }
    }
}

async fn round(
    client: &kube::Client,
    target: &Target,
    settings: &Settings,
    seen: &mut Option<lease::Seen>,
) -> Result<(), ClusterCertError> {
    let held = lease::hold(client, target, seen)
        .await
        .map_err(|e| ClusterCertError::Lease(target.lease.clone(), e))?;
    if !held {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let existing = secrets
        .get_opt(&target.secret)
        .await
        .map_err(|e| ClusterCertError::ReadSecret(target.secret.clone(), e))?;
    let current = existing.as_ref().and_then(read_material);
    let now = Timestamp::now().as_second();
    let material = match super::secret_action(now, current.as_ref(), settings)
        .map_err(ClusterCertError::Issue)?
    {
        SecretAction::Keep => current,
        SecretAction::Write { material, reason } => {
            let mut secret = existing.clone().unwrap_or_else(|| Secret {
                metadata: ObjectMeta {
                    name: Some(target.secret.clone()),
                    namespace: Some(target.namespace.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                ..Secret::default()
            });
            secret.data = Some(secret_data(&material));
            let written = if existing.is_some() {
                // Carries the resourceVersion read above: a concurrent writer makes this fail, not overwrite.
                secrets
                    .replace(&target.secret, &PostParams::default(), &secret)
                    .await
            } else {
                secrets.create(&PostParams::default(), &secret).await
            };
            written.map_err(|e| ClusterCertError::WriteSecret(target.secret.clone(), e))?;
            tracing::info!(secret = target.secret, reason, "certificate Secret updated");
            Some(*material)
        }
    };
    if let Some(material) = material {
        inject(client, target, &material.bundle.concat()).await?;
    }
    Ok(())
}

/// Puts the bundle into every webhook of the configuration whose caBundle differs.
async fn inject(
    client: &kube::Client,
    target: &Target,
    bundle: &str,
) -> Result<(), ClusterCertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &target.webhook_configuration;
    let err = |e| ClusterCertError::InjectBundle(name.clone(), e);
    let Some(mut config) = api.get_opt(name).await.map_err(err)? else {
        tracing::warn!(
            webhook_configuration = name,
            "MutatingWebhookConfiguration not found; nothing to inject"
        );
        return Ok(());
    };
    let wanted = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            webhook.client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(err)?;
        tracing::info!(webhook_configuration = name, "caBundle updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the holder writes first, at `now`.
    fn bootstrap(now: i64) -> Material {
        let settings = Settings {
            ca_validity: Duration::from_secs(3000),
            cert_validity: Duration::from_secs(900),
            overlap: Duration::from_secs(60),
            dns_names: vec!["a.b.svc".to_owned()],
            ip_addresses: vec![],
        };
        let SecretAction::Write { material, .. } =
            super::super::secret_action(now, None, &settings).unwrap()
        else {
            panic!("bootstrap writes");
        };
        *material
    }

    #[test]
    fn secret_round_trip() {
        let mut material = bootstrap(1_800_000_000);
        material.next = Some((material.ca.clone(), 1_800_000_000));
        material.bundle = vec![material.ca.cert.clone(), material.ca.cert.clone()];
        let secret = Secret {
            data: Some(secret_data(&material)),
            ..Secret::default()
        };
        assert_eq!(read_material(&secret), Some(material));
    }

    #[test]
    fn times_recorded_from_the_secret() {
        let now = 1_800_000_000;
        let material = bootstrap(now);
        let data = secret_data(&material);
        let name = std::path::Path::new("secret");
        let certified = certified_key(
            name,
            material.tls_cert.as_bytes(),
            name,
            material.tls_key.as_bytes(),
        )
        .unwrap();
        let metrics = Metrics::new();
        record_times(&metrics, &certified, &data);
        assert_eq!(metrics.certificate_expiry.get(), now + 900);
        assert_eq!(metrics.ca_expiry.get(), now + 3000);
        assert_eq!(metrics.certificate_last_rotation.get(), now);
    }
}
