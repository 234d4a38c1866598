//! The listener: TCP, then a TLS 1.3 handshake, then HTTP/1.1 served by an axum router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{routes, ApiState, MAX_BODY_BYTES};
use crate::tls::Identity;
use crate::QueueError;

/// Connections served at once; more wait until one closes.
pub const MAX_CONNECTIONS: usize = 2048;
/// A peer that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that has not sent a request's headers by then is dropped.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer, event streams included (clients reconnect and list by cursor).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Counts kept for operators and for tests that must show a request never arrived.
#[derive(Debug, Default)]
pub struct Counters {
    /// TLS handshakes that completed.
    pub handshakes: AtomicU64,
    /// HTTP requests that reached the router.
    pub requests: AtomicU64,
}

#[derive(Clone)]
struct AppState {
    counters: Arc<Counters>,
}

impl axum::extract::FromRef<(AppState, ApiState)> for AppState {
    fn from_ref(state: &(AppState, ApiState)) -> Self {
        state.0.clone()
    }
}

/// A running queue server; dropping it (or calling [`Running::stop`]) stops the listener.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub pin: String,
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `listen` and serves until stopped.
pub async fn start(
    listen: SocketAddr,
    identity: &Identity,
    api: ApiState,
) -> Result<Running, QueueError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| QueueError::Listen(format!("{listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| QueueError::Listen(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
    let counters = Arc::new(Counters::default());
    let allow = api.clone();
    let router = router(AppState { counters: counters.clone() }, api);
    let (stop, mut stopped) = watch::channel(false);

    let handshakes = counters.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, most often: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !allow.allows(peer.ip()) {
                tracing::warn!(%peer, "connection from outside the allowlist dropped");
                continue;
            }
            // At most MAX_CONNECTIONS at once: further peers wait in the kernel's backlog.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let counters = handshakes.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                counters.handshakes.fetch_add(1, Ordering::Relaxed);
                let service = TowerToHyperService::new(router);
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let served = builder.serve_connection(TokioIo::new(tls), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "connection ended with an error")
                    }
                    Err(_) => tracing::debug!(%peer, "connection closed after its lifetime"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    tracing::info!(%addr, "queue listening");
    Ok(Running { addr, pin: identity.pin(), counters, stop })
}

fn router(state: AppState, api: ApiState) -> Router {
    routes()
        .with_state(api)
        .route("/v1/health", get(health))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state, count_requests))
}

async fn not_found() -> crate::error::ApiError {
    crate::error::ApiError::not_found("this path")
}

async fn count_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    // Each request is handled to its end in a task of its own, even when its client goes
    // away: a handler dropped while its transaction's BEGIN was on its way would leave that
    // pooled connection inside a transaction nothing ends, and every write on it refused.
    let response = match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("a request's handler panicked");
            axum::response::IntoResponse::into_response(crate::error::ApiError::from(
                crate::QueueError::Database("the request's handler stopped".into()),
            ))
        }
    };
    as_api_error(response).await
}

/// Errors the framework answers by itself (a body over the limit, a method a path does not
/// take, a query string that does not parse) come as plain text; they are given the same
/// `{code, message}` shape as every other error.
async fn as_api_error(response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("body_too_large", format!("body: larger than {MAX_BODY_BYTES} bytes"))
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "this path does not take this method".to_owned())
        }
        _ => {
            let text = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
            let text = crate::error::printable_text(&String::from_utf8_lossy(&text));
            let code = if status.is_server_error() { "internal" } else { "invalid_request" };
            (code, text)
        }
    };
    let mut converted = crate::error::ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        converted.headers_mut().insert(header::ALLOW, allow);
    }
    converted
}

async fn health() -> Json<serde_json::Value> {
    Json(
        json!({ "status": "ok", "service": "countersign-queue", "version": env!("CARGO_PKG_VERSION") }),
    )
}
