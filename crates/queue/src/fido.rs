//! FIDO2 security keys next to owner signatures: a member registers their own key through
//! their session (webauthn-rs's security-key registration); it counts only once an admin has
//! confirmed it, so a stolen API key alone cannot add one. A vault's presence policy says
//! which approvals need an assertion; [`check_approval`] verifies it with
//! [`countersign_fido::verify`], bound to the request and its safeTxHash, and the counter is
//! moved forward in the approval's own transaction.

use std::sync::Arc;

use alloy_primitives::{Address, B256};
use countersign_core::decode::decode_call;
use countersign_core::presence::PresencePolicy;
use countersign_core::request::SafeTxRequest;
use countersign_fido::{Assertion, Expected, RelyingParty, StoredApproval};
use serde_json::{json, Value};
use sqlx::{Any, Transaction};
use webauthn_rs::prelude::{
    Credential, RegisterPublicKeyCredential, SecurityKeyRegistration, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};
use webauthn_rs_core::proto::COSEKey;

use crate::db::{int, optional_int, optional_text, text, Db};
use crate::error::ApiError;
use crate::model::{audit, db, now, Member, QueueRules, Role};

/// The deployment's relying party and the webauthn-rs instance for it.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "webauthn-rs's instance has nothing to show")]
pub struct Fido {
    pub rp: RelyingParty,
    webauthn: Arc<Webauthn>,
}

impl Fido {
    /// From the deployment's RP id and origin (`countersign queue serve --fido-rp-id …
    /// --fido-origin …`).
    pub fn new(rp_id: &str, origin: &str) -> Result<Self, String> {
        let rp = RelyingParty::new(rp_id, origin).map_err(|e| e.to_string())?;
        let webauthn = WebauthnBuilder::new(&rp.id, &rp.origin)
            .and_then(WebauthnBuilder::build)
            .map_err(|e| format!("the relying party: {e}"))?;
        Ok(Self { rp, webauthn: Arc::new(webauthn) })
    }
}

fn not_configured() -> ApiError {
    ApiError::unprocessable(
        "fido_not_configured",
        "this queue has no FIDO2 relying party (serve with --fido-rp-id and --fido-origin)",
    )
}

/// A stable WebAuthn user handle for a member: the first 16 bytes of SHA-256 of its id.
fn user_handle(member: &Member) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("countersign-member:{}", member.id));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// `GET /v1/fido/config`: the relying party clients make assertions for.
pub fn config(fido: Option<&Fido>) -> Result<Value, ApiError> {
    let fido = fido.ok_or_else(not_configured)?;
    Ok(json!({ "rpId": fido.rp.id, "origin": fido.rp.origin.as_str() }))
}

/// `GET /v1/requests/{id}/presence`: whether the caller's approval of the request needs a
/// security key, why, and with user verification or not.
pub async fn presence(
    store: &Db,
    rules: &QueueRules,
    caller: &Member,
    request_id: &str,
) -> Result<Value, ApiError> {
    // Only those who approve need to know; the reason names no threshold.
    caller.require(&[Role::Approver])?;
    let row = sqlx::query("SELECT vault_id, transaction_json FROM requests WHERE id = $1")
        .bind(request_id.to_owned())
        .fetch_optional(&store.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("request {request_id}")))?;
    let vault = text(&row, "vault_id");
    let policy = policy_of(store, &vault).await?;
    Ok(match requirement(policy, rules, &vault, &text(&row, "transaction_json"))? {
        Some((policy, reason)) => json!({ "required": true, "reason": reason, "member": caller.id,
                                          "userVerification": policy.user_verification }),
        None => json!({ "required": false, "member": caller.id }),
    })
}

/// `POST /v1/fido/registrations`: the creation options for the caller's new key. The
/// registration state is kept on the queue (one pending registration per member).
pub async fn start_registration(
    store: &Db,
    fido: Option<&Fido>,
    caller: &Member,
) -> Result<Value, ApiError> {
    let fido = fido.ok_or_else(not_configured)?;
    let existing = sqlx::query("SELECT id FROM fido_credentials WHERE member_id = $1")
        .bind(caller.id.clone())
        .fetch_all(&store.pool)
        .await
        .map_err(db)?;
    let exclude: Vec<_> = existing.iter().filter_map(|row| base64_url(&text(row, "id"))).collect();
    let (options, state) = fido
        .webauthn
        .start_securitykey_registration(
            user_handle(caller),
            &caller.id,
            &caller.name,
            (!exclude.is_empty()).then_some(exclude),
            None,
            None,
        )
        .map_err(|e| ApiError::unprocessable("fido_registration", e.to_string()))?;
    let state = serde_json::to_string(&state).map_err(|e| internal(&e))?;
    let (mut tx, _turn) = store.begin().await?;
    sqlx::query("DELETE FROM fido_registrations WHERE member_id = $1")
        .bind(caller.id.clone())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "INSERT INTO fido_registrations (member_id, state, created_at) VALUES ($1, $2, $3)",
    )
    .bind(caller.id.clone())
    .bind(state)
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(json!({ "options": options }))
}

