//! The store against real SQLite files in temporary folders.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alloy_primitives::{address, Address, B256, U256};
use countersign_core::policy::Policy;
use countersign_core::secret::{SecretBytes, SecretString};
use countersign_core::signature::OwnerSignature;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_store::keywrap::Protection;
use countersign_store::{Recorded, Store, StoreError, DB_FILE};
use sqlx::{Connection, SqliteConnection};

const SAFE: Address = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");

fn passphrase(text: &str) -> Protection {
    Protection::Passphrase(SecretString::new(text.to_owned()))
}

fn answer(text: &'static str) -> impl FnOnce() -> Result<SecretString, StoreError> {
    move || Ok(SecretString::new(text.to_owned()))
}

fn vault() -> VaultRecord {
    let mut record = VaultRecord::new(1, SAFE, SafeVersion::parse("v", "1.3.0").unwrap());
    record.owners = vec![address!("255C3912f91eF11bFDadd405F13144a823Da8cc5")];
    record.threshold = Some(1);
    record.next_nonce = Some(U256::from(5));
    record.label = Some("Treasury".into());
    record
}

async fn raw(dir: &Path) -> SqliteConnection {
    let url = format!("sqlite://{}", dir.join(DB_FILE).display());
    SqliteConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn passphrase_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("correct horse")).await.unwrap();
    let key = SecretBytes::new(vec![7u8; 32]);
    let owner = address!("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    store.add_key(owner, "software", Some("desk"), &key).await.unwrap();
    store.add_vault(&vault()).await.unwrap();
    let policy = Policy { allow_gas_refunds: true, ..Policy::default() };
    store.set_policy(&policy).await.unwrap();
    store.close().await;

    let store = Store::open(dir.path(), answer("correct horse")).await.unwrap();
    assert_eq!(store.key_secret(&owner).await.unwrap().expose(), key.expose());
    assert_eq!(store.vault(1, &SAFE).await.unwrap(), vault());
    assert_eq!(store.policy().await.unwrap(), policy);
    assert_eq!(store.keys().await.unwrap()[0].label.as_deref(), Some("desk"));
    assert!(matches!(store.add_vault(&vault()).await, Err(StoreError::Duplicate { .. })));
    assert!(store.verify_audit().await.unwrap().is_ok());
}

#[tokio::test]
async fn fail_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    Store::create(dir.path(), passphrase("right")).await.unwrap().close().await;
    let opened = Store::open(dir.path(), answer("wrong")).await;
    assert!(matches!(opened, Err(StoreError::WrongPassphrase)));
}

#[tokio::test]
async fn fail_tampered_sealed_value_is_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    store.add_vault(&vault()).await.unwrap();

    let mut db = raw(dir.path()).await;
    sqlx::query("UPDATE vaults SET sealed_record = CAST(substr(sealed_record, 1, 20) || CASE WHEN substr(sealed_record, 21, 1) = x'00' THEN x'01' ELSE x'00' END || substr(sealed_record, 22) AS BLOB)")
        .execute(&mut db)
        .await
        .unwrap();
    let error = store.vault(1, &SAFE).await.unwrap_err();
    assert!(matches!(error, StoreError::Tampered { table: "vaults", .. }), "{error}");
    assert!(error.to_string().contains("altered or moved"));
}

#[tokio::test]
async fn fail_sealed_value_moved_to_another_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    let a = address!("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    let b = address!("fB6916095ca1df60bB79Ce92cE3Ea74c37c5d359");
    store.add_key(a, "software", None, &SecretBytes::new(vec![1; 32])).await.unwrap();
    store.add_key(b, "software", None, &SecretBytes::new(vec![2; 32])).await.unwrap();

    let mut db = raw(dir.path()).await;
    let a_id = hex::encode(a.as_slice());
    let b_id = hex::encode(b.as_slice());
    sqlx::query("UPDATE keys SET sealed_secret = (SELECT sealed_secret FROM keys WHERE id = ?) WHERE id = ?")
        .bind(&a_id)
        .bind(&b_id)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(matches!(store.key_secret(&b).await, Err(StoreError::Tampered { .. })));
    assert_eq!(store.key_secret(&a).await.unwrap().expose(), &[1; 32]);
}

#[tokio::test]
async fn fail_broken_audit_chain_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    for n in 0..5 {
        store.audit("note", &serde_json::json!({ "n": n })).await.unwrap();
    }
    assert_eq!(store.verify_audit().await.unwrap().map(|r| r.entries), Ok(6));

    let mut db = raw(dir.path()).await;
    sqlx::query("UPDATE audit SET body = '{\"n\":42}' WHERE seq = 4")
        .execute(&mut db)
        .await
        .unwrap();
    let broken = store.verify_audit().await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 4, "{}", broken.problem);
}

#[tokio::test]
async fn fail_audit_tail_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    for n in 0..3 {
        store.audit("note", &serde_json::json!({ "n": n })).await.unwrap();
    }
    let mut db = raw(dir.path()).await;
    sqlx::query("DELETE FROM audit WHERE seq = 4").execute(&mut db).await.unwrap();
    let broken = store.verify_audit().await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 4, "{}", broken.problem);
}

