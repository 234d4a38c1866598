//! The reference approval queue that Countersign syncs with.
//!
//! It serves JSON under `/v1` over TLS 1.3 only (rustls), with a key it makes on first start
//! and whose SubjectPublicKeyInfo SHA-256 it prints as the pin clients configure.
//!
//! - [`tls`]: the key, the certificate and the pin;
//! - [`db`]: SQLite or PostgreSQL through sqlx;
//! - [`model`]: members, API keys, sessions, vaults, requests, rejections, the audit chain;
//! - [`approvals`]: approvals, checked in parallel and written in batches;
//! - [`fido`]: FIDO2 security keys, their confirmation, vaults' presence policies;
//! - [`api`]: the routes, authentication and per-key rate limits;
//! - [`server`]: the TLS listener.

pub mod api;
pub mod approvals;
pub mod db;
pub mod error;
pub mod fido;
pub mod model;
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
    #[error("database: {0}")]
    Database(String),
}

impl QueueError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), detail: error.to_string() }
    }
}
