//! The part of Countersign that decides what an approver sees and what gets signed.
//!
//! Nothing in this crate touches a disk, a socket or a window. It takes the raw fields of a
//! Safe transaction as they arrive from outside, and turns them, step by step, into something
//! that can be signed:
//!
//! 1. [`request::SafeTxRequest::from_json`] parses the Safe Transaction Service JSON shape,
//!    naming the field in every error ([`InputError`]).
//! 2. [`hash::SafeDomain`] and [`hash::SafeTxHashes`] compute the domain hash, the message hash
//!    and the safeTxHash from those fields and the *pinned* vault record, never from a digest
//!    the request claims.
//! 3. [`decode::decode_call`] turns the call into an [`decode::Call`] a person can read: native
//!    transfers, ERC-20 calls, MultiSend batches (recursively) and Safe self-administration.
//! 4. [`guard::review`] runs every guard against the vault record and the approver's local
//!    [`policy::Policy`] and produces a [`guard::Review`]: the intent, the warnings, and the
//!    reasons it is refused, if any.
//! 5. Only [`guard::Review::into_checked`] makes a [`guard::CheckedRequest`], and a
//!    [`signer::Signer`] only accepts that type: an unchecked request cannot be signed.
//!
//! The store, the signers and the command line sit around this crate and supply what it needs
//! (the vault record, the policy, what this approver already signed) as plain values.

pub mod address;
pub mod amount;
pub mod audit;
pub mod decode;
pub mod describe;
mod error;
pub mod fuzzing;
pub mod guard;
pub mod hash;
pub mod intent;
pub mod policy;
pub mod presence;
pub mod request;
pub mod secret;
pub mod signature;
pub mod signer;
pub mod tokens;
pub mod typed_data;
pub mod vault;
pub mod version;

pub use error::{is_invisible, printable, InputError};
