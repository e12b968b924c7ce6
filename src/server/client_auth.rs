//! Who may call the webhook: with `tls_client_ca` set, only TLS clients that present a certificate issued by one
//! of that file's CAs complete the handshake. The file is reloaded like the serving certificate; a reload swaps
//! the verifier for new handshakes, and a file that does not load keeps the one in use.
//!
//! The API server presents a client certificate to a webhook when its admission configuration names one for the
//! webhook's host (`kubeConfigFile` of the MutatingAdmissionWebhook plugin). Without this, anything that reaches
//! the port can send reviews and read back what the policy would set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::certs::store::provider;
use crate::metrics::Metrics;
use crate::watch::{ReloadCounter, Reloadable};

/// Why a client CA file was not loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// The file could not be read.
    #[error("cannot read the client CA file {0}")]
    ReadClientCa(PathBuf, #[source] std::io::Error),
    /// A certificate in it does not parse.
    #[error("invalid PEM certificate in the client CA file {0}")]
    ParseClientCa(PathBuf, #[source] rustls_pki_types::pem::Error),
    /// It holds no certificate.
    #[error("no PEM certificate in the client CA file {0}")]
    NoCertificate(PathBuf),
    /// A certificate is not usable as a trust anchor.
    #[error("unusable CA certificate in the client CA file {0}")]
    AddCertificate(PathBuf, #[source] rustls::Error),
    /// No verifier could be built from it.
    #[error("cannot build a client certificate verifier from {0}")]
    BuildVerifier(PathBuf, #[source] rustls::server::VerifierBuilderError),
}

/// A verifier that requires a client certificate issued by one of the CAs in `pem` (`path` names the file in
/// errors).
pub fn verifier(path: &Path, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, ClientAuthError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientAuthError::ParseClientCa(path.to_owned(), e))?;
    if certs.is_empty() {
        return Err(ClientAuthError::NoCertificate(path.to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ClientAuthError::AddCertificate(path.to_owned(), e))?;
    }
    // No CA names are hinted: a swap could not change the hints of a verifier borrowed by rustls, and a client
    // told nothing presents the certificate it has (RFC 8446 4.3.2), which is what the API server does anyway.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .clear_root_hint_subjects()
        .build()
        .map_err(|e| ClientAuthError::BuildVerifier(path.to_owned(), e))
}

/// The client CA in use, shared with the TLS configuration; every handshake asks the verifier current at its
/// start.
#[derive(Debug)]
pub struct ClientCa {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    path: PathBuf,
}

impl ClientCa {
    /// Loads the file; returns the holder and the bytes read, for change detection.
    pub fn load(path: &Path) -> Result<(Arc<Self>, Vec<u8>), ClientAuthError> {
        let pem =
            std::fs::read(path).map_err(|e| ClientAuthError::ReadClientCa(path.to_owned(), e))?;
        let verifier = verifier(path, &pem)?;
        let ca = Arc::new(Self {
            current: RwLock::new(verifier),
            path: path.to_owned(),
        });
        Ok((ca, pem))
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        // A poisoned lock only means a writer panicked mid-assignment of an Arc; the value is still whole.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Verifies new handshakes with `verifier`.
    pub fn replace(&self, verifier: Arc<dyn ClientCertVerifier>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = verifier;
    }
}

/// The client CA file, as [`crate::watch::reload`] reloads it (counted in `certificate_reloads`, with the serving
/// certificate's).
impl Reloadable for Arc<ClientCa> {
    const WHAT: &'static str = "client CA";
    // A file being written in place can be read half-written.
    const CONFIRM_REFUSAL: bool = true;
    type Loaded = Arc<dyn ClientCertVerifier>;
    type Error = ClientAuthError;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn load(&self, contents: &[Vec<u8>]) -> Result<Self::Loaded, ClientAuthError> {
        verifier(&self.path, contents.first().map_or(&[][..], Vec::as_slice))
    }

    fn swap(&self, verifier: Self::Loaded, _metrics: &Metrics) {
        self.replace(verifier);
        tracing::info!(path = %self.path.display(), "client CA reloaded");
    }

    fn counter(metrics: &Metrics) -> &ReloadCounter {
        &metrics.certificate_reloads
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = Path::new("client-ca.pem");
        assert!(matches!(
            verifier(path, b""),
            Err(ClientAuthError::NoCertificate(_))
        ));
        let garbage = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            verifier(path, garbage),
            Err(ClientAuthError::ParseClientCa(..))
        ));
    }
}