#[tokio::test]
async fn signatures_feed_the_tripwire_and_incidents_block_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    store.add_vault(&vault()).await.unwrap();
    let (signer, signature) = test_signature();
    let hash = B256::repeat_byte(0xab);

    let nonce = U256::from(5);
    for _ in 0..2 {
        // The second time is a repeat of the same approval: idempotent, one row.
        let shown = serde_json::json!({});
        let recorded = store
            .record_signature(&vault(), nonce, hash, false, signer, &signature, &shown)
            .await
            .unwrap();
        assert_eq!(recorded, Recorded::Recorded);
    }
    let history = store.history(&vault(), nonce).await.unwrap();
    assert_eq!(history.signed_for_nonce, vec![hash]);
    assert!(store.history(&vault(), U256::from(6)).await.unwrap().signed_for_nonce.is_empty());

    let id = store
        .open_incident(&vault(), "tripwire", &serde_json::json!({ "nonce": "5" }))
        .await
        .unwrap();
    assert_eq!(store.history(&vault(), nonce).await.unwrap().open_incidents, 1);
    assert!(store.clear_incident(&id, "  ").await.is_err(), "a note is required");
    store.clear_incident(&id, "checked with the initiator by phone").await.unwrap();
    assert_eq!(store.history(&vault(), nonce).await.unwrap().open_incidents, 0);
    assert!(matches!(store.clear_incident(&id, "again").await, Err(StoreError::NotFound { .. })));
    let all = store.incidents(true).await.unwrap();
    assert_eq!(all[0].note.as_deref(), Some("checked with the initiator by phone"));
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// Runs only when the OS keyring is reachable; the README's test command provides one
/// (gnome-keyring in a D-Bus session) and sets COUNTERSIGN_REQUIRE_KEYRING=1 so that a missing
/// keyring fails the test instead of skipping it.
#[tokio::test]
async fn keyring_store_round_trip() {
    let required = std::env::var("COUNTERSIGN_REQUIRE_KEYRING").as_deref() == Ok("1");
    let dir = tempfile::tempdir().unwrap();
    let store = match Store::create(dir.path(), Protection::Keyring).await {
        Ok(store) => store,
        Err(error) if !required => {
            eprintln!("skipped: no OS keyring here ({error})");
            return;
        }
        Err(error) => panic!("the keyring was required: {error}"),
    };
    store.add_vault(&vault()).await.unwrap();
    store.close().await;
    let never =
        || -> Result<SecretString, StoreError> { panic!("a keyring store asks no passphrase") };
    let store = Store::open(dir.path(), never).await.unwrap();
    assert_eq!(store.vault(1, &SAFE).await.unwrap(), vault());
    store.erase().await.unwrap();
    assert!(!Store::exists(dir.path()));
}

/// The writer half of the kill test: appends audit entries until it is killed.
#[tokio::test]
async fn child_writer() {
    let Ok(dir) = std::env::var("COUNTERSIGN_KILL_TEST_DIR") else {
        return;
    };
    let store = Store::open(Path::new(&dir), answer("p")).await.unwrap();
    for n in 0u64.. {
        store.audit("tick", &serde_json::json!({ "n": n })).await.unwrap();
        store.open_incident(&vault(), "tick", &serde_json::json!({ "n": n })).await.unwrap();
    }
}

#[tokio::test]
async fn killed_mid_write_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    store.add_vault(&vault()).await.unwrap();
    store.close().await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture"])
        .env("COUNTERSIGN_KILL_TEST_DIR", dir.path())
        .spawn()
        .unwrap();
    let store = Store::open(dir.path(), answer("p")).await.unwrap();
    let mut seen = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = store.audit_entries().await.unwrap().len();
        if seen > 40 {
            break;
        }
    }
    assert!(seen > 40, "the writer made no progress");
    let pid = child.id().to_string();
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    child.wait().unwrap();

    let after = store.audit_entries().await.unwrap().len();
    assert!(after >= seen, "committed entries were lost: {after} < {seen}");
    assert!(store.verify_audit().await.unwrap().is_ok(), "the chain must still verify");
    let incidents = store.incidents(true).await.unwrap().len();
    let ticks =
        store.audit_entries().await.unwrap().iter().filter(|e| e.kind == "incident_opened").count();
    assert_eq!(incidents, ticks, "every committed incident has its audit entry and no more");
}

/// A signer address and a well-formed signature (the store does not check it recovers).
fn test_signature() -> (Address, OwnerSignature) {
    let mut bytes = [1u8; 65];
    bytes[64] = 27;
    (
        address!("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
        OwnerSignature::from_bytes(&bytes).unwrap(),
    )
}

async fn signed_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    store.add_vault(&vault()).await.unwrap();
    let (signer, signature) = test_signature();
    let shown = serde_json::json!({});
    let first = B256::repeat_byte(1);
    let nonce = U256::from(5);
    store
        .record_signature(&vault(), nonce, first, false, signer, &signature, &shown)
        .await
        .unwrap();

    // A second payload for the same nonce is refused inside the recording transaction, even
    // when the caller's review (made earlier, perhaps before the first was recorded) passed.
    let second = B256::repeat_byte(2);
    let v = vault();
    let raced = store.record_signature(&v, nonce, second, false, signer, &signature, &shown);
    match raced.await.unwrap() {
        Recorded::Refused(refusals) => assert_eq!(refusals[0].code(), "tripwire"),
        Recorded::Recorded => panic!("a second payload for a signed nonce was recorded"),
    }
    let rejection =
        store.record_signature(&v, nonce, B256::repeat_byte(3), true, signer, &signature, &shown);
    assert_eq!(rejection.await.unwrap(), Recorded::Recorded, "the standard rejection is exempt");
    (dir, store)
}

