//! Entry points for the fuzz targets in `fuzz/`, also replayed over the corpus by the tests.
//!
//! Each takes arbitrary bytes and must return without panicking, whatever they hold.

use alloy_primitives::{address, B256};
use k256::ecdsa::VerifyingKey;

use crate::guard::{review, History};
use crate::policy::Policy;
use crate::request::SafeTxRequest;
use crate::signature::OwnerSignature;
use crate::tokens::TokenList;
use crate::vault::VaultRecord;
use crate::version::SafeVersion;

/// Parse a Safe transaction request, then decode, hash, guard and describe it.
pub fn safe_request(data: &[u8]) {
    let Ok(request) = SafeTxRequest::from_json(data) else {
        return;
    };
    let version = SafeVersion::parse("v", "1.3.0").unwrap_or(SafeVersion::V1_3_0);
    let mut vault = VaultRecord::new(1, request.safe, version);
    vault.next_nonce = Some(alloy_primitives::U256::from(3));
    let tokens = TokenList::shipped().unwrap_or_default();
    let history = History { signed_for_nonce: vec![B256::ZERO], open_incidents: 0 };
    let review = review(request, &vault, &Policy::default(), &tokens, &history);
    let _ = crate::describe::describe(&review.call, 1, &tokens);
    for refusal in &review.refusals {
        let _ = refusal.to_string();
    }
    for warning in &review.warnings {
        let _ = warning.to_string();
    }
}

/// Decode arbitrary calldata as if a Safe sent it by delegatecall (MultiSend batches included).
pub fn calldata(data: &[u8]) {
    let safe = address!("1111111111111111111111111111111111111111");
    let tx = crate::request::SafeTx {
        to: address!("40A2aCCbd92BCA938b02010E17A5b8929b49130D"),
        value: Default::default(),
        data: data.to_vec().into(),
        operation: crate::request::Operation::DELEGATECALL,
        safe_tx_gas: Default::default(),
        base_gas: Default::default(),
        gas_price: Default::default(),
        gas_token: Default::default(),
        refund_receiver: Default::default(),
        nonce: Default::default(),
    };
    let call = crate::decode::decode_call(safe, 1, &tx);
    let _ = call.walk().len();
}

/// Parse a policy file.
pub fn policy(data: &[u8]) {
    if let Ok(policy) = Policy::from_json(data) {
        let _ = Policy::from_json(policy.to_json().as_bytes());
    }
}

/// Parse typed data and hash it.
pub fn typed_data(data: &[u8]) {
    let _ = crate::typed_data::inspect(data);
}

/// Parse an owner signature in hex and recover it; the known-key check must agree with
/// recovery, over a digest taken from the input, for the key each parity recovers and for
/// fixed keys (±G) that recovery almost never gives.
pub fn signature(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(signature) = OwnerSignature::parse_hex("signature", text) else {
        return;
    };
    let mut other = *signature.as_bytes();
    other[64] ^= 27 ^ 28;
    let other = OwnerSignature::from_bytes(&other);
    assert!(other.is_ok(), "only v differs, and either v is an owner signature's");
    let Ok(other) = other else { return };
    let digest = alloy_primitives::keccak256(data);
    let generator = k256::ProjectivePoint::GENERATOR;
    let mut keys: Vec<VerifyingKey> = [generator, -generator]
        .iter()
        .filter_map(|point| VerifyingKey::from_affine(point.to_affine()).ok())
        .collect();
    keys.extend([&signature, &other].iter().filter_map(|s| s.recover_key(&digest).ok()));
    for signed in [&signature, &other] {
        let recovered = signed.recover_key(&digest).ok();
        for key in &keys {
            assert_eq!(
                signed.is_by(&digest, key),
                recovered.as_ref() == Some(key),
                "the known-key check answers as recovery"
            );
        }
    }
}

/// Parse a token list.
pub fn token_list(data: &[u8]) {
    let _ = TokenList::from_json(data);
}

/// A vault's presence policy as an admin sends it, then judged against a call whose calldata
/// is the same bytes.
pub fn presence_policy(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(policy) = crate::presence::PresencePolicy::parse(&value) else { return };
    let tx = crate::request::SafeTx {
        to: alloy_primitives::Address::ZERO,
        value: alloy_primitives::U256::from(data.len()),
        data: alloy_primitives::Bytes::copy_from_slice(data),
        operation: crate::request::Operation::CALL,
        safe_tx_gas: alloy_primitives::U256::ZERO,
        base_gas: alloy_primitives::U256::ZERO,
        gas_price: alloy_primitives::U256::ZERO,
        gas_token: alloy_primitives::Address::ZERO,
        refund_receiver: alloy_primitives::Address::ZERO,
        nonce: alloy_primitives::U256::ZERO,
    };
    let call = crate::decode::decode_call(alloy_primitives::Address::ZERO, 1, &tx);
    if let Ok(tokens) = crate::tokens::TokenList::shipped() {
        let _ = policy.required(&tx, &call, 1, &tokens);
    }
}
