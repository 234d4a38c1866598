//! The reference approval queue that Countersign syncs with.
//!
//! It serves JSON under `/v1` over TLS 1.3 only (rustls), with a key it makes on first start
//! and whose SubjectPublicKeyInfo SHA-256 it prints as the pin clients configure.
//!
//! Limitation: this is the first part of the queue. It has its TLS identity, its listener and
//! its health endpoint; storage, roles, requests and approvals are not built yet.

pub mod server;
pub mod tls;

use std::path::Path;

/// Why the queue could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listen: {0}")]
    Listen(String),
}

impl QueueError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), detail: error.to_string() }
    }
}