#[tokio::test]
async fn fail_deleted_or_edited_signature_rows_are_found() {
    for statement in [
        "DELETE FROM signatures",
        "DELETE FROM signatures WHERE rowid = 1",
        "UPDATE signatures SET nonce = '6'",
        "UPDATE signatures SET safe_tx_hash = lower(safe_tx_hash) || ''",
    ] {
        let (dir, store) = signed_store().await;
        let mut db = raw(dir.path()).await;
        sqlx::query(statement).execute(&mut db).await.unwrap();
        let history = store.history(&vault(), U256::from(5)).await;
        if statement.contains("lower") {
            // A no-op rewrite changes nothing and must still read back fine.
            assert!(history.is_ok(), "{statement}");
            continue;
        }
        assert!(history.is_err(), "{statement} went unnoticed");
    }
}

#[tokio::test]
async fn fail_incident_cleared_or_moved_by_hand_still_blocks() {
    let (dir, store) = signed_store().await;
    let id = store.open_incident(&vault(), "tripwire", &serde_json::json!({})).await.unwrap();
    let mut db = raw(dir.path()).await;
    sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut db).await.unwrap();
    sqlx::query("UPDATE incidents SET cleared_at = 1").execute(&mut db).await.unwrap();
    assert_eq!(store.history(&vault(), U256::from(9)).await.unwrap().open_incidents, 1);

    sqlx::query("UPDATE incidents SET vault_id = '5:0000'").execute(&mut db).await.unwrap();
    assert!(store.history(&vault(), U256::from(9)).await.is_err(), "a moved incident is found");
    sqlx::query("UPDATE incidents SET vault_id = ?")
        .bind(format!("1:{}", hex::encode(SAFE.as_slice())))
        .execute(&mut db)
        .await
        .unwrap();
    assert!(store.history(&vault(), U256::from(9)).await.is_ok());

    sqlx::query("DELETE FROM incidents").execute(&mut db).await.unwrap();
    assert!(store.history(&vault(), U256::from(9)).await.is_err(), "a deleted incident is found");
    let _ = id;
}

/// A sync opens a page's incidents together: one ledger check for all, all written or none.
#[tokio::test]
async fn fail_incidents_open_together_or_not_at_all() {
    let (dir, store) = signed_store().await;
    let details = incident_details(3);
    let record = vault();
    let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
    assert!(store.open_incidents(&[]).await.unwrap().is_empty());
    let ids = store.open_incidents(&batch).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        store.incidents(false).await.unwrap().iter().filter(|i| ids.contains(&i.id)).count(),
        3
    );
    assert_eq!(store.history(&vault(), U256::from(9)).await.unwrap().open_incidents, 3);
    assert_eq!(incidents_audited(&store).await, 3);

    // One deleted by hand: the next batch is refused whole and writes nothing.
    let mut db = raw(dir.path()).await;
    sqlx::query("DELETE FROM incidents WHERE id = ?").bind(&ids[1]).execute(&mut db).await.unwrap();
    assert!(store.open_incidents(&batch[..2]).await.is_err(), "the missing incident is found");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM incidents").await, 2);
    assert_eq!(incidents_audited(&store).await, 3);
}

#[tokio::test]
async fn fail_incidents_clear_together_or_not_at_all() {
    let (_dir, store) = signed_store().await;
    let details = incident_details(3);
    let record = vault();
    let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
    let ids = store.open_incidents(&batch).await.unwrap();
    async fn open(store: &Store) -> usize {
        store.history(&vault(), U256::from(9)).await.unwrap().open_incidents
    }
    async fn cleared(store: &Store) -> usize {
        let entries = store.audit_entries().await.unwrap();
        entries.iter().filter(|e| e.kind == "incident_cleared").count()
    }
    let before = open(&store).await;
    assert!(matches!(store.clear_incidents(&[], "checked").await, Err(StoreError::Input(_))));

    // Two named (one twice): both cleared, each audited once; the third stays open.
    store
        .clear_incidents(&[&ids[0], &ids[1], &ids[0]], "checked with the initiator")
        .await
        .unwrap();
    assert_eq!(open(&store).await, before - 2);
    assert_eq!(cleared(&store).await, 2);

    // One of them no longer open: refused, naming it, and the other is left open too.
    let refused = store.clear_incidents(&[&ids[2], &ids[1]], "again").await.unwrap_err();
    assert!(refused.to_string().contains(&ids[1]), "{refused}");
    assert_eq!(open(&store).await, before - 2);
    assert_eq!(cleared(&store).await, 2);
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// The details of `count` incidents opened by a sync, one a request.
fn incident_details(count: usize) -> Vec<serde_json::Value> {
    (0..count).map(|n| serde_json::json!({ "request": format!("r{n}") })).collect()
}

async fn incidents_audited(store: &Store) -> usize {
    store.audit_entries().await.unwrap().iter().filter(|e| e.kind == "incident_opened").count()
}

#[tokio::test]
async fn fail_deleted_policy_row_is_not_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    assert_eq!(store.policy().await.unwrap(), Policy::default());
    let mut db = raw(dir.path()).await;
    sqlx::query("DELETE FROM policy").execute(&mut db).await.unwrap();
    assert!(store.policy().await.is_err());
}

