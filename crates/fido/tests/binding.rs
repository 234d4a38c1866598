//! The approval binding against the public assertion vector, and against webauthn-authenticator-
//! rs's software authenticator (the same backend trait as its USB transport): registration
//! through webauthn-rs, an assertion over the approval's challenge, and every refusal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use alloy_primitives::{Address, B256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use countersign_fido::{
    approval_challenge, check_signature, parse_authenticator_data, parse_client_data, reverify,
    verify, Assertion, Expected, Refusal, RelyingParty, StoredApproval, Verified,
};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::AuthenticatorBackend;
use webauthn_rs::prelude::{Credential, Uuid};
use webauthn_rs::WebauthnBuilder;
use webauthn_rs_core::proto::COSEKey;
use webauthn_rs_proto::{
    AllowCredentials, PublicKeyCredentialRequestOptions, UserVerificationPolicy,
};

fn b64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// The binding itself: if a dependency or a refactor changes how the challenge is derived,
/// stored approvals no longer verify. The value was computed independently (Python's
/// hashlib) from the documented formula.
#[test]
fn the_challenge_is_the_documented_hash_of_the_approval() {
    let (hash, owner) = (B256::repeat_byte(0x11), Address::repeat_byte(0x22));
    let challenge = approval_challenge("payroll-1", &hash, &owner);
    assert_eq!(
        hex::encode(challenge),
        "ffc4e93bd7f930ca5b5513d674824e6f7fc1fe8fefe5635a24a0f3a3159c4191"
    );
    assert_ne!(approval_challenge("payroll-2", &hash, &owner), challenge);
    assert_ne!(approval_challenge("payroll-1", &B256::repeat_byte(0x12), &owner), challenge);
    assert_ne!(approval_challenge("payroll-1", &hash, &Address::repeat_byte(0x23)), challenge);
}

/// py_webauthn's ES256 assertion vector (tests/test_verify_authentication_response.py, as
/// listed in ../shared/vectors/PUBLIC_VECTORS.md): the parts parse, extra and reordered client
/// data members are tolerated, and the signature verifies through webauthn-rs-core's COSE key.
#[test]
fn the_public_assertion_vector_parses_and_verifies() {
    let authenticator_data = b64("SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MBAAAATg");
    let data = parse_authenticator_data(&authenticator_data).unwrap();
    assert_eq!(
        hex::encode(data.rp_id_hash),
        "49960de5880e8c687434170f6476605b8fe4aeb9a28632c7995cf3ba831d9763"
    );
    assert!(data.user_present && !data.user_verified);
    assert_eq!(data.counter, 78);
    let client_data_json = b64("eyJjaGFsbGVuZ2UiOiJ4aTMwR1BHQUZZUnhWRHBZMXNNMTBEYUx6VlFHNjZudi1fN1JVYXpIMHZJMll2RzhMWWdERW52TjVmWlpOVnV2RUR1TWk5dGUzVkxxYjQyTjBma0xHQSIsImNsaWVudEV4dGVuc2lvbnMiOnt9LCJoYXNoQWxnb3JpdGhtIjoiU0hBLTI1NiIsIm9yaWdpbiI6Imh0dHA6Ly9sb2NhbGhvc3Q6NTAwMCIsInR5cGUiOiJ3ZWJhdXRobi5nZXQifQ");
    let client = parse_client_data(&client_data_json).unwrap();
    assert_eq!(client.type_, "webauthn.get");
    assert_eq!(client.origin, "http://localhost:5000");
    assert_eq!(b64(&client.challenge).len(), 64);
    let cose = b64("pQECAyYgASFYIIeDTe-gN8A-zQclHoRnGFWN8ehM1b7yAsa8I8KIvmplIlgg4nFGT5px8o6gpPZZhO01wdy9crDSA_Ngtkx0vGpvPHI");
    let value: serde_cbor_2::Value = serde_cbor_2::from_slice(&cose).unwrap();
    let key = COSEKey::try_from(&value).unwrap();
    let signature = b64("MEUCIGisVZOBapCWbnJJvjelIzwpixxIwkjCCb5aCHafQu68AiEA88v-2pJNNApPFwAKFiNuf82-2hBxYW5kGwVweeoxCwo");
    check_signature(&key, &authenticator_data, &client_data_json, &signature).unwrap();
    let mut tampered = client_data_json.clone();
    tampered[10] ^= 1;
    assert_eq!(
        check_signature(&key, &authenticator_data, &tampered, &signature),
        Err(Refusal::BadSignature)
    );
    assert!(parse_authenticator_data(&authenticator_data[..36]).is_err());
    assert!(parse_client_data(b"{\"type\":\"webauthn.get\"}").is_err());
}

