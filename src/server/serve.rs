//! The webhook endpoint: HTTPS (HTTP/1.1 and HTTP/2) with `POST /mutate`, bounded in body size, handshake and
//! header time, request time, idle time and connections, and drained gracefully at shutdown.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Version, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::policy_store::PolicyStore;
use crate::admission::{self, Route, Verdict};
use crate::metrics::{Metrics, Operation, RequestResult};
use crate::namespaces::Namespaces;

/// The API server's own limit on an object; a review holds the object (twice for an update) plus a little.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How often an HTTP/2 connection pings its peer, so a peer that vanished without closing is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the HTTP/2 connection is closed as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request handler needs, shared by every connection.
pub struct App {
    /// The policy in force.
    pub policy: PolicyStore,
    /// Namespace labels.
    pub namespaces: Namespaces,
    /// Where admissions are counted.
    pub metrics: Arc<Metrics>,
    /// The deadline of one admission request.
    pub request_timeout: Duration,
}

/// What one client may hold: without these bounds a client that connects and waits could keep a connection
/// slot for ever.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deadline for the TLS handshake, and then for the first request to start (for HTTP/2, the connection
    /// preface and the first stream's headers; for HTTP/1.1, also each request's head).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    /// Connections served at once; at the cap, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long open connections get to finish at shutdown, or once told to close.
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

/// Marks an HTTP/1 answer as the connection's last: its request body was not read to the end, so hyper closes
/// the connection after it, and the client must know not to send another request on it. (HTTP/2 ends only the
/// stream; the header is not allowed there.)
fn closing(version: Version, mut response: Response<Body>) -> Response<Body> {
    if version == Version::HTTP_11 || version == Version::HTTP_10 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Answers one request to the webhook port. Every answer is bounded in time and body size, and an HTTP/1.1
/// answer that leaves the connection unusable says so, so no client can hold the handler or lose a request.
pub async fn handle<B>(app: &App, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.uri().path() != "/mutate" {
        let response = error(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {:?}; the webhook serves POST /mutate",
                request.uri().path()
            ),
        );
        return refuse(app, request, response).await;
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST".to_owned());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return refuse(app, request, response).await;
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + app.request_timeout;
    let version = request.version();
    let read = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            app.metrics
                .count_request(Operation::Unknown, RequestResult::BadRequest);
            let response = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read request body: {e}"),
                )
            };
            return closing(version, response);
        }
        Err(_) => {
            // The client's fault, not the server's: counted and answered apart from the server's own failures.
            app.metrics
                .count_request(Operation::Unknown, RequestResult::ClientTimeout);
            tracing::warn!(timeout = ?app.request_timeout, "request body not received within the request deadline");
            let response = error(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {:?}", app.request_timeout),
            );
            return closing(version, response);
        }
    };
    match tokio::time::timeout_at(deadline, answer_review(app, &body, started)).await {
        Ok(response) => response,
        Err(_) => {
            app.metrics
                .count_request(Operation::Unknown, RequestResult::Error);
            tracing::error!(timeout = ?app.request_timeout, "admission request exceeded its deadline");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("request not answered within {:?}", app.request_timeout),
            )
        }
    }
}

/// Sends a refusal (wrong path or method) only once the request's body is read and dropped, within the same
/// bounds as a review's body: an HTTP/1 connection can then carry the client's next request. A body that is too
/// large, too slow or broken closes the connection instead, and the answer says so.
async fn refuse<B>(app: &App, request: Request<B>, response: Response<Body>) -> Response<Body>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let version = request.version();
    let body = request.into_body();
    if body.is_end_stream() {
        return response;
    }
    let drain = async {
        let mut body = std::pin::pin!(Limited::new(body, MAX_BODY_BYTES));
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return false;
            }
        }
        true
    };
    match tokio::time::timeout(app.request_timeout, drain).await {
        Ok(true) => response,
        Ok(false) | Err(_) => closing(version, response),
    }
}

