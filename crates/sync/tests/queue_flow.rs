//! The queue end to end over TLS on loopback: a 2-of-4 vault, an initiator, approvers, every
//! refusal with its own code, the threshold, rejection, execution, cursors, the audit chain
//! and the per-key rate limit. Runs against SQLite, and against PostgreSQL when
//! COUNTERSIGN_TEST_POSTGRES_URL names a server (the README's test command starts one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::sync::atomic::Ordering;

use alloy_primitives::{Address, B256};
use countersign_core::intent::intent_digest;
use countersign_core::request::SafeTxRequest;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::Signer;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_queue::api::{ApiState, RateLimit};
use countersign_queue::db::Db;
use countersign_queue::model;
use countersign_queue::server;
use countersign_queue::tls::Identity;
use countersign_signers::software::SoftwareSigner;
use countersign_sync::client::{ClientError, QueueClient, Session};
use countersign_sync::pin::Pins;
use serde_json::{json, Value};

mod common;

use common::{databases, hex_of, key, rules, transaction, SAFE};

struct Queue {
    running: server::Running,
    api: ApiState,
    admin_key: String,
    _dir: tempfile::TempDir,
}

async fn start(db: Db, dir: tempfile::TempDir, limit: RateLimit) -> Queue {
    let rules = rules();
    let admin_key = model::bootstrap(&db).await.unwrap().unwrap();
    let api = ApiState::new(db, rules, limit);
    let identity = Identity::ephemeral().unwrap();
    let running =
        server::start("127.0.0.1:0".parse().unwrap(), &identity, api.clone()).await.unwrap();
    Queue { running, api, admin_key, _dir: dir }
}

impl Queue {
    fn client(&self) -> QueueClient {
        QueueClient::new(&self.running.url(), Pins::parse(&[&self.running.pin]).unwrap()).unwrap()
    }

    async fn session(&self, api_key: &str) -> Session {
        self.client().session(api_key).await.unwrap()
    }

    /// Adds a member and returns a session for it.
    async fn member(
        &self,
        admin: &Session,
        id: &str,
        role: &str,
        address: Option<Address>,
    ) -> Session {
        let body = json!({ "id": id, "name": id, "role": role, "address": address.map(|a| a.to_checksum(None)) });
        admin.post("/v1/members", &body).await.unwrap();
        let key = admin.post(&format!("/v1/members/{id}/api-keys"), &json!({})).await.unwrap();
        self.session(key["apiKey"].as_str().unwrap()).await
    }
}

