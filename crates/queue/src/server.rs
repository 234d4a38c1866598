//! The listener: TCP, then a TLS 1.3 handshake, then HTTP/1.1 served by an axum router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{routes, ApiState, MAX_BODY_BYTES};
use crate::tls::Identity;
use crate::QueueError;

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
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => break,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            if !allow.allows(peer.ip()) {
                tracing::warn!(%peer, "connection from outside the allowlist dropped");
                continue;
            }
            let acceptor = acceptor.clone();
            let router = router.clone();
            let counters = handshakes.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                };
                counters.handshakes.fetch_add(1, Ordering::Relaxed);
                let service = TowerToHyperService::new(router);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
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
    next.run(request).await
}

async fn health() -> Json<serde_json::Value> {
    Json(
        json!({ "status": "ok", "service": "countersign-queue", "version": env!("CARGO_PKG_VERSION") }),
    )
}
