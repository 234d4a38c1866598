//! What the sync crate's test binaries share: the example Safe, test keys, case files and the
//! queue's default rules.

#![allow(dead_code, reason = "each test binary uses part of it")]
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use alloy_primitives::{address, Address};
use countersign_core::secret::SecretString;
use countersign_queue::model::QueueRules;
use countersign_signers::software::SoftwareSigner;
use serde_json::Value;

/// The Safe of the case files.
pub const SAFE: Address = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");

/// The private key `byte` repeated 32 times, as hex.
pub fn hex_of(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A software key from [`hex_of`].
pub fn key(byte: u8) -> SoftwareSigner {
    SoftwareSigner::from_hex(&SecretString::new(hex_of(byte))).unwrap()
}

/// The request of a case under the workspace's `tests/cases/`.
pub fn transaction(file: &str) -> Value {
    let path = format!(
        "{}/../../tests/cases/{file}/request.json",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The queue's rules with the default policy and the shipped token list.
pub fn rules() -> QueueRules {
    QueueRules {
        policy: Default::default(),
        tokens: countersign_core::tokens::TokenList::shipped().unwrap(),
    }
}
