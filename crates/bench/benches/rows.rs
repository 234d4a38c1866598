//! `cargo bench -p countersign-bench --bench rows`: what the queue screen's rows cost the
//! backend with 10,000 synced requests in a sealed store, phase by phase: reading the whole
//! bodies (what the rows were read from before), reading the row parts, and building the rows.
//! Under `cargo test` it runs once with 200 requests as a smoke test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark stops at the first failure"
)]

use std::time::{Duration, Instant};

use alloy_primitives::{address, Address, U256};
use countersign_core::decode::encode_transfer;
use countersign_core::secret::SecretString;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_store::keywrap::Protection;
use countersign_store::{CachedRequest, Store};
use serde_json::json;

const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");

fn safe(vault: usize) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = 0x5a;
    bytes[16..].copy_from_slice(&(vault as u32).to_be_bytes());
    Address::from(bytes)
}

/// A synced USDC transfer as the sync stores it: the queue's view and Countersign's notes.
fn synced(i: usize) -> CachedRequest {
    let to = Address::with_last_byte((i % 250) as u8 + 1);
    let data = encode_transfer(to, U256::from(1_000_000u64 + i as u64));
    let safe = safe(i / 20).to_checksum(None);
    let signature = format!("0x{}1b", "ab".repeat(64));
    let body = json!({
        "id": format!("r{i}"), "seq": i + 1, "state": "pending", "chainId": 1, "safe": safe,
        "transaction": { "safe": safe, "to": USDC.to_checksum(None), "value": "0",
            "data": data.to_string(), "operation": 0, "safeTxGas": "0", "baseGas": "0",
            "gasPrice": "0", "gasToken": Address::ZERO.to_checksum(None),
            "refundReceiver": Address::ZERO.to_checksum(None), "nonce": 5 + i % 20 },
        "safeTxHash": format!("0x{}", "cd".repeat(32)), "nonce": (5 + i % 20).to_string(),
        "initiator": { "memberId": "init", "address": Address::with_last_byte(0xf0).to_checksum(None) },
        "initiatorSignature": signature, "createdAt": 1_790_000_000 + i as i64,
        "expiresAt": 1_790_086_400 + i as i64,
        "approvals": [{ "owner": Address::with_last_byte(1).to_checksum(None), "memberId": "a1",
            "signature": signature, "at": 1_790_000_100 }],
        "signatures": null, "rejectionReason": null, "executedTransactionHash": null,
        "countersign": { "marks": [], "safeTxHash": format!("0x{}", "cd".repeat(32)),
            "safe": safe, "nonce": (5 + i % 20).to_string(),
            "approvedBy": [Address::with_last_byte(1).to_checksum(None)] },
    });
    CachedRequest { id: format!("r{i}"), seq: i as i64 + 1, payload_hash: format!("h{i}"), body }
}

fn best(runs: Vec<Duration>) -> Duration {
    runs.into_iter().min().unwrap_or_default()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let requests: usize = if bench { 10_000 } else { 200 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::create(dir.path(), Protection::Passphrase(SecretString::new("rows".into())))
                .await
                .unwrap();
        store
            .set_queue_config(&countersign_core::secret::SecretBytes::new(b"{}".to_vec()))
            .await
            .unwrap();
        for vault in 0..requests.div_ceil(20) {
            let mut record = VaultRecord::new(1, safe(vault), SafeVersion::V1_3_0);
            record.threshold = Some(2);
            store.add_vault(&record).await.unwrap();
        }
        let all: Vec<CachedRequest> = (0..requests).map(synced).collect();
        for chunk in all.chunks(500) {
            store.store_synced(chunk, chunk.last().unwrap().seq).await.unwrap();
        }
        let tokens = countersign_core::tokens::TokenList::shipped().unwrap();
        let (mut bodies, mut parts, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(store.cached_requests().await.unwrap().len(), requests);
            bodies.push(started.elapsed());
            let started = Instant::now();
            assert_eq!(store.cached_rows().await.unwrap().len(), requests);
            parts.push(started.elapsed());
            let started = Instant::now();
            let built = countersign_approver::rows::rows(&store, &tokens).await.unwrap();
            rows.push(started.elapsed());
            assert_eq!(built[0].operation, "transfer");
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("| {requests} synced requests, best of 5 | ms |");
        println!("|---|---:|");
        println!("| read and open the whole bodies | {:.1} |", ms(best(bodies)));
        println!("| read and open the row parts | {:.1} |", ms(best(parts)));
        println!(
            "| build the rows (row parts, vaults, policy, decoding) | {:.1} |",
            ms(best(rows))
        );
        store.close().await;
    });
}