fn code(result: Result<Value, ClientError>) -> String {
    match result {
        Err(ClientError::Status { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The column `n` of the one row `sql` reads, with `values` bound in order.
async fn number(db: &Db, sql: &str, values: &[&str]) -> i64 {
    let mut query = sqlx::query(sql);
    for value in values {
        query = query.bind((*value).to_owned());
    }
    sqlx::Row::get::<i64, _>(&query.fetch_one(&db.pool).await.unwrap(), "n")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn safe_tx_hash(tx: &Value) -> B256 {
    let request = SafeTxRequest::from_json(tx.to_string().as_bytes()).unwrap();
    VaultRecord::new(1, SAFE, SafeVersion::V1_3_0).domain().hashes(&request.tx).safe_tx
}

fn submission(id: &str, tx: &Value, signer: &SoftwareSigner, created_at: u64) -> Value {
    let digest = intent_digest(1, id, SAFE, safe_tx_hash(tx), created_at);
    let signature = signer.sign_digest(&digest).unwrap();
    json!({ "id": id, "chainId": 1, "transaction": tx, "createdAt": created_at,
            "initiatorSignature": signature.to_hex() })
}

fn approval(hash: B256, signer: &SoftwareSigner) -> Value {
    json!({ "safeTxHash": hash.to_string(), "signature": signer.sign_digest(&hash).unwrap().to_hex() })
}

/// The same signature with s replaced by n − s and v flipped: valid, but high-s.
fn high_s(signature: &OwnerSignature) -> String {
    use k256::elliptic_curve::ops::Neg;
    let bytes = signature.as_bytes();
    let parsed = k256::ecdsa::Signature::from_slice(&bytes[..64]).unwrap();
    let (r, s) = parsed.split_scalars();
    let flipped =
        k256::ecdsa::Signature::from_scalars(r.to_bytes(), (*s).neg().to_bytes()).unwrap();
    let mut out = flipped.to_bytes().to_vec();
    out.push(if bytes[64] == 27 { 28 } else { 27 });
    format!("0x{}", hex::encode(out))
}

/// Another valid low-s signature by the same key over `hash`, with a random nonce.
fn second_signature(byte: u8, hash: &B256, address: Address) -> OwnerSignature {
    use k256::ecdsa::signature::hazmat::RandomizedPrehashSigner;
    let signing = k256::ecdsa::SigningKey::from_slice(&hex::decode(hex_of(byte)).unwrap()).unwrap();
    let signature: k256::ecdsa::Signature =
        signing.sign_prehash_with_rng(&mut rand::rngs::OsRng, hash.as_slice()).unwrap();
    let signature = signature.normalize_s().unwrap_or(signature);
    let (r, s) = (signature.r().to_bytes(), signature.s().to_bytes());
    (0..2)
        .filter_map(|id| OwnerSignature::from_parts(r.into(), s.into(), id).ok())
        .find(|candidate| candidate.recover(hash).ok() == Some(address))
        .unwrap()
}

/// A low-s signature whose r is no point's x coordinate, so nothing recovers from it.
fn unrecoverable(hash: &B256) -> String {
    for r in 1u8..=255 {
        let mut bytes = [0u8; 65];
        bytes[31] = r;
        bytes[63] = 1;
        bytes[64] = 27;
        if let Ok(signature) = OwnerSignature::from_bytes(&bytes) {
            if signature.recover(hash).is_err() {
                return signature.to_hex();
            }
        }
    }
    panic!("no unrecoverable r below 256");
}

#[tokio::test]
async fn two_of_four_vault_from_submission_to_execution() {
    for (backend, db, dir) in databases().await {
        flow(&backend, start(db, dir, RateLimit::default()).await).await;
    }
}

async fn flow(backend: &str, queue: Queue) {
    let (initiator, alice, bob, other_owner, carol) =
        (key(0x11), key(0x22), key(0x33), key(0x44), key(0x55));
    let admin = queue.session(&queue.admin_key).await;
    let owners: Vec<String> = [&alice, &bob, &initiator, &other_owner]
        .iter()
        .map(|k| k.address().to_checksum(None))
        .collect();
    admin
        .post(
            "/v1/vaults",
            &json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0",
                                     "owners": owners, "threshold": 2, "nextNonce": "5" }),
        )
        .await
        .unwrap();
    let init = queue.member(&admin, "init", "initiator", Some(initiator.address())).await;
    let alice_s = queue.member(&admin, "alice", "approver", Some(alice.address())).await;
    let bob_s = queue.member(&admin, "bob", "approver", Some(bob.address())).await;
    queue.member(&admin, "ivan", "approver", Some(initiator.address())).await;
    queue.member(&admin, "carol", "approver", Some(carol.address())).await;
    let viewer = queue.member(&admin, "vic", "viewer", None).await;

    // Submission and its refusals.
    let tx = transaction("ok_usdc_transfer");
    let hash = safe_tx_hash(&tx);
    let created = now();
    assert_eq!(
        code(alice_s.post("/v1/requests", &submission("r1", &tx, &alice, created)).await),
        "forbidden"
    );
    assert_eq!(
        code(init.post("/v1/requests", &submission("r1", &tx, &alice, created)).await),
        "bad_intent_signature"
    );
    assert_eq!(
        code(init.post("/v1/requests", &submission("r1", &tx, &initiator, created - 3600)).await),
        "stale_request"
    );
    let mut wrong_claim = tx.clone();
    wrong_claim["safeTxHash"] = json!(B256::repeat_byte(9).to_string());
    assert_eq!(
        code(init.post("/v1/requests", &submission("r0", &wrong_claim, &initiator, created)).await),
        "hash_mismatch"
    );
    let refused = transaction("fail_delegatecall_untrusted");
    assert_eq!(
        code(init.post("/v1/requests", &submission("r0", &refused, &initiator, created)).await),
        "guard_refused"
    );
    let mut other_vault = tx.clone();
    other_vault["safe"] = json!("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    assert_eq!(
        code(init.post("/v1/requests", &submission("r0", &other_vault, &initiator, created)).await),
        "unknown_vault"
    );
    let mut bad_field = submission("r0", &tx, &initiator, created);
    bad_field["transaction"]["value"] = json!(true);
    let bad = init.post("/v1/requests", &bad_field).await;
    assert!(
        matches!(&bad, Err(ClientError::Status { status: 400, message, .. }) if message.contains("value")),
        "{bad:?}"
    );

    let submitted =
        init.post("/v1/requests", &submission("r1", &tx, &initiator, created)).await.unwrap();
    assert_eq!(submitted["state"], "pending", "{backend}");
    assert_eq!(submitted["safeTxHash"], hash.to_string());
    assert_eq!(
        code(init.post("/v1/requests", &submission("r1", &tx, &initiator, created)).await),
        "duplicate_request"
    );
    let mut same_nonce = transaction("ok_native_transfer");
    same_nonce["nonce"] = json!(5);
    assert_eq!(
        code(init.post("/v1/requests", &submission("r9", &same_nonce, &initiator, created)).await),
        "nonce_taken"
    );

    // Approvals and their refusals.
    let path = "/v1/requests/r1/approvals";
    let first = approval(hash, &alice);
    assert_eq!(alice_s.post(path, &first).await.unwrap()["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(
        alice_s.post(path, &first).await.unwrap()["approvals"].as_array().unwrap().len(),
        1,
        "a retry is idempotent"
    );
    // The queue knows alice's key now and checks her signatures against it: hers with the
    // other parity recovers to somebody else, and must not pass for a second one of hers.
    let mut other_parity = *alice.sign_digest(&hash).unwrap().as_bytes();
    other_parity[64] ^= 27 ^ 28;
    let other_parity = format!("0x{}", hex::encode(other_parity));
    assert_eq!(
        code(
            alice_s
                .post(path, &json!({ "safeTxHash": hash.to_string(), "signature": other_parity }))
                .await
        ),
        "not_an_owner"
    );
    // attack8: with alice's key cached, what alice sends is still judged as recovery judges.
    let elsewhere = B256::repeat_byte(0x5a);
    let hers_elsewhere = alice.sign_digest(&elsewhere).unwrap().to_hex();
    assert_eq!(
        code(
            alice_s
                .post(path, &json!({ "safeTxHash": hash.to_string(), "signature": hers_elsewhere }))
                .await
        ),
        "not_an_owner",
        "her signature over another hash, claimed for this one"
    );
    assert_eq!(
        code(
            alice_s
                .post(
                    path,
                    &json!({ "safeTxHash": elsewhere.to_string(), "signature": hers_elsewhere })
                )
                .await
        ),
        "hash_mismatch",
        "her signature over another hash, claimed for it"
    );
    assert_eq!(code(alice_s.post(path, &approval(hash, &carol)).await), "not_an_owner");
    assert_eq!(code(alice_s.post(path, &approval(hash, &other_owner)).await), "not_an_approver");
    assert_eq!(code(alice_s.post(path, &approval(hash, &initiator)).await), "self_approval");
    assert_eq!(
        code(
            alice_s
                .post(
                    path,
                    &json!({ "safeTxHash": hash.to_string(), "signature": unrecoverable(&hash) })
                )
                .await
        ),
        "bad_signature"
    );
    // Bob relaying alice's approval is hers, idempotent; and alice's own still counts once.
    assert_eq!(bob_s.post(path, &first).await.unwrap()["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(alice_s.post(path, &first).await.unwrap()["approvals"].as_array().unwrap().len(), 1);
    let other_k = second_signature(0x22, &hash, alice.address());
    assert_eq!(
        code(
            alice_s
                .post(
                    path,
                    &json!({ "safeTxHash": hash.to_string(), "signature": other_k.to_hex() })
                )
                .await
        ),
        "duplicate_approval"
    );
    assert_eq!(
        code(bob_s.post(path, &approval(B256::repeat_byte(1), &bob)).await),
        "hash_mismatch"
    );
    assert_eq!(
        code(
            bob_s
                .post(
                    path,
                    &json!({ "safeTxHash": hash.to_string(), "signature": unrecoverable(&hash) })
                )
                .await
        ),
        "bad_signature"
    );
    assert_eq!(code(bob_s.post(path, &approval(hash, &carol)).await), "not_an_owner");
    assert_eq!(code(bob_s.post(path, &approval(hash, &other_owner)).await), "not_an_approver");
    assert_eq!(code(bob_s.post(path, &approval(hash, &initiator)).await), "self_approval");
    let bob_sig = bob.sign_digest(&hash).unwrap();
    assert_eq!(
        code(
            bob_s
                .post(
                    path,
                    &json!({ "safeTxHash": hash.to_string(), "signature": high_s(&bob_sig) })
                )
                .await
        ),
        "high_s_signature"
    );
    assert_eq!(
        code(
            bob_s
                .post(path, &json!({ "safeTxHash": hash.to_string(), "signature": "0x1234" }))
                .await
        ),
        "malformed_signature"
    );
    assert_eq!(code(viewer.post(path, &approval(hash, &bob)).await), "forbidden");

    // The threshold: signatures in ascending owner order, each recovering to its owner.
    let approved = bob_s.post(path, &approval(hash, &bob)).await.unwrap();
    assert_eq!(approved["state"], "approved", "{backend}");
    let joined =
        hex::decode(approved["signatures"].as_str().unwrap().trim_start_matches("0x")).unwrap();
    assert_eq!(joined.len(), 130);
    let signers: Vec<Address> = joined
        .chunks(65)
        .map(|c| OwnerSignature::from_bytes(c).unwrap().recover(&hash).unwrap())
        .collect();
    let mut expected = vec![alice.address(), bob.address()];
    expected.sort();
    assert_eq!(signers, expected);
    assert_eq!(
        bob_s.post(path, &approval(hash, &bob)).await.unwrap()["state"],
        "approved",
        "a retry after the threshold"
    );
    assert_eq!(code(alice_s.post(path, &approval(hash, &initiator)).await), "request_closed");

    // Execution, then a rejection of a second request.
    let executed = init
        .post(
            "/v1/requests/r1/execution",
            &json!({ "transactionHash": B256::repeat_byte(7).to_string() }),
        )
        .await
        .unwrap();
    assert_eq!(executed["state"], "executed");
    let mut tx2 = transaction("ok_native_transfer");
    tx2["nonce"] = json!(6);
    init.post("/v1/requests", &submission("r2", &tx2, &initiator, now())).await.unwrap();
    assert_eq!(
        code(bob_s.post("/v1/requests/r2/rejections", &json!({ "reason": " " })).await),
        "invalid_field"
    );
    let rejected = bob_s
        .post("/v1/requests/r2/rejections", &json!({ "reason": "not on the payroll" }))
        .await
        .unwrap();
    assert_eq!(rejected["state"], "rejected");
    // The same rejection sent again (a retry after a lost answer) answers as the first did
    // and writes nothing; another reason, or another owner, finds the request closed.
    let entries = model::audit_entries(&queue.api.db).await.unwrap().len();
    let again = bob_s
        .post("/v1/requests/r2/rejections", &json!({ "reason": "not on the payroll" }))
        .await
        .unwrap();
    assert_eq!(again, rejected);
    assert_eq!(model::audit_entries(&queue.api.db).await.unwrap().len(), entries);
    for (caller, reason) in
        [(&bob_s, "not on the payroll either"), (&alice_s, "not on the payroll")]
    {
        let refused = caller.post("/v1/requests/r2/rejections", &json!({ "reason": reason })).await;
        assert_eq!(code(refused), "request_closed");
    }
    assert_eq!(
        code(
            alice_s.post("/v1/requests/r2/approvals", &approval(safe_tx_hash(&tx2), &alice)).await
        ),
        "request_closed"
    );

    // Listing by cursor sees each change once.
    let all = viewer.get("/v1/requests?after=0").await.unwrap();
    assert_eq!(all["requests"].as_array().unwrap().len(), 2);
    let cursor = all["cursor"].as_i64().unwrap();
    assert!(viewer.get(&format!("/v1/requests?after={cursor}")).await.unwrap()["requests"]
        .as_array()
        .unwrap()
        .is_empty());
    let pending = viewer.get("/v1/requests?state=pending").await.unwrap();
    assert!(pending["requests"].as_array().unwrap().is_empty());
    assert_eq!(code(viewer.get("/v1/requests?state=bogus").await), "invalid_field");

    // The audit chain holds, and a changed entry is found.
    let report = model::verify_audit(&queue.api.db).await.unwrap();
    assert!(report.is_ok(), "{backend}: {report:?}");
    sqlx::query("UPDATE audit SET body = '{}' WHERE seq = 3")
        .execute(&queue.api.db.pool)
        .await
        .unwrap();
    let broken = model::verify_audit(&queue.api.db).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 3, "{backend}");
}

#[tokio::test]
async fn rate_limited_clients_back_off_and_get_through() {
    let (_, db, dir) = databases().await.remove(0);
    let queue = start(db, dir, RateLimit { per_second: 2.0, burst: 2.0 }).await;
    let admin = queue.session(&queue.admin_key).await;
    for _ in 0..6 {
        admin.get("/v1/vaults").await.unwrap();
    }
    assert!(queue.api.rate_limited.load(Ordering::Relaxed) > 0, "some requests were answered 429");
}

#[tokio::test]
async fn fail_bad_bodies_get_a_code_and_change_nothing() {
    let (_, db, dir) = databases().await.remove(0);
    let queue = start(db, dir, RateLimit::default()).await;
    let admin = queue.session(&queue.admin_key).await;
    let before = model::audit_entries(&queue.api.db).await.unwrap().len();
    assert_eq!(
        code(
            admin.post("/v1/members", &json!({ "id": "a b", "name": "x", "role": "viewer" })).await
        ),
        "invalid_field"
    );
    assert_eq!(
        code(admin.post("/v1/members", &json!({ "id": "ok", "name": "x", "role": "boss" })).await),
        "invalid_field"
    );
    assert_eq!(code(admin.post("/v1/vaults", &json!({ "chainId": 1 })).await), "invalid_field");
    let big = json!({ "id": "x".repeat(300 * 1024) });
    assert_eq!(code(admin.post("/v1/members", &big).await), "body_too_large");
    // What the framework refuses by itself has the same {code, message} shape.
    assert_eq!(code(admin.get("/v1/requests/r1/approvals").await), "method_not_allowed");
    assert_eq!(code(admin.get("/v1/requests?limit=many").await), "invalid_request");
    assert_eq!(code(admin.get("/v1/nothing-here").await), "not_found");
    assert_eq!(
        model::audit_entries(&queue.api.db).await.unwrap().len(),
        before,
        "nothing was written"
    );
    assert_eq!(
        code(queue.client().session("csk_not-a-key").await.map(|s| s.member)),
        "unauthorized"
    );
}

/// A NUL cannot be stored in PostgreSQL's text: refused at the edge, on both databases alike,
/// rather than failing the statement (and with it a whole batch of approvals).
#[tokio::test]
async fn fail_a_nul_anywhere_in_the_input_is_refused_and_names_where() {
    for (backend, db, dir) in databases().await {
        let queue = start(db, dir, RateLimit::default()).await;
        let admin = queue.session(&queue.admin_key).await;
        let before = model::audit_entries(&queue.api.db).await.unwrap().len();
        let refusal = |result: Result<Value, ClientError>| match result {
            Err(ClientError::Status { status, code, message }) => (status, code, message),
            other => panic!("{backend}: expected a refusal, got {other:?}"),
        };
        let (status, code, message) = refusal(
            admin
                .post("/v1/members", &json!({ "id": "nul", "name": "a\u{0}b", "role": "viewer" }))
                .await,
        );
        assert_eq!((status, code.as_str()), (400, "invalid_field"), "{backend}");
        assert!(message.starts_with("name:"), "{backend}: {message}");
        let (_, code, message) = refusal(
            admin.post("/v1/vaults", &json!({ "chainId": 1, "owners": ["0x1", "x\u{0}"] })).await,
        );
        assert_eq!(code, "invalid_field", "{backend}");
        assert!(message.starts_with("owners[1]:"), "{backend}: {message}");
        for path in ["/v1/requests/x%00y/approvals", "/v1/requests/x%00y/rejections"] {
            let (status, code, message) =
                refusal(admin.post(path, &json!({ "reason": "r", "safeTxHash": "0x" })).await);
            assert_eq!((status, code.as_str()), (400, "invalid_field"), "{backend} {path}");
            assert!(message.contains("NUL"), "{backend}: {message}");
        }
        let (status, code, _) = refusal(admin.get("/v1/requests?vault=1%3A0x%00").await);
        assert_eq!((status, code.as_str()), (400, "invalid_field"), "{backend}");
        assert_eq!(
            model::audit_entries(&queue.api.db).await.unwrap().len(),
            before,
            "{backend}: nothing was written"
        );
    }
}

#[tokio::test]
async fn events_announce_each_change() {
    let (_, db, dir) = databases().await.remove(0);
    let queue = start(db, dir, RateLimit::default()).await;
    let admin = queue.session(&queue.admin_key).await;
    let initiator = key(0x11);
    let owners = vec![key(0x22).address().to_checksum(None), initiator.address().to_checksum(None)];
    admin
        .post(
            "/v1/vaults",
            &json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0",
        "owners": owners, "threshold": 1, "nextNonce": "5" }),
        )
        .await
        .unwrap();
    let init = queue.member(&admin, "init", "initiator", Some(initiator.address())).await;
    let viewer = queue.member(&admin, "vic", "viewer", None).await;
    let mut events = viewer.events().await.unwrap();
    let tx = transaction("ok_usdc_transfer");
    init.post("/v1/requests", &submission("live-1", &tx, &initiator, now())).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap();
    let (name, data) = next.unwrap();
    assert_eq!(name, "request");
    assert_eq!(data["id"], "live-1");
    assert_eq!(data["state"], "pending");
}

#[tokio::test]
async fn fail_a_peer_outside_the_allowlist_gets_no_handshake() {
    let (_, db, dir) = databases().await.remove(0);
    let rules = rules();
    let api = ApiState::new(db, rules, RateLimit::default())
        .with_allowlist(vec!["10.0.0.0/8".parse().unwrap()]);
    let identity = Identity::ephemeral().unwrap();
    let running = server::start("127.0.0.1:0".parse().unwrap(), &identity, api).await.unwrap();
    let client = QueueClient::new(&running.url(), Pins::parse(&[&running.pin]).unwrap()).unwrap();
    assert!(client.health().await.is_err());
    assert_eq!(running.counters.handshakes.load(Ordering::Relaxed), 0);
    drop(dir);
}

#[tokio::test]
async fn fail_vault_changes_close_open_requests_and_clock_overflow_is_refused() {
    let (_, db, dir) = databases().await.remove(0);
    let queue = start(db, dir, RateLimit::default()).await;
    let admin = queue.session(&queue.admin_key).await;
    let (initiator, alice) = (key(0x11), key(0x22));
    let owners = vec![alice.address().to_checksum(None), initiator.address().to_checksum(None)];
    let vault = json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0",
                        "owners": owners, "threshold": 1, "nextNonce": "5" });
    admin.post("/v1/vaults", &vault).await.unwrap();
    let init = queue.member(&admin, "init", "initiator", Some(initiator.address())).await;
    let other = queue.member(&admin, "init2", "initiator", Some(key(0x66).address())).await;
    let tx = transaction("ok_usdc_transfer");
    for created_at in [u64::MAX, 1 << 63, (1 << 63) + now()] {
        let mut body = submission("huge", &tx, &initiator, now());
        body["createdAt"] = json!(created_at);
        let answer = init.post("/v1/requests", &body).await;
        assert!(
            matches!(answer, Err(ClientError::Status { status: 400 | 422, .. })),
            "{created_at}: {answer:?}"
        );
    }
    init.post("/v1/requests", &submission("v1", &tx, &initiator, now())).await.unwrap();
    admin.post("/v1/vaults", &vault).await.unwrap();
    let closed = admin.get("/v1/requests/v1").await.unwrap();
    assert_eq!(closed["state"], "rejected", "a changed vault record closes its open requests");
    assert!(closed["rejectionReason"].as_str().unwrap().contains("vault record changed"));

    init.post("/v1/requests", &submission("v2", &tx, &initiator, now())).await.unwrap();
    let alice_s = queue.member(&admin, "alice", "approver", Some(alice.address())).await;
    alice_s.post("/v1/requests/v2/approvals", &approval(safe_tx_hash(&tx), &alice)).await.unwrap();
    let hash = json!({ "transactionHash": B256::repeat_byte(9).to_string() });
    assert_eq!(code(other.post("/v1/requests/v2/execution", &hash).await), "forbidden");
    assert_eq!(init.post("/v1/requests/v2/execution", &hash).await.unwrap()["state"], "executed");
}

/// Clients that go away while their write is handled (here: adding a member, then closing
/// the connection after a few hundred microseconds) must not leave a pooled database
/// connection inside a transaction that nothing ends: every write after them goes through,
/// and each of theirs is written whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_clients_that_leave_mid_request_do_not_break_later_writes() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite_in(dir.path()).await.unwrap();
    let queue = start(db.clone(), dir, RateLimit { per_second: 1000.0, burst: 1000.0 }).await;
    let (token, _, _) = model::open_session(&db, &queue.admin_key).await.unwrap();
    let pins = Pins::parse(&[&queue.running.pin]).unwrap();
    let config = countersign_sync::pin::client_config(pins).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    for round in 0..60u64 {
        let tcp = tokio::net::TcpStream::connect(queue.running.addr).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        let body =
            json!({ "id": format!("left{round}"), "name": "left", "role": "viewer" }).to_string();
        let request = format!(
            "POST /v1/members HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_micros((round % 20) * 100)).await;
        drop(tls);
    }
    let admin = queue.session(&queue.admin_key).await;
    for n in 0..12 {
        let body = json!({ "id": format!("after{n}"), "name": "after", "role": "viewer" });
        admin.post("/v1/members", &body).await.unwrap();
    }
    // Each left member is there with its audit entry, or is not there at all.
    for round in 0..60u64 {
        let id = format!("left{round}");
        let members = number(&db, "SELECT COUNT(*) AS n FROM members WHERE id = $1", &[&id]).await;
        let pattern = format!("%\"{id}\"%");
        let entries =
            number(&db, "SELECT COUNT(*) AS n FROM audit WHERE body LIKE $1", &[&pattern]).await;
        assert_eq!(members, entries, "{id}: the member and its audit entry, or neither");
    }
}

// ---- attack8: a rejection sent again ----

/// A rejection retried: many identical ones at once answer alike and record one; the same
/// words in another form (spaces, another Unicode normalisation, case), another owner, a
/// request the queue closed itself, or one rejected before the queue recorded who rejected
/// find the request closed. On both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_rejection_sent_again_answers_only_for_the_same_member_and_words() {
    for (backend, db, dir) in databases().await {
        let queue = start(db, dir, RateLimit { per_second: 1000.0, burst: 1000.0 }).await;
        let (initiator, alice, bob) = (key(0x11), key(0x22), key(0x33));
        let admin = queue.session(&queue.admin_key).await;
        let owners: Vec<String> =
            [&alice, &bob, &initiator].iter().map(|k| k.address().to_checksum(None)).collect();
        let vault = json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0",
                            "owners": owners, "threshold": 2, "nextNonce": "5" });
        admin.post("/v1/vaults", &vault).await.unwrap();
        let init = queue.member(&admin, "init", "initiator", Some(initiator.address())).await;
        let alice_s = queue.member(&admin, "alice", "approver", Some(alice.address())).await;
        let bob_s = queue.member(&admin, "bob", "approver", Some(bob.address())).await;
        let submit = |id: &'static str, nonce: u64| {
            let mut tx = transaction("ok_usdc_transfer");
            tx["nonce"] = json!(nonce);
            submission(id, &tx, &initiator, now())
        };
        for (id, nonce) in [("q1", 5), ("q2", 6), ("q3", 7)] {
            init.post("/v1/requests", &submit(id, nonce)).await.unwrap();
        }
        let rejected_entries = |db: Db| async move {
            model::audit_entries(&db).await.unwrap().iter().filter(|e| e.kind == "rejected").count()
        };

        // Eight identical rejections at once: one is recorded, every one answers alike.
        let reason = json!({ "reason": "café bill is not ours" });
        let path = "/v1/requests/q1/rejections";
        let mut sent = Vec::new();
        for _ in 0..8 {
            let (session, reason) = (bob_s.clone(), reason.clone());
            sent.push(tokio::spawn(async move { session.post(path, &reason).await }));
        }
        let mut answers = Vec::new();
        for answer in sent {
            answers.push(answer.await.unwrap().unwrap());
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "{backend}: {answers:?}");
        assert_eq!(answers[0]["state"], "rejected", "{backend}");
        assert_eq!(rejected_entries(queue.api.db.clone()).await, 1, "{backend}");
        assert_eq!(admin.get("/v1/requests/q1").await.unwrap(), answers[0], "{backend}");

        // The same words in another form, or from another owner: closed.
        for (session, words) in [
            (&bob_s, " café bill is not ours"),
            (&bob_s, "café bill is not ours "),
            (&bob_s, "cafe\u{301} bill is not ours"),
            (&bob_s, "Café bill is not ours"),
            (&alice_s, "café bill is not ours"),
        ] {
            let answer = session.post(path, &json!({ "reason": words })).await;
            assert_eq!(code(answer), "request_closed", "{backend}: {words:?}");
        }
        assert_eq!(rejected_entries(queue.api.db.clone()).await, 1, "{backend}");

        // Rejected before the queue recorded who rejected: no one's retry is taken for it.
        bob_s.post("/v1/requests/q2/rejections", &reason).await.unwrap();
        sqlx::query("UPDATE requests SET rejected_by = NULL WHERE id = 'q2'")
            .execute(&queue.api.db.pool)
            .await
            .unwrap();
        let answer = bob_s.post("/v1/requests/q2/rejections", &reason).await;
        assert_eq!(code(answer), "request_closed", "{backend}");

        // The vault record changed: the queue closes q3 itself, with its own reason; a retry
        // with that reason is no retry of anyone's. q1, closed before, answers as it did.
        admin.post("/v1/vaults", &vault).await.unwrap();
        let closed = admin.get("/v1/requests/q3").await.unwrap();
        assert_eq!(closed["state"], "rejected", "{backend}");
        let words = closed["rejectionReason"].clone();
        let answer = bob_s.post("/v1/requests/q3/rejections", &json!({ "reason": words })).await;
        assert_eq!(code(answer), "request_closed", "{backend}");
        assert_eq!(bob_s.post(path, &reason).await.unwrap(), answers[0], "{backend}");
        assert_eq!(rejected_entries(queue.api.db.clone()).await, 2, "{backend}");
    }
}

