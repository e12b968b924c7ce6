//! Connection management of the webhook endpoint: HTTPS (HTTP/1.1 and HTTP/2), bounded in handshake and header
//! time, idle time and connections, and drained gracefully at shutdown. Each request goes to [`super::handle`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::handle::{App, handle};

/// How often an HTTP/2 connection pings its peer, so a peer that vanished without closing is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a connection that never started a request gets to close once told to (its GOAWAY flushed).
const NO_REQUEST_GRACE: Duration = Duration::from_millis(100);

/// How long a ping may go unanswered before the HTTP/2 connection is closed as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

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
        failed => {
            app.metrics.tls_handshake_failures.inc();
            match failed {
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                _ => tracing::debug!(%peer, "TLS handshake timed out"),
            }
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
    // A connection that never started a request has nothing to finish: it gets the moment GOAWAY takes to leave,
    // not the shutdown timeout, so a peer that never answers GOAWAY cannot keep its slot past the header timeout.
    let grace = match closing {
        Closing::NoRequest => limits.shutdown_timeout.min(NO_REQUEST_GRACE),
        Closing::Idle | Closing::Stop => limits.shutdown_timeout,
    };
    match tokio::time::timeout(grace, conn).await {
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
