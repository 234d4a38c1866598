//! Keys, vault records, the policy, signatures and incidents: each read and written whole,
//! each sensitive column sealed to its row.

use alloy_primitives::{Address, U256};
use countersign_core::address::{checksummed, parse_address};
use countersign_core::policy::Policy;
use countersign_core::secret::SecretBytes;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_core::InputError;
use serde::Deserialize;
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

/// The stored form of a vault record, read back (the row is sealed as a whole; it is written
/// as [`VaultRecord::to_json`]).
#[derive(Deserialize)]
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

/// The audit entries that change a vault record.
const VAULT_CHANGES: &str = "kind IN ('vault_added', 'vault_next_nonce', 'vault_replaced')";

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
            let address_like = label.trim_start_matches("0x").len() == 40
                && label.trim_start_matches("0x").bytes().all(|b| b.is_ascii_hexdigit());
            if label.trim().is_empty() || address_like || label.chars().any(char::is_control) {
                let problem = "a label is a visible name that is not itself an address";
                return Err(InputError::new("label", problem).into());
            }
            let taken = sqlx::query("SELECT 1 FROM keys WHERE lower(label) = lower(?)")
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
        let body = record.to_json();
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
        let entry = serde_json::json!({ "vaultId": id, "record": body });
        self.audit_in(&mut tx, "vault_added", &entry).await?;
        tx.commit().await?;
        tracing::info!(vault = %id, "vault pinned");
        Ok(())
    }

    /// Replaces a pinned vault record, explicitly accepted by the approver (for example the
    /// queue's record after an owner change). The next nonce never moves back.
    pub async fn replace_vault(
        &self,
        record: &VaultRecord,
        accepted_from: &str,
    ) -> Result<VaultRecord, StoreError> {
        let pinned = self.vault(record.chain_id, &record.address).await?;
        let mut record = record.clone();
        record.label = pinned.label.clone();
        record.next_nonce = match (pinned.next_nonce, record.next_nonce) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let entry =
            serde_json::json!({ "previous": pinned.to_json(), "acceptedFrom": accepted_from });
        self.rewrite_vault(&record, "vault_replaced", entry).await?;
        tracing::info!(vault = %vault_id(record.chain_id, &record.address), "vault record replaced by the approver");
        Ok(record)
    }

    /// Seals and writes an existing vault record, with its audit entry: `entry` plus the
    /// `vaultId` and the `record`, which reads check the sealed value against.
    async fn rewrite_vault(
        &self,
        record: &VaultRecord,
        kind: &str,
        mut entry: serde_json::Value,
    ) -> Result<(), StoreError> {
        let id = vault_id(record.chain_id, &record.address);
        let body = record.to_json();
        let place = Place { table: "vaults", column: "sealed_record", row: &id };
        let sealed = self.sealer.seal(place, body.to_string().as_bytes())?;
        entry["vaultId"] = serde_json::json!(id);
        entry["record"] = body;
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE vaults SET sealed_record = ? WHERE id = ?")
            .bind(sealed)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        self.audit_in(&mut tx, kind, &entry).await?;
        tx.commit().await?;
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
        let change = serde_json::json!({
            "from": previous.map(|n| n.to_string()), "to": next.to_string(),
        });
        self.rewrite_vault(&record, "vault_next_nonce", change).await?;
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
        self.open_vault(&id, &row.get::<Vec<u8>, _>("sealed_record")).await
    }

    /// Every pinned vault, optionally only those at `address` (on any chain).
    pub async fn vaults(&self, address: Option<&Address>) -> Result<Vec<VaultRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, address, sealed_record FROM vaults ORDER BY chain_id, address")
                .fetch_all(&self.pool)
                .await?;
        // The audit log is read once for all of them, not searched once a vault.
        let mut logged: std::collections::HashMap<String, serde_json::Value> = Default::default();
        let entries =
            sqlx::query(&format!("SELECT body FROM audit WHERE {VAULT_CHANGES} ORDER BY seq"))
                .fetch_all(&self.pool)
                .await?;
        for entry in entries {
            if let Ok(body) =
                serde_json::from_str::<serde_json::Value>(&entry.get::<String, _>("body"))
            {
                if let Some(id) = body["vaultId"].as_str() {
                    logged.insert(id.to_owned(), body);
                }
            }
        }
        let mut out = Vec::new();
        for row in rows {
            let id = row.get::<String, _>("id");
            let record =
                self.check_vault(&id, &row.get::<Vec<u8>, _>("sealed_record"), logged.get(&id))?;
            if address.is_none_or(|a| *a == record.address) {
                out.push(record);
            }
        }
        Ok(out)
    }

    async fn open_vault(&self, id: &str, sealed: &[u8]) -> Result<VaultRecord, StoreError> {
        let logged = self.last_logged(VAULT_CHANGES, Some(id)).await?;
        self.check_vault(id, sealed, logged.as_ref())
    }

    /// Opens a sealed vault record and checks it against its last change in the audit log.
    fn check_vault(
        &self,
        id: &str,
        sealed: &[u8],
        logged: Option<&serde_json::Value>,
    ) -> Result<VaultRecord, StoreError> {
        let plain = self
            .sealer
            .open(Place { table: "vaults", column: "sealed_record", row: id }, sealed)?;
        self.matches_log(plain.expose(), logged.map(|body| &body["record"]), "a vault record")?;
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
            // The store writes the default policy when it is created, so a missing row means
            // someone deleted it: falling back to a default would undo the approver's choice.
            let problem = "the policy row is missing; it was deleted outside Countersign";
            return Err(StoreError::Corrupt { detail: problem.into() });
        };
        let plain = self.sealer.open(POLICY, &row.get::<Vec<u8>, _>("sealed_body"))?;
        let logged = self.last_logged("kind IN ('store_created', 'policy_set')", None).await?;
        self.matches_log(
            plain.expose(),
            logged.as_ref().map(|body| &body["policy"]),
            "the policy",
        )?;
        Ok(Policy::from_json(plain.expose())?)
    }

    /// The body of the newest audit entry that matches `condition` (and names `vault_id`).
    async fn last_logged(
        &self,
        condition: &str,
        vault_id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let pattern =
            vault_id.map(|id| format!("%\"vaultId\":\"{id}\"%")).unwrap_or_else(|| "%".into());
        let query = format!(
            "SELECT body FROM audit WHERE {condition} AND body LIKE ? ORDER BY seq DESC LIMIT 1"
        );
        let row = sqlx::query(&query).bind(pattern).fetch_optional(&self.pool).await?;
        Ok(row.and_then(|row| serde_json::from_str(&row.get::<String, _>("body")).ok()))
    }

    /// A sealed record must equal what the audit log last recorded for it: putting an older
    /// sealed value back into its row is then found, unless the log is rolled back too, which
    /// the sealed audit head catches at the next write.
    fn matches_log(
        &self,
        plain: &[u8],
        logged: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<(), StoreError> {
        let stored: serde_json::Value = serde_json::from_slice(plain).map_err(|_| corrupt(what))?;
        if logged != Some(&stored) {
            let detail = format!("{what} differs from its last change in the audit log; it was replaced outside Countersign");
            return Err(StoreError::Corrupt { detail });
        }
        Ok(())
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
        self.audit_in(&mut tx, "policy_set", &serde_json::json!({ "policy": body })).await?;
        tx.commit().await?;
        tracing::info!("policy replaced");
        Ok(())
    }
}

pub(crate) const POLICY: Place<'static> =
    Place { table: "policy", column: "sealed_body", row: "1" };