fn internal(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::from(crate::QueueError::Database(error.to_string()))
}

fn base64_url(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

fn base64_text(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Registrations left unfinished expire after this many seconds.
const REGISTRATION_SECONDS: i64 = 300;

/// `POST /v1/fido/registrations/finish {credential}`: checks the authenticator's answer
/// against the caller's pending registration and keeps the key, unconfirmed.
pub async fn finish_registration(
    store: &Db,
    fido: Option<&Fido>,
    caller: &Member,
    body: &Value,
) -> Result<Value, ApiError> {
    let fido = fido.ok_or_else(not_configured)?;
    let credential: RegisterPublicKeyCredential =
        serde_json::from_value(body.get("credential").cloned().unwrap_or(Value::Null))
            .map_err(|e| ApiError::bad_request(format!("credential: {e}")))?;
    let (mut tx, _turn) = store.begin().await?;
    let row = sqlx::query("SELECT state, created_at FROM fido_registrations WHERE member_id = $1")
        .bind(caller.id.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| {
            ApiError::conflict("fido_no_registration", "no registration was started for you")
        })?;
    if int(&row, "created_at") + REGISTRATION_SECONDS < now() {
        return Err(ApiError::conflict("fido_no_registration", "the registration expired"));
    }
    let state: SecurityKeyRegistration =
        serde_json::from_str(&text(&row, "state")).map_err(|e| internal(&e))?;
    let key = fido
        .webauthn
        .finish_securitykey_registration(&credential, &state)
        .map_err(|e| ApiError::unprocessable("fido_registration", format!("credential: {e}")))?;
    let credential: Credential = key.into();
    let id = base64_text(credential.cred_id.as_ref());
    let taken = sqlx::query("SELECT member_id FROM fido_credentials WHERE id = $1")
        .bind(id.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if taken.is_some() {
        return Err(ApiError::conflict(
            "fido_key_taken",
            "this security key is registered already",
        ));
    }
    let public_key = serde_json::to_string(&credential.cred).map_err(|e| internal(&e))?;
    // Another credential id around a public key already registered would let one person's
    // assertions pass as another's key.
    let same_key = sqlx::query("SELECT id FROM fido_credentials WHERE public_key = $1")
        .bind(public_key.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if same_key.is_some() {
        return Err(ApiError::conflict("fido_key_taken", "this public key is registered already"));
    }
    // Limitation: no attestation CA list is enforced; the admin who confirms a key sees its
    // attestation format and fingerprint and must check the device out of band.
    let attestation = format!("{:?}", credential.attestation_format);
    sqlx::query(
        "INSERT INTO fido_credentials (id, member_id, public_key, counter, created_at, attestation) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.clone())
    .bind(caller.id.clone())
    .bind(public_key)
    .bind(i64::from(credential.counter))
    .bind(now())
    .bind(attestation)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM fido_registrations WHERE member_id = $1")
        .bind(caller.id.clone())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    audit(&mut tx, "fido_registered", &json!({ "credentialId": id, "member": caller.id })).await?;
    tx.commit().await.map_err(db)?;
    Ok(json!({ "credentialId": id, "member": caller.id, "confirmed": false }))
}

/// What an admin does to a key: the columns it sets, the audit entry, the answer's flag.
struct KeyChange {
    at: &'static str,
    by: &'static str,
    audit: &'static str,
    answer: &'static str,
}

/// `POST /v1/fido/credentials/{id}/confirm` (admin): the key counts from now on.
pub async fn confirm(store: &Db, caller: &Member, id: &str) -> Result<Value, ApiError> {
    let change = KeyChange {
        at: "confirmed_at",
        by: "confirmed_by",
        audit: "fido_confirmed",
        answer: "confirmed",
    };
    change_key(store, caller, id, &change).await
}

/// `POST /v1/fido/credentials/{id}/revoke` (admin): the key no longer counts, for good (a
/// lost or cloned key).
pub async fn revoke(store: &Db, caller: &Member, id: &str) -> Result<Value, ApiError> {
    let change =
        KeyChange { at: "revoked_at", by: "revoked_by", audit: "fido_revoked", answer: "revoked" };
    change_key(store, caller, id, &change).await
}

/// Sets `change.at` and `change.by` once, in the audit log too; doing it again changes
/// nothing. The column names are this module's constants, never input.
async fn change_key(
    store: &Db,
    caller: &Member,
    id: &str,
    change: &KeyChange,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Admin])?;
    let (mut tx, _turn) = store.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT member_id, {} FROM fido_credentials WHERE id = $1",
        change.at
    ))
    .bind(id.to_owned())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?
    .ok_or_else(|| ApiError::not_found(format!("security key {id}")))?;
    let member = text(&row, "member_id");
    if optional_int(&row, change.at).is_none() {
        let statement = format!(
            "UPDATE fido_credentials SET {} = $1, {} = $2 WHERE id = $3",
            change.at, change.by
        );
        sqlx::query(&statement)
            .bind(now())
            .bind(caller.id.clone())
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let body = json!({ "credentialId": id, "member": member, "by": caller.id });
        audit(&mut tx, change.audit, &body).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(json!({ "credentialId": id, "member": member, change.answer: true }))
}

/// `GET /v1/fido/credentials`: every key for an admin, the caller's own otherwise.
pub async fn credentials(store: &Db, caller: &Member) -> Result<Value, ApiError> {
    let rows = if caller.role == Role::Admin {
        sqlx::query("SELECT id, member_id, counter, confirmed_at, revoked_at, public_key, attestation FROM fido_credentials ORDER BY created_at")
            .fetch_all(&store.pool)
            .await
    } else {
        sqlx::query("SELECT id, member_id, counter, confirmed_at, revoked_at, public_key, attestation FROM fido_credentials WHERE member_id = $1 ORDER BY created_at")
            .bind(caller.id.clone())
            .fetch_all(&store.pool)
            .await
    }
    .map_err(db)?;
    let keys: Vec<Value> = rows
        .iter()
        .map(|row| {
            let confirmed = optional_int(row, "confirmed_at").is_some();
            let revoked = optional_int(row, "revoked_at").is_some();
            let fingerprint = serde_json::from_str::<COSEKey>(&text(row, "public_key"))
                .map(|key| countersign_fido::fingerprint(&key))
                .unwrap_or_default();
            json!({ "credentialId": text(row, "id"), "member": text(row, "member_id"),
                    "counter": int(row, "counter"), "confirmed": confirmed, "revoked": revoked,
                    "publicKeySha256": fingerprint, "attestation": text(row, "attestation") })
        })
        .collect();
    Ok(json!({ "credentials": keys }))
}

/// `POST /v1/vaults/fido-policy {chainId, address, policy}` (admin).
pub async fn set_policy(store: &Db, caller: &Member, body: &Value) -> Result<Value, ApiError> {
    caller.require(&[Role::Admin])?;
    let chain_id = body
        .get("chainId")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::bad_request("chainId: must be a positive integer"))?;
    let address = crate::model::string_field(body, "address")?;
    let address = countersign_core::address::parse_address("address", &address)?.address;
    let policy = PresencePolicy::parse(body.get("policy").unwrap_or(&Value::Null))
        .map_err(|e| ApiError::bad_request(e.to_string().replacen("fidoPolicy", "policy", 1)))?;
    let vault = crate::model::vault_id(chain_id, &address);
    let (mut tx, _turn) = store.begin().await?;
    let exists = sqlx::query("SELECT id FROM vaults WHERE id = $1")
        .bind(vault.clone())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(ApiError::not_found(format!("vault {vault}")));
    }
    let text = serde_json::to_string(&policy).map_err(|e| internal(&e))?;
    sqlx::query("DELETE FROM fido_policies WHERE vault_id = $1")
        .bind(vault.clone())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO fido_policies (vault_id, policy, updated_at) VALUES ($1, $2, $3)")
        .bind(vault.clone())
        .bind(text)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    audit(&mut tx, "fido_policy_set", &json!({ "vault": vault, "policy": policy })).await?;
    tx.commit().await.map_err(db)?;
    Ok(json!({ "vault": vault, "policy": policy }))
}

