//! The presence policy: which approvals need a FIDO2 security key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails by panicking")]

use alloy_primitives::{address, Address, Bytes, U256};
use countersign_core::decode::{decode_call, encode_approve, encode_batch, encode_transfer, Call};
use countersign_core::presence::PresencePolicy;
use countersign_core::request::{SafeTx, SafeTxRequest};
use countersign_core::tokens::TokenList;
use serde_json::json;

const SAFE: Address = address!("5afE3855358E112B5647B952709E6165e1c1eEEe");
const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
const MULTISEND: Address = address!("A238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761");
const TO: Address = address!("28C6c06298d514Db089934071355E5743bf21d60");

/// A transaction from the example Safe, and its decoded call.
fn call(to: Address, value: u64, data: Bytes, operation: u8) -> (SafeTx, Call) {
    let zero = "0x0000000000000000000000000000000000000000";
    let body = json!({ "safe": SAFE.to_checksum(None), "to": to.to_checksum(None), "value": value.to_string(),
        "data": data.to_string(), "operation": operation, "safeTxGas": "0", "baseGas": "0", "gasPrice": "0",
        "gasToken": zero, "refundReceiver": zero, "nonce": 1 });
    let request = SafeTxRequest::from_json(body.to_string().as_bytes()).unwrap();
    let decoded = decode_call(SAFE, 1, &request.tx);
    (request.tx, decoded)
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
    let (small_tx, small) = call(USDC, 0, encode_transfer(TO, usdc(99_999)), 0);
    assert_eq!(p.required(&small_tx, &small, 1, &tokens), None);
    let (large_tx, large) = call(USDC, 0, encode_transfer(TO, usdc(100_000)), 0);
    assert!(p.required(&large_tx, &large, 1, &tokens).unwrap().contains("at or above"));
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
    let (summed_tx, summed) = call(MULTISEND, 0, batch, 1);
    assert!(p.required(&summed_tx, &summed, 1, &tokens).is_some(), "{summed:?}");
    let (eth_tx, eth) = call(TO, 1_000_000_000_000_000_000, Bytes::new(), 0);
    assert!(p.required(&eth_tx, &eth, 1, &tokens).is_some());
    let (some_eth_tx, some_eth) = call(TO, 999_999_999_999_999_999, Bytes::new(), 0);
    assert_eq!(p.required(&some_eth_tx, &some_eth, 1, &tokens), None);
    // A token without known decimals, and calldata nobody decodes, count as above.
    let unknown = address!("1111111111111111111111111111111111111111");
    let (odd_tx, odd) = call(unknown, 0, encode_transfer(TO, U256::from(1)), 0);
    assert!(p.required(&odd_tx, &odd, 1, &tokens).unwrap().contains("no known decimals"));
    let (raw_tx, raw) = call(TO, 0, Bytes::from(vec![0xde, 0xad, 0xbe, 0xef]), 0);
    assert!(p.required(&raw_tx, &raw, 1, &tokens).is_some());
    // A bare delegatecall, and a gas refund, count as above any threshold.
    let (delegated_tx, delegated) = call(TO, 0, Bytes::new(), 1);
    assert!(p.required(&delegated_tx, &delegated, 1, &tokens).unwrap().contains("delegatecall"));
    let mut refunded = small_tx.clone();
    refunded.gas_price = U256::from(1_000_000_000_000u64);
    refunded.gas_token = USDC;
    assert!(p.required(&refunded, &small, 1, &tokens).unwrap().contains("gas refund"));
    // No policy asks for nothing; `all` asks for everything.
    assert_eq!(PresencePolicy::default().required(&raw_tx, &raw, 1, &tokens), None);
    assert!(policy(json!({ "all": true })).required(&small_tx, &small, 1, &tokens).is_some());
}

#[test]
fn fail_bad_policies_name_the_field() {
    for (body, field) in [
        (json!({ "thresholds": { "0x12": "1" } }), "fidoPolicy.thresholds.0x12"),
        (json!({ "thresholds": { "native": "1.5" } }), "fidoPolicy.thresholds.native"),
        (json!({ "thresholds": { "native": "" } }), "fidoPolicy.thresholds.native"),
        (json!({ "every": true }), "fidoPolicy"),
        (
            json!({ "thresholds": { "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": "1",
                                 "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48": "2" } }),
            "fidoPolicy.thresholds.0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
        ),
    ] {
        assert_eq!(PresencePolicy::parse(&body).unwrap_err().field, field, "{body}");
    }
}
