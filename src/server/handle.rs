//! Request handling: `POST /mutate` read within its size and time bounds, answered through the admission core,
//! counted and logged; every other path or method refused in a way that keeps the connection usable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, Version, header};
use tracing::Instrument as _;

use super::policy_store::PolicyStore;
use crate::admission::{self, Route, Verdict};
use crate::images::Images;
use crate::metrics::{Metrics, RequestResult};
use crate::namespaces::Namespaces;
use crate::policy::NamespaceLabels;

/// The API server's own limit on an object; a review holds the object (twice for an update) plus a little.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

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
            app.metrics.count_request(None, RequestResult::BadRequest);
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
                .count_request(None, RequestResult::ClientTimeout);
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
            app.metrics.count_request(None, RequestResult::Error);
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
            app.metrics.count_request(None, RequestResult::BadRequest);
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
                Ok(labels) => labels,
                Err(e) => {
                    // Let the webhook's failurePolicy decide, rather than guess a policy without the labels.
                    let reason = crate::error_chain(&e);
                    app.metrics.count_request(Some(route), RequestResult::Error);
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
            .as_deref()
            .map_or(NamespaceLabels::Unknown, NamespaceLabels::Known);
        let images = match &current.images {
            Some(lookup) => {
                let (wanted, platform) =
                    admission::images_to_look_up(&review, &current.policy, input);
                if wanted.is_empty() {
                    Images::default()
                } else {
                    let asked = Instant::now();
                    let found = lookup.users(wanted, platform.as_ref()).await;
                    app.metrics.count_images(
                        &found,
                        asked.elapsed().as_secs_f64(),
                        lookup.cached(),
                    );
                    found
                }
            }
            None => Images::default(),
        };
        let response = match admission::respond_with(&review, &current.policy, input, &images) {
            Ok(response) => response,
            Err(e) => {
                let reason = crate::error_chain(&e);
                app.metrics.count_request(Some(route), RequestResult::Error);
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
