//! The webhook endpoint: HTTPS (HTTP/1.1 and HTTP/2) with `POST /mutate`, bounded in body size, header time,
//! request time and connections, and drained gracefully at shutdown.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncBufRead as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::policy_store::PolicyStore;
use crate::admission::{self, Route, Verdict};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;

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

pub async fn handle<B>(app: &App, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

async fn mutate<B>(app: &App, request: Request<B>, started: Instant) -> Response<Body>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
        m.count_answer(route, response.verdict, elapsed.as_secs_f64());
        m.count_fields(response.outcome.applied.fields());
        m.warnings.inc_by(response.outcome.warnings.len() as u64);
        if route != Route::Ignore {
            let pod = request.name.as_deref().unwrap_or("");
            let exempt = match response.verdict {
                Verdict::Exempt(why) => why.to_string(),
                _ => String::new(),
            };
            // Plain `&str` fields: a `%` field would go through the formatting machinery.
            tracing::info!(
                uid = &*request.uid,
                namespace = request.namespace.as_deref().unwrap_or(""),
                operation = route.as_str(),
                pod,
                result = response.verdict.as_str(),
                defaulted = admission::describe(&response.outcome),
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
///
/// The protocol is the one the TLS handshake settled (ALPN): HTTP/2 for "h2", HTTP/1.1 otherwise. An HTTP/1
/// connection between requests holds only its TLS stream: see [`serve_http1`].
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Arc<App>,
    limits: Limits,
    stop: CancellationToken,
) {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Bodies stream through; the buffer only has to hold a request head.
        .max_buf_size(8192)
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).max_concurrent_streams(256);
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
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
        let (tls, app, http1, http2, stop) = (
            tls.clone(),
            app.clone(),
            http1.clone(),
            http2.clone(),
            stop.clone(),
        );
        let header_timeout = limits.header_timeout;
        let task = async move {
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
            // The HTTP/2 connection state is large and HTTP/2 connections few: boxed, it does not size every
            // connection's task.
            let served = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(serve_http2(stream, &app, &http2, &stop)).await
            } else {
                serve_http1(stream, &app, &http1, header_timeout, &stop).await
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            app.metrics.open_connections.dec();
        };
        tokio::spawn(task);
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing in-flight requests");
    // Every connection holds a slot until it ends, and ends gracefully on `stop`: all slots back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(timeout = ?limits.shutdown_timeout, "connections still open at the shutdown timeout");
        }
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
type ConnError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_http2(
    stream: Tls,
    app: &Arc<App>,
    builder: &http2::Builder<TokioExecutor>,
    stop: &CancellationToken,
) -> Result<(), ConnError> {
    let app = app.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(&app, request).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => return Ok(served?),
        () = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    Ok(conn.await?)
}

/// Serves HTTP/1.1 on one TLS connection, holding hyper's connection state only while a request is on it.
///
/// hyper keeps an 8 KiB read buffer, an 8 KiB header buffer and a slot for the handler's future for as long as
/// its connection object lives, so a keep-alive connection that waits for its next request would hold ~20 KiB.
/// Instead, once a request is answered, flushed and hyper finds nothing more to read, the connection object is
/// taken apart ([`http1::Connection::into_parts`]); the TLS stream waits on its own (rustls's buffers only) for the
/// client's next bytes, then a new connection object serves them. As with hyper, an idle connection is closed when
/// no request head arrives within the header timeout.
async fn serve_http1(
    mut tls: Tls,
    app: &Arc<App>,
    builder: &http1::Builder,
    header_timeout: Duration,
    stop: &CancellationToken,
) -> Result<(), ConnError> {
    let activity = Arc::new(Activity::default());
    // Bytes read from the stream but not yet parsed as HTTP, handed from one connection object to the next.
    let mut unparsed = Bytes::new();
    loop {
        let mut timeout_left = header_timeout;
        if unparsed.is_empty() {
            let idle_since = Instant::now();
            let _idle = Held::new(&app.metrics.idle_connections);
            tokio::select! {
                ready = std::future::poll_fn(|cx| {
                    Pin::new(&mut tls).poll_fill_buf(cx).map_ok(|buffered| buffered.is_empty())
                }) => {
                    if ready? {
                        return Ok(()); // the client closed the connection
                    }
                }
                () = tokio::time::sleep(header_timeout) => return Err("no request within the header timeout".into()),
                () = stop.cancelled() => {
                    let _ = tls.shutdown().await;
                    return Ok(());
                }
            }
            timeout_left = header_timeout.saturating_sub(idle_since.elapsed());
        }
        activity.rebuilt();
        let io = Watched {
            prefix: std::mem::take(&mut unparsed),
            io: TokioIo::new(tls),
            activity: activity.clone(),
        };
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let (app, activity) = (app.clone(), activity.clone());
                async move { Ok::<_, Infallible>(activity.answer(&app, request).await) }
            })
        };
        let mut conn = {
            let mut builder = builder.clone();
            builder.header_read_timeout(timeout_left);
            Box::new(builder.serve_connection(io, service))
        };
        let cancelled = stop.cancelled();
        let mut cancelled = std::pin::pin!(cancelled);
        let mut draining = false;
        let ended = std::future::poll_fn(|cx| {
            if !draining && cancelled.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            match Pin::new(&mut *conn).poll(cx) {
                Poll::Ready(served) => Poll::Ready(Some(served)),
                Poll::Pending if !draining && activity.idle() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let Some(served) = ended {
            return Ok(served?);
        }
        let parts = conn.into_parts();
        let Watched { prefix, io, .. } = parts.io;
        tls = io.into_inner();
        // hyper has read its whole prefix before a read could block; an empty buffer is dropped, not kept (an
        // empty `Bytes` from hyper still owns its 8 KiB allocation).
        unparsed = match (parts.read_buf.is_empty(), prefix.is_empty()) {
            (true, true) => Bytes::new(),
            (false, true) => parts.read_buf,
            (true, false) => prefix,
            (false, false) => [parts.read_buf, prefix].concat().into(),
        };
    }
}

/// One unit of a gauge, held until dropped, whichever way the holder leaves.
struct Held(prometheus_client::metrics::gauge::Gauge);

impl Held {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What an HTTP/1 connection object is doing, seen from its stream and its handler. One task polls the
/// connection, its stream and its handlers, so relaxed atomics are enough.
#[derive(Default)]
struct Activity {
    /// Requests whose handler has not returned.
    in_flight: AtomicUsize,
    /// Requests answered by the current connection object.
    answered: AtomicUsize,
    /// A handler returned without reading its request body to the end: hyper keeps the connection to its end.
    body_left: AtomicBool,
    /// Written since the last completed flush.
    unflushed: AtomicBool,
    /// The last read found nothing to read, and nothing was written or answered since.
    read_blocked: AtomicBool,
}

impl Activity {
    fn rebuilt(&self) {
        self.answered.store(0, Relaxed);
        self.unflushed.store(false, Relaxed);
        self.read_blocked.store(false, Relaxed);
    }

    /// Between requests: an answer was sent and flushed, and hyper waits for bytes that have not come.
    fn idle(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
            && self.answered.load(Relaxed) > 0
            && !self.body_left.load(Relaxed)
            && !self.unflushed.load(Relaxed)
            && self.read_blocked.load(Relaxed)
    }

    async fn answer(&self, app: &App, request: Request<Incoming>) -> Response<Body> {
        self.in_flight.fetch_add(1, Relaxed);
        self.read_blocked.store(false, Relaxed);
        let ended = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| EndNoted {
            body,
            ended: ended.clone(),
        });
        let response = handle(app, request).await;
        if !ended.load(Relaxed) {
            self.body_left.store(true, Relaxed);
        }
        self.in_flight.fetch_sub(1, Relaxed);
        self.answered.fetch_add(1, Relaxed);
        self.read_blocked.store(false, Relaxed);
        response
    }
}

/// A request body that notes when it has been read to its end (or had none).
struct EndNoted {
    body: Incoming,
    ended: Arc<AtomicBool>,
}

impl hyper::body::Body for EndNoted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.ended.store(true, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.body.is_end_stream();
        if ended {
            self.ended.store(true, Relaxed);
        }
        ended
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The TLS stream as one HTTP/1 connection object sees it: first the bytes an earlier one read but did not
/// parse, then the stream; reads, writes and flushes are noted in [`Activity`].
struct Watched {
    prefix: Bytes,
    io: TokioIo<Tls>,
    activity: Arc<Activity>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.activity.read_blocked.store(false, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.activity
            .read_blocked
            .store(polled.is_pending(), Relaxed);
        polled
    }
}

impl Watched {
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        // A write the socket refused (Pending) leaves hyper holding the bytes: as unflushed as a written one.
        if matches!(polled, Poll::Pending | Poll::Ready(Ok(1..))) {
            self.activity.unflushed.store(true, Relaxed);
            self.activity.read_blocked.store(false, Relaxed);
        }
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.activity.unflushed.store(false, Relaxed);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
