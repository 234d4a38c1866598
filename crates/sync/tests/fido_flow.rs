//! FIDO2 on the queue over TLS on loopback: a member registers a security key (webauthn-
//! authenticator-rs's software key, behind the same backend trait as its USB transport), an
//! admin confirms it, and a vault whose presence policy asks for a key refuses approvals
//! without a valid assertion and takes one with it; every refusal has its own code, and the
//! stored approval re-verifies offline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use alloy_primitives::B256;
use countersign_core::intent::intent_digest;
use countersign_core::request::SafeTxRequest;
use countersign_core::signer::Signer;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_fido::{approval_challenge, Assertion, StoredApproval};
use countersign_queue::api::{ApiState, RateLimit};
use countersign_queue::db::Db;
use countersign_queue::fido::Fido;
use countersign_queue::{model, server, tls::Identity};
use countersign_signers::software::SoftwareSigner;
use countersign_sync::client::{ClientError, QueueClient, Session};
use countersign_sync::pin::Pins;
use serde_json::{json, Value};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::AuthenticatorBackend;
use webauthn_rs_proto::{
    AllowCredentials, CreationChallengeResponse, PublicKeyCredentialRequestOptions,
    UserVerificationPolicy,
};

mod common;

use common::{databases, key, rules, transaction, SAFE};

const RP_ID: &str = "countersign.example";
const ORIGIN: &str = "https://countersign.example";