/// Answers a review whose body has been read: parse, look the namespace up, decide, count and log.
async fn answer_review(app: &App, body: &[u8], started: Instant) -> Response<Body> {
    let review = match admission::parse(body) {
        Ok(review) => review,
        Err(e) => {
            app.metrics
                .count_request(Operation::Unknown, RequestResult::BadRequest);
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
                    app.metrics
                        .count_request(Operation::Route(route), RequestResult::Error);
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
        let response = match admission::respond(&review, &current.policy, input) {
            Ok(response) => response,
            Err(e) => {
                let reason = crate::error_chain(&e);
                app.metrics
                    .count_request(Operation::Route(route), RequestResult::Error);
                tracing::error!(uid = &*request.uid, %reason, "cannot answer the review");
                return error(StatusCode::INTERNAL_SERVER_ERROR, reason);
            }
        };
        let elapsed = started.elapsed();

        let m = &app.metrics;
        m.count_answer(
            route,
            response.verdict,
            elapsed.as_secs_f64(),
            &response.outcome,
        );

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
                defaulted = admission::summary_for_log(&response.outcome),
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
/// hyper_util's automatic builder serves each connection as HTTP/2 or HTTP/1.1 (the ALPN offers both; the
/// builder reads the client's first bytes to tell which). Each connection is also watched for idleness: see
/// [`serve_connection`].
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
        // Bodies stream through; the buffer only has to hold a request head.
        .max_buf_size(8192)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
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
        tokio::spawn(serve_connection(
            Accepted { tcp, peer, permit },
            tls.clone(),
            app.clone(),
            builder.clone(),
            limits,
            stop.clone(),
        ));
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

/// An accepted TCP connection and the connection slot it holds until it ends.
struct Accepted {
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Why a connection is being closed from this side.
#[derive(Debug)]
enum Closing {
    /// No request started within the header timeout of the handshake.
    NoRequest,
    /// No request in flight for the idle timeout.
    Idle,
    /// The server is stopping.
    Stop,
}

/// Serves one connection: the TLS handshake within the header timeout, then HTTP until the client closes, the
/// connection goes idle (no request started within the header timeout, or none in flight for the idle timeout),
/// or the server stops. The last two close gracefully: requests in flight finish, HTTP/2 sends GOAWAY, and the
/// close is bounded by the shutdown timeout.
async fn serve_connection(
    accepted: Accepted,
    tls: TlsAcceptor,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    stop: CancellationToken,
) {
    let Accepted { tcp, peer, permit } = accepted;
    let _permit = permit;
    let stream = match tokio::time::timeout(limits.header_timeout, tls.accept(tcp)).await {
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
    let activity = Arc::new(Activity::new());
    let service = {
        let (app, activity) = (app.clone(), activity.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            // Counted from the moment hyper hands the request over, before its body is read.
            let in_flight = activity.started();
            let app = app.clone();
            async move {
                let response = handle(&app, request).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        })
    };
    // Boxed: the HTTP/2 connection state is large, and need not size every connection's task.
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
    let closing = tokio::select! {
        served = conn.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            app.metrics.open_connections.dec();
            return;
        }
        closing = activity.idle(limits.header_timeout, limits.idle_timeout) => closing,
        () = stop.cancelled() => Closing::Stop,
    };
    tracing::debug!(%peer, ?closing, "closing the connection");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.shutdown_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "connection ended with an error"),
        Err(_) => {
            tracing::debug!(%peer, "connection not closed within the shutdown timeout; dropped")
        }
    }
    app.metrics.open_connections.dec();
}

/// What a connection's requests are doing, so that a connection that carries none can be closed.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the first request starts and whenever the last one in flight ends: the moments the
    /// deadline in [`Activity::idle`] changes.
    changed: Notify,
}

struct ActivityState {
    /// Requests started and not yet answered.
    in_flight: usize,
    /// When the connection was set up, or when its last request was answered.
    since: tokio::time::Instant,
    /// Whether any request has started on the connection.
    used: bool,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                since: tokio::time::Instant::now(),
                used: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is a counter, a time and a flag, consistent after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a request started; the returned guard notes its end when dropped, however the handler ends.
    fn started(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        let first = !state.used;
        state.used = true;
        drop(state);
        if first {
            self.changed.notify_one();
        }
        InFlight(self.clone())
    }

    /// Completes once the connection has had no request in flight for `idle` (or, before its first request, for
    /// `first`), counted from the handshake or the end of the last request.
    async fn idle(&self, first: Duration, idle: Duration) -> Closing {
        loop {
            // Taken before the state is read, so a change made after the read still wakes this wait (a
            // notification with no waiter is kept for the next one).
            let changed = self.changed.notified();
            let (deadline, why) = {
                let state = self.lock();
                if state.in_flight > 0 {
                    (None, Closing::Idle)
                } else if state.used {
                    (Some(state.since + idle), Closing::Idle)
                } else {
                    (Some(state.since + first), Closing::NoRequest)
                }
            };
            match deadline {
                None => changed.await,
                Some(deadline) if deadline <= tokio::time::Instant::now() => return why,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.since = tokio::time::Instant::now();
        let quiet = state.in_flight == 0;
        drop(state);
        if quiet {
            self.0.changed.notify_one();
        }
    }
}
