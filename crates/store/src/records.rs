//! Keys, vault records, the policy, signatures and incidents: each read and written whole,
//! each sensitive column sealed to its row.

use alloy_primitives::{Address, B256, U256};
use countersign_core::address::{checksummed, parse_address};
use countersign_core::guard::History;
use countersign_core::policy::Policy;
use countersign_core::secret::SecretBytes;
use countersign_core::signature::OwnerSignature;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_core::InputError;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::seal::Place;
use crate::{now, Store, StoreError};

/// A key's public facts; the secret stays sealed until [`Store::key_secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub address: Address,
    pub kind: String,
    pub label: Option<String>,
    pub created_at: i64,
}

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

/// The stored form of a vault record (the row is sealed as a whole).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VaultRow {
    chain_id: u64,
    address: String,
    safe_version: String,
    owners: Vec<String>,
    threshold: Option<u32>,
    next_nonce: Option<String>,
    label: Option<String>,
}

pub(crate) fn vault_id(chain_id: u64, address: &Address) -> String {
    format!("{chain_id}:{}", hex::encode(address.as_slice()))
}

fn key_id(address: &Address) -> String {
    hex::encode(address.as_slice())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt { detail: format!("{what} could not be read back") }
}

impl VaultRow {
    fn from_record(record: &VaultRecord) -> Self {
        Self {
            chain_id: record.chain_id,
            address: checksummed(&record.address),
            safe_version: record.version.to_string(),
            owners: record.owners.iter().map(checksummed).collect(),
            threshold: record.threshold,
            next_nonce: record.next_nonce.map(|n| n.to_string()),
            label: record.label.clone(),
        }
    }

    fn into_record(self) -> Result<VaultRecord, InputError> {
        let owners = self
            .owners
            .iter()
            .enumerate()
            .map(|(i, o)| parse_address(&format!("owners[{i}]"), o).map(|p| p.address))
            .collect::<Result<Vec<_>, _>>()?;
        let next_nonce = match self.next_nonce {
            None => None,
            Some(text) => Some(
                U256::from_str_radix(&text, 10)
                    .map_err(|_| InputError::new("nextNonce", "not a number"))?,
            ),
        };
        Ok(VaultRecord {
            chain_id: self.chain_id,
            address: parse_address("address", &self.address)?.address,
            version: SafeVersion::parse("safeVersion", &self.safe_version)?,
            owners,
            threshold: self.threshold,
            next_nonce,
            label: self.label,
        })
    }
}

fn vault_json(record: &VaultRecord) -> serde_json::Value {
    serde_json::to_value(VaultRow::from_record(record)).unwrap_or_default()
}

impl Store {
    // Keys.