fn code(result: Result<Value, ClientError>) -> String {
    match result {
        Err(ClientError::Status { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn safe_tx_hash(tx: &Value) -> B256 {
    let request = SafeTxRequest::from_json(tx.to_string().as_bytes()).unwrap();
    VaultRecord::new(1, SAFE, SafeVersion::V1_3_0).domain().hashes(&request.tx).safe_tx
}

fn with_nonce(nonce: u64) -> Value {
    let mut tx = transaction("ok_usdc_transfer");
    tx["nonce"] = json!(nonce);
    tx
}

async fn submit(init: &Session, initiator: &SoftwareSigner, id: &str, tx: &Value) -> B256 {
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let hash = safe_tx_hash(tx);
    let digest = intent_digest(1, id, SAFE, hash, created);
    let signature = initiator.sign_digest(&digest).unwrap().to_hex();
    let body = json!({ "id": id, "chainId": 1, "transaction": tx, "createdAt": created,
                       "initiatorSignature": signature });
    init.post("/v1/requests", &body).await.unwrap();
    hash
}

/// Registers a fresh software key for `session`'s member; returns the token and its id.
async fn register(session: &Session) -> (SoftToken, String) {
    let (mut token, _) = SoftToken::new(false).unwrap();
    let started = session.post("/v1/fido/registrations", &json!({})).await.unwrap();
    let options: CreationChallengeResponse =
        serde_json::from_value(started["options"].clone()).unwrap();
    let answer =
        token.perform_register(ORIGIN.parse().unwrap(), options.public_key, 60_000).unwrap();
    let finished = session
        .post("/v1/fido/registrations/finish", &json!({ "credential": answer }))
        .await
        .unwrap();
    assert_eq!(finished["confirmed"], false);
    (token, finished["credentialId"].as_str().unwrap().to_owned())
}

/// The key's assertion for alice's approval of `id` at `hash`, as the approval's `fido` member.
fn assertion(token: &mut SoftToken, credential: &str, id: &str, hash: &B256) -> Value {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(credential).unwrap();
    let options = PublicKeyCredentialRequestOptions {
        challenge: approval_challenge(id, hash, &key(0x22).address()).to_vec(),
        timeout: Some(60_000),
        rp_id: RP_ID.into(),
        allow_credentials: vec![AllowCredentials {
            type_: "public-key".into(),
            id: raw,
            transports: None,
        }],
        user_verification: UserVerificationPolicy::Discouraged_DO_NOT_USE,
        hints: None,
        extensions: None,
    };
    let answer = token.perform_auth(ORIGIN.parse().unwrap(), options, 60_000).unwrap();
    serde_json::to_value(Assertion::from_credential(&answer)).unwrap()
}

fn approval(hash: &B256, signer: &SoftwareSigner, fido: Option<Value>) -> Value {
    let signature = signer.sign_digest(hash).unwrap().to_hex();
    json!({ "safeTxHash": hash.to_string(), "signature": signature, "fido": fido })
}

#[tokio::test]
async fn a_vault_that_asks_for_a_security_key_refuses_approvals_without_one() {
    for (backend, db, _dir) in databases().await {
        eprintln!("FIDO2 flow on {backend}");
        flow(db).await;
    }
}

async fn flow(db: Db) {
    let admin_key = model::bootstrap(&db).await.unwrap().unwrap();
    let api = ApiState::new(db, rules(), RateLimit::default())
        .with_fido(Fido::new(RP_ID, ORIGIN).unwrap());
    let identity = Identity::ephemeral().unwrap();
    let running = server::start("127.0.0.1:0".parse().unwrap(), &identity, api).await.unwrap();
    let client = QueueClient::new(&running.url(), Pins::parse(&[&running.pin]).unwrap()).unwrap();
    let admin = client.session(&admin_key).await.unwrap();
    let member = |id: &'static str, role: &'static str, signer: &SoftwareSigner| {
        let body = json!({ "id": id, "name": id, "role": role, "address": signer.address().to_checksum(None) });
        let (admin, client) = (&admin, &client);
        async move {
            admin.post("/v1/members", &body).await.unwrap();
            let key = admin.post(&format!("/v1/members/{id}/api-keys"), &json!({})).await.unwrap();
            client.session(key["apiKey"].as_str().unwrap()).await.unwrap()
        }
    };
    let (initiator, alice, bob) = (key(0x11), key(0x22), key(0x33));
    let owners: Vec<String> =
        [&alice, &bob, &initiator].iter().map(|k| k.address().to_checksum(None)).collect();
    admin
        .post(
            "/v1/vaults",
            &json!({ "chainId": 1, "address": SAFE.to_checksum(None),
                  "safeVersion": "1.3.0", "owners": owners, "threshold": 2, "nextNonce": "5" }),
        )
        .await
        .unwrap();
    let init = member("init", "initiator", &initiator).await;
    let alice_s = member("alice", "approver", &alice).await;
    let bob_s = member("bob", "approver", &bob).await;

    // The policy: a key for every approval. Only an admin sets it, and it is checked.
    let policy = |policy: Value| json!({ "chainId": 1, "address": SAFE.to_checksum(None), "policy": policy });
    assert_eq!(
        code(alice_s.post("/v1/vaults/fido-policy", &policy(json!({ "all": true }))).await),
        "forbidden"
    );
    assert_eq!(
        code(
            admin
                .post("/v1/vaults/fido-policy", &policy(json!({ "thresholds": { "native": "x" } })))
                .await
        ),
        "invalid_field"
    );
    admin.post("/v1/vaults/fido-policy", &policy(json!({ "all": true }))).await.unwrap();

    // Alice registers her key; it does not count until an admin confirms it.
    let (mut alice_key, alice_id) = register(&alice_s).await;
    let listed = alice_s.get("/v1/fido/credentials").await.unwrap();
    assert_eq!(listed["credentials"][0]["confirmed"], false);
    let r1 = submit(&init, &initiator, "r1", &with_nonce(5)).await;
    assert_eq!(
        code(alice_s.post("/v1/requests/r1/approvals", &approval(&r1, &alice, None)).await),
        "fido_required"
    );
    let fido = assertion(&mut alice_key, &alice_id, "r1", &r1);
    assert_eq!(
        code(
            alice_s
                .post("/v1/requests/r1/approvals", &approval(&r1, &alice, Some(fido.clone())))
                .await
        ),
        "fido_unconfirmed"
    );
    assert_eq!(
        code(alice_s.post(&format!("/v1/fido/credentials/{alice_id}/confirm"), &json!({})).await),
        "forbidden"
    );
    admin.post(&format!("/v1/fido/credentials/{alice_id}/confirm"), &json!({})).await.unwrap();

    // An assertion made for another request proves nothing here; nor does a made-up key, nor
    // alice's key next to bob's signature.
    let elsewhere = assertion(&mut alice_key, &alice_id, "r2", &r1);
    assert_eq!(
        code(
            alice_s
                .post("/v1/requests/r1/approvals", &approval(&r1, &alice, Some(elsewhere)))
                .await
        ),
        "fido_other_approval"
    );
    let mut unknown = fido.clone();
    unknown["credentialId"] = json!("AAAA");
    assert_eq!(
        code(
            alice_s.post("/v1/requests/r1/approvals", &approval(&r1, &alice, Some(unknown))).await
        ),
        "fido_unknown_key"
    );
    let borrowed = assertion(&mut alice_key, &alice_id, "r1", &r1);
    assert_eq!(
        code(bob_s.post("/v1/requests/r1/approvals", &approval(&r1, &bob, Some(borrowed))).await),
        "fido_other_member"
    );
    let mut malformed = fido.clone();
    malformed["extra"] = json!(1);
    assert_eq!(
        code(
            alice_s
                .post("/v1/requests/r1/approvals", &approval(&r1, &alice, Some(malformed)))
                .await
        ),
        "invalid_field"
    );

    // With a fresh assertion it is taken.
    let fresh = assertion(&mut alice_key, &alice_id, "r1", &r1);
    let taken = alice_s
        .post("/v1/requests/r1/approvals", &approval(&r1, &alice, Some(fresh)))
        .await
        .unwrap();
    assert_eq!(taken["approvals"].as_array().unwrap().len(), 1);

    // A cloned key: the copy's counter repeats or lags the original's.
    let clone_bytes = alice_key.to_cbor().unwrap();
    let r3 = submit(&init, &initiator, "r3", &with_nonce(6)).await;
    let r4 = submit(&init, &initiator, "r4", &with_nonce(7)).await;
    let original = assertion(&mut alice_key, &alice_id, "r3", &r3);
    alice_s
        .post("/v1/requests/r3/approvals", &approval(&r3, &alice, Some(original)))
        .await
        .unwrap();
    let mut copy = SoftToken::from_cbor(&clone_bytes).unwrap();
    let copied = assertion(&mut copy, &alice_id, "r4", &r4);
    assert_eq!(
        code(alice_s.post("/v1/requests/r4/approvals", &approval(&r4, &alice, Some(copied))).await),
        "fido_replayed"
    );
    let fine = assertion(&mut alice_key, &alice_id, "r4", &r4);
    alice_s.post("/v1/requests/r4/approvals", &approval(&r4, &alice, Some(fine))).await.unwrap();
    let r5 = submit(&init, &initiator, "r5", &with_nonce(8)).await;
    let late = assertion(&mut SoftToken::from_cbor(&clone_bytes).unwrap(), &alice_id, "r5", &r5);
    assert_eq!(
        code(alice_s.post("/v1/requests/r5/approvals", &approval(&r5, &alice, Some(late))).await),
        "fido_counter_back"
    );

    // User verification, where the policy asks for it: the software key without a PIN does
    // not verify the person.
    admin
        .post("/v1/vaults/fido-policy", &policy(json!({ "all": true, "userVerification": true })))
        .await
        .unwrap();
    let unverified = assertion(&mut alice_key, &alice_id, "r5", &r5);
    assert_eq!(
        code(
            alice_s
                .post("/v1/requests/r5/approvals", &approval(&r5, &alice, Some(unverified)))
                .await
        ),
        "fido_no_verification"
    );

    // A threshold per asset: 1500 USDC is below 2000 USDC, so no key is needed; at 1000 it is.
    let usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
    admin
        .post("/v1/vaults/fido-policy", &policy(json!({ "thresholds": { usdc: "2000000000" } })))
        .await
        .unwrap();
    alice_s.post("/v1/requests/r5/approvals", &approval(&r5, &alice, None)).await.unwrap();
    admin
        .post("/v1/vaults/fido-policy", &policy(json!({ "thresholds": { usdc: "1000000000" } })))
        .await
        .unwrap();
    let r6 = submit(&init, &initiator, "r6", &with_nonce(9)).await;
    assert_eq!(
        code(alice_s.post("/v1/requests/r6/approvals", &approval(&r6, &alice, None)).await),
        "fido_required"
    );

    // The admin sees each key's fingerprint and attestation, and can revoke a key for good.
    let listed = admin.get("/v1/fido/credentials").await.unwrap();
    let listed = &listed["credentials"][0];
    assert_eq!(listed["publicKeySha256"].as_str().unwrap().len(), 64);
    assert!(!listed["attestation"].as_str().unwrap().is_empty());
    admin.post(&format!("/v1/fido/credentials/{alice_id}/revoke"), &json!({})).await.unwrap();
    let revoked = assertion(&mut alice_key, &alice_id, "r6", &r6);
    assert_eq!(
        code(
            alice_s.post("/v1/requests/r6/approvals", &approval(&r6, &alice, Some(revoked))).await
        ),
        "fido_revoked"
    );

    // The stored approval re-verifies offline, from nothing but what the queue hands out.
    let stored = alice_s
        .get(&format!("/v1/requests/r1/approvals/{}/fido", alice.address().to_checksum(None)))
        .await
        .unwrap();
    let stored: StoredApproval = serde_json::from_value(stored).unwrap();
    assert_eq!((stored.request_id.as_str(), stored.member.as_str()), ("r1", "alice"));
    assert_eq!(stored.owner, alice.address());
    assert_eq!(stored.key_fingerprint(), listed["publicKeySha256"].as_str().unwrap());
    assert!(countersign_fido::reverify(&stored).is_ok());

    // Every step is in the audit chain.
    let audit = admin.get("/v1/audit").await.unwrap();
    let kinds: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["fido_policy_set", "fido_registered", "fido_confirmed", "fido_revoked"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    running.stop();
}