#[tokio::test]
async fn fail_incomplete_store_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
    let opened = Store::open(dir.path(), answer("p")).await;
    assert!(matches!(opened, Err(StoreError::Corrupt { .. })));
    assert_eq!(std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len(), 0, "nothing written");
}

#[tokio::test]
async fn fail_a_signature_row_stored_under_another_type_is_found() {
    let (dir, store) = signed_store().await;
    let mut db = raw(dir.path()).await;
    for statement in [
        "PRAGMA foreign_keys = OFF",
        "CREATE TABLE s2 (vault_id TEXT NOT NULL, nonce TEXT NOT NULL, safe_tx_hash TEXT NOT NULL, \
         signer TEXT NOT NULL, signed_at INTEGER NOT NULL, sealed_detail BLOB NOT NULL, \
         PRIMARY KEY (vault_id, nonce, safe_tx_hash, signer))",
        "INSERT INTO s2 (rowid, vault_id, nonce, safe_tx_hash, signer, signed_at, sealed_detail) \
         SELECT rowid, vault_id, CAST(nonce AS BLOB), safe_tx_hash, signer, signed_at, sealed_detail FROM signatures",
        "DROP TABLE signatures",
        "ALTER TABLE s2 RENAME TO signatures",
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    assert!(
        store.history(&vault(), U256::from(5)).await.is_err(),
        "a BLOB nonce must not hide the row"
    );
}

#[tokio::test]
async fn fail_an_older_sealed_policy_put_back_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    let loose = Policy { allow_gas_refunds: true, ..Policy::default() };
    store.set_policy(&loose).await.unwrap();
    let mut db = raw(dir.path()).await;
    let old: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT sealed_body FROM policy").fetch_one(&mut db).await.unwrap(),
        "sealed_body",
    );
    store.set_policy(&Policy::default()).await.unwrap();
    sqlx::query("UPDATE policy SET sealed_body = ?").bind(old).execute(&mut db).await.unwrap();
    assert!(store.policy().await.is_err(), "the log says the strict policy is the last one set");
}

#[tokio::test]
async fn fail_an_older_sealed_vault_record_put_back_is_found_one_by_one_and_in_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    store.add_vault(&vault()).await.unwrap();
    let mut db = raw(dir.path()).await;
    let old: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT sealed_record FROM vaults").fetch_one(&mut db).await.unwrap(),
        "sealed_record",
    );
    store.set_next_nonce(1, &SAFE, U256::from(9)).await.unwrap();
    assert_eq!(store.vaults(None).await.unwrap()[0].next_nonce, Some(U256::from(9)));
    sqlx::query("UPDATE vaults SET sealed_record = ?").bind(old).execute(&mut db).await.unwrap();
    assert!(store.vault(1, &SAFE).await.is_err(), "the log says the next nonce is 9");
    assert!(store.vaults(None).await.is_err(), "the list checks each record against the log too");
}

#[tokio::test]
async fn fail_writing_after_the_log_was_cut_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("p")).await.unwrap();
    for n in 0..3 {
        store.audit("note", &serde_json::json!({ "n": n })).await.unwrap();
    }
    let mut db = raw(dir.path()).await;
    sqlx::query("DELETE FROM audit WHERE seq = 4").execute(&mut db).await.unwrap();
    assert!(
        store.audit("note", &serde_json::json!({})).await.is_err(),
        "a new entry must not paper over the cut"
    );
}

