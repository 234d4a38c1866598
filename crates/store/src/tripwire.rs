//! What this installation signed, and the incidents the tripwire opened.
//!
//! These rows decide whether a signature may be made, so their plain columns are not trusted
//! on their own:
//!
//! - every row's immutable columns are chained into a *ledger* whose length and head are kept
//!   sealed in `meta` (`ledger:signatures`, `ledger:incidents`), so a deleted, edited or
//!   reordered row is found on the next read;
//! - an incident counts as cleared only when its sealed note (bound to its row) opens; setting
//!   `cleared_at` by hand clears nothing;
//! - the check that no other payload was signed for the nonce runs again inside the
//!   `BEGIN IMMEDIATE` transaction that records the signature, so two processes racing on one
//!   nonce cannot both record one.
//!
//! Limitation: a copy of the whole store taken earlier (or an old `meta` blob written back
//! together with the rows it describes) is a consistent older state, and a store alone cannot
//! tell it from the present. Anchoring the ledger heads outside the store (the queue, or the
//! keyring) would; that is not built yet.

use alloy_primitives::{Address, B256, U256};
use countersign_core::address::checksummed;
use countersign_core::guard::{history_refusals, History, Refusal};
use countersign_core::signature::OwnerSignature;
use countersign_core::vault::VaultRecord;
use countersign_core::InputError;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection};

use crate::records::vault_id;
use crate::seal::{Place, Sealer};
use crate::{now, Store, StoreError};

/// An incident: a tripwire that fired, and whether a person cleared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: String,
    pub vault_id: String,
    pub kind: String,
    pub opened_at: i64,
    pub detail: serde_json::Value,
    pub cleared_at: Option<i64>,
    pub note: Option<String>,
}

/// What [`Store::record_signature`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The signature is recorded and may be handed out.
    Recorded,
    /// Between the review and the record another payload was signed for the nonce, or an
    /// incident opened: the signature must be discarded.
    Refused(Vec<Refusal>),
}

#[derive(Clone, Copy)]
enum Ledger {
    Signatures,
    Incidents,
}

impl Ledger {
    fn meta_name(self) -> &'static str {
        match self {
            Self::Signatures => "ledger:signatures",
            Self::Incidents => "ledger:incidents",
        }
    }

    fn place(self) -> Place<'static> {
        Place { table: "meta", column: "value", row: self.meta_name() }
    }

    /// Every row's immutable columns, in insertion order, with their storage types.
    fn rows_query(self) -> &'static str {
        match self {
            Self::Signatures => {
                "SELECT vault_id AS a, nonce AS b, safe_tx_hash AS c, signer AS d, signed_at AS e, \
                 typeof(vault_id) || typeof(nonce) || typeof(safe_tx_hash) || typeof(signer) || \
                 typeof(signed_at) AS types FROM signatures ORDER BY rowid"
            }
            Self::Incidents => {
                "SELECT id AS a, vault_id AS b, kind AS c, '' AS d, opened_at AS e, \
                 typeof(id) || typeof(vault_id) || typeof(kind) || 'text' || typeof(opened_at) AS types \
                 FROM incidents ORDER BY rowid"
            }
        }
    }
}

/// One ledger row, read with its columns' types checked: the text the ledger hashes is the
/// text the tripwire filters on, so a value stored under another type cannot match one and
/// not the other.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LedgerRow {
    columns: [String; 4],
    at: i64,
}

impl LedgerRow {
    fn key(&self) -> String {
        let [a, b, c, d] = &self.columns;
        format!("{a}/{b}/{c}/{d}/{}", self.at)
    }
}

async fn ledger_rows(
    conn: &mut SqliteConnection,
    ledger: Ledger,
) -> Result<Vec<LedgerRow>, StoreError> {
    let rows = sqlx::query(ledger.rows_query()).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| {
            let types: String = row.try_get("types").unwrap_or_default();
            if types != "texttexttexttextinteger" {
                return Err(tampered("records"));
            }
            let column =
                |name: &str| row.try_get::<String, _>(name).map_err(|_| tampered("records"));
            Ok(LedgerRow {
                columns: [column("a")?, column("b")?, column("c")?, column("d")?],
                at: row.try_get("e").map_err(|_| tampered("records"))?,
            })
        })
        .collect()
}

