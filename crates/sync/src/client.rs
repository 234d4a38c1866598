//! The HTTP client over the pinned TLS configuration.

use std::time::Duration;

use crate::pin::{client_config, Pins};

/// Why talking to the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the queue's TLS key matches no pin, or the connection failed: {0}")]
    Connect(String),
    #[error("the queue answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the queue's answer could not be read: {0}")]
    Body(String),
    #[error("client setup: {0}")]
    Setup(String),
}

/// A client bound to one queue URL and its pins.
#[derive(Debug, Clone)]
pub struct QueueClient {
    base: String,
    http: reqwest::Client,
}

impl QueueClient {
    pub fn new(base_url: &str, pins: Pins) -> Result<Self, ClientError> {
        let tls = client_config(pins).map_err(|e| ClientError::Setup(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self { base: base_url.trim_end_matches('/').to_owned(), http })
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/health", self.base))
            .send()
            .await
            .map_err(|e| ClientError::Connect(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            return Err(ClientError::Status { status: status.as_u16(), message });
        }
        response.json().await.map_err(|e| ClientError::Body(e.to_string()))
    }
}

/// The error and its causes on one line (reqwest hides the TLS reason in its sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
