//! The commands that talk to an approval queue: connect, submit, administer, sync, list, show,
//! approve, reject.

use std::path::Path;

use alloy_primitives::Address;
use countersign_core::address::{checksummed, parse_address};
use countersign_core::guard::{review, Review};
use countersign_core::intent::{check_request_id, intent_digest};
use countersign_core::policy::Policy;
use countersign_core::request::{parse_object, JsonObject, SafeTxRequest, MAX_REQUEST_BYTES};
use countersign_core::secret::SecretString;
use countersign_core::signer::Signer;
use countersign_core::tokens::TokenList;
use countersign_core::version::SafeVersion;
use countersign_store::{CachedRequest, Store};
use countersign_sync::client::{ClientError, Session};
use countersign_sync::pin::Pins;
use countersign_sync::sync::{payload_hash, sync, Connection, SyncError};
use serde_json::{json, Value};

use crate::args::{
    AdminConnection, KeyChoice, QueueApiKeyCommand, QueueMemberCommand, QueueVaultCommand,
};
use crate::commands::{sign_reviewed, software_signer, Signed};
use crate::context::{read_limited, read_small_text, Context};
use crate::failure::{Failure, Outcome};
use crate::report;

/// The queue's answer as an exit code: 400 is our bad input (2), other 4xx a refusal (1),
/// anything else a failure (3).
fn client_failure(error: impl Into<QueueFailure>) -> Failure {
    match error.into() {
        QueueFailure::Client(ClientError::Status { status: 400, code, message }) => {
            Failure::input(format!("the queue answered 400 {code}: {message}"))
        }
        QueueFailure::Client(error @ ClientError::Status { status: 401..=499, .. }) => {
            Failure::Refused(error.to_string())
        }
        QueueFailure::Client(error) => Failure::other(error.to_string()),
        QueueFailure::Sync(SyncError::Client(error)) => client_failure(error),
        QueueFailure::Sync(error) => Failure::other(error.to_string()),
    }
}

enum QueueFailure {
    Client(ClientError),
    Sync(SyncError),
}

impl From<ClientError> for QueueFailure {
    fn from(error: ClientError) -> Self {
        Self::Client(error)
    }
}

impl From<SyncError> for QueueFailure {
    fn from(error: SyncError) -> Self {
        Self::Sync(error)
    }
}

fn api_key(path: &Path) -> Result<SecretString, Failure> {
    let text = read_small_text(path).map_err(|e| Failure::input(format!("api-key-file: {e}")))?;
    Ok(SecretString::new(text.lines().next().unwrap_or_default().trim().to_owned()))
}

async fn admin_session(connection: &AdminConnection) -> Result<Session, Failure> {
    let connection = Connection {
        url: connection.url.clone(),
        pins: connection.pins.clone(),
        api_key: api_key(&connection.api_key_file)?,
        initiators: Vec::new(),
    };
    connection.session().await.map_err(client_failure)
}

async fn stored_connection(store: &Store) -> Result<Connection, Failure> {
    let (secret, _) = store.queue_config().await?.ok_or_else(|| {
        Failure::input("queue: no queue is connected; run `countersign queue connect`")
    })?;
    Connection::from_secret(&secret).map_err(client_failure)
}

pub async fn connect(
    context: &Context,
    url: String,
    pins: Vec<String>,
    key_file: &Path,
    initiators: Vec<String>,
) -> Result<Outcome, Failure> {
    let texts: Vec<&str> = pins.iter().map(String::as_str).collect();
    Pins::parse(&texts).map_err(|e| Failure::input(e.to_string()))?;
    let initiators = initiators
        .iter()
        .enumerate()
        .map(|(i, a)| parse_address(&format!("initiator[{i}]"), a).map(|p| p.address))
        .collect::<Result<Vec<Address>, _>>()?;
    let connection = Connection { url, pins, api_key: api_key(key_file)?, initiators };
    let session = connection.session().await.map_err(client_failure)?;
    let store = context.open_store().await?;
    store.set_queue_config(&connection.to_secret()).await?;
    outln!(
        "Connected to {} as {} ({}).",
        connection.url,
        session.member["id"],
        session.member["role"]
    );
    Ok(Outcome::Done)
}

