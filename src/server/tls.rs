//! The webhook's TLS configuration: TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN, the certificate taken
//! from the certificate store at every handshake, and, when a client CA is set, a client certificate required.

use std::sync::Arc;

use rustls::ServerConfig;

use super::client_auth::ClientCa;
use crate::certs::store::{CertStore, provider};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the settings.
    #[error("cannot build the TLS configuration")]
    BuildConfig(#[source] rustls::Error),
}

/// `client_ca`: when set, only clients presenting a certificate it verifies complete the handshake.
pub fn acceptor(
    store: &Arc<CertStore>,
    client_ca: Option<&Arc<ClientCa>>,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::BuildConfig)?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ca.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
