//! The webhook endpoint: HTTPS (HTTP/1.1 and HTTP/2) with `POST /mutate`, bounded in body size, header time,
//! request time and connections, and drained gracefully at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::admission::{self, Route, Verdict};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::policy::store::PolicyStore;

/// The API server's own limit on an object; a review holds the object (twice for an update) plus a little.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What a request handler needs, shared by every connection.
pub struct App {
    pub policy: PolicyStore,
    pub namespaces: Namespaces,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
}

pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn error(status: StatusCode, reason: String) -> Response<Body> {
    reply(status, format!("{reason}\n"), "text/plain; charset=utf-8")
}

pub async fn handle(app: &App, request: Request<Incoming>) -> Response<Body> {
    if request.uri().path() != "/mutate" {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {:?}; the webhook serves POST /mutate",
                request.uri().path()
            ),
        );
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST".to_owned());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let started = Instant::now();
    match tokio::time::timeout(app.request_timeout, mutate(app, request, started)).await {
        Ok(response) => response,
        Err(_) => {
            app.metrics.count_request("unknown", "error");
            tracing::error!(timeout = ?app.request_timeout, "admission request exceeded its deadline");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("request not answered within {:?}", app.request_timeout),
            )
        }
    }
}

async fn mutate(app: &App, request: Request<Incoming>, started: Instant) -> Response<Body> {
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            app.metrics.count_request("unknown", "bad_request");
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                );
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            );
        }
    };
    let review = match admission::parse(&body) {
        Ok(review) => review,
        Err(e) => {
            app.metrics.count_request("unknown", "bad_request");
            let reason = crate::error_chain(&e);
            tracing::warn!(%reason, "bad admission request");
            return error(StatusCode::BAD_REQUEST, reason);
        }
    };
    let route = review.route();
    let request = &review.request;
    // A debug-level span: its context reaches the debug events below it; the one info line per admission
    // carries the same fields itself, which costs far less than a span on every request.
    let span = tracing::debug_span!(
        "admission",
        uid = %request.uid,
        namespace = request.namespace.as_deref().unwrap_or(""),
        operation = route.as_str(),
    );
    async {
        let labels = match review.namespace() {
            Some(namespace) => match app.namespaces.labels(namespace).await {
                Ok(labels) => Some(labels),
                Err(e) => {
                    // Let the webhook's failurePolicy decide, rather than guess a policy without the labels.
                    let reason = crate::error_chain(&e);
                    app.metrics.count_request(route.as_str(), "error");
                    tracing::error!(
                        uid = %request.uid,
                        namespace,
                        operation = route.as_str(),
                        %reason,
                        "cannot decide without the namespace's labels"
                    );
                    return error(StatusCode::INTERNAL_SERVER_ERROR, reason);
                }
            },
            None => None,
        };
        let current = app.policy.current();
        let input = labels
            .as_ref()
            .map_or(crate::policy::NamespaceLabels::Unknown, |l| {
                l.as_policy_input()
            });
        let response = admission::respond(&review, &current.policy, input);
        let elapsed = started.elapsed();

        let m = &app.metrics;
        m.count_request(route.as_str(), response.verdict.as_str());
        m.observe_duration(route.as_str(), elapsed.as_secs_f64());
        m.count_fields(response.outcome.applied.fields());
        m.warnings.inc_by(response.outcome.warnings.len() as u64);
        if route != Route::Ignore {
            let pod = request.name.as_deref().unwrap_or("");
            let exempt = match response.verdict {
                Verdict::Exempt(why) => why.to_string(),
                _ => String::new(),
            };
            tracing::info!(
                uid = %request.uid,
                namespace = request.namespace.as_deref().unwrap_or(""),
                operation = route.as_str(),
                pod,
                result = response.verdict.as_str(),
                defaulted = %admission::describe(&response.outcome),
                warnings = response.outcome.warnings.len(),
                exempt,
                policy_generation = current.generation,
                dry_run = request.dry_run.unwrap_or(false),
                duration_us = elapsed.as_micros() as u64,
                "admission"
            );
        }
        reply(StatusCode::OK, response.body, "application/json")
    }
    .instrument(span)
    .await
}

/// Serves until `stop` fires, then stops accepting and gives open connections `shutdown_timeout` to finish.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Arc<App>,
    limits: Limits,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Bodies stream through; the buffer only has to hold a request head. Keeping it at the minimum stops
        // every keep-alive connection from holding a grown buffer after its first review.
        .max_buf_size(8192)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));

    loop {
        // At the connection cap, stop accepting: the kernel's backlog holds new connections until a slot frees.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, builder, watcher) = (
            tls.clone(),
            app.clone(),
            builder.clone(),
            graceful.watcher(),
        );
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(header_timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    app.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    app.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            app.metrics.open_connections.inc();
            let service_app = app.clone();
            let service = hyper::service::service_fn(move |request| {
                let app = service_app.clone();
                async move { Ok::<_, Infallible>(handle(&app, request).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            app.metrics.open_connections.dec();
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(timeout = ?limits.shutdown_timeout, "connections still open at the shutdown timeout");
        }
    }
}