#[tokio::test]
async fn a_mark_is_added_in_place_and_leaves_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("marks")).await.unwrap();
    store
        .set_queue_config(&countersign_core::secret::SecretBytes::new(b"{}".to_vec()))
        .await
        .unwrap();
    let body = serde_json::json!({ "id": "r1", "countersign": { "marks": ["first"] } });
    let cached = countersign_store::CachedRequest {
        id: "r1".into(),
        seq: 7,
        payload_hash: "h".into(),
        body,
    };
    store.store_synced(&[cached], 7).await.unwrap();
    assert!(store.add_mark("r1", "this approver rejected it").await.unwrap());
    // The same mark again (a rejection sent twice) is kept once.
    assert!(store.add_mark("r1", "this approver rejected it").await.unwrap());
    assert!(!store.add_mark("nope", "x").await.unwrap(), "an unknown request is not made");
    let marked = store.cached_request("r1").await.unwrap().unwrap();
    assert_eq!(
        marked.body["countersign"]["marks"],
        serde_json::json!(["first", "this approver rejected it"])
    );
    assert_eq!(store.queue_config().await.unwrap().unwrap().1, 7, "the cursor is unchanged");
    assert!(store.cached_request("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn a_sync_that_read_its_copy_before_a_mark_keeps_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("marks")).await.unwrap();
    store.set_queue_config(&SecretBytes::new(b"{}".to_vec())).await.unwrap();
    let copy = |seq: i64, marks: serde_json::Value| countersign_store::CachedRequest {
        id: "r1".into(),
        seq,
        payload_hash: "h".into(),
        body: serde_json::json!({ "id": "r1", "seq": seq, "countersign": { "marks": marks } }),
    };
    store.store_synced(&[copy(7, serde_json::json!(["first"]))], 7).await.unwrap();
    // A sync reads r1 as it stands, then a rejection marks it, then the sync stores its copy
    // (with a mark of its own) that never saw the rejection's.
    assert!(store.add_mark("r1", "this approver rejected it").await.unwrap());
    store
        .store_synced(&[copy(9, serde_json::json!(["first", "payload changed"]))], 9)
        .await
        .unwrap();
    let stored = store.cached_request("r1").await.unwrap().unwrap();
    assert_eq!(stored.seq, 9);
    assert_eq!(
        stored.body["countersign"]["marks"],
        serde_json::json!(["first", "payload changed", "this approver rejected it"])
    );
}

/// Two synced requests, the second marked since.
async fn synced_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), passphrase("rows")).await.unwrap();
    store.set_queue_config(&SecretBytes::new(b"{}".to_vec())).await.unwrap();
    let request = |id: &str, seq: i64| countersign_store::CachedRequest {
        id: id.into(),
        seq,
        payload_hash: format!("h{seq}"),
        body: serde_json::json!({ "id": id, "seq": seq, "state": "pending", "chainId": 1,
            "createdAt": 1_700_000_000 + seq, "transaction": { "to": "0x00", "nonce": "5" },
            "approvals": [{ "owner": "0x01", "signature": "0xaa" }], "initiatorSignature": "0xbb",
            "countersign": { "marks": [], "safe": "0x5a", "nonce": "5", "approvedBy": ["0x01"] } }),
    };
    store.store_synced(&[request("r1", 1), request("r2", 2)], 2).await.unwrap();
    assert!(store.add_mark("r2", "its payload changed since the last sync").await.unwrap());
    (dir, store)
}

