//! Walks the data folders under the workspace's `tests/`: public vectors and our own cases.
//!
//! Every folder or file whose name starts with `fail_` must be rejected or refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::fs;
use std::path::{Path, PathBuf};

use alloy_primitives::{B256, U256};
use countersign_core::address::{parse_address, Checksum};
use countersign_core::describe::describe;
use countersign_core::guard::{review, History, Verdict};
use countersign_core::policy::Policy;
use countersign_core::request::{parse_hash, SafeTxRequest};
use countersign_core::tokens::{Token, TokenList};
use countersign_core::typed_data;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use serde_json::Value;

fn data_dir(sub: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests").join(sub)
}

fn read_json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn folders(sub: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(data_dir(sub))
        .unwrap_or_else(|e| panic!("{sub}: {e}"))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect();
    out.sort();
    out
}

fn hash(value: &Value, field: &str) -> B256 {
    parse_hash(field, value[field].as_str().unwrap_or_default()).unwrap()
}

fn version(value: &Value) -> SafeVersion {
    SafeVersion::parse("safeVersion", value["safeVersion"].as_str().unwrap_or_default()).unwrap()
}

#[test]
fn safe_vectors_reproduce_every_hash() {
    let dirs = folders("vectors/safe");
    assert!(dirs.len() >= 4, "expected the S1, S3, S7 and S9 vectors");
    for dir in dirs {
        let expected = read_json(&dir.join("expected.json"));
        let request = SafeTxRequest::from_json(&fs::read(dir.join("request.json")).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let chain_id = expected["chainId"].as_u64().unwrap();
        let domain = VaultRecord::new(chain_id, request.safe, version(&expected)).domain();
        let hashes = domain.hashes(&request.tx);
        let name = dir.display();
        assert_eq!(hashes.domain, hash(&expected, "domainHash"), "{name} domain");
        assert_eq!(hashes.message, hash(&expected, "messageHash"), "{name} message");
        assert_eq!(hashes.safe_tx, hash(&expected, "safeTxHash"), "{name} safeTxHash");
    }
}

#[test]
fn fail_pre_1_3_safe_hashed_with_chain_id_is_not_what_we_produce() {
    let dir = data_dir("vectors/safe/S7");
    let request = SafeTxRequest::from_json(&fs::read(dir.join("request.json")).unwrap()).unwrap();
    let expected = read_json(&dir.join("expected.json"));
    let v1_0 = VaultRecord::new(1, request.safe, version(&expected)).domain().hashes(&request.tx);
    let as_if_1_3 =
        VaultRecord::new(1, request.safe, SafeVersion::V1_3_0).domain().hashes(&request.tx);
    assert_eq!(v1_0.safe_tx, hash(&expected, "safeTxHash"));
    assert_ne!(as_if_1_3.safe_tx, v1_0.safe_tx);
    assert_ne!(as_if_1_3.domain, v1_0.domain);
}

#[test]
fn data_gas_versions_hash_differently() {
    let dir = data_dir("vectors/safe/S7");
    let request = SafeTxRequest::from_json(&fs::read(dir.join("request.json")).unwrap()).unwrap();
    let old = SafeVersion::parse("v", "0.1.0").unwrap();
    let new = SafeVersion::parse("v", "1.0.0").unwrap();
    let a = VaultRecord::new(1, request.safe, old).domain().hashes(&request.tx);
    let b = VaultRecord::new(1, request.safe, new).domain().hashes(&request.tx);
    assert_eq!(a.domain, b.domain, "both use the domain without chainId");
    assert_ne!(a.message, b.message, "dataGas and baseGas name different types");
}

#[test]
fn eip712_mail_example() {
    let dir = data_dir("vectors/eip712");
    let input = fs::read(dir.join("mail.json")).unwrap();
    let expected = read_json(&dir.join("mail.expected.json"));
    let hashes = typed_data::inspect(&input).unwrap();
    assert_eq!(hashes.encoded_type, expected["encodedType"].as_str().unwrap());
    assert_eq!(hashes.struct_hash, hash(&expected, "structHash"));
    assert_eq!(hashes.domain_separator, hash(&expected, "domainSeparator"));
    assert_eq!(hashes.digest, hash(&expected, "digest"));
}

#[test]
fn eip712_single_field_structs() {
    let file = read_json(&data_dir("vectors/eip712").join("single_field.json"));
    for case in file["cases"].as_array().unwrap() {
        let typed = serde_json::json!({
            "types": {
                "EIP712Domain": [],
                "Message": [{"name": "data", "type": case["type"]}]
            },
            "primaryType": "Message",
            "domain": {},
            "message": {"data": case["data"]}
        });
        let hashes = typed_data::inspect(typed.to_string().as_bytes()).unwrap();
        assert_eq!(hashes.struct_hash, hash(case, "hashStruct"), "{case}");
    }
}

fn address_lines(file: &str) -> Vec<String> {
    fs::read_to_string(data_dir("vectors/eip55").join(file))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn eip55_vectors() {
    for line in address_lines("valid.txt") {
        let parsed = parse_address("address", &line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(parsed.checksum, Checksum::Verified, "{line}");
        assert_eq!(countersign_core::address::checksummed(&parsed.address), line);
    }
    for line in address_lines("unverified.txt") {
        let parsed = parse_address("address", &line).unwrap();
        assert_eq!(parsed.checksum, Checksum::Unverified, "{line}");
    }
    for line in address_lines("fail_mixed_case.txt") {
        assert!(parse_address("address", &line).is_err(), "{line} must be rejected");
    }
}

struct Case {
    name: String,
    meta: Value,
    request: Vec<u8>,
}

fn cases() -> Vec<Case> {
    folders("cases")
        .into_iter()
        .map(|dir| Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            meta: read_json(&dir.join("case.json")),
            request: fs::read(dir.join("request.json")).unwrap(),
        })
        .collect()
}

/// Builds the vault, policy, tokens and history a case file describes.
fn context(case: &Case, request: &SafeTxRequest) -> (VaultRecord, Policy, TokenList, History) {
    let v = &case.meta["vault"];
    let address = match v["address"].as_str() {
        Some(text) => parse_address("vault.address", text).unwrap().address,
        None => request.safe,
    };
    let mut vault = VaultRecord::new(v["chainId"].as_u64().unwrap(), address, version(v));
    vault.next_nonce = v["nextNonce"].as_u64().map(U256::from);

    let policy = match case.meta.get("policy") {
        Some(p) => Policy::from_json(p.to_string().as_bytes()).unwrap(),
        None => Policy::default(),
    };
    let mut tokens = TokenList::shipped().unwrap();
    if let Some(extra) = case.meta.get("tokens") {
        let list = serde_json::json!({ "tokens": extra });
        let extra = TokenList::from_json(list.to_string().as_bytes()).unwrap();
        for entry in extra_tokens(&list) {
            assert!(extra.get(entry.chain_id, &entry.address).is_some());
            tokens.insert(entry);
        }
    }
    let h = &case.meta["history"];
    let history = History {
        signed_for_nonce: h
            .get("signedForNonce")
            .map(|_| hash(h, "signedForNonce"))
            .into_iter()
            .collect(),
        open_incidents: h["openIncidents"].as_u64().unwrap_or(0) as usize,
    };
    (vault, policy, tokens, history)
}

fn extra_tokens(list: &Value) -> Vec<Token> {
    list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Token {
            chain_id: t["chainId"].as_u64().unwrap(),
            address: parse_address("address", t["address"].as_str().unwrap()).unwrap().address,
            symbol: t["symbol"].as_str().unwrap().to_owned(),
            decimals: t["decimals"].as_u64().unwrap() as u8,
        })
        .collect()
}

fn codes<T>(items: &[T], code: impl Fn(&T) -> &'static str) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|i| code(i).to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn guard_cases() {
    let all = cases();
    assert!(all.len() >= 30, "the case folders are missing");
    for case in all {
        let request = SafeTxRequest::from_json(&case.request)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (vault, policy, tokens, history) = context(&case, &request);
        let review = review(request, &vault, &policy, &tokens, &history);
        let expect = &case.meta["expect"];
        let name = &case.name;

        let verdict = if review.verdict() == Verdict::Ok { "ok" } else { "refused" };
        assert_eq!(verdict, expect["verdict"].as_str().unwrap(), "{name}: {:?}", review.refusals);
        assert_eq!(name.starts_with("fail_"), verdict == "refused", "{name}: fail_ means refused");

        let refusals = codes(&review.refusals, |r| r.code());
        assert_eq!(refusals, strings(&expect["refusals"]), "{name}");
        let warnings = codes(&review.warnings, |w| w.code());
        for wanted in strings(&expect["warnings"]) {
            assert!(warnings.contains(&wanted), "{name}: warning {wanted} missing: {warnings:?}");
        }
        let lines = describe(&review.call, vault.chain_id, &tokens).join("\n");
        for wanted in strings(&expect["lines"]) {
            assert!(lines.contains(&wanted), "{name}: {wanted:?} not in\n{lines}");
        }
        let messages: Vec<String> = review.refusals.iter().map(|r| r.to_string()).collect();
        for place in strings(&expect["places"]) {
            assert!(messages.iter().any(|m| m.starts_with(&place)), "{name}: {place} {messages:?}");
        }
        if expect["rejection"].as_bool() == Some(true) {
            assert!(review.is_rejection(), "{name}");
        }
        assert_eq!(review.clone().into_checked().is_ok(), verdict == "ok", "{name}");
        assert_eq!(review.tripwire().is_some(), refusals.contains(&"tripwire".to_owned()));
    }
}
