//! The HTTP client over the pinned TLS configuration.

use std::time::Duration;

use serde_json::{json, Value};

use crate::pin::{client_config, Pins};

/// Why talking to the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the queue could not be reached: {0}")]
    Connect(String),
    /// The server's TLS key matches none of the pins; the handshake stopped before any
    /// request byte was sent.
    #[error(
        "the queue's TLS key matches none of the configured pins: the pin is wrong, or something \
         other than the queue answered at that address; nothing was sent"
    )]
    PinMismatch,
    #[error("the queue answered {status} {code}: {message}")]
    Status { status: u16, code: String, message: String },
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
        if !base_url.starts_with("https://") {
            return Err(ClientError::Setup("url: the queue is reached over https:// only".into()));
        }
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

    /// `GET /v1/health`, without a session: the onboarding connection test.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/health", None, None).await
    }

    /// `POST /v1/session`: a short-lived session for an API key.
    pub async fn session(&self, api_key: &str) -> Result<Session, ClientError> {
        let body = json!({ "apiKey": api_key });
        let reply = self.send(reqwest::Method::POST, "/v1/session", None, Some(&body)).await?;
        let token = reply["token"].as_str().unwrap_or_default().to_owned();
        Ok(Session { client: self.clone(), token, member: reply["member"].clone() })
    }

    /// Sends one request, retrying on 429 (after its Retry-After) and on 5xx and transient
    /// connection failures (exponential backoff with jitter from 200 ms, at most [`RETRIES`]
    /// attempts). A pin mismatch is never retried.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = self.send_raw(method, path, token, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// [`Self::send`] without reading the successful answer as JSON.
    async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let wait = match request.send().await {
                Ok(response) if attempt < RETRIES && response.status().as_u16() == 429 => {
                    retry_after(&response).unwrap_or_else(|| backoff(attempt))
                }
                Ok(response) if attempt < RETRIES && response.status().is_server_error() => {
                    backoff(attempt)
                }
                Ok(response) => return read_reply(response).await,
                Err(error) if attempt < RETRIES && is_transient(&error) => backoff(attempt),
                Err(error) => return Err(connect_error(&error)),
            };
            tracing::warn!(path, attempt, wait_ms = wait.as_millis() as u64, "retrying the queue");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Attempts per request, the first included.
pub const RETRIES: u32 = 5;

fn backoff(attempt: u32) -> Duration {
    let base = 200u64 << attempt.saturating_sub(1).min(6);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let header = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = header.to_str().ok()?.parse().ok()?;
    Some(Duration::from_secs(seconds.min(30)))
}

/// Connection refused or reset, or a timeout, may pass; a TLS failure (a wrong pin) will not.
fn is_transient(error: &reqwest::Error) -> bool {
    let text = error_chain(error);
    (error.is_connect() || error.is_timeout())
        && !matches!(connect_error(error), ClientError::PinMismatch)
        && !(text.contains("certificate") || text.contains("pin") || text.contains("TLS"))
}

/// Answers larger than this are refused (a page of 500 requests is far smaller).
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

async fn read_reply(mut response: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ClientError::Body(e.to_string()))? {
        if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(ClientError::Body(format!(
                "the answer is larger than {MAX_REPLY_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(bytes);
    }
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Body(e.to_string()))?;
    Err(refusal(status.as_u16(), &body))
}

/// A queue's error answer. Its words reach terminals, screens and the local copy's marks:
/// shown as what they hold (control, invisible and direction-changing characters escaped)
/// and cut short.
fn refusal(status: u16, body: &Value) -> ClientError {
    let shown = |text: &str, most: usize| {
        countersign_core::printable(&text.chars().take(most).collect::<String>())
    };
    ClientError::Status {
        status,
        code: shown(body["code"].as_str().unwrap_or("unknown"), 64),
        message: shown(body["message"].as_str().unwrap_or_default(), 500),
    }
}

/// An authenticated session on one queue.
#[derive(Clone)]
pub struct Session {
    client: QueueClient,
    token: String,
    /// The member the queue says this session belongs to.
    pub member: Value,
}

/// Without the token: a session's Debug form may reach a log.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client", &self.client)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.client.send(reqwest::Method::GET, path, Some(&self.token), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.client.send(reqwest::Method::POST, path, Some(&self.token), Some(body)).await
    }

    /// `GET`, the successful answer's bytes unread (errors are read as `{code, message}`).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.client.send_raw(reqwest::Method::GET, path, Some(&self.token), None).await
    }

    /// `POST`, the successful answer's bytes unread.
    pub async fn post_bytes(&self, path: &str, body: &Value) -> Result<Vec<u8>, ClientError> {
        self.client.send_raw(reqwest::Method::POST, path, Some(&self.token), Some(body)).await
    }

    /// Opens `GET /v1/events`; read it with [`Events::next`].
    pub async fn events(&self) -> Result<Events, ClientError> {
        let response = self
            .client
            .http
            .get(format!("{}/v1/events", self.client.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| connect_error(&e))?;
        if !response.status().is_success() {
            return Err(read_reply(response)
                .await
                .err()
                .unwrap_or(ClientError::Body("no events".into())));
        }
        Ok(Events { response, buffer: String::new() })
    }
}

/// An event of the stream larger than this is refused: the queue's events name a request and
/// its state, a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// A live stream of the queue's server-sent events.
#[derive(Debug)]
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event as `(name, data)`, or `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<(String, Value)>, ClientError> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data =
                    serde_json::from_str(&data).map_err(|e| ClientError::Body(e.to_string()))?;
                return Ok(Some((name, data)));
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Err(ClientError::Body(format!(
                    "an event of the queue's stream is over {MAX_EVENT_BYTES} bytes"
                )));
            }
            match self.response.chunk().await.map_err(|e| connect_error(&e))? {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

/// A failed connection, told apart when the cause is our pin verifier refusing the server.
fn connect_error(error: &reqwest::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if is_pin_refusal(cause) {
            return ClientError::PinMismatch;
        }
        source = cause.source();
    }
    ClientError::Connect(error_chain(error))
}

/// Whether this error is, or wraps in io::Errors (which hide what they wrap from `source`),
/// the refusal of our certificate verifier.
fn is_pin_refusal(mut error: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if let Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        )) = error.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        match error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => error = inner,
            None => return false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_a_queues_error_words_are_escaped_and_cut_short() {
        let hostile = serde_json::json!({
            "code": format!("closed\u{1b}[2J\u{202e}{}", "x".repeat(100)),
            "message": format!("line\nMARKED: fake\u{7}{}", "y".repeat(1000)),
        });
        let ClientError::Status { status, code, message } = refusal(409, &hostile) else {
            panic!("not a status error");
        };
        assert_eq!(status, 409);
        for text in [&code, &message] {
            assert!(!text.chars().any(|c| c.is_control() || countersign_core::is_invisible(c)));
        }
        assert!(code.starts_with("closed\\u{1b}[2J\\u{202e}x"), "{code}");
        assert!(code.chars().count() < 64 + 20, "{code}");
        assert!(message.starts_with("line\\u{a}MARKED: fake\\u{7}y"), "{message}");
        assert!(message.chars().count() < 500 + 20, "{message}");
    }
}