fn extend(head: [u8; 32], key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"countersign/ledger/v1\0");
    hasher.update(head);
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

fn tampered(what: &str) -> StoreError {
    StoreError::Corrupt {
        detail: format!("{what} were changed outside Countersign; signing is refused"),
    }
}

/// Writes an empty ledger (at store creation).
pub(crate) async fn init_ledgers(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
) -> Result<(), StoreError> {
    for ledger in [Ledger::Signatures, Ledger::Incidents] {
        write_ledger(sealer, conn, ledger, 0, [0u8; 32]).await?;
    }
    Ok(())
}

async fn write_ledger(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
    ledger: Ledger,
    count: u64,
    head: [u8; 32],
) -> Result<(), StoreError> {
    let sealed =
        sealer.seal(ledger.place(), format!("{count}:{}", hex::encode(head)).as_bytes())?;
    sqlx::query(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(ledger.meta_name())
    .bind(sealed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Recomputes a ledger over the table's rows and compares it with the sealed one.
async fn verified_ledger(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
    ledger: Ledger,
) -> Result<Vec<LedgerRow>, StoreError> {
    let what = match ledger {
        Ledger::Signatures => "signature records",
        Ledger::Incidents => "incident records",
    };
    let sealed = sqlx::query("SELECT value FROM meta WHERE name = ?")
        .bind(ledger.meta_name())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| tampered(what))?;
    let sealed: Vec<u8> = sealed.try_get("value").map_err(|_| tampered(what))?;
    let plain = sealer.open(ledger.place(), &sealed)?;
    let text = String::from_utf8_lossy(plain.expose()).into_owned();

    let rows = ledger_rows(conn, ledger).await?;
    let mut head = [0u8; 32];
    for row in &rows {
        head = extend(head, &row.key());
    }
    if text != format!("{}:{}", rows.len(), hex::encode(head)) {
        return Err(tampered(what));
    }
    Ok(rows)
}

impl Store {
    /// What this installation signed for the vault and nonce, and the vault's open incidents.
    pub async fn history(&self, vault: &VaultRecord, nonce: U256) -> Result<History, StoreError> {
        let mut conn = self.pool.acquire().await?;
        history_in(&self.sealer, &mut conn, vault, nonce).await
    }

    /// Records a signature (idempotent for the same payload and signer) with its audit entry,
    /// after checking once more, in the same transaction, that the tripwire still allows it.
    #[expect(clippy::too_many_arguments, reason = "one row's worth of facts")]
    pub async fn record_signature(
        &self,
        vault: &VaultRecord,
        nonce: U256,
        safe_tx_hash: B256,
        is_rejection: bool,
        signer: Address,
        signature: &OwnerSignature,
        shown: &serde_json::Value,
    ) -> Result<Recorded, StoreError> {
        let mut tx = self.begin().await?;
        let history = history_in(&self.sealer, &mut tx, vault, nonce).await?;
        let refusals = history_refusals(&history, safe_tx_hash, nonce, is_rejection);
        if !refusals.is_empty() {
            return Ok(Recorded::Refused(refusals));
        }

        let id = vault_id(vault.chain_id, &vault.address);
        let key = format!("{id}/{nonce}/{safe_tx_hash}/{}", checksummed(&signer));
        let detail = serde_json::json!({ "signature": signature.to_hex(), "shown": shown });
        let place = Place { table: "signatures", column: "sealed_detail", row: &key };
        let sealed = self.sealer.seal(place, detail.to_string().as_bytes())?;
        let signed_at = now();
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO signatures (vault_id, nonce, safe_tx_hash, signer, signed_at, sealed_detail) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(nonce.to_string())
        .bind(safe_tx_hash.to_string())
        .bind(checksummed(&signer))
        .bind(signed_at)
        .bind(sealed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let (count, head) = verified_ledger_after_insert(
                &self.sealer,
                &mut tx,
                Ledger::Signatures,
                &[format!("{key}/{signed_at}")],
            )
            .await?;
            write_ledger(&self.sealer, &mut tx, Ledger::Signatures, count, head).await?;
        }
        let body = serde_json::json!({
            "vault": id, "nonce": nonce.to_string(), "safeTxHash": safe_tx_hash.to_string(),
            "signer": checksummed(&signer), "signature": signature.to_hex(), "repeat": inserted == 0,
        });
        self.audit_in(&mut tx, "signed", &body).await?;
        tx.commit().await?;
        tracing::info!(vault = %id, nonce = %nonce, safe_tx_hash = %safe_tx_hash, "approval signed");
        Ok(Recorded::Recorded)
    }

    /// Opens an incident on a vault; signing there is blocked until it is cleared.
    pub async fn open_incident(
        &self,
        vault: &VaultRecord,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<String, StoreError> {
        let mut ids = self.open_incidents(&[(vault, kind, detail)]).await?;
        ids.pop().ok_or_else(|| tampered("incident records"))
    }

    /// Opens incidents in one transaction, in order, and answers their ids: all or none.
    ///
    /// The incident ledger is checked once for them all, so a sync that opens many (a queue
    /// lying about a whole page) reads the ledger once a page rather than once an incident.
    pub async fn open_incidents(
        &self,
        incidents: &[(&VaultRecord, &str, &serde_json::Value)],
    ) -> Result<Vec<String>, StoreError> {
        if incidents.is_empty() {
            return Ok(Vec::new());
        }
        let opened_at = now();
        let mut rows = Vec::with_capacity(incidents.len());
        for (vault, kind, detail) in incidents {
            let vault = vault_id(vault.chain_id, &vault.address);
            // 64 random bits: ids stay distinct with many incidents (a lying queue can cause
            // thousands), where 32 bits would collide on the primary key and fail the page.
            let mut raw = [0u8; 8];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let id = hex::encode(raw);
            let sealed_body = serde_json::json!({ "vault": vault, "detail": detail });
            let place = Place { table: "incidents", column: "sealed_detail", row: &id };
            let sealed = self.sealer.seal(place, sealed_body.to_string().as_bytes())?;
            rows.push((id, vault, *kind, detail, sealed));
        }
        let mut tx = self.begin().await?;
        for (id, vault, kind, _, sealed) in &rows {
            sqlx::query("INSERT INTO incidents (id, vault_id, kind, opened_at, sealed_detail) VALUES (?, ?, ?, ?, ?)")
                .bind(id)
                .bind(vault)
                .bind(kind)
                .bind(opened_at)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        let keys: Vec<String> = rows
            .iter()
            .map(|(id, vault, kind, _, _)| format!("{id}/{vault}/{kind}//{opened_at}"))
            .collect();
        let (count, head) =
            verified_ledger_after_insert(&self.sealer, &mut tx, Ledger::Incidents, &keys).await?;
        write_ledger(&self.sealer, &mut tx, Ledger::Incidents, count, head).await?;
        for (id, vault, kind, detail, _) in &rows {
            let body =
                serde_json::json!({ "id": id, "vault": vault, "kind": kind, "detail": detail });
            self.audit_in(&mut tx, "incident_opened", &body).await?;
        }
        tx.commit().await?;
        for (id, vault, kind, _, _) in &rows {
            tracing::warn!(incident = %id, vault = %vault, kind, "incident opened");
        }
        Ok(rows.into_iter().map(|(id, ..)| id).collect())
    }

    /// Every incident (only the open ones unless `include_cleared`), checked against the ledger.
    pub async fn incidents(&self, include_cleared: bool) -> Result<Vec<Incident>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let all = incidents_in(&self.sealer, &mut conn).await?;
        Ok(all.into_iter().filter(|i| include_cleared || i.note.is_none()).collect())
    }

    /// Clears an open incident with a person's note.
    pub async fn clear_incident(&self, id: &str, note: &str) -> Result<(), StoreError> {
        self.clear_incidents(&[id], note).await
    }

    /// Clears open incidents with one person's note, in one transaction with one read of
    /// the incidents: every one of them, or none when one is not open (the error names it).
    /// An id named twice is cleared once.
    pub async fn clear_incidents(&self, ids: &[&str], note: &str) -> Result<(), StoreError> {
        if !note.chars().any(char::is_alphanumeric) {
            return Err(
                InputError::new("note", "clearing an incident needs a note saying why").into()
            );
        }
        if ids.is_empty() {
            return Err(InputError::new("id", "name the incident to clear").into());
        }
        let mut tx = self.begin().await?;
        let open: std::collections::HashSet<String> = incidents_in(&self.sealer, &mut tx)
            .await?
            .into_iter()
            .filter(|i| i.note.is_none())
            .map(|i| i.id)
            .collect();
        let mut clearing = Vec::with_capacity(ids.len());
        // Named ones seen, for the duplicates: a set, or naming thousands would be quadratic.
        let mut named = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if !open.contains(*id) {
                return Err(StoreError::NotFound { what: format!("open incident {id}") });
            }
            if named.insert(*id) {
                clearing.push(*id);
            }
        }
        let cleared_at = now();
        let sealed_note = serde_json::json!({ "note": note, "clearedAt": cleared_at }).to_string();
        for id in &clearing {
            let place = Place { table: "incidents", column: "sealed_note", row: id };
            let sealed = self.sealer.seal(place, sealed_note.as_bytes())?;
            sqlx::query("UPDATE incidents SET cleared_at = ?, sealed_note = ? WHERE id = ?")
                .bind(cleared_at)
                .bind(sealed)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
            let body = serde_json::json!({ "id": id, "note": note });
            self.audit_in(&mut tx, "incident_cleared", &body).await?;
        }
        tx.commit().await?;
        tracing::info!(incidents = ?clearing, "incidents cleared");
        Ok(())
    }
}

/// The ledger as it must be after `new_keys` were just inserted, in order: the old one
/// checked, extended.
async fn verified_ledger_after_insert(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
    ledger: Ledger,
    new_keys: &[String],
) -> Result<(u64, [u8; 32]), StoreError> {
    // Recompute over every row but the newest, which must be the ones just inserted.
    let rows = ledger_rows(conn, ledger).await?;
    let keys: Vec<String> = rows.iter().map(LedgerRow::key).collect();
    let Some(old) = keys.len().checked_sub(new_keys.len()) else {
        return Err(tampered("records"));
    };
    if keys[old..] != *new_keys {
        return Err(tampered("records"));
    }
    let sealed = sqlx::query("SELECT value FROM meta WHERE name = ?")
        .bind(ledger.meta_name())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| tampered("records"))?;
    let sealed: Vec<u8> = sealed.try_get("value").map_err(|_| tampered("records"))?;
    let plain = sealer.open(ledger.place(), &sealed)?;
    let mut head = [0u8; 32];
    for key in &keys[..old] {
        head = extend(head, key);
    }
    if String::from_utf8_lossy(plain.expose()) != format!("{old}:{}", hex::encode(head)) {
        return Err(tampered("records"));
    }
    for key in new_keys {
        head = extend(head, key);
    }
    Ok((keys.len() as u64, head))
}

async fn history_in(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
    vault: &VaultRecord,
    nonce: U256,
) -> Result<History, StoreError> {
    let rows = verified_ledger(sealer, conn, Ledger::Signatures).await?;
    let id = vault_id(vault.chain_id, &vault.address);
    let nonce_text = nonce.to_string();
    let mut signed_for_nonce = Vec::new();
    for row in rows.iter().filter(|r| r.columns[0] == id && r.columns[1] == nonce_text) {
        let [_, _, hash, signer] = &row.columns;
        let detail = sqlx::query(
            "SELECT sealed_detail FROM signatures WHERE vault_id = ? AND nonce = ? AND safe_tx_hash = ? AND signer = ?",
        )
        .bind(&id)
        .bind(&nonce_text)
        .bind(hash)
        .bind(signer)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| tampered("signature records"))?;
        let key = format!("{id}/{nonce_text}/{hash}/{signer}");
        let place = Place { table: "signatures", column: "sealed_detail", row: &key };
        let detail: Vec<u8> =
            detail.try_get("sealed_detail").map_err(|_| tampered("signature records"))?;
        sealer.open(place, &detail)?;
        let hash: B256 = hash.parse().map_err(|_| tampered("signature records"))?;
        if !signed_for_nonce.contains(&hash) {
            signed_for_nonce.push(hash);
        }
    }
    let open_incidents = incidents_in(sealer, conn)
        .await?
        .iter()
        .filter(|incident| incident.vault_id == id && incident.note.is_none())
        .count();
    Ok(History { signed_for_nonce, open_incidents })
}