#[tokio::test]
async fn rows_are_read_from_their_own_sealed_part_and_agree_with_the_bodies() {
    let (dir, store) = synced_store().await;
    let bodies = store.cached_requests().await.unwrap();
    let rows = store.cached_rows().await.unwrap();
    assert_eq!(rows.len(), 2);
    for (row, full) in rows.iter().zip(&bodies) {
        assert_eq!((&row.id, row.seq, &row.payload_hash), (&full.id, full.seq, &full.payload_hash));
        assert_eq!(row.body, countersign_store::row_part(&full.body));
        assert!(
            row.body.get("approvals").is_none() && row.body.get("initiatorSignature").is_none()
        );
    }
    assert_eq!(
        rows[1].body["countersign"]["marks"],
        serde_json::json!(["its payload changed since the last sync"]),
        "a mark reaches the row part too"
    );

    // A row synced before the row parts were kept is read from its body, and gets its part
    // when the store is opened next.
    let mut db = raw(dir.path()).await;
    sqlx::query("DELETE FROM queue_rows WHERE id = 'r1'").execute(&mut db).await.unwrap();
    assert_eq!(store.cached_rows().await.unwrap(), rows);
    let count = "SELECT COUNT(*) AS n FROM queue_rows";
    let parts = |row: sqlx::sqlite::SqliteRow| sqlx::Row::get::<i64, _>(&row, "n");
    assert_eq!(parts(sqlx::query(count).fetch_one(&mut db).await.unwrap()), 1);
    let reopened = Store::open(dir.path(), answer("rows")).await.unwrap();
    assert_eq!(parts(sqlx::query(count).fetch_one(&mut db).await.unwrap()), 2);
    assert_eq!(reopened.cached_rows().await.unwrap(), rows);
    assert_eq!(reopened.newest_rows(2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn fail_a_row_part_moved_to_another_request_is_reported_not_shown() {
    let (dir, store) = synced_store().await;
    let mut db = raw(dir.path()).await;
    sqlx::query(
        "UPDATE queue_rows SET sealed_row = (SELECT sealed_row FROM queue_rows WHERE id = 'r1') \
         WHERE id = 'r2'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert!(matches!(store.cached_rows().await, Err(StoreError::Tampered { .. })));
}

#[tokio::test]
async fn the_newest_rows_come_first_and_a_changed_clear_time_is_found() {
    let (dir, store) = synced_store().await;
    let newest = store.newest_rows(1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].id, "r2", "r2 was created after r1");
    assert_eq!(newest[0].body, store.cached_rows().await.unwrap()[1].body);
    assert_eq!(store.newest_rows(10).await.unwrap().len(), 2);

    // Moving a row up the list by its clear time is found when it is read.
    let mut db = raw(dir.path()).await;
    sqlx::query("UPDATE queue_rows SET created_at = 1900000000 WHERE id = 'r1'")
        .execute(&mut db)
        .await
        .unwrap();
    assert!(matches!(store.newest_rows(1).await, Err(StoreError::Tampered { .. })));
}

// ---- attack8: open_incidents against a tampered ledger, failures midway, and big batches ----

async fn count(db: &mut SqliteConnection, sql: &str) -> i64 {
    sqlx::Row::get(&sqlx::query(sql).fetch_one(&mut *db).await.unwrap(), 0)
}

async fn meta_value(db: &mut SqliteConnection, name: &str) -> Vec<u8> {
    sqlx::Row::get(
        &sqlx::query("SELECT value FROM meta WHERE name = ?")
            .bind(name)
            .fetch_one(&mut *db)
            .await
            .unwrap(),
        0,
    )
}

/// Every batch refused after the ledger was tampered in some way: nothing written, not the
/// rows, not the audit entries, not the sealed head; and signing stays refused.
#[tokio::test]
async fn attack_open_incidents_refuses_every_tampering_whole() {
    type Tamper = fn(Vec<String>) -> Vec<String>;
    let cases: Vec<(&str, Tamper)> = vec![
        ("delete the first", |ids| vec![format!("DELETE FROM incidents WHERE id = '{}'", ids[0])]),
        ("delete the last", |ids| vec![format!("DELETE FROM incidents WHERE id = '{}'", ids[2])]),
        ("move the first row to the end (reorder)", |ids| {
            vec![format!("UPDATE incidents SET rowid = 1000000 WHERE id = '{}'", ids[0])]
        }),
        ("edit a kind", |ids| {
            vec![format!("UPDATE incidents SET kind = 'other' WHERE id = '{}'", ids[1])]
        }),
        ("edit opened_at", |ids| {
            vec![format!("UPDATE incidents SET opened_at = opened_at + 1 WHERE id = '{}'", ids[1])]
        }),
        ("a row added by hand", |_| {
            vec!["INSERT INTO incidents (id, vault_id, kind, opened_at, sealed_detail) SELECT 'forged', vault_id, kind, opened_at, sealed_detail FROM incidents LIMIT 1".into()]
        }),
        ("a row added at the last rowid", |_| {
            vec!["INSERT INTO incidents (rowid, id, vault_id, kind, opened_at, sealed_detail) SELECT 9223372036854775807, 'forged', vault_id, kind, opened_at, sealed_detail FROM incidents LIMIT 1".into()]
        }),
        ("head deleted", |_| vec!["DELETE FROM meta WHERE name = 'ledger:incidents'".into()]),
        ("head replaced by the signatures ledger's", |_| {
            vec!["UPDATE meta SET value = (SELECT value FROM meta WHERE name = 'ledger:signatures') WHERE name = 'ledger:incidents'".into()]
        }),
        ("head edited", |_| {
            vec!["UPDATE meta SET value = CAST(substr(value, 1, length(value) - 1) || x'00' AS BLOB) WHERE name = 'ledger:incidents'".into()]
        }),
    ];
    for (what, tamper) in cases {
        let (dir, store) = signed_store().await;
        let details = incident_details(3);
        let record = vault();
        let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
        let ids = store.open_incidents(&batch).await.unwrap();
        let mut db = raw(dir.path()).await;
        for sql in tamper(ids.clone()) {
            sqlx::query(&sql).execute(&mut db).await.unwrap();
        }
        let rows = count(&mut db, "SELECT COUNT(*) FROM incidents").await;
        let audits = count(&mut db, "SELECT COUNT(*) FROM audit").await;
        let head =
            count(&mut db, "SELECT COUNT(*) FROM meta WHERE name = 'ledger:incidents'").await;
        let sealed = if head == 1 { meta_value(&mut db, "ledger:incidents").await } else { vec![] };
        for size in [1usize, 2, 3] {
            assert!(store.open_incidents(&batch[..size]).await.is_err(), "{what}: batch of {size}");
        }
        assert!(store.open_incident(&record, "queue", &details[0]).await.is_err(), "{what}: one");
        assert_eq!(count(&mut db, "SELECT COUNT(*) FROM incidents").await, rows, "{what}");
        assert_eq!(count(&mut db, "SELECT COUNT(*) FROM audit").await, audits, "{what}");
        if head == 1 {
            assert_eq!(meta_value(&mut db, "ledger:incidents").await, sealed, "{what}");
        }
        assert!(store.incidents(true).await.is_err(), "{what}: the listing finds it too");
        match store.history(&record, U256::from(9)).await {
            Err(_) => {}
            Ok(history) => panic!("{what}: history reads as {history:?}"),
        }
    }
}

/// A batch failing at its second insert (a vault the store does not know: the foreign key)
/// or at its audit (the audit head tampered) writes nothing, and the store goes on after.
#[tokio::test]
async fn attack_open_incidents_failing_midway_writes_nothing() {
    let (dir, store) = signed_store().await;
    let record = vault();
    let mut stranger = vault();
    stranger.address = address!("2222222222222222222222222222222222222222");
    let detail = serde_json::json!({ "request": "x" });
    let mut db = raw(dir.path()).await;
    let rows = count(&mut db, "SELECT COUNT(*) FROM incidents").await;
    let audits = count(&mut db, "SELECT COUNT(*) FROM audit").await;
    let sealed = meta_value(&mut db, "ledger:incidents").await;
    let batch =
        [(&record, "queue", &detail), (&stranger, "queue", &detail), (&record, "queue", &detail)];
    assert!(store.open_incidents(&batch).await.is_err(), "an unknown vault");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM incidents").await, rows);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM audit").await, audits);
    assert_eq!(meta_value(&mut db, "ledger:incidents").await, sealed);
    // The store still opens incidents afterwards, and the ledger holds.
    let ids = store.open_incidents(&[batch[0], batch[2]]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM incidents").await, rows + 2);
    store.incidents(true).await.unwrap();

    // Now the audit log tampered with: the batch fails after its ledger write, and rolls back.
    let rows = count(&mut db, "SELECT COUNT(*) FROM incidents").await;
    let sealed = meta_value(&mut db, "ledger:incidents").await;
    sqlx::query("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
        .execute(&mut db)
        .await
        .unwrap();
    let audits = count(&mut db, "SELECT COUNT(*) FROM audit").await;
    assert!(store.open_incidents(&[batch[0], batch[2]]).await.is_err(), "the audit head");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM incidents").await, rows);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM audit").await, audits);
    assert_eq!(meta_value(&mut db, "ledger:incidents").await, sealed);
}

/// Thousands of incidents in one batch, then more batches: every one listed and counted.
#[tokio::test]
async fn attack_open_incidents_in_thousands() {
    let (_dir, store) = signed_store().await;
    let record = vault();
    let before = store.history(&record, U256::from(9)).await.unwrap().open_incidents;
    let audited = incidents_audited(&store).await;
    let details = incident_details(3000);
    let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
    let started = std::time::Instant::now();
    let ids = store.open_incidents(&batch).await.unwrap();
    let big = started.elapsed();
    let started = std::time::Instant::now();
    for chunk in batch.chunks(500).take(3) {
        store.open_incidents(chunk).await.unwrap();
    }
    let more = started.elapsed();
    eprintln!("3000 in one batch: {big:?}; 3 x 500 after: {more:?}");
    assert_eq!(ids.len(), 3000);
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3000);
    assert_eq!(store.history(&record, U256::from(9)).await.unwrap().open_incidents, before + 4500);
    assert_eq!(store.incidents(false).await.unwrap().len(), before + 4500);
    assert_eq!(incidents_audited(&store).await, audited + 4500);

    // Cleared in one call, with one read of them, where one at a time re-read them all.
    let open: Vec<String> =
        store.incidents(false).await.unwrap().into_iter().map(|i| i.id).collect();
    let named: Vec<&str> = open.iter().map(String::as_str).collect();
    store.clear_incidents(&named, "the queue lied; reported to its operator").await.unwrap();
    assert_eq!(store.history(&record, U256::from(9)).await.unwrap().open_incidents, 0);
    assert!(store.incidents(false).await.unwrap().is_empty());
}

