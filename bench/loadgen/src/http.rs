//! HTTPS/1.1 with keep-alive over tokio-rustls and hyper's connection-level client: one request in flight per
//! connection, as the API server's HTTP/1.1 webhook client and kubectl-like clients do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// Where to connect and how to authenticate the server (and, for the API server, ourselves).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        ca: &Path,
        client_auth: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(roots);
        let mut config = match client_auth {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("read {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("read {}", key.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            host: addr.to_string(),
            config: Arc::new(config),
            server_name: ServerName::IpAddress(addr.ip().into()),
        })
    }

    /// A TLS connection with a completed HTTP/1.1 handshake.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: self.host.clone(),
        })
    }
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(body))?;
        self.sender
            .ready()
            .await
            .context("connection closed by the server")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// As [`Conn::send`], failing on any status but `want`.
    pub async fn expect(
        &mut self,
        want: StatusCode,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(method, path, body).await?;
        if status != want {
            bail!(
                "{path}: HTTP {status} (wanted {want}): {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        Ok(body)
    }
}

/// A plain-HTTP GET (the admin port): the status code, or None when nothing answers yet.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}
