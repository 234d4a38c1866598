//! The queue's rules: who may do what, and what a request, an approval and a rejection must
//! satisfy. Every change is one transaction with its audit entry.

use std::str::FromStr;

use alloy_primitives::{Address, B256, U256};
use axum::http::StatusCode;
use base64::Engine;
use countersign_core::address::{checksummed, parse_address};
use countersign_core::audit::{
    entry_hash, verify_chain, AuditEntry, ChainBreak, ChainReport, QUEUE,
};
use countersign_core::guard::{review, History};
use countersign_core::intent::{check_request_id, intent_digest};
use countersign_core::policy::Policy;
use countersign_core::request::{JsonObject, SafeTxRequest};
use countersign_core::signature::{OwnerSignature, SignatureProblem};
use countersign_core::tokens::TokenList;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::db::{int, optional_text, text, Db};
use crate::error::ApiError;

/// Member roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Approver,
    Viewer,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Initiator => "initiator",
            Self::Approver => "approver",
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Initiator, Self::Approver, Self::Viewer, Self::Admin]
            .into_iter()
            .find(|r| r.name() == text)
    }
}

/// The member a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub address: Option<Address>,
}

impl Member {
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        Err(ApiError::forbidden(format!(
            "this needs the role {}; you are {}",
            names.join(" or "),
            self.role.name()
        )))
    }

    pub fn view(&self) -> Value {
        json!({ "id": self.id, "name": self.name, "role": self.role.name(),
                "address": self.address.as_ref().map(checksummed) })
    }
}

/// Session lifetime.
pub const SESSION_SECONDS: i64 = 15 * 60;
/// How far a request's `createdAt` may be from the queue's clock.
pub const CLOCK_SKEW_SECONDS: i64 = 300;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Keys and tokens are 256 random bits, so a plain SHA-256 is enough to store them.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn vault_id(chain_id: u64, address: &Address) -> String {
    format!("{chain_id}:{}", checksummed(address))
}

/// Appends an entry to the queue's audit chain inside `tx`.
pub async fn audit(
    tx: &mut Transaction<'static, Any>,
    kind: &str,
    body: &Value,
) -> Result<(), ApiError> {
    let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let (prev_seq, prev_hash) = match last {
        Some(row) => (
            int(&row, "seq"),
            countersign_core::audit::decode(&text(&row, "hash")).unwrap_or([0; 32]),
        ),
        None => (0, [0u8; 32]),
    };
    let seq = prev_seq + 1;
    let at = now();
    let body = body.to_string();
    let hash = entry_hash(QUEUE, &prev_hash, seq as u64, at, kind, &body);
    sqlx::query(
        "INSERT INTO audit (seq, at, kind, body, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(seq)
    .bind(at)
    .bind(kind.to_owned())
    .bind(body)
    .bind(hex::encode(prev_hash))
    .bind(hex::encode(hash))
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

fn db(error: sqlx::Error) -> ApiError {
    ApiError::from(crate::db::db_error(error))
}

/// The whole audit log, oldest first.
pub async fn audit_entries(store: &Db) -> Result<Vec<AuditEntry>, ApiError> {
    let rows = sqlx::query("SELECT seq, at, kind, body, prev_hash, hash FROM audit ORDER BY seq")
        .fetch_all(&store.pool)
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|row| AuditEntry {
            seq: int(row, "seq") as u64,
            at: int(row, "at"),
            kind: text(row, "kind"),
            body: text(row, "body"),
            prev_hash: text(row, "prev_hash"),
            hash: text(row, "hash"),
        })
        .collect())
}

pub async fn verify_audit(store: &Db) -> Result<Result<ChainReport, ChainBreak>, ApiError> {
    Ok(verify_chain(QUEUE, &audit_entries(store).await?))
}

// Members, keys and sessions.

