//! The PKCS#11 signer against SoftHSM2: a key generated in a throwaway token (which the test
//! script initialises), signing a Safe transaction, low-s normalisation and the refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod common;

use std::path::PathBuf;

use alloy_primitives::{keccak256, Address, B256};
use common::{checked_s3, Answer};
use countersign_core::secret::SecretString;
use countersign_core::signer::{Decision, Signer, SignerError};
use countersign_signers::hsm::{self, HsmError, HsmSigner, TokenKey};
use k256::ecdsa::SigningKey;

/// The throwaway token from the test script, or None (the test is skipped) when run without it.
fn token(key: &str) -> Option<(TokenKey, SecretString)> {
    let Ok(label) = std::env::var("COUNTERSIGN_TEST_HSM_TOKEN") else {
        if std::env::var("COUNTERSIGN_REQUIRE_HSM").as_deref() == Ok("1") {
            panic!("COUNTERSIGN_REQUIRE_HSM=1 but COUNTERSIGN_TEST_HSM_TOKEN is not set");
        }
        eprintln!("skipped: no SoftHSM2 token (run scripts/test)");
        return None;
    };
    let module = std::env::var("COUNTERSIGN_TEST_HSM_MODULE")
        .unwrap_or_else(|_| hsm::SOFTHSM_MODULE.to_owned());
    let pin = SecretString::new(std::env::var("COUNTERSIGN_TEST_HSM_PIN").unwrap());
    let key = format!("{key}-{}", hex::encode(rand::random::<[u8; 4]>()));
    Some((TokenKey { module: PathBuf::from(module), token: label, key }, pin))
}

#[tokio::test]
async fn a_key_made_in_the_token_signs_a_safe_transaction() {
    let Some((token, pin)) = token("approver") else { return };
    let missing = hsm::find_or_generate(&token, &pin, false).await;
    assert!(matches!(missing, Err(HsmError::KeyNotFound { .. })), "{missing:?}");
    let address = hsm::find_or_generate(&token, &pin, true).await.unwrap();
    assert_eq!(
        hsm::find_or_generate(&token, &pin, false).await.unwrap(),
        address,
        "found by label"
    );
    assert_eq!(hsm::find_or_generate(&token, &pin, true).await.unwrap(), address, "not made twice");

    let signer = HsmSigner::enrolled(token.clone(), pin.clone(), address);
    let request = checked_s3();
    let signature = signer.sign(&request, &Answer(Decision::Approve)).await.unwrap();
    assert_eq!(signature.recover(&request.hashes().safe_tx).unwrap(), address);
    let declined = signer.sign(&request, &Answer(Decision::Decline)).await;
    assert_eq!(declined, Err(SignerError::Declined));
    assert!(!format!("{signer:?}").contains(pin.expose()), "Debug shows no PIN");
}

#[tokio::test]
async fn every_token_signature_leaves_low_s() {
    // SoftHSM2 does not normalise s: about half its raw signatures are high-s. Every one that
    // leaves the signer is low-s (OwnerSignature refuses a high s) and recovers to the key.
    let Some((token, pin)) = token("low-s") else { return };
    let address = hsm::find_or_generate(&token, &pin, true).await.unwrap();
    let signer = HsmSigner::enrolled(token, pin, address);
    for i in 0u8..32 {
        let digest = keccak256([i]);
        let signature = signer.sign_digest(digest).await.unwrap();
        assert_eq!(signature.recover(&digest).unwrap(), address);
    }
}

#[test]
fn a_high_s_signature_is_normalised_and_its_recovery_id_found() {
    let key = SigningKey::from_slice(&[0x11; 32]).unwrap();
    let digest = B256::repeat_byte(0x5a);
    let (low, _) = key.sign_prehash_recoverable(digest.as_slice()).unwrap();
    let low = low.normalize_s().unwrap_or(low);
    // s' = n - s: the same signature with a high s, as a token may answer it.
    let high = k256::ecdsa::Signature::from_scalars(low.r(), -*low.s()).unwrap();
    assert!(high.normalize_s().is_some(), "the test signature is high-s");
    let public = *key.verifying_key();
    let from_high = hsm::owner_signature(&high.to_bytes(), &digest, &public).unwrap();
    let from_low = hsm::owner_signature(&low.to_bytes(), &digest, &public).unwrap();
    assert_eq!(from_high, from_low);
    assert_eq!(from_high.recover(&digest).unwrap(), Address::from_private_key(&key));
    let other = *SigningKey::from_slice(&[0x22; 32]).unwrap().verifying_key();
    assert!(matches!(
        hsm::owner_signature(&low.to_bytes(), &digest, &other),
        Err(HsmError::Answer { .. })
    ));
    assert!(hsm::owner_signature(&[0; 63], &digest, &public).is_err());
}

#[test]
fn ec_points_parse_wrapped_or_bare() {
    let key = SigningKey::from_slice(&[0x11; 32]).unwrap();
    let point = key.verifying_key().to_encoded_point(false);
    let bare = point.as_bytes().to_vec();
    let wrapped = [vec![0x04, 0x41], bare.clone()].concat();
    assert_eq!(hsm::parse_ec_point(&wrapped).unwrap(), *key.verifying_key());
    assert_eq!(hsm::parse_ec_point(&bare).unwrap(), *key.verifying_key());
    assert!(hsm::parse_ec_point(&wrapped[..60]).is_err());
}

#[tokio::test]
async fn fail_wrong_pin_absent_token_and_bad_module() {
    let Some((token, pin)) = token("refusals") else { return };
    let wrong = SecretString::new(format!("{}0", pin.expose()));
    let error = hsm::find_or_generate(&token, &wrong, true).await.unwrap_err();
    assert_eq!(error, HsmError::WrongPin);
    assert!(!error.to_string().contains(wrong.expose()));
    let absent = TokenKey { token: "no-such-token".into(), ..token.clone() };
    let error = hsm::find_or_generate(&absent, &pin, true).await.unwrap_err();
    assert_eq!(error.code(), "hsm_token_not_found");
    let module = TokenKey { module: "/nonexistent/libpkcs11.so".into(), ..token.clone() };
    let error = hsm::find_or_generate(&module, &pin, true).await.unwrap_err();
    assert_eq!(error.code(), "hsm_module");
    let relative = TokenKey { module: "libsofthsm2.so".into(), ..token.clone() };
    assert_eq!(
        hsm::find_or_generate(&relative, &pin, true).await.unwrap_err().code(),
        "invalid_hsm"
    );
    let unlabelled = TokenKey { key: " ".into(), ..token.clone() };
    assert_eq!(
        hsm::find_or_generate(&unlabelled, &pin, true).await.unwrap_err().code(),
        "invalid_hsm"
    );
    // Signing with a key that is not the enrolled address's is refused.
    let address = hsm::find_or_generate(&token, &pin, true).await.unwrap();
    let signer = HsmSigner::enrolled(token, pin, Address::repeat_byte(0x42));
    assert_ne!(address, Address::repeat_byte(0x42));
    let error = signer.sign(&checked_s3(), &Answer(Decision::Approve)).await.unwrap_err();
    assert!(matches!(error, SignerError::Failed { .. }), "{error}");
}
