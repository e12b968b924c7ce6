//! The serving certificate in use: parsed and checked from PEM, held in a store the TLS acceptor asks per
//! handshake, swapped in place (from files that changed, or from the self-managed Secret). A swap never fails a
//! handshake, and a bad new pair keeps the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;
use crate::watch::{ReloadCounter, Reloadable};

/// Why a certificate and key were not loaded. Each names the file (the certificate's, then the key's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read.
    #[error("cannot read {0}")]
    ReadPem(PathBuf, #[source] std::io::Error),
    /// The file holds no certificate.
    #[error("no PEM certificate in {0}")]
    NoCertificate(PathBuf),
    /// A certificate does not parse.
    #[error("invalid PEM certificate in {0}")]
    ParseCertificate(PathBuf, #[source] rustls_pki_types::pem::Error),
    /// The key does not parse.
    #[error("no usable PEM private key in {0}")]
    ParseKey(PathBuf, #[source] rustls_pki_types::pem::Error),
    /// The key is of a kind rustls cannot use.
    #[error("unsupported private key in {0}")]
    LoadKey(PathBuf, #[source] rustls::Error),
    /// The key is not the certificate's.
    #[error("the key in {1} does not match the certificate in {0}")]
    KeyMismatch(PathBuf, PathBuf, #[source] rustls::Error),
}

/// The crypto provider the server and its checks use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a certificate chain and its key, and checks that they belong together.
pub fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, StoreError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::ParseCertificate(cert.to_owned(), e))?;
    if chain.is_empty() {
        return Err(StoreError::NoCertificate(cert.to_owned()));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| StoreError::ParseKey(key.to_owned(), e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| StoreError::LoadKey(key.to_owned(), e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| StoreError::KeyMismatch(cert.to_owned(), key.to_owned(), e))?;
    Ok(certified)
}

/// notBefore and notAfter (Unix seconds) of the leaf certificate of a pair.
pub fn validity(key: &CertifiedKey) -> Option<(i64, i64)> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The certificate in use, shared with the TLS acceptor.
#[derive(Debug)]
pub struct CertStore {
    /// `None` only with self-managed certificates, until the first one is issued: handshakes fail and the
    /// server is not ready until then.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl CertStore {
    /// Loads the pair; returns the store and the bytes read, for change detection.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(Arc<Self>, Vec<Vec<u8>>), StoreError> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| StoreError::ReadPem(path.to_owned(), e));
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        let key = certified_key(cert_path, &cert_pem, key_path, &key_pem)?;
        let store = Arc::new(Self {
            current: RwLock::new(Some(Arc::new(key))),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        });
        Ok((store, vec![cert_pem, key_pem]))
    }

    /// A store with no certificate yet, filled by [`CertStore::replace`] (self-managed certificates).
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(None),
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(key));
    }

    /// The certificate in use.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock only means a writer panicked mid-assignment of an Arc; the value is still whole.
        let current = self.current.read();
        current.unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// notAfter (Unix seconds) of the serving certificate in use.
    pub fn expiry(&self) -> Option<i64> {
        self.current()
            .as_deref()
            .and_then(validity)
            .map(|(_, after)| after)
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }
}

/// The serving certificate and key files, as [`crate::watch::reload`] reloads them.
impl Reloadable for Arc<CertStore> {
    const WHAT: &'static str = "serving certificate";
    // The two files are read one after the other, and a volume update between the reads is not a bad certificate.
    const CONFIRM_REFUSAL: bool = true;
    type Loaded = CertifiedKey;
    type Error = StoreError;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert_path.clone(), self.key_path.clone()]
    }

    fn load(&self, contents: &[Vec<u8>]) -> Result<CertifiedKey, StoreError> {
        let (cert_pem, key_pem) = match contents {
            [cert, key] => (cert.as_slice(), key.as_slice()),
            _ => (&[][..], &[][..]),
        };
        certified_key(&self.cert_path, cert_pem, &self.key_path, key_pem)
    }

    fn swap(&self, key: CertifiedKey, metrics: &Metrics) {
        if let Some((_, expiry)) = validity(&key) {
            metrics.certificate_expiry.set(expiry);
        }
        self.replace(key);
        tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
    }

    fn counter(metrics: &Metrics) -> &ReloadCounter {
        &metrics.certificate_reloads
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_leafs_not_after() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.b.svc".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!("sd-store-expiry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let (store, _) = CertStore::load(&cert_path, &key_path).unwrap();
        assert_eq!(store.expiry(), Some(1_900_000_000));
        assert_eq!(CertStore::empty().expiry(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