// ---- attack8 (second round): clearing incidents against a tampered table ----

/// Rebuilds the incidents table as a plain (not STRICT) table with the same rows in the same
/// order, the way someone with the file could, so that its columns take any type.
async fn incidents_without_types(db: &mut SqliteConnection) {
    for statement in [
        "PRAGMA foreign_keys = OFF",
        "CREATE TABLE loose (id TEXT PRIMARY KEY, vault_id TEXT NOT NULL, kind TEXT NOT NULL, \
         opened_at INTEGER NOT NULL, sealed_detail BLOB NOT NULL, cleared_at INTEGER, sealed_note BLOB)",
        "INSERT INTO loose (rowid, id, vault_id, kind, opened_at, sealed_detail, cleared_at, sealed_note) \
         SELECT rowid, id, vault_id, kind, opened_at, sealed_detail, cleared_at, sealed_note FROM incidents ORDER BY rowid",
        "DROP TABLE incidents",
        "ALTER TABLE loose RENAME TO incidents",
    ] {
        sqlx::query(statement).execute(&mut *db).await.unwrap();
    }
}

/// The columns the ledger does not cover (`cleared_at`, `sealed_note`, `sealed_detail`) given
/// another type by hand: reading the incidents is refused as tampering. It must not panic: a
/// panic takes the desktop app down with it instead of showing why signing is refused.
#[tokio::test]
async fn attack_incident_columns_of_another_type_are_refused_not_a_panic() {
    for (what, statement) in [
        ("cleared_at as text", "UPDATE incidents SET cleared_at = 'yesterday' WHERE rowid = (SELECT MIN(rowid) FROM incidents)"),
        ("sealed_note as a number", "UPDATE incidents SET sealed_note = 7 WHERE rowid = (SELECT MIN(rowid) FROM incidents)"),
        ("sealed_detail as a number", "UPDATE incidents SET sealed_detail = 7 WHERE rowid = (SELECT MIN(rowid) FROM incidents)"),
        ("cleared_at as a real", "UPDATE incidents SET cleared_at = 1.5"),
    ] {
        let (dir, store) = signed_store().await;
        let store = std::sync::Arc::new(store);
        let details = incident_details(2);
        let record = vault();
        let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
        let ids = store.open_incidents(&batch).await.unwrap();
        let mut db = raw(dir.path()).await;
        incidents_without_types(&mut db).await;
        // The rebuilt table alone changes nothing the store can see.
        assert_eq!(store.incidents(false).await.unwrap().len(), 2, "{what}: rebuilt");
        sqlx::query(statement).execute(&mut db).await.unwrap();
        let audits = count(&mut db, "SELECT COUNT(*) FROM audit").await;

        let listing = tokio::spawn({
            let store = store.clone();
            async move { store.incidents(true).await.map(|_| ()) }
        });
        let listing = listing.await.unwrap_or_else(|_| panic!("{what}: listing panicked"));
        assert!(listing.is_err(), "{what}: the listing refuses");
        let named: Vec<String> = ids.clone();
        let clearing = tokio::spawn({
            let store = store.clone();
            async move {
                let named: Vec<&str> = named.iter().map(String::as_str).collect();
                store.clear_incidents(&named, "checked").await
            }
        });
        let clearing = clearing.await.unwrap_or_else(|_| panic!("{what}: clearing panicked"));
        assert!(clearing.is_err(), "{what}: clearing refuses");
        let history = tokio::spawn({
            let store = store.clone();
            async move { store.history(&vault(), U256::from(9)).await.map(|_| ()) }
        });
        let history = history.await.unwrap_or_else(|_| panic!("{what}: history panicked"));
        assert!(history.is_err(), "{what}: signing is refused");
        assert_eq!(count(&mut db, "SELECT COUNT(*) FROM audit").await, audits, "{what}");
        assert_eq!(
            count(&mut db, "SELECT COUNT(*) FROM incidents WHERE sealed_note IS NOT NULL AND typeof(sealed_note) = 'blob'").await,
            0,
            "{what}: nothing cleared"
        );
    }
}