/// The vault's presence policy and why it asks for a security key for this transaction, or
/// None when it does not.
fn requirement(
    policy: Option<PresencePolicy>,
    rules: &QueueRules,
    vault: &str,
    transaction_json: &str,
) -> Result<Option<(PresencePolicy, String)>, ApiError> {
    let Some(policy) = policy else { return Ok(None) };
    let request = SafeTxRequest::from_json(transaction_json.as_bytes())
        .map_err(|e| internal(&e.to_string()))?;
    let chain_id: u64 = vault.split(':').next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let call = decode_call(request.safe, chain_id, &request.tx);
    Ok(policy.required(&request.tx, &call, chain_id, &rules.tokens).map(|reason| (policy, reason)))
}

/// The vault's presence policy. One that cannot be read is an error, never "no policy".
async fn policy_of(store: &Db, vault: &str) -> Result<Option<PresencePolicy>, ApiError> {
    let row = sqlx::query("SELECT policy FROM fido_policies WHERE vault_id = $1")
        .bind(vault.to_owned())
        .fetch_optional(&store.pool)
        .await
        .map_err(db)?;
    read_policy(vault, row.map(|row| text(&row, "policy")))
}

/// A presence policy as stored for `vault` (`None`: the vault has none). One that cannot be
/// read is an error, never "no policy".
pub(crate) fn read_policy(
    vault: &str,
    stored: Option<String>,
) -> Result<Option<PresencePolicy>, ApiError> {
    match stored {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| internal(&format!("the presence policy of {vault} cannot be read"))),
    }
}

