//! The webhook's TLS configuration: TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN, and the certificate taken
//! from the certificate store at every handshake.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::certs::store::{CertStore, provider};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the TLS configuration")]
    BuildConfig(#[source] rustls::Error),
}

pub fn acceptor(store: &Arc<CertStore>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::BuildConfig)?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
