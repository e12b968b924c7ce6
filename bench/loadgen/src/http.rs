//! HTTPS over tokio-rustls and hyper's connection-level client. HTTP/1.1 with keep-alive, one request in flight per
//! connection, as kubectl-like clients do; or HTTP/2, many streams over one connection, as kube-apiserver calls
//! its webhooks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    http2: bool,
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
            http2: false,
        })
    }

    /// The same target over HTTP/2 (ALPN "h2"), where [`Conn::stream`] gives more streams on one connection.
    pub fn http2(mut self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.config = Arc::new(config);
        self.http2 = true;
        self
    }

    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// A TLS connection with a completed HTTP/1.1 (or, for [`Target::http2`], HTTP/2) handshake.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        if self.http2 {
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("the server did not agree to HTTP/2 (ALPN h2)");
            }
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(Conn {
                sender: Sender::Http2(sender),
                host: self.host.clone(),
            });
        }
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender: Sender::Http1(sender),
            host: self.host.clone(),
        })
    }
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

pub struct Conn {
    sender: Sender,
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
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                let request = request
                    .uri(path)
                    .header(header::HOST, &self.host)
                    .body(Full::new(body))?;
                sender
                    .ready()
                    .await
                    .context("connection closed by the server")?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                // HTTP/2 carries the scheme and authority as pseudo-headers, taken from an absolute URI.
                let request = request
                    .uri(format!("https://{}{path}", self.host))
                    .body(Full::new(body))?;
                sender
                    .ready()
                    .await
                    .context("connection closed by the server")?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Another stream on the same HTTP/2 connection; `None` for HTTP/1.1, which has one request in flight.
    pub fn stream(&self) -> Option<Conn> {
        match &self.sender {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Conn {
                sender: Sender::Http2(sender.clone()),
                host: self.host.clone(),
            }),
        }
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
