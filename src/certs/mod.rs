//! The serving certificate: where it comes from (`source`), the store handshakes read it from (`store`), and
//! self-managed certificates for clusters without cert-manager: a CA and a serving certificate kept in a
//! Secret, the CA bundle kept in the webhook configuration, both rotated well before expiry.
//!
//! This module holds the pure part of the self-managed mode: given what the Secret holds and the time, what it
//! should hold next. `cluster` does the reading and writing under a Lease, so only one replica writes at a time.
//!
//! CA rotation never breaks a handshake. A new CA is first only *added* to the bundle, while the serving
//! certificate stays signed by the old one. After an overlap long enough for every API server to see the
//! bigger bundle, the serving certificate is re-issued from the new CA. The old CA leaves the bundle when it
//! expires.

pub mod cluster;
mod lease;
pub mod source;
pub mod store;

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Keys of the Secret.
pub const CA_CERT: &str = "ca.crt";
/// The Secret key of the CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The Secret key of the serving certificate.
pub const TLS_CERT: &str = "tls.crt";
/// The Secret key of the serving certificate's private key.
pub const TLS_KEY: &str = "tls.key";
/// The Secret key of the CA bundle the API server must trust.
pub const BUNDLE: &str = "ca-bundle.crt";
/// The Secret key of the next CA's certificate, during a rotation.
pub const NEXT_CA_CERT: &str = "next-ca.crt";
/// The Secret key of the next CA's private key, during a rotation.
pub const NEXT_CA_KEY: &str = "next-ca.key";
/// Unix time at which the next CA entered the bundle.
pub const NEXT_SINCE: &str = "next-ca-since";

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A key could not be generated.
    #[error("cannot generate a key")]
    GenerateKey(#[source] rcgen::Error),
    /// A certificate could not be signed.
    #[error("cannot sign a certificate")]
    SignCertificate(#[source] rcgen::Error),
    /// The validity period is out of range.
    #[error("invalid validity period")]
    Validity(#[source] time::error::ComponentRange),
}

/// How certificates are issued and when they are renewed.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a CA is valid.
    pub ca_validity: Duration,
    /// How long a serving certificate is valid.
    pub cert_validity: Duration,
    /// How long a new CA sits in the bundle before the serving certificate switches to it.
    pub overlap: Duration,
    /// The serving certificate's DNS names.
    pub dns_names: Vec<String>,
    /// The serving certificate's IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

/// A CA: certificate and key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The CA that signs the serving certificate.
    pub ca: Authority,
    /// The serving certificate.
    pub tls_cert: String,
    /// The serving certificate's key.
    pub tls_key: String,
    /// PEM certificates the API server must trust: the CA, plus a next or a retiring one during a rotation.
    pub bundle: Vec<String>,
    /// A CA in the bundle, not yet signing, and since when (Unix seconds).
    pub next: Option<(Authority, i64)>,
}

/// What to do with the Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// Nothing: it holds what it should.
    Keep,
    /// Write new material, for a reason.
    Write {
        /// The new material.
        material: Box<Material>,
        /// Why, for the log.
        reason: &'static str,
    },
}

/// `f` of the certificate in `pem`; `None` if it holds none that parses.
fn with_cert<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> Option<T> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(f(&cert))
}

/// Expiry (Unix seconds) and whether it is a certificate at all.
fn not_after(pem: &str) -> Option<i64> {
    with_cert(pem, |cert| cert.validity().not_after.timestamp())
}

fn sans_of(pem: &str) -> Option<Vec<String>> {
    with_cert(pem, |cert| {
        let sans = cert.subject_alternative_name().ok().flatten();
        let mut names: Vec<String> = sans
            .iter()
            .flat_map(|ext| &ext.value.general_names)
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                GeneralName::IPAddress(ip) => <[u8; 4]>::try_from(*ip)
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(*ip).map(IpAddr::from))
                    .ok()
                    .map(|ip| ip.to_string()),
                _ => None,
            })
            .collect();
        names.sort();
        names
    })
}

impl Settings {
    fn wanted_sans(&self) -> Vec<String> {
        let mut names: Vec<String> = self.dns_names.clone();
        names.extend(self.ip_addresses.iter().map(ToString::to_string));
        names.sort();
        names
    }
}