/// On an empty queue: an admin member and its API key, returned once.
pub async fn bootstrap(store: &Db) -> Result<Option<String>, ApiError> {
    let (mut tx, _writer) = store.begin().await?;
    let any =
        sqlx::query("SELECT id FROM members LIMIT 1").fetch_optional(&mut *tx).await.map_err(db)?;
    if any.is_some() {
        return Ok(None);
    }
    let id = "admin".to_owned();
    sqlx::query(
        "INSERT INTO members (id, name, role, address, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.clone())
    .bind("first admin".to_owned())
    .bind("admin".to_owned())
    .bind(None::<String>)
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let key = insert_api_key(&mut tx, &id).await?;
    audit(&mut tx, "bootstrap", &json!({ "member": id })).await?;
    tx.commit().await.map_err(db)?;
    Ok(Some(key))
}

async fn insert_api_key(
    tx: &mut Transaction<'static, Any>,
    member_id: &str,
) -> Result<String, ApiError> {
    let key = random_token("csk_");
    sqlx::query("INSERT INTO api_keys (key_hash, member_id, created_at) VALUES ($1, $2, $3)")
        .bind(secret_hash(&key))
        .bind(member_id.to_owned())
        .bind(now())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(key)
}

fn member_from(row: &AnyRow) -> Member {
    Member {
        id: text(row, "id"),
        name: text(row, "name"),
        role: Role::parse(&text(row, "role")).unwrap_or(Role::Viewer),
        address: optional_text(row, "address").and_then(|a| Address::from_str(&a).ok()),
    }
}

/// Exchanges an API key for a session token. Returns the member and the key's hash (the
/// rate limit is per key).
pub async fn open_session(store: &Db, api_key: &str) -> Result<(String, i64, Member), ApiError> {
    let key_hash = secret_hash(api_key);
    let row = sqlx::query(
        "SELECT m.id, m.name, m.role, m.address FROM api_keys k JOIN members m ON m.id = k.member_id \
         WHERE k.key_hash = $1",
    )
    .bind(key_hash.clone())
    .fetch_optional(&store.pool)
    .await
    .map_err(db)?
    .ok_or_else(|| ApiError::unauthorized("apiKey: unknown API key"))?;
    let member = member_from(&row);
    let token = random_token("cst_");
    let expires_at = now() + SESSION_SECONDS;
    let (mut tx, _writer) = store.begin().await?;
    sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO sessions (token_hash, member_id, key_hash, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(secret_hash(&token))
        .bind(member.id.clone())
        .bind(key_hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok((token, expires_at, member))
}

/// The member and key hash behind a bearer token.
pub async fn session(store: &Db, token: &str) -> Result<(Member, String, i64), ApiError> {
    let row = sqlx::query(
        "SELECT m.id, m.name, m.role, m.address, s.key_hash, s.expires_at FROM sessions s \
         JOIN members m ON m.id = s.member_id WHERE s.token_hash = $1",
    )
    .bind(secret_hash(token))
    .fetch_optional(&store.pool)
    .await
    .map_err(db)?
    .ok_or_else(|| {
        ApiError::unauthorized("the session token is unknown; open a session with POST /v1/session")
    })?;
    if int(&row, "expires_at") < now() {
        return Err(ApiError::unauthorized(
            "the session expired; open a new one with POST /v1/session",
        ));
    }
    Ok((member_from(&row), text(&row, "key_hash"), int(&row, "expires_at")))
}

/// Adds a member (admin only; nobody enrolls themselves).
pub async fn add_member(store: &Db, body: &Value) -> Result<Member, ApiError> {
    let id = string_field(body, "id")?;
    check_request_id("id", &id)?;
    let name = string_field(body, "name")?;
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name: 1 to 200 characters, no control characters"));
    }
    let role = Role::parse(&string_field(body, "role")?)
        .ok_or_else(|| ApiError::bad_request("role: one of initiator, approver, viewer, admin"))?;
    let address = match body.get("address") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_address("address", text)?.address),
        Some(_) => return Err(ApiError::bad_request("address: must be an address string")),
    };
    if matches!(role, Role::Initiator | Role::Approver) && address.is_none() {
        return Err(ApiError::bad_request(
            "address: initiators and approvers need a signing address",
        ));
    }
    let (mut tx, _writer) = store.begin().await?;
    let taken = sqlx::query("SELECT id FROM members WHERE id = $1")
        .bind(id.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if taken.is_some() {
        return Err(ApiError::conflict("duplicate_member", format!("id: member {id} exists")));
    }
    sqlx::query(
        "INSERT INTO members (id, name, role, address, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.clone())
    .bind(name.clone())
    .bind(role.name().to_owned())
    .bind(address.as_ref().map(checksummed))
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let member = Member { id, name, role, address };
    audit(&mut tx, "member_added", &member.view()).await?;
    tx.commit().await.map_err(db)?;
    Ok(member)
}

pub async fn members(store: &Db) -> Result<Vec<Member>, ApiError> {
    let rows = sqlx::query("SELECT id, name, role, address FROM members ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .map_err(db)?;
    Ok(rows.iter().map(member_from).collect())
}

/// A new API key for a member (admin only), shown once.
pub async fn new_api_key(store: &Db, member_id: &str) -> Result<String, ApiError> {
    let (mut tx, _writer) = store.begin().await?;
    let exists = sqlx::query("SELECT id FROM members WHERE id = $1")
        .bind(member_id.to_owned())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(ApiError::not_found(format!("member {member_id}")));
    }
    let key = insert_api_key(&mut tx, member_id).await?;
    audit(&mut tx, "api_key_added", &json!({ "member": member_id })).await?;
    tx.commit().await.map_err(db)?;
    Ok(key)
}

// Vaults.

pub async fn set_vault(store: &Db, body: &Value) -> Result<VaultRecord, ApiError> {
    let chain_id = body
        .get("chainId")
        .and_then(Value::as_u64)
        .filter(|c| *c > 0)
        .ok_or_else(|| ApiError::bad_request("chainId: a positive integer"))?;
    let address = parse_address("address", &string_field(body, "address")?)?.address;
    let version = SafeVersion::parse("safeVersion", &string_field(body, "safeVersion")?)?;
    let owners_json = body
        .get("owners")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("owners: a list of addresses"))?;
    let mut owners = Vec::new();
    for (index, owner) in owners_json.iter().enumerate() {
        let field = format!("owners[{index}]");
        let owner = parse_address(&field, owner.as_str().unwrap_or_default())?.address;
        if owners.contains(&owner) {
            return Err(ApiError::bad_request(format!("{field}: given twice")));
        }
        owners.push(owner);
    }
    let threshold = body
        .get("threshold")
        .and_then(Value::as_u64)
        .filter(|t| *t >= 1 && *t as usize <= owners.len())
        .ok_or_else(|| ApiError::bad_request("threshold: between 1 and the number of owners"))?;
    let next_nonce = countersign_core::request::parse_uint(
        "nextNonce",
        body.get("nextNonce").unwrap_or(&Value::Null),
    )?;
    let mut record = VaultRecord::new(chain_id, address, version);
    record.owners = owners;
    record.threshold = Some(threshold as u32);
    record.next_nonce = Some(next_nonce);

    let id = vault_id(chain_id, &address);
    let owners_text =
        serde_json::to_string(&record.owners.iter().map(checksummed).collect::<Vec<_>>())
            .unwrap_or_default();
    let (mut tx, _writer) = store.begin().await?;
    // Open requests were checked against the old record (owners, threshold, version): they
    // are closed, with the reason, rather than carried over.
    let open = sqlx::query(
        "SELECT id FROM requests WHERE vault_id = $1 AND state IN ('pending', 'approved')",
    )
    .bind(id.clone())
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    for row in &open {
        let seq = next_seq(&mut tx).await?;
        sqlx::query("UPDATE requests SET state = 'rejected', reason = $1, seq = $2 WHERE id = $3")
            .bind("the vault record changed after submission; submit again".to_owned())
            .bind(seq)
            .bind(text(row, "id"))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    sqlx::query("DELETE FROM vaults WHERE id = $1")
        .bind(id.clone())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "INSERT INTO vaults (id, chain_id, address, safe_version, owners, threshold, next_nonce, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.clone())
    .bind(chain_id as i64)
    .bind(checksummed(&address))
    .bind(version.to_string())
    .bind(owners_text)
    .bind(threshold as i64)
    .bind(next_nonce.to_string())
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    audit(&mut tx, "vault_set", &vault_view(&record)).await?;
    tx.commit().await.map_err(db)?;
    Ok(record)
}

pub fn vault_view(record: &VaultRecord) -> Value {
    json!({
        "chainId": record.chain_id,
        "address": checksummed(&record.address),
        "safeVersion": record.version.to_string(),
        "owners": record.owners.iter().map(checksummed).collect::<Vec<_>>(),
        "threshold": record.threshold,
        "nextNonce": record.next_nonce.map(|n| n.to_string()),
    })
}

fn vault_from(row: &AnyRow) -> Result<VaultRecord, ApiError> {
    let corrupt =
        || ApiError::from(crate::QueueError::Database("a vault row could not be read".into()));
    let address = Address::from_str(&text(row, "address")).map_err(|_| corrupt())?;
    let version =
        SafeVersion::parse("safeVersion", &text(row, "safe_version")).map_err(|_| corrupt())?;
    let mut record = VaultRecord::new(int(row, "chain_id") as u64, address, version);
    let owners: Vec<String> = serde_json::from_str(&text(row, "owners")).map_err(|_| corrupt())?;
    record.owners = owners.iter().filter_map(|o| Address::from_str(o).ok()).collect();
    record.threshold = Some(int(row, "threshold") as u32);
    record.next_nonce = U256::from_str_radix(&text(row, "next_nonce"), 10).ok();
    Ok(record)
}

pub async fn vaults(store: &Db) -> Result<Vec<VaultRecord>, ApiError> {
    let rows = sqlx::query("SELECT * FROM vaults ORDER BY chain_id, address")
        .fetch_all(&store.pool)
        .await
        .map_err(db)?;
    rows.iter().map(vault_from).collect()
}

async fn vault_in(tx: &mut Transaction<'static, Any>, id: &str) -> Result<VaultRecord, ApiError> {
    let row = sqlx::query("SELECT * FROM vaults WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_vault",
                format!("vault {id} is not set up on this queue"),
            )
        })?;
    vault_from(&row)
}