fn relying_party() -> RelyingParty {
    RelyingParty::new("countersign.example", "https://countersign.example").unwrap()
}

/// A security key registered through webauthn-rs, and its public key.
fn registered(token: &mut SoftToken, rp: &RelyingParty) -> (Vec<u8>, COSEKey) {
    let webauthn = WebauthnBuilder::new(&rp.id, &rp.origin).unwrap().build().unwrap();
    let (challenge, state) = webauthn
        .start_securitykey_registration(Uuid::new_v4(), "alice", "Alice", None, None, None)
        .unwrap();
    let answer = token.perform_register(rp.origin.clone(), challenge.public_key, 60_000).unwrap();
    let key = webauthn.finish_securitykey_registration(&answer, &state).unwrap();
    let credential: Credential = key.into();
    (credential.cred_id.to_vec(), credential.cred)
}

/// The owner whose approvals the tests' assertions stand beside.
const OWNER: Address = Address::repeat_byte(0x22);

/// The key's assertion over the challenge of approving `id` at `hash`.
fn assert_for(
    token: &mut SoftToken,
    rp: &RelyingParty,
    credential: &[u8],
    id: &str,
    hash: &B256,
) -> Assertion {
    let options = PublicKeyCredentialRequestOptions {
        challenge: approval_challenge(id, hash, &OWNER).to_vec(),
        timeout: Some(60_000),
        rp_id: rp.id.clone(),
        allow_credentials: vec![AllowCredentials {
            type_: "public-key".into(),
            id: credential.to_vec(),
            transports: None,
        }],
        user_verification: UserVerificationPolicy::Discouraged_DO_NOT_USE,
        hints: None,
        extensions: None,
    };
    let answer = token.perform_auth(rp.origin.clone(), options, 60_000).unwrap();
    Assertion::from_credential(&answer)
}

fn expected<'a>(id: &'a str, hash: &'a B256, stored: Option<u32>) -> Expected<'a> {
    Expected {
        request_id: id,
        safe_tx_hash: hash,
        owner: &OWNER,
        require_user_verification: false,
        stored_counter: stored,
    }
}

#[test]
fn a_software_key_proves_presence_for_one_approval_only() {
    let rp = relying_party();
    let (mut token, _) = SoftToken::new(false).unwrap();
    let (credential, key) = registered(&mut token, &rp);
    let hash = B256::repeat_byte(0xab);
    let assertion = assert_for(&mut token, &rp, &credential, "payroll-1", &hash);
    assert_eq!(assertion.credential_id_bytes().unwrap(), credential);
    let Verified { counter, .. } =
        verify(&rp, &key, &assertion, &expected("payroll-1", &hash, Some(0))).unwrap();

    // The same assertion for another request, or another safeTxHash, proves nothing.
    let other = B256::repeat_byte(0xac);
    assert_eq!(
        verify(&rp, &key, &assertion, &expected("payroll-2", &hash, None)),
        Err(Refusal::OtherApproval)
    );
    assert_eq!(
        verify(&rp, &key, &assertion, &expected("payroll-1", &other, None)),
        Err(Refusal::OtherApproval)
    );
    // Nor for another owner's approval of the same request.
    let other_owner = Address::repeat_byte(0x23);
    let theirs = Expected { owner: &other_owner, ..expected("payroll-1", &hash, None) };
    assert_eq!(verify(&rp, &key, &assertion, &theirs), Err(Refusal::OtherApproval));
    // Replayed, and with a counter that went back (the software key keeps a counter).
    assert!(counter > 0);
    {
        let replay = verify(&rp, &key, &assertion, &expected("payroll-1", &hash, Some(counter)));
        assert_eq!(replay, Err(Refusal::Replayed { counter }));
        let back = verify(&rp, &key, &assertion, &expected("payroll-1", &hash, Some(counter + 5)));
        assert_eq!(back, Err(Refusal::CounterWentBack { stored: counter + 5, counter }));
    }
    // Another relying party or origin.
    let elsewhere = RelyingParty::new("other.example", "https://other.example").unwrap();
    assert_eq!(
        verify(&elsewhere, &key, &assertion, &expected("payroll-1", &hash, None)),
        Err(Refusal::WrongOrigin)
    );
    let sibling = RelyingParty {
        id: "approvals.countersign.example".into(),
        origin: "https://approvals.countersign.example".parse().unwrap(),
    };
    let refused =
        verify(&sibling, &key, &assertion, &expected("payroll-1", &hash, None)).unwrap_err();
    assert!(matches!(refused, Refusal::WrongOrigin | Refusal::WrongRpId), "{refused}");
    // Another key's signature.
    let (mut thief, _) = SoftToken::new(false).unwrap();
    let (_, thief_key) = registered(&mut thief, &rp);
    assert_eq!(
        verify(&rp, &thief_key, &assertion, &expected("payroll-1", &hash, None)),
        Err(Refusal::BadSignature)
    );
    // Tampered parts.
    let mut data = b64(&assertion.authenticator_data);
    data[32] &= !0x01;
    let absent =
        Assertion { authenticator_data: URL_SAFE_NO_PAD.encode(&data), ..assertion.clone() };
    assert_eq!(
        verify(&rp, &key, &absent, &expected("payroll-1", &hash, None)),
        Err(Refusal::NoUserPresence)
    );
    let client = String::from_utf8(b64(&assertion.client_data_json)).unwrap();
    let created = client.replace("webauthn.get", "webauthn.create");
    let wrong_type =
        Assertion { client_data_json: URL_SAFE_NO_PAD.encode(created), ..assertion.clone() };
    assert_eq!(
        verify(&rp, &key, &wrong_type, &expected("payroll-1", &hash, None)),
        Err(Refusal::WrongType)
    );
    let garbage = Assertion { signature: "!!".into(), ..assertion.clone() };
    assert_eq!(
        verify(&rp, &key, &garbage, &expected("payroll-1", &hash, None)).unwrap_err().code(),
        "fido_malformed"
    );

    // User verification, where the policy asks for it.
    let uv = Expected { require_user_verification: true, ..expected("payroll-1", &hash, None) };
    let outcome = verify(&rp, &key, &assertion, &uv);
    let data = parse_authenticator_data(&b64(&assertion.authenticator_data)).unwrap();
    if data.user_verified {
        assert!(outcome.is_ok());
    } else {
        assert_eq!(outcome, Err(Refusal::NoUserVerification));
    }

    // The stored approval re-verifies offline, with nothing but itself.
    let stored = StoredApproval {
        request_id: "payroll-1".into(),
        safe_tx_hash: hash,
        owner: OWNER,
        member: "alice".into(),
        relying_party: rp.clone(),
        user_verification_required: false,
        public_key: key,
        assertion,
    };
    let text = serde_json::to_string(&stored).unwrap();

    let back: StoredApproval = serde_json::from_str(&text).unwrap();
    assert!(reverify(&back).is_ok());
    let mut moved = back.clone();
    moved.request_id = "payroll-2".into();
    assert_eq!(reverify(&moved), Err(Refusal::OtherApproval));
}