/// Renew when less than a third of the lifetime is left.
fn due(expiry: i64, validity: Duration, now: i64) -> bool {
    expiry - now < secs(validity / 3)
}

/// Decides what the Secret should hold at `now` (Unix seconds).
pub fn secret_action(
    now: i64,
    current: Option<&Material>,
    settings: &Settings,
) -> Result<SecretAction, CertError> {
    let Some(current) = current else {
        return bootstrap(now, settings, "no certificate yet");
    };
    let (Some(ca_expiry), Some(leaf_expiry)) =
        (not_after(&current.ca.cert), not_after(&current.tls_cert))
    else {
        return bootstrap(now, settings, "the stored certificates do not parse");
    };
    if let Some((next, since)) = &current.next {
        if now - since < secs(settings.overlap) {
            return Ok(SecretAction::Keep);
        }
        // The bundle with both CAs has been out long enough: sign with the new one.
        let (tls_cert, tls_key) = issue(now, next, settings)?;
        let mut bundle = vec![next.cert.clone()];
        if ca_expiry > now {
            bundle.push(current.ca.cert.clone());
        }
        let material = Material {
            ca: next.clone(),
            tls_cert,
            tls_key,
            bundle,
            next: None,
        };
        return Ok(write(
            material,
            "switched the serving certificate to the new CA",
        ));
    }
    if due(ca_expiry, settings.ca_validity, now) {
        let next = authority(now, settings)?;
        let mut material = current.clone();
        material.bundle = vec![current.ca.cert.clone(), next.cert.clone()];
        material.next = Some((next, now));
        return Ok(write(
            material,
            "added a new CA to the bundle ahead of the old one's expiry",
        ));
    }
    if due(leaf_expiry, settings.cert_validity, now)
        || sans_of(&current.tls_cert) != Some(settings.wanted_sans())
    {
        let (tls_cert, tls_key) = issue(now, &current.ca, settings)?;
        let mut material = current.clone();
        material.tls_cert = tls_cert;
        material.tls_key = tls_key;
        return Ok(write(material, "renewed the serving certificate"));
    }
    let live: Vec<String> = current
        .bundle
        .iter()
        .filter(|pem| not_after(pem).is_some_and(|e| e > now) || **pem == current.ca.cert)
        .cloned()
        .collect();
    if live != current.bundle {
        let mut material = current.clone();
        material.bundle = live;
        return Ok(write(material, "dropped an expired CA from the bundle"));
    }
    Ok(SecretAction::Keep)
}

fn write(material: Material, reason: &'static str) -> SecretAction {
    SecretAction::Write {
        material: Box::new(material),
        reason,
    }
}

fn bootstrap(
    now: i64,
    settings: &Settings,
    reason: &'static str,
) -> Result<SecretAction, CertError> {
    let ca = authority(now, settings)?;
    let (tls_cert, tls_key) = issue(now, &ca, settings)?;
    Ok(write(
        Material {
            bundle: vec![ca.cert.clone()],
            ca,
            tls_cert,
            tls_key,
            next: None,
        },
        reason,
    ))
}

