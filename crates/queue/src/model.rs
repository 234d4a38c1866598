//! The queue's rules: who may do what, and what a request, an approval and a rejection must
//! satisfy. Every change is one transaction with its audit entry.

use std::str::FromStr;

use alloy_primitives::{Address, U256};
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

pub(crate) fn vault_id(chain_id: u64, address: &Address) -> String {
    format!("{chain_id}:{}", checksummed(address))
}

/// Appends an entry to the queue's audit chain inside `tx`.
pub async fn audit(
    tx: &mut Transaction<'_, Any>,
    kind: &str,
    body: &Value,
) -> Result<(), ApiError> {
    audit_many(tx, &[(kind, body.clone())]).await
}

/// Appends `entries`, in order, to the queue's audit chain inside `tx`, in one statement.
pub(crate) async fn audit_many(
    tx: &mut Transaction<'_, Any>,
    entries: &[(&str, Value)],
) -> Result<(), ApiError> {
    let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let (mut seq, mut prev_hash) = match last {
        Some(row) => (
            int(&row, "seq"),
            countersign_core::audit::decode(&text(&row, "hash")).unwrap_or([0; 32]),
        ),
        None => (0, [0u8; 32]),
    };
    let at = now();
    let mut rows = Vec::with_capacity(entries.len());
    for (kind, body) in entries {
        seq += 1;
        let body = body.to_string();
        let hash = entry_hash(QUEUE, &prev_hash, seq as u64, at, kind, &body);
        rows.push((seq, (*kind).to_owned(), body, hex::encode(prev_hash), hex::encode(hash)));
        prev_hash = hash;
    }
    for chunk in rows.chunks(100) {
        let statement = format!(
            "INSERT INTO audit (seq, at, kind, body, prev_hash, hash) VALUES {}",
            placeholders(tx, chunk.len(), 6)
        );
        let mut query = sqlx::query(&statement);
        for (seq, kind, body, prev, hash) in chunk {
            query = query
                .bind(*seq)
                .bind(at)
                .bind(kind.clone())
                .bind(body.clone())
                .bind(prev.clone())
                .bind(hash.clone());
        }
        query.execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// `($1, $2), ($3, $4)` for two rows of two (`(?, ?), (?, ?)` on SQLite, as [`marks`]).
/// The statement must have no other marks.
pub(crate) fn placeholders(on: &sqlx::AnyConnection, rows: usize, columns: usize) -> String {
    let row = |r: usize| format!("({})", marks(on, r * columns + 1, columns));
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// `$1, $2, $3` for a list of three (`?, ?, ?` on SQLite, as [`marks`]).
/// The statement must have no other marks.
pub(crate) fn list_marks(on: &sqlx::AnyConnection, count: usize) -> String {
    marks(on, 1, count)
}

/// `count` marks from number `first` on, in ascending order as PostgreSQL reads them; on
/// SQLite `?`, numbered by place, because SQLite finds a named mark's number by searching
/// the statement's list of names, for each mark in turn: a batch's hundreds of marks cost
/// the writer more than the statement itself.
fn marks(on: &sqlx::AnyConnection, first: usize, count: usize) -> String {
    let sqlite = on.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME;
    (first..first + count)
        .map(|n| if sqlite { "?".to_owned() } else { format!("${n}") })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn db(error: sqlx::Error) -> ApiError {
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

/// Readies a queue database at start: renders any missing request views, and on an empty
/// queue makes an admin member and its API key, returned once.
pub async fn bootstrap(store: &Db) -> Result<Option<String>, ApiError> {
    fill_views(store).await?;
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
    tx: &mut Transaction<'_, Any>,
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

pub(crate) fn member_from(row: &AnyRow) -> Member {
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
        let id = text(row, "id");
        let mut request = request_in(&mut tx, &id).await?;
        request.seq = next_seq(&mut tx).await?;
        request.state = "rejected".to_owned();
        request.reason = Some("the vault record changed after submission; submit again".into());
        let approvals = approvals_of(&mut tx, &id).await?;
        request.save(&mut tx, &approvals).await?;
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

async fn vault_in(tx: &mut Transaction<'_, Any>, id: &str) -> Result<VaultRecord, ApiError> {
    let row = sqlx::query("SELECT * FROM vaults WHERE id = $1")
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown_vault(id))?;
    vault_from(&row)
}

fn unknown_vault(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_vault",
        format!("vault {id} is not set up on this queue"),
    )
}

pub(crate) fn string_field(body: &Value, name: &str) -> Result<String, ApiError> {
    match body.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("{name}: is missing"))),
        Some(_) => Err(ApiError::bad_request(format!("{name}: must be a string"))),
    }
}

async fn next_seq(tx: &mut Transaction<'_, Any>) -> Result<i64, ApiError> {
    let row = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'request_seq' RETURNING value",
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    Ok(int(&row, "value"))
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
) -> Result<RequestView, ApiError> {
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
    // The review and the intent recovery need no write turn; the vault record they used is
    // compared with the one inside the transaction.
    let vault = vault_from(
        &sqlx::query("SELECT * FROM vaults WHERE id = $1")
            .bind(vault_key.clone())
            .fetch_optional(&store.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| unknown_vault(&vault_key))?,
    )?;
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

    let (mut tx, _writer) = store.begin().await?;
    if vault_in(&mut tx, &vault_key).await? != vault {
        return Err(ApiError::conflict(
            "vault_changed",
            "the vault record changed while the request was checked; submit again",
        ));
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
        if let Some(other) = taken
            .iter()
            .find(|row| shown_state(&text(row, "state"), int(row, "expires_at")) != "expired")
        {
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
    let expires_at = created_at + expiry_hours as i64 * 3600;
    let row = RequestRow {
        id: id.clone(),
        vault_id: vault_key,
        seq: next_seq(&mut tx).await?,
        state: "pending".to_owned(),
        transaction_json: Value::Object(transaction.0.into_iter().collect()).to_string(),
        safe_tx_hash: safe_tx_hash.to_string(),
        nonce: request.tx.nonce.to_string(),
        initiator_id: caller.id.clone(),
        initiator_address: checksummed(&signer),
        initiator_signature: signature.to_hex(),
        created_at,
        expires_at,
        reason: None,
        rejected_by: None,
        executed_tx: None,
        signatures: None,
    };
    let stored = row.stored_view(&[]);
    sqlx::query(
        "INSERT INTO requests (id, vault_id, seq, state, transaction_json, safe_tx_hash, nonce, initiator_id, \
         initiator_address, initiator_signature, created_at, expires_at, view) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(row.id.clone())
    .bind(row.vault_id.clone())
    .bind(row.seq)
    .bind(row.state.clone())
    .bind(row.transaction_json.clone())
    .bind(row.safe_tx_hash.clone())
    .bind(row.nonce.clone())
    .bind(row.initiator_id.clone())
    .bind(row.initiator_address.clone())
    .bind(row.initiator_signature.clone())
    .bind(created_at)
    .bind(expires_at)
    .bind(stored.clone())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    audit(
        &mut tx,
        "request_submitted",
        &json!({ "id": id, "safeTxHash": row.safe_tx_hash, "by": caller.id }),
    )
    .await?;
    tx.commit().await.map_err(db)?;
    tracing::info!(request = %id, "request submitted");
    Ok(RequestView::new(id, row.seq, row.shown_state(), &stored))
}

fn bad_intent() -> ApiError {
    ApiError::unprocessable(
        "bad_intent_signature",
        "initiatorSignature: does not recover to the initiator's address over the request's intent digest",
    )
}

// Views: every change stores the request's rendered JSON beside its columns, so reading a
// request or a page of them renders nothing but the state, which the clock can change.

/// A `requests` row, owned, so that a change can be applied to it and the view rendered from
/// the result without reading it back.
#[derive(Debug, Clone)]
pub(crate) struct RequestRow {
    pub(crate) id: String,
    pub(crate) vault_id: String,
    pub(crate) seq: i64,
    pub(crate) state: String,
    pub(crate) transaction_json: String,
    pub(crate) safe_tx_hash: String,
    pub(crate) nonce: String,
    pub(crate) initiator_id: String,
    pub(crate) initiator_address: String,
    pub(crate) initiator_signature: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) reason: Option<String>,
    /// The member who rejected the request; none when the queue closed it itself.
    pub(crate) rejected_by: Option<String>,
    pub(crate) executed_tx: Option<String>,
    pub(crate) signatures: Option<String>,
}

/// One recorded approval.
#[derive(Debug, Clone)]
pub(crate) struct Approval {
    pub(crate) owner: String,
    pub(crate) member_id: String,
    pub(crate) signature: String,
    pub(crate) at: i64,
}

impl Approval {
    pub(crate) fn from_row(row: &AnyRow) -> Self {
        Self {
            owner: text(row, "owner"),
            member_id: text(row, "member_id"),
            signature: text(row, "signature"),
            at: int(row, "created_at"),
        }
    }
}

/// A pending request past its expiry shows as expired; nothing is written when it expires.
pub(crate) fn shown_state(state: &str, expires_at: i64) -> &str {
    if state == "pending" && expires_at < now() {
        "expired"
    } else {
        state
    }
}

/// A stored view. Its fields are in the order of their JSON names, as a JSON object
/// value writes its keys.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredView<'a> {
    approvals: Vec<ApprovalView<'a>>,
    chain_id: u64,
    created_at: i64,
    executed_transaction_hash: Option<&'a str>,
    expires_at: i64,
    id: &'a str,
    initiator: InitiatorView<'a>,
    initiator_signature: &'a str,
    nonce: &'a str,
    rejection_reason: Option<&'a str>,
    safe: &'a str,
    safe_tx_hash: &'a str,
    seq: i64,
    signatures: Option<&'a str>,
    transaction: Value,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalView<'a> {
    at: i64,
    member_id: &'a str,
    owner: &'a str,
    signature: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct InitiatorView<'a> {
    address: &'a str,
    member_id: &'a str,
}

/// The columns [`RequestRow::from_row`] reads: all but the rendered view, which is
/// rendered again from them.
pub(crate) const ROW_COLUMNS: [&str; 16] = [
    "id",
    "vault_id",
    "seq",
    "state",
    "transaction_json",
    "safe_tx_hash",
    "nonce",
    "initiator_id",
    "initiator_address",
    "initiator_signature",
    "created_at",
    "expires_at",
    "reason",
    "rejected_by",
    "executed_tx",
    "signatures",
];

impl RequestRow {
    /// Reads [`ROW_COLUMNS`].
    pub(crate) fn from_row(row: &AnyRow) -> Self {
        Self {
            id: text(row, "id"),
            vault_id: text(row, "vault_id"),
            seq: int(row, "seq"),
            state: text(row, "state"),
            transaction_json: text(row, "transaction_json"),
            safe_tx_hash: text(row, "safe_tx_hash"),
            nonce: text(row, "nonce"),
            initiator_id: text(row, "initiator_id"),
            initiator_address: text(row, "initiator_address"),
            initiator_signature: text(row, "initiator_signature"),
            created_at: int(row, "created_at"),
            expires_at: int(row, "expires_at"),
            reason: optional_text(row, "reason"),
            rejected_by: optional_text(row, "rejected_by"),
            executed_tx: optional_text(row, "executed_tx"),
            signatures: optional_text(row, "signatures"),
        }
    }

    pub(crate) fn shown_state(&self) -> &str {
        shown_state(&self.state, self.expires_at)
    }

    /// The view as stored: every field but `state`, as the compact JSON text of its value
    /// (keys in order, as `serde_json::Value` writes them), so that a view rendered again
    /// from the same row is the same text.
    pub(crate) fn stored_view(&self, approvals: &[Approval]) -> String {
        // Read and written again, not copied: a float's shortest text does not always read
        // back as the same number, so copying would change the text views had before.
        let transaction: Value =
            serde_json::from_str(&self.transaction_json).unwrap_or(Value::Null);
        let (chain, address) = self.vault_id.split_once(':').unwrap_or(("0", ""));
        let mut approvals: Vec<ApprovalView<'_>> = approvals
            .iter()
            .map(|a| ApprovalView {
                at: a.at,
                member_id: &a.member_id,
                owner: &a.owner,
                signature: &a.signature,
            })
            .collect();
        approvals.sort_by(|a, b| a.owner.cmp(b.owner));
        let view = StoredView {
            approvals,
            chain_id: chain.parse::<u64>().unwrap_or(0),
            created_at: self.created_at,
            executed_transaction_hash: self.executed_tx.as_deref(),
            expires_at: self.expires_at,
            id: &self.id,
            initiator: InitiatorView {
                address: &self.initiator_address,
                member_id: &self.initiator_id,
            },
            initiator_signature: &self.initiator_signature,
            nonce: &self.nonce,
            rejection_reason: self.reason.as_deref(),
            safe: address,
            safe_tx_hash: &self.safe_tx_hash,
            seq: self.seq,
            signatures: self.signatures.as_deref(),
            transaction,
        };
        serde_json::to_string(&view).unwrap_or_default()
    }

    /// Writes every changeable column and the view.
    pub(crate) async fn save(
        &self,
        tx: &mut Transaction<'_, Any>,
        approvals: &[Approval],
    ) -> Result<RequestView, ApiError> {
        let mut views = save_all(tx, &[(self, approvals)]).await?;
        views.pop().ok_or_else(|| {
            ApiError::from(crate::QueueError::Database("a request was not saved".into()))
        })
    }
}

/// Writes every changeable column and the view of each request, a hundred requests to a
/// statement (a batch of approvals changes many): one round trip to the database where one
/// each would queue the batch behind as many.
pub(crate) async fn save_all(
    tx: &mut Transaction<'_, Any>,
    requests: &[(&RequestRow, &[Approval])],
) -> Result<Vec<RequestView>, ApiError> {
    let mut views = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(100) {
        // A VALUES list names its columns column1, column2, … in SQLite and PostgreSQL alike.
        let statement = format!(
            "UPDATE requests SET seq = v.column2, state = v.column3, reason = v.column4, \
             executed_tx = v.column5, signatures = v.column6, view = v.column7, \
             rejected_by = v.column8 FROM (VALUES {}) AS v WHERE requests.id = v.column1",
            placeholders(tx, chunk.len(), 8)
        );
        let mut query = sqlx::query(&statement);
        for (request, approvals) in chunk {
            let view = request.stored_view(approvals);
            query = query
                .bind(request.id.clone())
                .bind(request.seq)
                .bind(request.state.clone())
                .bind(request.reason.clone())
                .bind(request.executed_tx.clone())
                .bind(request.signatures.clone())
                .bind(view.clone())
                .bind(request.rejected_by.clone());
            views.push(RequestView::new(
                request.id.clone(),
                request.seq,
                request.shown_state(),
                &view,
            ));
        }
        let done = query.execute(&mut **tx).await.map_err(db)?;
        if done.rows_affected() != chunk.len() as u64 {
            return Err(ApiError::from(crate::QueueError::Database(format!(
                "{} of {} requests saved",
                done.rows_affected(),
                chunk.len()
            ))));
        }
    }
    Ok(views)
}

/// A request as the API shows it: its JSON text, and what an event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    pub id: String,
    pub seq: i64,
    pub state: String,
    pub json: String,
}

impl RequestView {
    /// `stored` is the view without `state`, a JSON object with at least one field.
    pub(crate) fn new(id: String, seq: i64, state: &str, stored: &str) -> Self {
        let rest = stored.strip_prefix('{').unwrap_or("}");
        let json = format!("{{\"state\":{},{rest}", Value::from(state));
        Self { id, seq, state: state.to_owned(), json }
    }

    /// `None` for a row stored without its view (written by a server from before views).
    fn from_row(row: &AnyRow) -> Option<Self> {
        let state = text(row, "state");
        let view = optional_text(row, "view").filter(|v| v.starts_with('{') && v.len() > 2)?;
        let expires_at = int(row, "expires_at");
        Some(Self::new(text(row, "id"), int(row, "seq"), shown_state(&state, expires_at), &view))
    }
}

/// The columns [`RequestView::from_row`] reads.
pub(crate) const VIEW_COLUMNS: &str = "id, seq, state, expires_at, view";

async fn approvals_of(tx: &mut Transaction<'_, Any>, id: &str) -> Result<Vec<Approval>, ApiError> {
    let rows = sqlx::query(
        "SELECT owner, member_id, signature, created_at FROM approvals WHERE request_id = $1",
    )
    .bind(id.to_owned())
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    Ok(rows.iter().map(Approval::from_row).collect())
}

async fn request_in(tx: &mut Transaction<'_, Any>, id: &str) -> Result<RequestRow, ApiError> {
    sqlx::query(&format!("SELECT {} FROM requests WHERE id = $1", ROW_COLUMNS.join(", ")))
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .map(|row| RequestRow::from_row(&row))
        .ok_or_else(|| ApiError::not_found(format!("request {id}")))
}

/// Renders the view of every request stored without one (written by a server from before
/// views, on the same database).
pub async fn fill_views(store: &Db) -> Result<usize, ApiError> {
    let ids = sqlx::query(
        "SELECT id FROM requests WHERE view IS NULL OR length(view) < 3 OR substr(view, 1, 1) <> '{'",
    )
        .fetch_all(&store.pool)
        .await
        .map_err(db)?;
    for row in &ids {
        let id = text(row, "id");
        let (mut tx, _writer) = store.begin().await?;
        let request = request_in(&mut tx, &id).await?;
        let approvals = approvals_of(&mut tx, &id).await?;
        request.save(&mut tx, &approvals).await?;
        tx.commit().await.map_err(db)?;
    }
    Ok(ids.len())
}

/// One request as the API shows it.
pub async fn request_view(store: &Db, id: &str) -> Result<RequestView, ApiError> {
    with_views(store, || async {
        let row = sqlx::query(&format!("SELECT {VIEW_COLUMNS} FROM requests WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&store.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
        Ok(RequestView::from_row(&row))
    })
    .await
}

/// Runs `read`, which says `None` when a row it read has no view; then renders the missing
/// views and runs it once more.
async fn with_views<T, F, Fut>(store: &Db, read: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
{
    if let Some(found) = read().await? {
        return Ok(found);
    }
    fill_views(store).await?;
    read().await?.ok_or_else(missing_view)
}

/// A row written without its view by an older server on the same database: the views are
/// rendered (by [`fill_views`]) and the read tried once more.
fn missing_view() -> ApiError {
    ApiError::from(crate::QueueError::Database("a request's view could not be rendered".into()))
}

/// A page of requests changed after `after` (a `seq`), oldest change first, as JSON text:
/// `{requests, cursor, more}`.
pub async fn list(
    store: &Db,
    vault: Option<&str>,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<String, ApiError> {
    if let Some(state) = state {
        if !["pending", "approved", "executed", "rejected", "expired"].contains(&state) {
            return Err(ApiError::bad_request(
                "state: one of pending, approved, executed, rejected, expired",
            ));
        }
    }
    with_views(store, || list_once(store, vault, state, after, limit)).await
}

/// A page as JSON text, or `None` when a row on it has no view yet.
async fn list_once(
    store: &Db,
    vault: Option<&str>,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Option<String>, ApiError> {
    let rows = match vault {
        Some(vault) => {
            sqlx::query(&format!(
                "SELECT {VIEW_COLUMNS} FROM requests WHERE seq > $1 AND vault_id = $2 \
                 ORDER BY seq LIMIT $3"
            ))
            .bind(after)
            .bind(vault.to_owned())
            .bind(limit + 1)
            .fetch_all(&store.pool)
            .await
        }
        None => {
            sqlx::query(&format!(
                "SELECT {VIEW_COLUMNS} FROM requests WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(limit + 1)
            .fetch_all(&store.pool)
            .await
        }
    }
    .map_err(db)?;
    let more = rows.len() as i64 > limit;
    let Some(page) = rows
        .iter()
        .take(limit as usize)
        .map(RequestView::from_row)
        .collect::<Option<Vec<RequestView>>>()
    else {
        return Ok(None);
    };
    let cursor = page.last().map(|view| view.seq).unwrap_or(after);
    let shown: Vec<&str> = page
        .iter()
        .filter(|view| state.is_none_or(|s| s == view.state))
        .map(|view| view.json.as_str())
        .collect();
    Ok(Some(format!("{{\"requests\":[{}],\"cursor\":{cursor},\"more\":{more}}}", shown.join(","))))
}

// Approvals, rejections, execution.

/// The refusal for a request that is no longer pending, as it shows now.
pub(crate) fn closed(id: &str, state: &str) -> ApiError {
    ApiError::conflict(
        "request_closed",
        format!("request {id} is {state}; it takes no more approvals or rejections"),
    )
}

pub(crate) fn parse_signature(text: &str) -> Result<OwnerSignature, ApiError> {
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
pub(crate) fn ordered_signatures(approvals: &[Approval]) -> String {
    let mut pairs: Vec<(Address, &str)> = approvals
        .iter()
        .filter_map(|a| Address::from_str(&a.owner).ok().map(|o| (o, a.signature.as_str())))
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
) -> Result<RequestView, ApiError> {
    caller.require(&[Role::Approver])?;
    let reason = string_field(body, "reason")?;
    if !reason.chars().any(char::is_alphanumeric) || reason.chars().count() > 1000 {
        return Err(ApiError::bad_request(
            "reason: say why in words (letters or digits), at most 1000 characters",
        ));
    }
    let (mut tx, _writer) = store.begin().await?;
    let mut request = request_in(&mut tx, id).await?;
    let approvals = approvals_of(&mut tx, id).await?;
    // The same rejection sent again (the client retries after a 5xx answer or a timeout,
    // which may have come after the queue recorded it) answers as the first did, and
    // changes nothing.
    if request.state == "rejected"
        && request.rejected_by.as_deref() == Some(caller.id.as_str())
        && request.reason.as_deref() == Some(reason.as_str())
    {
        let stored = request.stored_view(&approvals);
        return Ok(RequestView::new(request.id.clone(), request.seq, "rejected", &stored));
    }
    if request.shown_state() != "pending" {
        return Err(closed(&request.id, request.shown_state()));
    }
    let vault = vault_in(&mut tx, &request.vault_id).await?;
    if !caller.address.is_some_and(|a| vault.owners.contains(&a)) {
        return Err(ApiError::forbidden("only an owner of the vault may reject its requests"));
    }
    request.seq = next_seq(&mut tx).await?;
    request.state = "rejected".to_owned();
    request.reason = Some(reason.clone());
    request.rejected_by = Some(caller.id.clone());
    let view = request.save(&mut tx, &approvals).await?;
    audit(&mut tx, "rejected", &json!({ "id": id, "by": caller.id, "reason": reason })).await?;
    tx.commit().await.map_err(db)?;
    Ok(view)
}

pub async fn mark_executed(
    store: &Db,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<RequestView, ApiError> {
    caller.require(&[Role::Initiator, Role::Admin])?;
    let hash = countersign_core::request::parse_hash(
        "transactionHash",
        &string_field(body, "transactionHash")?,
    )?;
    let (mut tx, _writer) = store.begin().await?;
    let mut request = request_in(&mut tx, id).await?;
    if caller.role != Role::Admin && request.initiator_id != caller.id {
        return Err(ApiError::forbidden(
            "only the request's initiator or an admin marks it executed",
        ));
    }
    if request.state != "approved" {
        return Err(ApiError::conflict(
            "not_approved",
            format!(
                "request {id} is {}; only an approved request can be executed",
                request.shown_state()
            ),
        ));
    }
    request.seq = next_seq(&mut tx).await?;
    request.state = "executed".to_owned();
    request.executed_tx = Some(hash.to_string());
    let approvals = approvals_of(&mut tx, id).await?;
    let view = request.save(&mut tx, &approvals).await?;
    audit(&mut tx, "executed", &json!({ "id": id, "transactionHash": hash.to_string() })).await?;
    tx.commit().await.map_err(db)?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(reason: Option<&str>, signatures: Option<&str>) -> RequestRow {
        RequestRow {
            id: "r-1".into(),
            vault_id: "1:0x111CEEee040739fD91D29C34C33E6B3E112F2177".into(),
            seq: 42,
            state: "pending".into(),
            // 913.5120788674595 is what writing 913.5120788674595588070 gives, and it does
            // not read back as the same number (serde_json without float_roundtrip).
            transaction_json: r#"{"data":"0x","memo":913.5120788674595,"nested":{"a":null,"b":[1,"\u007f\"\\"]},"to":"0xabc","value":"1"}"#.into(),
            safe_tx_hash: "0xhash".into(),
            nonce: "5".into(),
            initiator_id: "init".into(),
            initiator_address: "0xInit".into(),
            initiator_signature: "0xsig".into(),
            created_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            reason: reason.map(str::to_owned),
            rejected_by: None,
            executed_tx: None,
            signatures: signatures.map(str::to_owned),
        }
    }

    /// A stored view is the text the earlier rendering, through one JSON value, gave, whatever
    /// is set: views rendered before and after a change of how they are written are equal.
    #[test]
    fn a_stored_view_is_the_text_of_its_value() {
        let approvals = [
            Approval {
                owner: "0xB".into(),
                member_id: "bob".into(),
                signature: "0x2".into(),
                at: 2,
            },
            Approval {
                owner: "0xA".into(),
                member_id: "al\"ice".into(),
                signature: "0x1".into(),
                at: 1,
            },
        ];
        for (reason, signatures, approvals) in
            [(None, None, &approvals[..0]), (Some("no ✓\n"), Some("0x12"), &approvals[..])]
        {
            let request = row(reason, signatures);
            let text = request.stored_view(approvals);
            let expected = json!({
                "id": "r-1", "seq": 42, "chainId": 1,
                "safe": "0x111CEEee040739fD91D29C34C33E6B3E112F2177",
                "transaction": serde_json::from_str::<Value>(&request.transaction_json).unwrap(),
                "safeTxHash": "0xhash", "nonce": "5",
                "initiator": { "memberId": "init", "address": "0xInit" },
                "initiatorSignature": "0xsig", "createdAt": 1_700_000_000, "expiresAt": 1_700_086_400,
                "approvals": approvals.iter().rev().map(|a| json!({
                    "owner": a.owner, "memberId": a.member_id, "signature": a.signature, "at": a.at,
                })).collect::<Vec<_>>(),
                "signatures": signatures, "rejectionReason": reason, "executedTransactionHash": null,
            });
            assert_eq!(text, expected.to_string());
        }
        let mut broken = row(None, None);
        broken.transaction_json = "{not json".into();
        let value: Value = serde_json::from_str(&broken.stored_view(&[])).unwrap();
        assert_eq!(value["transaction"], Value::Null);
    }
}
