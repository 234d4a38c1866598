//! The signer trait every key source implements, and the prompt through which a signer asks
//! the person at the shell to confirm.

use std::fmt;

use alloy_primitives::Address;
use async_trait::async_trait;

use crate::guard::CheckedRequest;
use crate::signature::OwnerSignature;

/// Produces the Safe owner signature for a checked request.
///
/// Software keys sign the safeTxHash; a device is given the domain hash and the message hash
/// (from [`CheckedRequest::hashes`]) so it can show them. Either way the result is checked to
/// recover to [`Signer::address`] before it is returned (see [`verify_owner_signature`]).
#[async_trait]
pub trait Signer: Send + Sync {
    /// The owner address this signer signs for.
    fn address(&self) -> Address;

    /// A short name for messages: `software key`, `Ledger`, `HSM token "…"`.
    fn describe(&self) -> String;

    async fn sign(
        &self,
        request: &CheckedRequest,
        prompt: &dyn Prompt,
    ) -> Result<OwnerSignature, SignerError>;
}

/// What the person said when asked to confirm a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Decline,
}

/// How the core asks the shell (terminal, window, test) for a confirmation.
#[async_trait]
pub trait Prompt: Send + Sync {
    async fn confirm(&self, request: &CheckedRequest, signer: Address) -> Decision;
}

/// Why a signer produced no signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerError {
    /// The person declined, at the prompt or on the device. Not a failure.
    Declined,
    /// The signer could not be reached (no device, locked, app closed, token absent). `code`
    /// names the case for the `{code, message}` errors.
    Unavailable { code: &'static str, detail: String },
    /// The signer answered with something unusable.
    Failed { detail: String },
    /// The signature recovers to another address than the signer's: never used.
    WrongSigner { expected: Address, recovered: Address },
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Declined => write!(f, "the signature was declined"),
            Self::Unavailable { detail, .. } => write!(f, "{detail}"),
            Self::Failed { detail } => write!(f, "the signer failed: {detail}"),
            Self::WrongSigner { expected, recovered } => write!(
                f,
                "the signature recovers to {recovered}, not to the signer's address {expected}; \
                 it was discarded"
            ),
        }
    }
}

impl std::error::Error for SignerError {}

/// Checks that `signature` over the request's safeTxHash recovers to `expected`.
pub fn verify_owner_signature(
    request: &CheckedRequest,
    signature: &OwnerSignature,
    expected: Address,
) -> Result<(), SignerError> {
    let recovered = signature
        .recover(&request.hashes().safe_tx)
        .map_err(|problem| SignerError::Failed { detail: problem.to_string() })?;
    if recovered != expected {
        return Err(SignerError::WrongSigner { expected, recovered });
    }
    Ok(())
}
