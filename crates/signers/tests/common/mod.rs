//! What the signers' tests share: the vectors and a checked request to sign.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::fs;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use async_trait::async_trait;
use countersign_core::guard::{review, CheckedRequest, History};
use countersign_core::policy::Policy;
use countersign_core::request::SafeTxRequest;
use countersign_core::signer::{Decision, Prompt};
use countersign_core::tokens::TokenList;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use serde_json::Value;

pub fn vectors(name: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/vectors").join(name)
}

pub fn json(path: PathBuf) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// A prompt that always gives the same answer.
pub struct Answer(pub Decision);

#[async_trait]
impl Prompt for Answer {
    async fn confirm(&self, _request: &CheckedRequest, _signer: Address) -> Decision {
        self.0
    }
}

/// The Safe vector S3 (Sepolia, Safe 1.3.0), reviewed and allowed.
pub fn checked_s3() -> CheckedRequest {
    let dir = vectors("safe/S3");
    let request = SafeTxRequest::from_json(&fs::read(dir.join("request.json")).unwrap()).unwrap();
    let version = SafeVersion::parse("v", "1.3.0").unwrap();
    let vault = VaultRecord::new(11155111, request.safe, version);
    let tokens = TokenList::shipped().unwrap();
    let review = review(request, &vault, &Policy::default(), &tokens, &History::default());
    review.into_checked().unwrap()
}