    /// Seals and stores a key's secret.
    pub async fn add_key(
        &self,
        address: Address,
        kind: &str,
        label: Option<&str>,
        secret: &SecretBytes,
    ) -> Result<(), StoreError> {
        let id = key_id(&address);
        let place = Place { table: "keys", column: "sealed_secret", row: &id };
        let sealed = self.sealer.seal(place, secret.expose())?;
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM keys WHERE id = ?")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Duplicate { what: format!("key {}", checksummed(&address)) });
        }
        if let Some(label) = label {
            let taken = sqlx::query("SELECT 1 FROM keys WHERE label = ?")
                .bind(label)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                let what = format!("a key labelled {label:?}");
                return Err(StoreError::Duplicate { what });
            }
        }
        sqlx::query("INSERT INTO keys (id, address, kind, label, created_at, sealed_secret) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(checksummed(&address))
            .bind(kind)
            .bind(label)
            .bind(now())
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        let body =
            serde_json::json!({ "address": checksummed(&address), "kind": kind, "label": label });
        self.audit_in(&mut tx, "key_added", &body).await?;
        tx.commit().await?;
        tracing::info!(address = %checksummed(&address), kind, "key added");
        Ok(())
    }

    pub async fn keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, kind, label, created_at FROM keys ORDER BY created_at, address",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let text: String = row.get("address");
                Ok(KeyInfo {
                    address: parse_address("keys.address", &text)?.address,
                    kind: row.get("kind"),
                    label: row.get("label"),
                    created_at: row.get("created_at"),
                })
            })
            .collect()
    }

    /// Opens a key's sealed secret.
    pub async fn key_secret(&self, address: &Address) -> Result<SecretBytes, StoreError> {
        let id = key_id(address);
        let row = sqlx::query("SELECT sealed_secret FROM keys WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: format!("key {}", checksummed(address)),
        })?;
        let sealed: Vec<u8> = row.get("sealed_secret");
        self.sealer.open(Place { table: "keys", column: "sealed_secret", row: &id }, &sealed)
    }

    // Vaults.

    /// Pins a vault record. An existing record is never overwritten by this call.
    pub async fn add_vault(&self, record: &VaultRecord) -> Result<(), StoreError> {
        let id = vault_id(record.chain_id, &record.address);
        let body = vault_json(record);
        let place = Place { table: "vaults", column: "sealed_record", row: &id };
        let sealed = self.sealer.seal(place, body.to_string().as_bytes())?;
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM vaults WHERE id = ?")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            let what =
                format!("vault {} on chain {}", checksummed(&record.address), record.chain_id);
            return Err(StoreError::Duplicate { what });
        }
        sqlx::query("INSERT INTO vaults (id, chain_id, address, created_at, sealed_record) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(record.chain_id as i64)
            .bind(checksummed(&record.address))
            .bind(now())
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        self.audit_in(&mut tx, "vault_added", &body).await?;
        tx.commit().await?;
        tracing::info!(vault = %id, "vault pinned");
        Ok(())
    }

    /// Records a new next nonce for a pinned vault (after a transaction executed).
    pub async fn set_next_nonce(
        &self,
        chain_id: u64,
        address: &Address,
        next: U256,
    ) -> Result<VaultRecord, StoreError> {
        let mut record = self.vault(chain_id, address).await?;
        let previous = record.next_nonce;
        if previous.is_some_and(|pinned| next < pinned) {
            // A lower next nonce would make used nonces signable again.
            let problem = "the next nonce only moves forward; it is pinned higher already";
            return Err(InputError::new("nextNonce", problem).into());
        }
        record.next_nonce = Some(next);
        let id = vault_id(chain_id, address);
        let body = vault_json(&record);
        let place = Place { table: "vaults", column: "sealed_record", row: &id };
        let sealed = self.sealer.seal(place, body.to_string().as_bytes())?;
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE vaults SET sealed_record = ? WHERE id = ?")
            .bind(sealed)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let change = serde_json::json!({
            "vault": id, "from": previous.map(|n| n.to_string()), "to": next.to_string()
        });
        self.audit_in(&mut tx, "vault_next_nonce", &change).await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn vault(&self, chain_id: u64, address: &Address) -> Result<VaultRecord, StoreError> {
        let id = vault_id(chain_id, address);
        let row = sqlx::query("SELECT sealed_record FROM vaults WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: format!("vault {} on chain {chain_id}", checksummed(address)),
        })?;
        self.open_vault(&id, &row.get::<Vec<u8>, _>("sealed_record"))
    }

    /// Every pinned vault, optionally only those at `address` (on any chain).
    pub async fn vaults(&self, address: Option<&Address>) -> Result<Vec<VaultRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, address, sealed_record FROM vaults ORDER BY chain_id, address")
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::new();
        for row in rows {
            let record = self
                .open_vault(&row.get::<String, _>("id"), &row.get::<Vec<u8>, _>("sealed_record"))?;
            if address.is_none_or(|a| *a == record.address) {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn open_vault(&self, id: &str, sealed: &[u8]) -> Result<VaultRecord, StoreError> {
        let plain = self
            .sealer
            .open(Place { table: "vaults", column: "sealed_record", row: id }, sealed)?;
        let row: VaultRow =
            serde_json::from_slice(plain.expose()).map_err(|_| corrupt("a vault record"))?;
        Ok(row.into_record()?)
    }

    // Policy.

    /// The local policy, or the strict default when none was set.
    pub async fn policy(&self) -> Result<Policy, StoreError> {
        let row = sqlx::query("SELECT sealed_body FROM policy WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Policy::default());
        };
        let plain = self.sealer.open(POLICY, &row.get::<Vec<u8>, _>("sealed_body"))?;
        Ok(Policy::from_json(plain.expose())?)
    }

    pub async fn set_policy(&self, policy: &Policy) -> Result<(), StoreError> {
        let text = policy.to_json();
        let sealed = self.sealer.seal(POLICY, text.as_bytes())?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO policy (id, updated_at, sealed_body) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, sealed_body = excluded.sealed_body",
        )
        .bind(now())
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        self.audit_in(&mut tx, "policy_set", &body).await?;
        tx.commit().await?;
        tracing::info!("policy replaced");
        Ok(())
    }

    // Signatures and the tripwire.

    /// What this installation signed for the vault and nonce, and the vault's open incidents.
    pub async fn history(&self, vault: &VaultRecord, nonce: U256) -> Result<History, StoreError> {
        let id = vault_id(vault.chain_id, &vault.address);
        let rows = sqlx::query(
            "SELECT DISTINCT safe_tx_hash FROM signatures WHERE vault_id = ? AND nonce = ?",
        )
        .bind(&id)
        .bind(nonce.to_string())
        .fetch_all(&self.pool)
        .await?;
        let signed_for_nonce = rows
            .into_iter()
            .map(|row| {
                row.get::<String, _>("safe_tx_hash")
                    .parse::<B256>()
                    .map_err(|_| corrupt("a signature"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let open: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM incidents WHERE vault_id = ? AND cleared_at IS NULL",
        )
        .bind(&id)
        .fetch_one(&self.pool)
        .await?
        .get("n");
        Ok(History { signed_for_nonce, open_incidents: open as usize })
    }

    /// Records a signature (idempotent for the same payload and signer) with its audit entry.
    pub async fn record_signature(
        &self,
        vault: &VaultRecord,
        nonce: U256,
        safe_tx_hash: B256,
        signer: Address,
        signature: &OwnerSignature,
        shown: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let id = vault_id(vault.chain_id, &vault.address);
        let row = format!("{id}/{nonce}/{safe_tx_hash}/{}", key_id(&signer));
        let detail = serde_json::json!({ "signature": signature.to_hex(), "shown": shown });
        let place = Place { table: "signatures", column: "sealed_detail", row: &row };
        let sealed = self.sealer.seal(place, detail.to_string().as_bytes())?;
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO signatures (vault_id, nonce, safe_tx_hash, signer, signed_at, sealed_detail) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(nonce.to_string())
        .bind(safe_tx_hash.to_string())
        .bind(checksummed(&signer))
        .bind(now())
        .bind(sealed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let body = serde_json::json!({
            "vault": id, "nonce": nonce.to_string(), "safeTxHash": safe_tx_hash.to_string(),
            "signer": checksummed(&signer), "signature": signature.to_hex(), "repeat": inserted == 0,
        });
        self.audit_in(&mut tx, "signed", &body).await?;
        tx.commit().await?;
        tracing::info!(vault = %id, nonce = %nonce, safe_tx_hash = %safe_tx_hash, "approval signed");
        Ok(())
    }

    // Incidents.

    /// Opens an incident on a vault; signing there is blocked until it is cleared.
    pub async fn open_incident(
        &self,
        vault: &VaultRecord,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<String, StoreError> {
        let vault = vault_id(vault.chain_id, &vault.address);
        let mut raw = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let place = Place { table: "incidents", column: "sealed_detail", row: &id };
        let sealed = self.sealer.seal(place, detail.to_string().as_bytes())?;
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO incidents (id, vault_id, kind, opened_at, sealed_detail) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(&vault)
            .bind(kind)
            .bind(now())
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        let body = serde_json::json!({ "id": id, "vault": vault, "kind": kind, "detail": detail });
        self.audit_in(&mut tx, "incident_opened", &body).await?;
        tx.commit().await?;
        tracing::warn!(incident = %id, vault = %vault, kind, "incident opened");
        Ok(id)
    }

    pub async fn incidents(&self, include_cleared: bool) -> Result<Vec<Incident>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, vault_id, kind, opened_at, sealed_detail, cleared_at, sealed_note FROM incidents \
             WHERE ? OR cleared_at IS NULL ORDER BY opened_at, id",
        )
        .bind(include_cleared)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| self.open_incident_row(&row)).collect()
    }

    fn open_incident_row(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Incident, StoreError> {
        let id: String = row.get("id");
        let detail_place = Place { table: "incidents", column: "sealed_detail", row: &id };
        let detail = self.sealer.open(detail_place, &row.get::<Vec<u8>, _>("sealed_detail"))?;
        let note = match row.get::<Option<Vec<u8>>, _>("sealed_note") {
            None => None,
            Some(sealed) => {
                let place = Place { table: "incidents", column: "sealed_note", row: &id };
                let plain = self.sealer.open(place, &sealed)?;
                Some(String::from_utf8_lossy(plain.expose()).into_owned())
            }
        };
        Ok(Incident {
            id: id.clone(),
            vault_id: row.get("vault_id"),
            kind: row.get("kind"),
            opened_at: row.get("opened_at"),
            detail: serde_json::from_slice(detail.expose()).map_err(|_| corrupt("an incident"))?,
            cleared_at: row.get("cleared_at"),
            note,
        })
    }

    /// Clears an open incident with a person's note.
    pub async fn clear_incident(&self, id: &str, note: &str) -> Result<(), StoreError> {
        if note.trim().is_empty() {
            return Err(
                InputError::new("note", "clearing an incident needs a note saying why").into()
            );
        }
        let place = Place { table: "incidents", column: "sealed_note", row: id };
        let sealed = self.sealer.seal(place, note.as_bytes())?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query("UPDATE incidents SET cleared_at = ?, sealed_note = ? WHERE id = ? AND cleared_at IS NULL")
            .bind(now())
            .bind(sealed)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound { what: format!("open incident {id}") });
        }
        let body = serde_json::json!({ "id": id, "note": note });
        self.audit_in(&mut tx, "incident_cleared", &body).await?;
        tx.commit().await?;
        tracing::info!(incident = %id, "incident cleared");
        Ok(())
    }
}

const POLICY: Place<'static> = Place { table: "policy", column: "sealed_body", row: "1" };