pub async fn submit(
    context: &Context,
    file: &Path,
    id: &str,
    chain_id: u64,
    choice: &KeyChoice,
) -> Result<Outcome, Failure> {
    check_request_id("id", id)?;
    let input = read_limited("request", file, MAX_REQUEST_BYTES)?;
    let object = parse_object(&input)?;
    let request = SafeTxRequest::from_object(&object)?;
    let store = context.open_store().await?;
    let vault = store.vault(chain_id, &request.safe).await?;
    let hash = vault.domain().hashes(&request.tx).safe_tx;
    let signer = software_signer(&store, choice).await?;
    let created_at = countersign_store::unix_now() as u64;
    let digest = intent_digest(chain_id, id, request.safe, hash, created_at);
    let signature = signer.sign_digest(&digest).map_err(|e| Failure::other(e.to_string()))?;
    let body = json!({
        "id": id, "chainId": chain_id, "createdAt": created_at, "initiatorSignature": signature.to_hex(),
        "transaction": Value::Object(object.0.into_iter().collect()),
    });
    let session = stored_connection(&store).await?.session().await.map_err(client_failure)?;
    let view = session.post("/v1/requests", &body).await.map_err(client_failure)?;
    store.audit("submitted", &json!({ "id": id, "safeTxHash": hash.to_string() })).await?;
    outln!("Submitted {id}: {} (safeTxHash {hash})", view["state"]);
    Ok(Outcome::Done)
}

pub async fn vault(command: QueueVaultCommand) -> Result<Outcome, Failure> {
    let QueueVaultCommand::Add {
        connection,
        chain_id,
        address,
        safe_version,
        owners,
        threshold,
        next_nonce,
    } = command;
    SafeVersion::parse("safeVersion", &safe_version)?;
    let session = admin_session(&connection).await?;
    let body = json!({ "chainId": chain_id, "address": address, "safeVersion": safe_version,
                       "owners": owners, "threshold": threshold, "nextNonce": next_nonce });
    let vault = session.post("/v1/vaults", &body).await.map_err(client_failure)?;
    outln!("{vault}");
    Ok(Outcome::Done)
}

pub async fn member(command: QueueMemberCommand) -> Result<Outcome, Failure> {
    let QueueMemberCommand::Add { connection, id, name, role, address } = command;
    let session = admin_session(&connection).await?;
    let member = session
        .post("/v1/members", &json!({ "id": id, "name": name, "role": role, "address": address }))
        .await
        .map_err(client_failure)?;
    outln!("{member}");
    Ok(Outcome::Done)
}

pub async fn api_key_new(command: QueueApiKeyCommand) -> Result<Outcome, Failure> {
    let QueueApiKeyCommand::New { connection, member } = command;
    let session = admin_session(&connection).await?;
    let reply = session
        .post(&format!("/v1/members/{member}/api-keys"), &json!({}))
        .await
        .map_err(client_failure)?;
    // Printed once; the queue keeps only its hash.
    outln!("{}", reply["apiKey"].as_str().unwrap_or_default());
    Ok(Outcome::Done)
}

pub async fn run_sync(context: &Context) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let connection = stored_connection(&store).await?;
    let report = sync(&store, &connection).await.map_err(client_failure)?;
    outln!("Synced {} change(s).", report.fetched);
    if report.more {
        outln!("The queue has more changes; run sync again.");
    }
    for (id, why) in &report.marked {
        outln!("MARKED {id}: {why}; it cannot be signed");
    }
    for incident in &report.incidents {
        outln!("Incident {incident} opened (countersign incident list).");
    }
    for difference in &report.vault_differences {
        outln!("{difference}");
    }
    Ok(if report.marked.is_empty() { Outcome::Done } else { Outcome::Refused })
}