fn at(unix: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(CertError::Validity)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Clocks of API servers and nodes differ a little; start validity slightly in the past.
pub(crate) const BACKDATE: i64 = 60;

fn authority(now: i64, settings: &Settings) -> Result<Authority, CertError> {
    let key = KeyPair::generate().map_err(CertError::GenerateKey)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("secure-defaults CA {now}"));
    params.not_before = at(now - BACKDATE)?;
    params.not_after = at(now + secs(settings.ca_validity))?;
    let cert = params
        .self_signed(&key)
        .map_err(CertError::SignCertificate)?;
    Ok(Authority {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issue(now: i64, ca: &Authority, settings: &Settings) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(CertError::SignCertificate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(CertError::SignCertificate)?;
    let ca_expiry = not_after(&ca.cert).unwrap_or(now);
    let key = KeyPair::generate().map_err(CertError::GenerateKey)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        settings
            .dns_names
            .first()
            .cloned()
            .unwrap_or_else(|| "secure-defaults".to_owned()),
    );
    params.subject_alt_names = settings
        .dns_names
        .iter()
        .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
        .chain(
            settings
                .ip_addresses
                .iter()
                .map(|ip| SanType::IpAddress(*ip)),
        )
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = at(now - BACKDATE)?;
    // Never outlive the CA that signs it.
    params.not_after = at((now + secs(settings.cert_validity)).min(ca_expiry))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CertError::SignCertificate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            ca_validity: Duration::from_secs(3000),
            cert_validity: Duration::from_secs(900),
            overlap: Duration::from_secs(60),
            dns_names: vec!["secure-defaults.secure-defaults.svc".to_owned()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    fn written(plan: SecretAction) -> Material {
        match plan {
            SecretAction::Write { material, .. } => *material,
            SecretAction::Keep => panic!("expected a write"),
        }
    }

    /// The serving certificate verifies against every CA an API server could hold at this point.
    fn verifies(material: &Material, bundle: &[String]) -> bool {
        with_cert(&material.tls_cert, |leaf| {
            bundle.iter().any(|ca| {
                with_cert(ca, |ca| {
                    leaf.verify_signature(Some(ca.public_key())).is_ok()
                })
                .unwrap()
            })
        })
        .unwrap()
    }

    #[test]
    fn lifecycle_never_leaves_the_serving_certificate_untrusted() {
        let s = settings();
        let mut now = 1_800_000_000;
        let mut material = written(secret_action(now, None, &s).unwrap());
        assert!(verifies(&material, &material.bundle));
        assert_eq!(
            sans_of(&material.tls_cert).unwrap(),
            vec![
                "127.0.0.1".to_owned(),
                "secure-defaults.secure-defaults.svc".to_owned()
            ]
        );
        assert_eq!(
            secret_action(now + 10, Some(&material), &s).unwrap(),
            SecretAction::Keep
        );

        let mut reasons = Vec::new();
        // Step through three CA lifetimes; at every step the API server holds the bundle written before it.
        let mut bundle_seen_by_api_server = material.bundle.clone();
        while now < 1_800_000_000 + 3 * 3000 {
            now += 20;
            match secret_action(now, Some(&material), &s).unwrap() {
                SecretAction::Keep => {}
                SecretAction::Write {
                    material: next,
                    reason,
                } => {
                    // The new serving certificate must be trusted by what the API server already has,
                    // or the rotation would fail handshakes until the bundle propagates.
                    assert!(
                        verifies(&next, &bundle_seen_by_api_server),
                        "{reason} at {now} broke trust"
                    );
                    reasons.push(reason);
                    material = *next;
                    bundle_seen_by_api_server = material.bundle.clone();
                }
            }
            assert!(
                not_after(&material.tls_cert).unwrap() > now,
                "serving certificate expired at {now}"
            );
            assert!(
                not_after(&material.ca.cert).unwrap() > now,
                "CA expired at {now}"
            );
        }
        for reason in [
            "renewed the serving certificate",
            "added a new CA to the bundle ahead of the old one's expiry",
            "switched the serving certificate to the new CA",
            "dropped an expired CA from the bundle",
        ] {
            assert!(reasons.contains(&reason), "{reason}: {reasons:?}");
        }
    }

    #[test]
    fn new_names_reissue_the_serving_certificate() {
        let s = settings();
        let material = written(secret_action(1_800_000_000, None, &s).unwrap());
        let mut renamed = s.clone();
        renamed.dns_names.push("other.svc".to_owned());
        let next = written(secret_action(1_800_000_001, Some(&material), &renamed).unwrap());
        assert!(
            sans_of(&next.tls_cert)
                .unwrap()
                .contains(&"other.svc".to_owned())
        );
        assert_eq!(next.ca, material.ca, "the CA stays");
    }

    #[test]
    fn garbage_is_replaced() {
        let s = settings();
        let mut material = written(secret_action(1_800_000_000, None, &s).unwrap());
        material.tls_cert = "not a certificate".to_owned();
        assert!(matches!(
            secret_action(1_800_000_001, Some(&material), &s).unwrap(),
            SecretAction::Write {
                reason: "the stored certificates do not parse",
                ..
            }
        ));
    }
}