/// An assertion that passed, to be recorded with its approval.
#[derive(Debug, Clone)]
pub struct FidoUse {
    pub credential_id: String,
    pub counter: u32,
    /// The [`StoredApproval`] as of now (relying party, policy, key), as JSON: what the
    /// offline re-check is handed later.
    pub stored: String,
}

/// The approval an assertion must stand beside.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalFacts<'a> {
    pub request_id: &'a str,
    pub vault: &'a str,
    pub transaction_json: &'a str,
    pub safe_tx_hash: &'a B256,
    pub owner: &'a Address,
    /// The member the owner is.
    pub member_id: &'a str,
}

/// What an approval of the request needs under its vault's presence `policy` (as read with the
/// request), and the checked assertion `given` when one is needed. The key is read through the
/// approval's own transaction `tx`. The outer error is a database failure (the whole batch
/// fails); the inner one is this approval's refusal.
pub async fn check_approval(
    tx: &mut Transaction<'_, Any>,
    fido: Option<&Fido>,
    rules: &QueueRules,
    policy: Option<PresencePolicy>,
    approval: &ApprovalFacts<'_>,
    given: Option<&Value>,
) -> Result<Result<Option<FidoUse>, ApiError>, ApiError> {
    let asked = match asked_for(fido, rules, policy, approval, given) {
        Ok(Some(asked)) => asked,
        Ok(None) => return Ok(Ok(None)),
        Err(refusal) => return Ok(Err(refusal)),
    };
    let row = sqlx::query(
        "SELECT member_id, public_key, counter, confirmed_at, revoked_at FROM fido_credentials \
         WHERE id = $1",
    )
    .bind(asked.credential_id.clone())
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    Ok(checked(asked, row, approval).map(Some))
}

/// An assertion the presence policy asks for, parsed.
struct Asked<'a> {
    fido: &'a Fido,
    policy: PresencePolicy,
    assertion: Assertion,
    credential_id: String,
}

/// Whether the approval needs an assertion, and the one given, parsed.
fn asked_for<'a>(
    fido: Option<&'a Fido>,
    rules: &QueueRules,
    policy: Option<PresencePolicy>,
    approval: &ApprovalFacts<'_>,
    given: Option<&Value>,
) -> Result<Option<Asked<'a>>, ApiError> {
    let Some((policy, reason)) =
        requirement(policy, rules, approval.vault, approval.transaction_json)?
    else {
        return Ok(None);
    };
    let fido = fido.ok_or_else(not_configured)?;
    let Some(given) = given.filter(|v| !v.is_null()) else {
        return Err(ApiError::unprocessable(
            "fido_required",
            format!("fido: this approval needs a security key assertion ({reason})"),
        ));
    };
    let assertion: Assertion = serde_json::from_value(given.clone())
        .map_err(|e| ApiError::bad_request(format!("fido: {e}")))?;
    let credential_id = assertion.credential_id.trim_end_matches('=').to_owned();
    Ok(Some(Asked { fido, policy, assertion, credential_id }))
}