fn marks(cached: &CachedRequest) -> Vec<String> {
    cached.body["countersign"]["marks"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

pub async fn list(context: &Context) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let requests = store.cached_requests().await?;
    if requests.is_empty() {
        outln!("No synced requests (countersign sync).");
    }
    for cached in requests {
        // Safe, nonce and approvals as Countersign read and checked them, not as claimed.
        let body = &cached.body;
        let checked = &body["countersign"];
        let approvals = checked["approvedBy"].as_array().map(Vec::len).unwrap_or(0);
        let mark = if marks(&cached).is_empty() { "" } else { "  MARKED" };
        outln!(
            "{}  {}  chain {}  {}  nonce {}  approvals {approvals}{mark}",
            cached.id,
            countersign_core::printable(body["state"].as_str().unwrap_or("?")),
            body["chainId"],
            checked["safe"].as_str().unwrap_or("?"),
            checked["nonce"].as_str().unwrap_or("?")
        );
    }
    Ok(Outcome::Done)
}

/// The local review of a cached request: our vault record, our policy, our history.
async fn local_review(
    store: &Store,
    cached: &CachedRequest,
    tokens: &TokenList,
) -> Result<Review, Failure> {
    let Some(object) = cached.body["transaction"].as_object() else {
        return Err(Failure::other(format!(
            "request {}: no transaction in the synced copy",
            cached.id
        )));
    };
    let request = SafeTxRequest::from_object(&JsonObject(object.clone().into_iter().collect()))?;
    let vault = store.vault(cached.body["chainId"].as_u64().unwrap_or(0), &request.safe).await?;
    let policy: Policy = store.policy().await?;
    let history = store.history(&vault, request.tx.nonce).await?;
    Ok(review(request, &vault, &policy, tokens, &history))
}

async fn cached(store: &Store, id: &str) -> Result<CachedRequest, Failure> {
    store.cached_request(id).await?.ok_or_else(|| {
        Failure::input(format!("id: no synced request {id}; run `countersign sync`"))
    })
}

pub async fn show(context: &Context, id: &str) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let tokens = context.tokens()?;
    let cached = cached(&store, id).await?;
    let review = local_review(&store, &cached, &tokens).await?;
    outln!("Request {id} on the queue: {}", cached.body["state"].as_str().unwrap_or("?"));
    for mark in marks(&cached) {
        outln!("MARKED: {mark}; it cannot be signed");
    }
    out!("{}", report::review_text(&review, &tokens));
    let verified = cached.body["countersign"]["approvedBy"].as_array().cloned().unwrap_or_default();
    for owner in &verified {
        outln!("Approved by {} (signature verified)", owner.as_str().unwrap_or("?"));
    }
    let claimed = cached.body["approvals"].as_array().map(Vec::len).unwrap_or(0);
    if claimed > verified.len() {
        outln!(
            "{} approval(s) listed by the queue did not verify and are not counted",
            claimed - verified.len()
        );
    }
    Ok(if review.refusals.is_empty() && marks(&cached).is_empty() {
        Outcome::Done
    } else {
        Outcome::Refused
    })
}

pub async fn approve(
    context: &Context,
    id: &str,
    choice: &KeyChoice,
    yes: bool,
) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let tokens = context.tokens()?;
    let cached = cached(&store, id).await?;
    let signer = software_signer(&store, choice).await?;
    let mut review = local_review(&store, &cached, &tokens).await?;
    review.check_signer(signer.address());
    let shown = report::audit_body(&review, &tokens);
    store.audit("inspected", &shown).await?;
    let mut marked = marks(&cached);
    let created = cached.body["createdAt"].as_i64().unwrap_or(0);
    if created.saturating_add(168 * 3600) < countersign_store::unix_now() {
        marked.push("it is older than the longest expiry (168 hours)".to_owned());
    }
    if !marked.is_empty() {
        out!("{}", report::review_text(&review, &tokens));
        for mark in marked {
            outln!("MARKED: {mark}; it cannot be signed");
        }
        return Ok(Outcome::Refused);
    }
    if cached.body["safeTxHash"].as_str() != Some(review.hashes.safe_tx.to_string().as_str()) {
        return Err(Failure::other(
            "the synced safeTxHash differs from ours; run `countersign sync`",
        ));
    }
    // What was reviewed is the synced copy: ask the queue for the request as it is now, and
    // sign only if it is still pending and its payload is the one reviewed.
    let session = stored_connection(&store).await?.session().await.map_err(client_failure)?;
    let current = session.get(&format!("/v1/requests/{id}")).await.map_err(client_failure)?;
    if payload_hash(&current) != cached.payload_hash {
        return Err(Failure::Refused(format!(
            "request {id} changed on the queue since it was synced; run `countersign sync`, which marks it"
        )));
    }
    if current["state"] != json!("pending") {
        return Err(Failure::Refused(format!(
            "request {id} is {} on the queue; nothing was signed",
            current["state"].as_str().unwrap_or("?")
        )));
    }
    let hash = review.hashes.safe_tx;
    let signature =
        match sign_reviewed(&store, review, &signer, yes, &tokens, &shown, false).await? {
            Signed::Done { signature, .. } => signature,
            Signed::Not(outcome) => return Ok(outcome),
        };
    outln!("\nStep 1 of 2: signed by {}.", checksummed(&signer.address()));
    let body = json!({ "safeTxHash": hash.to_string(), "signature": signature.to_hex() });
    let reply = session
        .post(&format!("/v1/requests/{id}/approvals"), &body)
        .await
        .map_err(client_failure)?;
    let approvals = reply["approvals"].as_array().map(Vec::len).unwrap_or(0);
    outln!("Step 2 of 2: the queue recorded the approval; the request is {} with {approvals} approval(s).", reply["state"].as_str().unwrap_or("?"));
    Ok(Outcome::Done)
}