#[test]
fn fail_relying_parties_that_webauthn_refuses() {
    for (id, origin) in [
        ("127.0.0.1", "https://127.0.0.1"),
        ("example.com", "http://example.com"),
        ("example.com", "https://example.org"),
        ("", "https://example.com"),
        ("exa mple.com", "https://example.com"),
        ("example.com", "not a url"),
    ] {
        assert!(RelyingParty::new(id, origin).is_err(), "{id} {origin}");
    }
    assert!(RelyingParty::new("example.com", "https://approvals.example.com").is_ok());
    assert!(RelyingParty::new("localhost", "http://localhost:8443").is_ok());
}

#[test]
fn fido_assertion_fuzz_corpus() {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../fuzz/corpus/fido_assertion");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        countersign_fido::fuzz_assertion(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count >= 2);
}

/// A stored approval made once with the software key and committed
/// (`tests/fido/stored-approval.json`): it must keep re-verifying after any dependency
/// upgrade, and stop verifying once any part of the binding is moved.
#[test]
fn a_committed_stored_approval_still_verifies() {
    let path = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../tests/fido/stored-approval.json");
    let stored: StoredApproval = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(stored.request_id, "payroll-1");
    assert!(reverify(&stored).is_ok());
    let mut other = stored.clone();
    other.safe_tx_hash = B256::repeat_byte(0x01);
    assert_eq!(reverify(&other), Err(Refusal::OtherApproval));
    let mut other = stored.clone();
    other.relying_party = RelyingParty::new("other.example", "https://other.example").unwrap();
    assert_eq!(reverify(&other), Err(Refusal::WrongOrigin));
    let mut other = stored.clone();
    other.owner = Address::repeat_byte(0x23);
    assert_eq!(reverify(&other), Err(Refusal::OtherApproval));
    let mut other = stored.clone();
    other.relying_party.id = String::new();
    assert_eq!(reverify(&other).unwrap_err().code(), "fido_malformed");
    assert_eq!(stored.key_fingerprint().len(), 64);
    let mut other = stored;
    other.user_verification_required = true;
    assert_eq!(reverify(&other), Err(Refusal::NoUserVerification));
}