/// The assertion checked against the registered key `row` and the approval.
fn checked(
    asked: Asked<'_>,
    row: Option<sqlx::any::AnyRow>,
    approval: &ApprovalFacts<'_>,
) -> Result<FidoUse, ApiError> {
    let ApprovalFacts { request_id, safe_tx_hash, owner, member_id, .. } = *approval;
    let Asked { fido, policy, assertion, credential_id } = asked;
    let row = row.ok_or_else(|| {
        ApiError::unprocessable(
            "fido_unknown_key",
            "fido.credentialId: no such security key is registered",
        )
    })?;
    if text(&row, "member_id") != member_id {
        return Err(ApiError::unprocessable(
            "fido_other_member",
            "fido.credentialId: the security key belongs to another member than the signing owner",
        ));
    }
    if optional_int(&row, "revoked_at").is_some() {
        return Err(ApiError::unprocessable(
            "fido_revoked",
            "fido.credentialId: an admin revoked this security key",
        ));
    }
    if optional_int(&row, "confirmed_at").is_none() {
        return Err(ApiError::unprocessable(
            "fido_unconfirmed",
            "fido.credentialId: the security key is not confirmed by an admin yet",
        ));
    }
    let key: COSEKey = serde_json::from_str(&text(&row, "public_key")).map_err(|e| internal(&e))?;
    let stored = u32::try_from(int(&row, "counter")).unwrap_or(u32::MAX);
    let expected = Expected {
        request_id,
        safe_tx_hash,
        owner,
        require_user_verification: policy.user_verification,
        stored_counter: Some(stored),
    };
    let verified = countersign_fido::verify(&fido.rp, &key, &assertion, &expected)
        .map_err(|refusal| ApiError::unprocessable(refusal.code(), refusal.to_string()))?;
    let kept = StoredApproval {
        request_id: request_id.to_owned(),
        safe_tx_hash: *safe_tx_hash,
        owner: *owner,
        member: member_id.to_owned(),
        relying_party: fido.rp.clone(),
        user_verification_required: policy.user_verification,
        public_key: key,
        assertion: Assertion { credential_id: credential_id.clone(), ..assertion },
    };
    Ok(FidoUse {
        credential_id,
        counter: verified.counter,
        stored: serde_json::to_string(&kept).map_err(|e| internal(&e))?,
    })
}

/// Moves the key's counter forward inside the approval's transaction; false if another
/// approval used this counter value (or a later one) first: a replay.
pub async fn advance_counter(
    tx: &mut Transaction<'_, Any>,
    used: &FidoUse,
) -> Result<bool, ApiError> {
    let counter = i64::from(used.counter);
    let done = sqlx::query(
        "UPDATE fido_credentials SET counter = $1 WHERE id = $2 AND (counter < $3 OR (counter = 0 AND $4 = 0))",
    )
    .bind(counter)
    .bind(used.credential_id.clone())
    .bind(counter)
    .bind(counter)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// `GET /v1/requests/{id}/approvals/{owner}/fido`: the stored approval with its assertion,
/// for [`countersign_fido::reverify`] offline.
pub async fn stored_approval(
    store: &Db,
    fido: Option<&Fido>,
    request_id: &str,
    owner: &str,
) -> Result<Value, ApiError> {
    let _ = fido.ok_or_else(not_configured)?;
    // Owners are kept checksummed; any spelling of the address finds them.
    let owner = &countersign_core::address::checksummed(
        &countersign_core::address::parse_address("owner", owner)?.address,
    );
    let row = sqlx::query("SELECT fido FROM approvals WHERE request_id = $1 AND owner = $2")
        .bind(request_id.to_owned())
        .bind(owner.to_owned())
        .fetch_optional(&store.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found(format!("approval of {request_id} by {owner}")))?;
    // Kept as it was when the approval was taken: that day's relying party and policy.
    optional_text(&row, "fido").and_then(|text| serde_json::from_str(&text).ok()).ok_or_else(|| {
        ApiError::not_found(format!("a security key assertion for {request_id} by {owner}"))
    })
}