pub async fn reject(context: &Context, id: &str, reason: &str) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    // Remembered before the queue is asked: this approver never signs what they rejected.
    if let Some(mut cached) = store.cached_request(id).await? {
        let mark = json!("this approver rejected it");
        if let Some(list) = cached.body["countersign"]["marks"].as_array_mut() {
            list.push(mark);
        }
        let (_, cursor) = store
            .queue_config()
            .await?
            .unwrap_or((countersign_core::secret::SecretBytes::new(vec![]), 0));
        store.store_synced(&[cached], cursor).await?;
    }
    let session = stored_connection(&store).await?.session().await.map_err(client_failure)?;
    let reply = session
        .post(&format!("/v1/requests/{id}/rejections"), &json!({ "reason": reason }))
        .await
        .map_err(client_failure)?;
    store.audit("rejected", &json!({ "id": id, "reason": reason })).await?;
    outln!(
        "The queue recorded the rejection; the request is {}.",
        reply["state"].as_str().unwrap_or("?")
    );
    Ok(Outcome::Done)
}

/// Shows the queue's record of a vault next to the pinned one, and pins it only with `yes`.
pub async fn accept_queue_vault(
    store: &Store,
    chain_id: u64,
    address: Address,
    yes: bool,
) -> Result<Outcome, Failure> {
    let pinned = store.vault(chain_id, &address).await?;
    let session = stored_connection(store).await?.session().await.map_err(client_failure)?;
    let vaults = session.get("/v1/vaults").await.map_err(client_failure)?;
    let theirs = vaults["vaults"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| {
            v["chainId"].as_u64() == Some(chain_id)
                && v["address"].as_str() == Some(checksummed(&address).as_str())
        })
        .cloned()
        .ok_or_else(|| {
            Failure::input(format!(
                "address: the queue has no record of {} on chain {chain_id}",
                checksummed(&address)
            ))
        })?;
    let mut record = countersign_core::vault::VaultRecord::new(
        chain_id,
        address,
        SafeVersion::parse("safeVersion", theirs["safeVersion"].as_str().unwrap_or_default())?,
    );
    for (i, owner) in theirs["owners"].as_array().into_iter().flatten().enumerate() {
        record.owners.push(
            parse_address(&format!("owners[{i}]"), owner.as_str().unwrap_or_default())?.address,
        );
    }
    record.threshold = theirs["threshold"].as_u64().map(|t| t as u32);
    record.next_nonce =
        countersign_core::request::parse_uint("nextNonce", &theirs["nextNonce"]).ok();
    let owners = |r: &countersign_core::vault::VaultRecord| {
        r.owners.iter().map(checksummed).collect::<Vec<_>>().join(", ")
    };
    outln!("Pinned: Safe {}, {:?} of [{}]", pinned.version, pinned.threshold, owners(&pinned));
    outln!("Queue:  Safe {}, {:?} of [{}]", record.version, record.threshold, owners(&record));
    if record.version == pinned.version
        && record.owners == pinned.owners
        && record.threshold == pinned.threshold
    {
        outln!("They agree; nothing to accept.");
        return Ok(Outcome::Done);
    }
    if !yes {
        outln!("Nothing changed. Check the new owners out of band, then run again with --yes to pin them.");
        return Ok(Outcome::Refused);
    }
    store.replace_vault(&record, "queue").await?;
    outln!("Pinned the queue's record.");
    Ok(Outcome::Done)
}