/// A database made before the later columns (requests' views and who rejected them,
/// approvals' assertions) keeps its rows and gains the columns, on SQLite and PostgreSQL.
#[tokio::test]
async fn an_older_database_gains_the_later_columns() {
    // The old schema is written before any `Db` has installed sqlx's drivers.
    sqlx::any::install_default_drivers();
    for (backend, url, _dir) in common::empty_databases().await {
        let old = sqlx::AnyPool::connect(&url).await.unwrap();
        for statement in [
            "CREATE TABLE requests (id TEXT PRIMARY KEY, vault_id TEXT NOT NULL, seq BIGINT NOT NULL, \
             state TEXT NOT NULL, transaction_json TEXT NOT NULL, safe_tx_hash TEXT NOT NULL, \
             nonce TEXT NOT NULL, initiator_id TEXT NOT NULL, initiator_address TEXT NOT NULL, \
             initiator_signature TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, \
             reason TEXT, executed_tx TEXT, signatures TEXT)",
            "CREATE TABLE approvals (request_id TEXT NOT NULL, owner TEXT NOT NULL, \
             member_id TEXT NOT NULL, signature TEXT NOT NULL, created_at BIGINT NOT NULL, \
             PRIMARY KEY (request_id, owner))",
            "INSERT INTO requests VALUES ('r1', '1:0x00', 1, 'rejected', '{}', '0x', '5', 'ivy', \
             '0x00', '0x', 1, 2, 'no', NULL, NULL)",
        ] {
            sqlx::query(statement).execute(&old).await.unwrap();
        }
        old.close().await;

        let db = Db::connect(&url).await.unwrap();
        let row = sqlx::query("SELECT id, view, rejected_by FROM requests")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(sqlx::Row::get::<String, _>(&row, "id"), "r1", "{backend}");
        let rejected_by: Option<String> = sqlx::Row::get(&row, "rejected_by");
        assert_eq!(rejected_by, None, "{backend}");
        sqlx::query("SELECT fido FROM approvals").fetch_all(&db.pool).await.unwrap();
        db.pool.close().await;
        // Connecting again finds the columns there and changes nothing.
        Db::connect(&url).await.unwrap();
    }
}

