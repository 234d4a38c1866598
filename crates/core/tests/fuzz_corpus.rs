//! Replays the fuzz corpora under `fuzz/corpus/` through the same entry points the fuzz
//! targets call, so every input a fuzzer ever kept is an ordinary test case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::fs;
use std::path::Path;

use countersign_core::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "the {target} corpus is empty");
}

#[test]
fn safe_request_corpus() {
    replay("safe_request", fuzzing::safe_request);
}

#[test]
fn calldata_corpus() {
    replay("calldata", fuzzing::calldata);
}

#[test]
fn policy_corpus() {
    replay("policy", fuzzing::policy);
}

#[test]
fn typed_data_corpus() {
    replay("typed_data", fuzzing::typed_data);
}

#[test]
fn signature_corpus() {
    replay("signature", fuzzing::signature);
}

#[test]
fn token_list_corpus() {
    replay("token_list", fuzzing::token_list);
}

#[test]
fn presence_policy_corpus() {
    replay("presence_policy", fuzzing::presence_policy);
}
