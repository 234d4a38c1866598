//! The CLI's one error type, mapped to exit codes.

use std::fmt;

use countersign_core::InputError;
use countersign_store::StoreError;

/// A command that could not finish. Messages never include secret material.
#[derive(Debug)]
pub enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
    /// Anything else: exit 3.
    Other(String),
    /// Refused by the queue (a 4xx answer other than 400): exit 1.
    Refused(String),
}

impl Failure {
    pub fn input(message: impl Into<String>) -> Self {
        Self::Input(message.into())
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input(_) => 2,
            Self::Other(_) => 3,
            Self::Refused(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input(message) | Self::Other(message) | Self::Refused(message) => {
                f.write_str(message)
            }
        }
    }
}

impl From<InputError> for Failure {
    fn from(error: InputError) -> Self {
        Self::Input(error.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Input(input) => Self::Input(input.to_string()),
            StoreError::NotFound { .. }
            | StoreError::Duplicate { .. }
            | StoreError::PassphraseRequired => Self::Input(error.to_string()),
            other => Self::Other(other.to_string()),
        }
    }
}

/// What a command concluded when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Refused: exit 1.
    Refused,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Refused => 1,
        }
    }
}

impl From<countersign_approver::Problem> for Failure {
    fn from(problem: countersign_approver::Problem) -> Self {
        match problem.kind {
            countersign_approver::Kind::Input => Self::Input(problem.message),
            countersign_approver::Kind::Refused => Self::Refused(problem.message),
            countersign_approver::Kind::Other => Self::Other(problem.message),
        }
    }
}
