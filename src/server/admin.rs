//! The plain-HTTP admin endpoint: `/healthz`, `/readyz` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::namespaces::Namespaces;

/// What readiness is made of.
pub struct Health {
    /// Ready once its cache has synced.
    pub namespaces: Namespaces,
    /// Ready once a serving certificate is loaded.
    pub certs: Arc<crate::certs::store::CertStore>,
    /// Set at SIGTERM, so the endpoint leaves the Service before the server stops.
    pub shutting_down: AtomicBool,
}

impl Health {
    /// The reasons the server is not ready; empty when it is. The policy is loaded before the server starts
    /// listening, and so is the certificate unless it is self-managed and not issued yet.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.certs.is_loaded() {
            reasons.push("no serving certificate yet");
        }
        if !self.namespaces.synced() {
            reasons.push("namespace cache not synced");
        }
        if self.shutting_down.load(Ordering::Acquire) {
            reasons.push("shutting down");
        }
        reasons
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn handle(
    request: &Request<Incoming>,
    health: &Health,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match health.not_ready().as_slice() {
            [] => text(StatusCode::OK, "ok\n"),
            reasons => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", reasons.join(", ")),
            ),
        },
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.encode());
            let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            let value = hyper::header::HeaderValue::from_static(openmetrics);
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `stop`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (health, metrics, builder, stop) = (
            health.clone(),
            metrics.clone(),
            builder.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = handle(&request, &health, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
