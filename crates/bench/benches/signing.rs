//! `cargo bench -p countersign-bench --bench signing`: the hashing, review, signing and
//! recovery costs, with one bare Keccak-f[1600] permutation as the floor, all in the same run.
//!
//! A safeTxHash with the domain hash cached is at least five permutations: keccak256(data)
//! (one, for short data), the struct hash over 352 bytes (three), and the final 66 bytes (one).
//! The goals: hashing within 1.25 × five permutations; decode plus guards of a 20-call
//! MultiSend within 10 × one safeTxHash. The ratios are printed at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::hint::black_box;
use std::path::PathBuf;

use alloy_primitives::{address, Address, Bytes, U256};
use countersign_core::decode::{encode_batch, encode_transfer};
use countersign_core::guard::{review_hashed, History};
use countersign_core::policy::Policy;
use countersign_core::request::{Operation, SafeTx, SafeTxRequest};
use countersign_core::tokens::TokenList;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_signers::software::SoftwareSigner;
use criterion::Criterion;

const SAFE: Address = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");
const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
const CALL_ONLY: Address = address!("9641d764fc13c8B624c04430C7356C1C7C8102e2");

fn tx(to: Address, value: U256, data: Bytes, operation: Operation) -> SafeTx {
    SafeTx {
        to,
        value,
        data,
        operation,
        safe_tx_gas: U256::ZERO,
        base_gas: U256::ZERO,
        gas_price: U256::ZERO,
        gas_token: Address::ZERO,
        refund_receiver: Address::ZERO,
        nonce: U256::from(5),
    }
}

fn payroll(calls: usize) -> SafeTxRequest {
    let steps: Vec<_> = (0..calls)
        .map(|i| {
            let recipient = Address::with_last_byte(i as u8 + 1);
            let data = encode_transfer(recipient, U256::from(1_000_000u64 * (i as u64 + 1)));
            (Operation::CALL, USDC, U256::ZERO, data)
        })
        .collect();
    let data = encode_batch(&steps);
    SafeTxRequest {
        safe: SAFE,
        tx: tx(CALL_ONLY, U256::ZERO, data, Operation::DELEGATECALL),
        claimed_safe_tx_hash: None,
        unverified_addresses: Vec::new(),
    }
}

fn vault() -> VaultRecord {
    let version = SafeVersion::parse("v", "1.4.1").unwrap_or(SafeVersion::V1_3_0);
    let mut vault = VaultRecord::new(1, SAFE, version);
    vault.next_nonce = Some(U256::from(5));
    vault
}

fn benches(c: &mut Criterion) {
    c.bench_function("keccak_f1600", |b| {
        let mut state = [0u64; 25];
        b.iter(|| keccak::f1600(black_box(&mut state)))
    });

    let domain = vault().domain();
    let transfer = tx(
        address!("255C3912f91eF11bFDadd405F13144a823Da8cc5"),
        U256::from(10),
        Bytes::new(),
        Operation::CALL,
    );
    c.bench_function("safe_tx_hash", |b| b.iter(|| domain.hashes(black_box(&transfer))));

    let request = payroll(20);
    let hashes = domain.hashes(&request.tx);
    let (vault, policy, history) = (vault(), Policy::default(), History::default());
    let tokens = TokenList::shipped().unwrap_or_default();
    c.bench_function("decode_and_guard_multisend_20", |b| {
        b.iter(|| {
            let review = review_hashed(
                black_box(request.clone()),
                hashes,
                &vault,
                &policy,
                &tokens,
                &history,
            );
            assert!(review.refusals.is_empty());
            review
        })
    });

    let signer = SoftwareSigner::generate();
    let digest = hashes.safe_tx;
    c.bench_function("sign", |b| b.iter(|| signer.sign_digest(black_box(&digest))));
    let signature = signer.sign_digest(&digest).unwrap_or_else(|_| std::process::exit(1));
    c.bench_function("verify_recover", |b| b.iter(|| signature.recover(black_box(&digest))));
    let key = signature.recover_key(&digest).unwrap_or_else(|_| std::process::exit(1));
    c.bench_function("verify_known_key", |b| {
        b.iter(|| assert!(signature.is_by(black_box(&digest), &key)));
    });
}

/// Criterion's point estimate of a benchmark's mean, in nanoseconds, from its output folder.
fn mean_ns(id: &str) -> Option<f64> {
    // Criterion writes under the target folder: three levels above target/release/deps/<bench>.
    let exe = std::env::current_exe().ok()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| exe.ancestors().nth(3).map(PathBuf::from))?;
    let path = target.join("criterion").join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|arg| arg == "--bench") {
        return; // `cargo test` runs each benchmark once; there are no fresh figures to report.
    }

    let ids = [
        "keccak_f1600",
        "safe_tx_hash",
        "decode_and_guard_multisend_20",
        "sign",
        "verify_recover",
        "verify_known_key",
    ];
    let means: Vec<Option<f64>> = ids.iter().map(|id| mean_ns(id)).collect();
    let [Some(floor), Some(hash), Some(review), Some(sign), Some(verify), Some(known)] = means[..]
    else {
        return;
    };
    println!("\n| benchmark | mean | ratio |");
    println!("|---|---:|---|");
    println!("| one Keccak-f[1600] permutation (floor) | {floor:.1} ns | 1 |");
    println!(
        "| safeTxHash, domain cached | {hash:.1} ns | {:.2} × five permutations (goal ≤ 1.25) |",
        hash / (5.0 * floor)
    );
    println!("| decode + guards, 20-call MultiSend | {review:.1} ns | {:.2} × one safeTxHash (goal ≤ 10) |", review / hash);
    println!("| sign (RFC 6979, low-s) | {:.1} µs | |", sign / 1000.0);
    println!("| verify (recover the signer) | {:.1} µs | |", verify / 1000.0);
    println!(
        "| verify against the signer's known key | {:.1} µs | {:.2} × recovery |",
        known / 1000.0,
        known / verify
    );
}
