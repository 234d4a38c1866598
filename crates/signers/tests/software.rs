//! The software signer against public vectors, and the sign → recover round trip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod common;

use std::fs;
use std::path::Path;

use alloy_primitives::{Address, B256};
use common::{checked_s3, json, vectors, Answer};
use countersign_core::secret::SecretString;
use countersign_core::signer::{Decision, Signer, SignerError};
use countersign_signers::software::SoftwareSigner;

fn signer(hex: &str) -> SoftwareSigner {
    SoftwareSigner::from_hex(&SecretString::new(hex.to_owned())).unwrap()
}

fn digest(hex: &str) -> B256 {
    hex.trim_start_matches("0x").parse().unwrap()
}

#[test]
fn rfc6979_vectors_byte_for_byte() {
    let file = json(vectors("ecdsa/rfc6979.json"));
    for case in file["cases"].as_array().unwrap() {
        let key = signer(case["d"].as_str().unwrap());
        let signature = key.sign_digest(&digest(case["m"].as_str().unwrap())).unwrap();
        let bytes = signature.as_bytes();
        assert_eq!(hex::encode(&bytes[..64]), case["rs"].as_str().unwrap());
        assert_eq!(u64::from(bytes[64] - 27), case["recid"].as_u64().unwrap());
    }
}

#[test]
fn eip155_example_signature() {
    let v = json(vectors("ecdsa/eip155.json"));
    let key = signer(v["privateKey"].as_str().unwrap());
    let hash = digest(v["signingHash"].as_str().unwrap());
    let signature = key.sign_digest(&hash).unwrap();
    let bytes = signature.as_bytes();
    assert_eq!(hex::encode(&bytes[..32]), v["r"].as_str().unwrap());
    assert_eq!(hex::encode(&bytes[32..64]), v["s"].as_str().unwrap());
    let sender: Address = v["sender"].as_str().unwrap().parse().unwrap();
    assert_eq!(key.address(), sender);
    assert_eq!(signature.recover(&hash).unwrap(), sender);
}

#[test]
fn eip712_mail_signature() {
    let v = json(vectors("eip712/mail.expected.json"));
    let key = signer(v["privateKey"].as_str().unwrap());
    let signature = key.sign_digest(&digest(v["digest"].as_str().unwrap())).unwrap();
    assert_eq!(signature.to_hex(), v["signature"].as_str().unwrap());
    let expected: Address = v["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(key.address(), expected);
}

#[test]
fn fail_malformed_keys() {
    for text in ["", "0x12", &"g".repeat(64), &"0".repeat(64), &"f".repeat(64)] {
        assert!(SoftwareSigner::from_hex(&SecretString::new(text.to_owned())).is_err(), "{text}");
    }
}

#[test]
fn debug_shows_no_key() {
    let hex = "4646464646464646464646464646464646464646464646464646464646464646";
    let text = format!("{:?}", signer(hex));
    assert!(!text.contains("4646464646"), "{text}");
}

#[tokio::test]
async fn signs_a_checked_request_and_recovers() {
    let key = SoftwareSigner::generate();
    let request = checked_s3();
    let signature = key.sign(&request, &Answer(Decision::Approve)).await.unwrap();
    assert_eq!(signature.recover(&request.hashes().safe_tx).unwrap(), key.address());
    let again = key.sign(&request, &Answer(Decision::Approve)).await.unwrap();
    assert_eq!(signature, again, "RFC 6979 signatures are deterministic");
}

#[tokio::test]
async fn declining_is_not_a_failure() {
    let key = SoftwareSigner::generate();
    let outcome = key.sign(&checked_s3(), &Answer(Decision::Decline)).await;
    assert_eq!(outcome, Err(SignerError::Declined));
}

#[test]
fn keystore_v3_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [7u8; 32];
    eth_keystore::encrypt_key(dir.path(), &mut rand::rngs::OsRng, secret, "pw", Some("k")).unwrap();
    let path = dir.path().join("k");
    let key = SoftwareSigner::from_keystore(&path, &SecretString::new("pw".into())).unwrap();
    assert_eq!(key.expose_secret().expose(), &secret);
    let wrong = SoftwareSigner::from_keystore(&path, &SecretString::new("nope".into()));
    assert!(matches!(wrong, Err(countersign_signers::software::KeyError::Keystore(_))));
}

#[test]
fn fail_keystore_with_absurd_kdf_cost() {
    let file = br#"{"crypto":{"kdf":"scrypt","kdfparams":{"n":1073741824,"r":8,"p":1}}}"#;
    assert!(countersign_signers::software::check_keystore_cost(file).is_err());
    let file = br#"{"crypto":{"kdf":"argon9"}}"#;
    assert!(countersign_signers::software::check_keystore_cost(file).is_err());
    // "kdf" says scrypt but the parameters are PBKDF2's: the decryptor would run PBKDF2.
    let file =
        br#"{"crypto":{"kdf":"scrypt","kdfparams":{"c":4294967295,"n":2,"r":1,"p":1,"dklen":32}}}"#;
    assert!(countersign_signers::software::check_keystore_cost(file).is_err());
    let file = br#"{"crypto":{"kdf":"scrypt","kdfparams":{"n":8192,"r":8,"p":1,"dklen":16}}}"#;
    assert!(
        countersign_signers::software::check_keystore_cost(file).is_err(),
        "dklen 16 would panic the decryptor"
    );
}

#[test]
fn keystore_fuzz_corpus() {
    let dir =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../fuzz/corpus/keystore");
    let mut count = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let _ = countersign_signers::software::check_keystore_cost(
            &fs::read(entry.unwrap().path()).unwrap(),
        );
        count += 1;
    }
    assert!(count > 0);
}