fn string_field(body: &Value, name: &str) -> Result<String, ApiError> {
    match body.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("{name}: is missing"))),
        Some(_) => Err(ApiError::bad_request(format!("{name}: must be a string"))),
    }
}

async fn next_seq(tx: &mut Transaction<'static, Any>) -> Result<i64, ApiError> {
    let row = sqlx::query("SELECT value FROM counters WHERE name = 'request_seq'")
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let next = row.map(|r| int(&r, "value")).unwrap_or(0) + 1;
    sqlx::query("DELETE FROM counters WHERE name = 'request_seq'")
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO counters (name, value) VALUES ('request_seq', $1)")
        .bind(next)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(next)
}

// Requests.

/// What the queue enforces besides the vault record.
#[derive(Debug, Clone)]
pub struct QueueRules {
    pub policy: Policy,
    pub tokens: TokenList,
}

/// Submits a request (initiators only): recomputes the hash, runs the guards with the queue's
/// policy, and verifies the intent signature against the initiator's address.
pub async fn submit(
    store: &Db,
    rules: &QueueRules,
    caller: &Member,
    body: &Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Initiator])?;
    let id = string_field(body, "id")?;
    check_request_id("id", &id)?;
    let chain_id = body
        .get("chainId")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::bad_request("chainId: a positive integer"))?;
    let transaction = match body.get("transaction") {
        Some(Value::Object(map)) => JsonObject(map.clone().into_iter().collect()),
        _ => {
            return Err(ApiError::bad_request(
                "transaction: the Safe transaction object is missing",
            ))
        }
    };
    let request = SafeTxRequest::from_object(&transaction)?;
    let created_at = body
        .get("createdAt")
        .and_then(Value::as_u64)
        .and_then(|t| i64::try_from(t).ok())
        .ok_or_else(|| ApiError::bad_request("createdAt: Unix seconds"))?;
    if created_at
        .checked_sub(now())
        .is_none_or(|skew| skew.checked_abs().is_none_or(|s| s > CLOCK_SKEW_SECONDS))
    {
        return Err(ApiError::unprocessable(
            "stale_request",
            "createdAt: more than 5 minutes from the queue's clock",
        ));
    }
    let expiry_hours = match body.get("expiryHours") {
        None | Some(Value::Null) => 24,
        Some(value) => value
            .as_u64()
            .filter(|h| (1..=168).contains(h))
            .ok_or_else(|| ApiError::bad_request("expiryHours: an integer from 1 to 168"))?,
    };
    let signature = OwnerSignature::parse_hex(
        "initiatorSignature",
        &string_field(body, "initiatorSignature")?,
    )?;

    let vault_key = vault_id(chain_id, &request.safe);
    let (mut tx, _writer) = store.begin().await?;
    let vault = vault_in(&mut tx, &vault_key).await?;
    let review = review(request.clone(), &vault, &rules.policy, &rules.tokens, &History::default());
    if let Some(mismatch) = review.refusals.iter().find(|r| r.code() == "hash_mismatch") {
        return Err(ApiError::unprocessable("hash_mismatch", mismatch.to_string()));
    }
    if !review.refusals.is_empty() {
        let reasons: Vec<String> =
            review.refusals.iter().map(|r| format!("[{}] {r}", r.code())).collect();
        return Err(ApiError::unprocessable("guard_refused", reasons.join("; ")));
    }
    let safe_tx_hash = review.hashes.safe_tx;
    let digest = intent_digest(chain_id, &id, request.safe, safe_tx_hash, created_at as u64);
    let signer = signature.recover(&digest).map_err(|_| bad_intent())?;
    if Some(signer) != caller.address {
        return Err(bad_intent());
    }
    let exists = sqlx::query("SELECT id FROM requests WHERE id = $1")
        .bind(id.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_some() {
        return Err(ApiError::conflict("duplicate_request", format!("id: request {id} exists")));
    }
    // One open payload per nonce: a second would let one initiator trip every approver's
    // tripwire (the standard rejection, which cancels, is the exception).
    if !review.is_rejection() {
        let taken = sqlx::query(
            "SELECT id, state, expires_at FROM requests WHERE vault_id = $1 AND nonce = $2 \
             AND state IN ('pending', 'approved')",
        )
        .bind(vault_key.clone())
        .bind(request.tx.nonce.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(other) = taken.iter().find(|row| effective_state(row) != "expired") {
            return Err(ApiError::conflict(
                "nonce_taken",
                format!(
                    "transaction.nonce: request {} already uses nonce {} on this vault",
                    text(other, "id"),
                    request.tx.nonce
                ),
            ));
        }
    }
    let seq = next_seq(&mut tx).await?;
    let expires_at = created_at + expiry_hours as i64 * 3600;
    sqlx::query(
        "INSERT INTO requests (id, vault_id, seq, state, transaction_json, safe_tx_hash, nonce, initiator_id, \
         initiator_address, initiator_signature, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id.clone())
    .bind(vault_key)
    .bind(seq)
    .bind("pending".to_owned())
    .bind(Value::Object(transaction.0.into_iter().collect()).to_string())
    .bind(safe_tx_hash.to_string())
    .bind(request.tx.nonce.to_string())
    .bind(caller.id.clone())
    .bind(checksummed(&signer))
    .bind(signature.to_hex())
    .bind(created_at)
    .bind(expires_at)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    audit(
        &mut tx,
        "request_submitted",
        &json!({ "id": id, "safeTxHash": safe_tx_hash.to_string(), "by": caller.id }),
    )
    .await?;
    let view = request_view_in(&mut tx, &id).await?;
    tx.commit().await.map_err(db)?;
    tracing::info!(request = %id, "request submitted");
    Ok(view)
}

fn bad_intent() -> ApiError {
    ApiError::unprocessable(
        "bad_intent_signature",
        "initiatorSignature: does not recover to the initiator's address over the request's intent digest",
    )
}

/// One request as the API shows it.
pub async fn request_view(store: &Db, id: &str) -> Result<Value, ApiError> {
    let row = sqlx::query("SELECT * FROM requests WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&store.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
    let approvals = sqlx::query("SELECT owner, member_id, signature, created_at FROM approvals WHERE request_id = $1 ORDER BY owner")
        .bind(id.to_owned()).fetch_all(&store.pool).await.map_err(db)?;
    Ok(view_of(&row, &approvals))
}

async fn request_view_in(tx: &mut Transaction<'static, Any>, id: &str) -> Result<Value, ApiError> {
    let row = sqlx::query("SELECT * FROM requests WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
    let approvals = sqlx::query("SELECT owner, member_id, signature, created_at FROM approvals WHERE request_id = $1 ORDER BY owner")
        .bind(id.to_owned()).fetch_all(&mut **tx).await.map_err(db)?;
    Ok(view_of(&row, &approvals))
}

fn effective_state(row: &AnyRow) -> String {
    let state = text(row, "state");
    if state == "pending" && int(row, "expires_at") < now() {
        "expired".to_owned()
    } else {
        state
    }
}

fn view_of(row: &AnyRow, approvals: &[AnyRow]) -> Value {
    let transaction: Value =
        serde_json::from_str(&text(row, "transaction_json")).unwrap_or(Value::Null);
    let vault = text(row, "vault_id");
    let (chain, address) = vault.split_once(':').unwrap_or(("0", ""));
    json!({
        "id": text(row, "id"),
        "seq": int(row, "seq"),
        "state": effective_state(row),
        "chainId": chain.parse::<u64>().unwrap_or(0),
        "safe": address,
        "transaction": transaction,
        "safeTxHash": text(row, "safe_tx_hash"),
        "nonce": text(row, "nonce"),
        "initiator": { "memberId": text(row, "initiator_id"), "address": text(row, "initiator_address") },
        "initiatorSignature": text(row, "initiator_signature"),
        "createdAt": int(row, "created_at"),
        "expiresAt": int(row, "expires_at"),
        "approvals": approvals.iter().map(|a| json!({
            "owner": text(a, "owner"), "memberId": text(a, "member_id"),
            "signature": text(a, "signature"), "at": int(a, "created_at"),
        })).collect::<Vec<_>>(),
        "signatures": optional_text(row, "signatures"),
        "rejectionReason": optional_text(row, "reason"),
        "executedTransactionHash": optional_text(row, "executed_tx"),
    })
}

/// Lists requests changed after `after` (a `seq`), oldest change first.
pub async fn list(
    store: &Db,
    vault: Option<&str>,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Value, ApiError> {
    if let Some(state) = state {
        if !["pending", "approved", "executed", "rejected", "expired"].contains(&state) {
            return Err(ApiError::bad_request(
                "state: one of pending, approved, executed, rejected, expired",
            ));
        }
    }
    let rows = match vault {
        Some(vault) => {
            sqlx::query(
                "SELECT * FROM requests WHERE seq > $1 AND vault_id = $2 ORDER BY seq LIMIT $3",
            )
            .bind(after)
            .bind(vault.to_owned())
            .bind(limit + 1)
            .fetch_all(&store.pool)
            .await
        }
        None => {
            sqlx::query("SELECT * FROM requests WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit + 1)
                .fetch_all(&store.pool)
                .await
        }
    }
    .map_err(db)?;
    let more = rows.len() as i64 > limit;
    let page: Vec<&AnyRow> = rows.iter().take(limit as usize).collect();
    let cursor = page.last().map(|row| int(row, "seq")).unwrap_or(after);
    let shown: Vec<&AnyRow> =
        page.into_iter().filter(|row| state.is_none_or(|s| s == effective_state(row))).collect();
    // One query for the approvals of the whole page.
    let mut by_request: std::collections::HashMap<String, Vec<AnyRow>> = Default::default();
    if !shown.is_empty() {
        let marks: Vec<String> = (1..=shown.len()).map(|n| format!("${n}")).collect();
        let statement = format!(
            "SELECT request_id, owner, member_id, signature, created_at FROM approvals \
             WHERE request_id IN ({}) ORDER BY owner",
            marks.join(", ")
        );
        let mut query = sqlx::query(&statement);
        for row in &shown {
            query = query.bind(text(row, "id"));
        }
        for approval in query.fetch_all(&store.pool).await.map_err(db)? {
            by_request.entry(text(&approval, "request_id")).or_default().push(approval);
        }
    }
    let out: Vec<Value> = shown
        .iter()
        .map(|row| view_of(row, by_request.get(&text(row, "id")).map(Vec::as_slice).unwrap_or(&[])))
        .collect();
    Ok(json!({ "requests": out, "cursor": cursor, "more": more }))
}

// Approvals, rejections, execution.

async fn open_request(tx: &mut Transaction<'static, Any>, id: &str) -> Result<AnyRow, ApiError> {
    let row = sqlx::query("SELECT * FROM requests WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
    let state = effective_state(&row);
    if state != "pending" {
        return Err(ApiError::conflict(
            "request_closed",
            format!("request {id} is {state}; it takes no more approvals or rejections"),
        ));
    }
    Ok(row)
}

/// Records an approval, and the signatures in owner order once the threshold is reached.
pub async fn approve(
    store: &Db,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Approver])?;
    let claimed =
        countersign_core::request::parse_hash("safeTxHash", &string_field(body, "safeTxHash")?)?;
    let signature_text = string_field(body, "signature")?;
    let signature = parse_signature(&signature_text)?;

    let (mut tx, _writer) = store.begin().await?;
    // A retry of an approval already recorded answers as the first did, even once the
    // request has moved on (the first answer may have been lost on the way back).
    let repeat =
        sqlx::query("SELECT owner FROM approvals WHERE request_id = $1 AND signature = $2")
            .bind(id.to_owned())
            .bind(signature.to_hex())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    if repeat.is_some() {
        return request_view_in(&mut tx, id).await;
    }
    let row = open_request(&mut tx, id).await?;
    let safe_tx_hash = B256::from_str(&text(&row, "safe_tx_hash")).unwrap_or_default();
    if claimed != safe_tx_hash {
        return Err(ApiError::unprocessable("hash_mismatch",
            format!("safeTxHash: the approval signed {claimed}, the request's safeTxHash is {safe_tx_hash} (another vault, chain or request)")));
    }
    let owner = signature.recover(&safe_tx_hash).map_err(|_| {
        ApiError::unprocessable("bad_signature", "signature: does not recover to any address")
    })?;
    let vault = vault_in(&mut tx, &text(&row, "vault_id")).await?;
    if !vault.owners.contains(&owner) {
        return Err(ApiError::unprocessable(
            "not_an_owner",
            format!(
                "signature: recovers to {}, which is not an owner of the vault",
                checksummed(&owner)
            ),
        ));
    }
    let member = sqlx::query(
        "SELECT id, name, role, address FROM members WHERE address = $1 AND role = 'approver'",
    )
    .bind(checksummed(&owner))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some(member) = member.as_ref().map(member_from) else {
        return Err(ApiError::unprocessable(
            "not_an_approver",
            format!(
                "signature: owner {} is not a member with the approver role",
                checksummed(&owner)
            ),
        ));
    };
    // The signature proves the owner's consent, so an approver may relay another approver's
    // signature; the approval is recorded under the member whose address signed it.
    if text(&row, "initiator_address") == checksummed(&owner) {
        return Err(ApiError::unprocessable(
            "self_approval",
            "signature: the initiator cannot approve their own request",
        ));
    }
    let existing =
        sqlx::query("SELECT signature FROM approvals WHERE request_id = $1 AND owner = $2")
            .bind(id.to_owned())
            .bind(checksummed(&owner))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    if let Some(existing) = existing {
        if text(&existing, "signature") == signature.to_hex() {
            let view = request_view_in(&mut tx, id).await?;
            return Ok(view);
        }
        return Err(ApiError::conflict(
            "duplicate_approval",
            format!("owner {} already approved this request", checksummed(&owner)),
        ));
    }
    sqlx::query("INSERT INTO approvals (request_id, owner, member_id, signature, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.to_owned()).bind(checksummed(&owner)).bind(member.id.clone()).bind(signature.to_hex()).bind(now())
        .execute(&mut *tx).await.map_err(db)?;

    let approvals = sqlx::query("SELECT owner, signature FROM approvals WHERE request_id = $1")
        .bind(id.to_owned())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    let threshold = vault.threshold.unwrap_or(u32::MAX) as usize;
    let seq = next_seq(&mut tx).await?;
    if approvals.len() >= threshold {
        let signatures = ordered_signatures(&approvals);
        sqlx::query(
            "UPDATE requests SET state = 'approved', signatures = $1, seq = $2 WHERE id = $3",
        )
        .bind(signatures)
        .bind(seq)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        audit(&mut tx, "threshold_reached", &json!({ "id": id })).await?;
        tracing::info!(request = %id, "threshold reached");
    } else {
        sqlx::query("UPDATE requests SET seq = $1 WHERE id = $2")
            .bind(seq)
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    audit(
        &mut tx,
        "approved",
        &json!({ "id": id, "owner": checksummed(&owner), "signature": signature.to_hex() }),
    )
    .await?;
    let view = request_view_in(&mut tx, id).await?;
    tx.commit().await.map_err(db)?;
    Ok(view)
}

fn parse_signature(text: &str) -> Result<OwnerSignature, ApiError> {
    let bytes = countersign_core::request::parse_hex_bytes("signature", text)?;
    OwnerSignature::from_bytes(&bytes).map_err(|problem| match problem {
        SignatureProblem::HighS => ApiError::unprocessable(
            "high_s_signature",
            "signature: s is not in the lower half (EIP-2)",
        ),
        other => ApiError::unprocessable("malformed_signature", format!("signature: {other}")),
    })
}

/// Signatures concatenated in ascending owner-address order, as `execTransaction` expects.
fn ordered_signatures(approvals: &[AnyRow]) -> String {
    let mut pairs: Vec<(Address, String)> = approvals
        .iter()
        .filter_map(|a| {
            Address::from_str(&text(a, "owner")).ok().map(|o| (o, text(a, "signature")))
        })
        .collect();
    pairs.sort_by_key(|(owner, _)| *owner);
    let mut out = "0x".to_owned();
    for (_, signature) in pairs {
        out.push_str(signature.trim_start_matches("0x"));
    }
    out
}

pub async fn reject(
    store: &Db,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Approver])?;
    let reason = string_field(body, "reason")?;
    if !reason.chars().any(char::is_alphanumeric) || reason.chars().count() > 1000 {
        return Err(ApiError::bad_request(
            "reason: say why in words (letters or digits), at most 1000 characters",
        ));
    }
    let (mut tx, _writer) = store.begin().await?;
    let row = open_request(&mut tx, id).await?;
    let vault = vault_in(&mut tx, &text(&row, "vault_id")).await?;
    if !caller.address.is_some_and(|a| vault.owners.contains(&a)) {
        return Err(ApiError::forbidden("only an owner of the vault may reject its requests"));
    }
    let seq = next_seq(&mut tx).await?;
    sqlx::query("UPDATE requests SET state = 'rejected', reason = $1, seq = $2 WHERE id = $3")
        .bind(reason.clone())
        .bind(seq)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    audit(&mut tx, "rejected", &json!({ "id": id, "by": caller.id, "reason": reason })).await?;
    let view = request_view_in(&mut tx, id).await?;
    tx.commit().await.map_err(db)?;
    Ok(view)
}

pub async fn mark_executed(
    store: &Db,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Initiator, Role::Admin])?;
    let hash = countersign_core::request::parse_hash(
        "transactionHash",
        &string_field(body, "transactionHash")?,
    )?;
    let (mut tx, _writer) = store.begin().await?;
    let row = sqlx::query("SELECT * FROM requests WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
    if caller.role != Role::Admin && text(&row, "initiator_id") != caller.id {
        return Err(ApiError::forbidden(
            "only the request's initiator or an admin marks it executed",
        ));
    }
    if text(&row, "state") != "approved" {
        return Err(ApiError::conflict(
            "not_approved",
            format!(
                "request {id} is {}; only an approved request can be executed",
                effective_state(&row)
            ),
        ));
    }
    let seq = next_seq(&mut tx).await?;
    sqlx::query("UPDATE requests SET state = 'executed', executed_tx = $1, seq = $2 WHERE id = $3")
        .bind(hash.to_string())
        .bind(seq)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    audit(&mut tx, "executed", &json!({ "id": id, "transactionHash": hash.to_string() })).await?;
    let view = request_view_in(&mut tx, id).await?;
    tx.commit().await.map_err(db)?;
    Ok(view)
}
