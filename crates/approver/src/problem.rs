//! One error for every approver action: a kind (which the CLI maps to an exit code), a stable
//! code for the desktop app, and a sentence that names the field or the cause. Messages never
//! hold secret material: they are built from store, client and input errors, which hold none.

use std::fmt;

use countersign_core::InputError;
use countersign_store::StoreError;
use countersign_sync::client::ClientError;
use countersign_sync::sync::SyncError;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Bad input or usage.
    Input,
    /// The queue or a guard refused; nothing was signed or changed.
    Refused,
    /// Anything else: the store, the network, the signer.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(skip)]
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind, code, message: message.into() }
    }

    pub fn input(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Input, code, message)
    }

    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Refused, code, message)
    }

    pub fn other(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Other, code, message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl From<InputError> for Problem {
    fn from(error: InputError) -> Self {
        Self::input("invalid_input", error.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        let code = match &error {
            StoreError::Input(_) => "invalid_input",
            StoreError::NotFound { .. } => "not_found",
            StoreError::Duplicate { .. } => "duplicate",
            StoreError::PassphraseRequired => "passphrase_required",
            StoreError::WrongPassphrase => "wrong_passphrase",
            StoreError::NotInitialized { .. } => "no_store",
            StoreError::Tampered { .. } => "store_tampered",
            StoreError::Keyring { .. } => "keyring",
            _ => "store",
        };
        let kind = match &error {
            StoreError::Input(_)
            | StoreError::NotFound { .. }
            | StoreError::Duplicate { .. }
            | StoreError::PassphraseRequired => Kind::Input,
            _ => Kind::Other,
        };
        Self::new(kind, code, error.to_string())
    }
}

/// The queue's answer: 400 is our bad input, another 4xx a refusal, anything else a failure.
impl From<ClientError> for Problem {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Status { status: 400, code, message } => {
                Self::input("queue_bad_input", format!("the queue answered 400 {code}: {message}"))
            }
            error @ ClientError::Status { status: 401..=499, .. } => {
                Self::refused("queue_refused", error.to_string())
            }
            error @ ClientError::Connect(_) => Self::other("queue_unreachable", error.to_string()),
            error @ ClientError::PinMismatch => Self::other("wrong_pin", error.to_string()),
            error => Self::other("queue", error.to_string()),
        }
    }
}

impl From<SyncError> for Problem {
    fn from(error: SyncError) -> Self {
        match error {
            SyncError::Client(error) => error.into(),
            SyncError::Store(error) => error.into(),
            SyncError::Config(_) => Self::input("queue_config", error.to_string()),
        }
    }
}
