//! The presence policy: which approvals need a FIDO2 security key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails by panicking")]

use alloy_primitives::{address, Address, Bytes, U256};
use countersign_core::decode::{decode_call, encode_approve, encode_batch, encode_transfer, Call};
use countersign_core::presence::PresencePolicy;
use countersign_core::request::SafeTxRequest;
use countersign_core::tokens::TokenList;
use serde_json::json;

const SAFE: Address = address!("5afE3855358E112B5647B952709E6165e1c1eEEe");
const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
const MULTISEND: Address = address!("A238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761");
const TO: Address = address!("28C6c06298d514Db089934071355E5743bf21d60");

fn call(to: Address, value: u64, data: Bytes, operation: u8) -> Call {
    let zero = "0x0000000000000000000000000000000000000000";
    let body = json!({ "safe": SAFE.to_checksum(None), "to": to.to_checksum(None), "value": value.to_string(),
        "data": data.to_string(), "operation": operation, "safeTxGas": "0", "baseGas": "0", "gasPrice": "0",
        "gasToken": zero, "refundReceiver": zero, "nonce": 1 });
    let request = SafeTxRequest::from_json(body.to_string().as_bytes()).unwrap();
    decode_call(SAFE, 1, &request.tx)
}

fn policy(value: serde_json::Value) -> PresencePolicy {
    PresencePolicy::parse(&value).unwrap()
}

#[test]
fn thresholds_per_asset_summed_over_a_multisend() {
    let tokens = TokenList::shipped().unwrap();
    let usdc = |n: u64| U256::from(n) * U256::from(1_000_000u64);
    let p = policy(
        json!({ "thresholds": { USDC.to_checksum(None): "100000000000", "native": "1000000000000000000" } }),
    );
    let small = call(USDC, 0, encode_transfer(TO, usdc(99_999)), 0);
    assert_eq!(p.required(&small, 1, &tokens), None);
    let large = call(USDC, 0, encode_transfer(TO, usdc(100_000)), 0);
    assert!(p.required(&large, 1, &tokens).unwrap().contains("at or above"));
    // Two steps of 60,000 USDC each: 120,000 in all.
    let batch = encode_batch(&[
        (
            countersign_core::request::Operation::CALL,
            USDC,
            U256::ZERO,
            encode_transfer(TO, usdc(60_000)),
        ),
        (
            countersign_core::request::Operation::CALL,
            USDC,
            U256::ZERO,
            encode_approve(TO, usdc(60_000)),
        ),
    ]);
    let summed = call(MULTISEND, 0, batch, 1);
    assert!(p.required(&summed, 1, &tokens).is_some(), "{summed:?}");
    let eth = call(TO, 1_000_000_000_000_000_000, Bytes::new(), 0);
    assert!(p.required(&eth, 1, &tokens).is_some());
    let some_eth = call(TO, 999_999_999_999_999_999, Bytes::new(), 0);
    assert_eq!(p.required(&some_eth, 1, &tokens), None);
    // A token without known decimals, and calldata nobody decodes, count as above.
    let unknown = address!("1111111111111111111111111111111111111111");
    let odd = call(unknown, 0, encode_transfer(TO, U256::from(1)), 0);
    assert!(p.required(&odd, 1, &tokens).unwrap().contains("no known decimals"));
    let raw = call(TO, 0, Bytes::from(vec![0xde, 0xad, 0xbe, 0xef]), 0);
    assert!(p.required(&raw, 1, &tokens).is_some());
    // No policy asks for nothing; `all` asks for everything.
    assert_eq!(PresencePolicy::default().required(&raw, 1, &tokens), None);
    assert!(policy(json!({ "all": true })).required(&small, 1, &tokens).is_some());
}

#[test]
fn fail_bad_policies_name_the_field() {
    for (body, field) in [
        (json!({ "thresholds": { "0x12": "1" } }), "fidoPolicy.thresholds.0x12"),
        (json!({ "thresholds": { "native": "1.5" } }), "fidoPolicy.thresholds.native"),
        (json!({ "thresholds": { "native": "" } }), "fidoPolicy.thresholds.native"),
        (json!({ "every": true }), "fidoPolicy"),
    ] {
        assert_eq!(PresencePolicy::parse(&body).unwrap_err().field, field, "{body}");
    }
}