/// An approval batch's writes share one transaction: when the last of them (the audit entry)
/// fails, the approval is answered as a database failure and nothing of it is kept (no
/// approval, no new view or sequence number, no audit entry, no counter step); once the fault
/// is gone the same approval goes through. On both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_an_approval_whose_last_write_fails_leaves_nothing_behind() {
    for (backend, db, dir) in databases().await {
        let queue = start(db.clone(), dir, RateLimit::default()).await;
        let (initiator, alice) = (key(0x11), key(0x22));
        let admin = queue.session(&queue.admin_key).await;
        let owners = [alice.address().to_checksum(None), key(0x33).address().to_checksum(None)];
        let vault = json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0",
                            "owners": owners, "threshold": 2, "nextNonce": "5" });
        admin.post("/v1/vaults", &vault).await.unwrap();
        let init = queue.member(&admin, "init", "initiator", Some(initiator.address())).await;
        let alice_s = queue.member(&admin, "alice", "approver", Some(alice.address())).await;
        let tx = transaction("ok_usdc_transfer");
        init.post("/v1/requests", &submission("r1", &tx, &initiator, now())).await.unwrap();
        let before = alice_s.get("/v1/requests/r1").await.unwrap();
        let count = |sql: &'static str| number(&db, sql, &[]);
        let audit_before = count("SELECT COUNT(*) AS n FROM audit").await;
        let counter_before =
            count("SELECT value AS n FROM counters WHERE name = 'request_seq'").await;

        // The audit entry is the batch's last write.
        let fault: &[&str] = if backend == "sqlite" {
            &["CREATE TRIGGER refuse_approved BEFORE INSERT ON audit WHEN NEW.kind = 'approved' \
               BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"]
        } else {
            &[
                "CREATE FUNCTION refuse_approved() RETURNS trigger AS $$ BEGIN \
                 IF NEW.kind = 'approved' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_approved BEFORE INSERT ON audit FOR EACH ROW \
                 EXECUTE FUNCTION refuse_approved()",
            ]
        };
        for statement in fault {
            sqlx::query(statement).execute(&db.pool).await.unwrap();
        }
        let approval = approval(safe_tx_hash(&tx), &alice);
        let refused = alice_s.post("/v1/requests/r1/approvals", &approval).await;
        assert!(
            matches!(&refused, Err(ClientError::Status { status: 500, .. })),
            "{backend}: {refused:?}"
        );
        assert_eq!(count("SELECT COUNT(*) AS n FROM approvals").await, 0, "{backend}");
        assert_eq!(count("SELECT COUNT(*) AS n FROM audit").await, audit_before, "{backend}");
        assert_eq!(
            count("SELECT value AS n FROM counters WHERE name = 'request_seq'").await,
            counter_before,
            "{backend}"
        );
        assert_eq!(alice_s.get("/v1/requests/r1").await.unwrap(), before, "{backend}");

        let mend = if backend == "sqlite" {
            "DROP TRIGGER refuse_approved"
        } else {
            "DROP TRIGGER refuse_approved ON audit"
        };
        sqlx::query(mend).execute(&db.pool).await.unwrap();
        let approved = alice_s.post("/v1/requests/r1/approvals", &approval).await.unwrap();
        assert_eq!(approved["approvals"].as_array().unwrap().len(), 1, "{backend}");
        assert_eq!(count("SELECT COUNT(*) AS n FROM approvals").await, 1, "{backend}");
        assert!(model::verify_audit(&db).await.unwrap().is_ok(), "{backend}");
    }
}