async fn incidents_in(
    sealer: &Sealer,
    conn: &mut SqliteConnection,
) -> Result<Vec<Incident>, StoreError> {
    let rows = verified_ledger(sealer, conn, Ledger::Incidents).await?;
    // Every row in one read, matched to the ledger's by id.
    let mut stored: std::collections::HashMap<String, sqlx::sqlite::SqliteRow> = sqlx::query(
        "SELECT id, vault_id, kind, opened_at, sealed_detail, cleared_at, sealed_note FROM incidents",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter_map(|row| Some((row.try_get::<String, _>("id").ok()?, row)))
    .collect();
    let mut out = Vec::with_capacity(rows.len());
    for ledger_row in &rows {
        let [id, vault_id, kind, _] = &ledger_row.columns;
        let row = stored.remove(id).ok_or_else(|| tampered("incident records"))?;
        let incident = open_incident_row(sealer, &row)?;
        if &incident.vault_id != vault_id || &incident.kind != kind {
            return Err(tampered("incident records"));
        }
        out.push(incident);
    }
    out.sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
    Ok(out)
}

fn open_incident_row(
    sealer: &Sealer,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<Incident, StoreError> {
    // A column of another type (the table rebuilt by hand without its types) is tampering,
    // refused like any other: `Row::get` would panic on it.
    fn column<'r, T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
        row: &'r sqlx::sqlite::SqliteRow,
        name: &str,
    ) -> Result<T, StoreError> {
        row.try_get(name).map_err(|_| tampered("incident records"))
    }
    let id: String = column(row, "id")?;
    let vault_id: String = column(row, "vault_id")?;
    let place = Place { table: "incidents", column: "sealed_detail", row: &id };
    let body = sealer.open(place, &column::<Vec<u8>>(row, "sealed_detail")?)?;
    let body: serde_json::Value =
        serde_json::from_slice(body.expose()).map_err(|_| tampered("incident records"))?;
    if body["vault"].as_str() != Some(vault_id.as_str()) {
        return Err(tampered("incident records"));
    }
    // Cleared only by a sealed note bound to this row; `cleared_at` alone is display.
    let (note, cleared_at) = match column::<Option<Vec<u8>>>(row, "sealed_note")? {
        None => (None, None),
        Some(sealed) => {
            let place = Place { table: "incidents", column: "sealed_note", row: &id };
            let plain = sealer.open(place, &sealed)?;
            let note: serde_json::Value =
                serde_json::from_slice(plain.expose()).map_err(|_| tampered("incident records"))?;
            (note["note"].as_str().map(str::to_owned), note["clearedAt"].as_i64())
        }
    };
    let shown_cleared_at: Option<i64> = column(row, "cleared_at")?;
    Ok(Incident {
        id: id.clone(),
        vault_id,
        kind: column(row, "kind")?,
        opened_at: column(row, "opened_at")?,
        detail: body["detail"].clone(),
        cleared_at: cleared_at.or(shown_cleared_at).filter(|_| note.is_some()),
        note,
    })
}