/// Clearing several incidents where a later one's write fails (a trigger put in by hand):
/// the transaction rolls back, so none is cleared and no audit entry is left.
#[tokio::test]
async fn attack_clearing_incidents_that_fails_midway_clears_none() {
    let (dir, store) = signed_store().await;
    let details = incident_details(3);
    let record = vault();
    let batch: Vec<_> = details.iter().map(|d| (&record, "queue", d)).collect();
    let ids = store.open_incidents(&batch).await.unwrap();
    let mut db = raw(dir.path()).await;
    sqlx::query(&format!(
        "CREATE TRIGGER refuse BEFORE UPDATE ON incidents WHEN NEW.id = '{}' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
        ids[2]
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let open = store.history(&record, U256::from(9)).await.unwrap().open_incidents;
    let audits = count(&mut db, "SELECT COUNT(*) FROM audit").await;
    let named: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(store.clear_incidents(&named, "checked with the initiator").await.is_err());
    assert_eq!(store.history(&record, U256::from(9)).await.unwrap().open_incidents, open);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM audit").await, audits);
    assert_eq!(
        count(&mut db, "SELECT COUNT(*) FROM incidents WHERE sealed_note IS NOT NULL").await,
        0
    );
    assert!(store.verify_audit().await.unwrap().is_ok());

    // Without the trigger the same call clears all three; named again, they are refused.
    sqlx::query("DROP TRIGGER refuse").execute(&mut db).await.unwrap();
    store.clear_incidents(&named, "checked with the initiator").await.unwrap();
    assert_eq!(store.history(&record, U256::from(9)).await.unwrap().open_incidents, open - 3);
    assert!(matches!(
        store.clear_incidents(&named[..1], "again").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.clear_incidents(&["i-none"], "checked").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// The same for a signature's sealed detail and a ledger's sealed head: a table rebuilt
/// without its types and a number put in is refused, not a panic.
#[tokio::test]
async fn attack_a_sealed_value_made_a_number_in_a_rebuilt_table_is_refused_not_a_panic() {
    for (table, columns, null) in [
        (
            "signatures",
            "vault_id TEXT, nonce TEXT, safe_tx_hash TEXT, signer TEXT, signed_at INTEGER, \
             sealed_detail BLOB, PRIMARY KEY (vault_id, nonce, safe_tx_hash, signer)",
            "UPDATE signatures SET sealed_detail = 7",
        ),
        (
            "meta",
            "name TEXT PRIMARY KEY, value BLOB",
            "UPDATE meta SET value = 7 WHERE name = 'ledger:signatures'",
        ),
    ] {
        let (dir, store) = signed_store().await;
        let store = std::sync::Arc::new(store);
        let mut db = raw(dir.path()).await;
        for statement in [
            "PRAGMA foreign_keys = OFF".to_owned(),
            format!("CREATE TABLE loose ({columns})"),
            format!("INSERT INTO loose SELECT * FROM {table} ORDER BY rowid"),
            format!("DROP TABLE {table}"),
            format!("ALTER TABLE loose RENAME TO {table}"),
        ] {
            sqlx::query(&statement).execute(&mut db).await.unwrap();
        }
        assert!(store.history(&vault(), U256::from(5)).await.is_ok(), "{table}: rebuilt");
        sqlx::query(null).execute(&mut db).await.unwrap();
        let history = tokio::spawn({
            let store = store.clone();
            async move { store.history(&vault(), U256::from(5)).await.map(|_| ()) }
        });
        let history = history.await.unwrap_or_else(|_| panic!("{table}: history panicked"));
        assert!(history.is_err(), "{table}: signing is refused");
    }
}
