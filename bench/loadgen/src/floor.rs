//! `loadgen floor`: the webhook's serving stack without the webhook. The same rustls configuration (ring, TLS 1.3
//! and 1.2, ALPN h2 and http/1.1), the same hyper-util auto builder settings, connection cap and graceful-shutdown
//! watcher as src/server/serve.rs; the handler reads the body (as any server must, to keep the connection) and
//! answers a fixed AdmissionReview without parsing anything. The webhook's throughput over this one's is the
//! share of the serving cost that the webhook's own work leaves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Args;

const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(request: Request<Incoming>, answer: Bytes) -> Response<Full<Bytes>> {
    if request.uri().path() != "/mutate" || request.method() != Method::POST {
        return reply(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
    }
    match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(_) => reply(StatusCode::OK, answer),
        Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body\n")),
    }
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let listen: std::net::SocketAddr = args.req("listen")?.parse()?;
    let chain = CertificateDer::pem_file_iter(args.req("cert")?)?
        .collect::<Result<Vec<_>, _>>()
        .context("certificate")?;
    let key = PrivateKeyDer::from_pem_file(args.req("key")?).context("key")?;
    let answer = Bytes::from(std::fs::read(args.req("response")?).context("response file")?);

    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let header_timeout = Duration::from_secs(5);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(1024));
    let listener = TcpListener::bind(listen).await?;
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, watcher, answer) = (
            acceptor.clone(),
            builder.clone(),
            graceful.watcher(),
            answer.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) = tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(handle(request, answer).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let _ = watcher.watch(conn).await;
        });
    }
}
