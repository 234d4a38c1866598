//! The commands that talk to an approval queue: connect, submit, administer, sync, list, show,
//! approve, reject.

use std::path::Path;

use alloy_primitives::Address;
use countersign_core::address::{checksummed, parse_address};
use countersign_core::intent::{check_request_id, intent_digest};
use countersign_core::request::{parse_object, SafeTxRequest, MAX_REQUEST_BYTES};
use countersign_core::secret::SecretString;
use countersign_core::version::SafeVersion;
use countersign_store::Store;
use countersign_sync::client::{ClientError, Session};
use countersign_sync::pin::Pins;
use countersign_sync::sync::{sync, Connection, SyncError};
use serde_json::{json, Value};

use crate::args::{
    AdminConnection, KeyChoice, QueueApiKeyCommand, QueueMemberCommand, QueueVaultCommand,
};
use crate::commands::{printed, signer, software_signer, Signed, TerminalPrompt};
use crate::context::{read_limited, read_small_text, Context};
use crate::failure::{Failure, Outcome};
use countersign_approver::actions::{self, Approved};
use countersign_approver::view as report;

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
    let store = context.open_store().await?;
    // As in the app: the same queue's credentials may change and the synced copy with its
    // marks is kept; another queue is refused.
    let member = countersign_approver::setup::connect(&store, &connection).await?;
    outln!("Connected to {} as {} ({}).", connection.url, member["id"], member["role"]);
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
    let session =
        actions::stored_connection(&store).await?.session().await.map_err(client_failure)?;
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
    let connection = actions::stored_connection(&store).await?;
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
        let mark = if actions::marks(&cached).is_empty() { "" } else { "  MARKED" };
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

pub async fn show(context: &Context, id: &str) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let tokens = context.tokens()?;
    let cached = actions::cached(&store, id).await?;
    let review = actions::local_review(&store, &cached, &tokens).await?;
    outln!("Request {id} on the queue: {}", cached.body["state"].as_str().unwrap_or("?"));
    for mark in actions::marks(&cached) {
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
    Ok(if review.refusals.is_empty() && actions::marks(&cached).is_empty() {
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
    let signer = signer(&store, choice).await?;
    let review =
        actions::local_review(&store, &actions::cached(&store, id).await?, &tokens).await?;
    let prompt = TerminalPrompt { yes, preface: Some(report::review_text(&review, &tokens)) };
    let security_key = security_key();
    let prompts: std::sync::Arc<dyn countersign_approver::presence::KeyPrompts> =
        std::sync::Arc::new(TerminalKeyPrompts);
    let approved = actions::approve(
        &store,
        &tokens,
        id,
        signer.as_ref(),
        &prompt,
        Some((&security_key, prompts)),
        &|_| true,
    )
    .await?;
    match approved {
        Approved::Marked { review, marks } => {
            out!("{}", report::review_text(&review, &tokens));
            for mark in marks {
                outln!("MARKED: {mark}; it cannot be signed");
            }
            Ok(Outcome::Refused)
        }
        Approved::NotSigned(signed) => {
            let Signed::Not(outcome) = printed(signed, &tokens, false) else {
                return Err(Failure::other("a signature was made but not sent"));
            };
            Ok(outcome)
        }
        Approved::Sent { signer, state, approvals, .. } => {
            outln!("\nStep 1 of 2: signed by {}.", checksummed(&signer));
            outln!("Step 2 of 2: the queue recorded the approval; the request is {state} with {approvals} approval(s).");
            Ok(Outcome::Done)
        }
    }
}

pub async fn reject(context: &Context, id: &str, reason: &str) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let state = actions::reject(&store, id, reason).await?;
    outln!("The queue recorded the rejection; the request is {state}.");
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
    let session =
        actions::stored_connection(store).await?.session().await.map_err(client_failure)?;
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
    let record = countersign_approver::vaults::from_queue(&theirs)?;
    let owners = |r: &countersign_core::vault::VaultRecord| {
        r.owners.iter().map(checksummed).collect::<Vec<_>>().join(", ")
    };
    let threshold = |r: &countersign_core::vault::VaultRecord| {
        r.threshold.map_or_else(|| "?".to_owned(), |t| t.to_string())
    };
    outln!("Pinned: Safe {}, {} of [{}]", pinned.version, threshold(&pinned), owners(&pinned));
    outln!("Queue:  Safe {}, {} of [{}]", record.version, threshold(&record), owners(&record));
    if record.same_signers(&pinned) {
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

/// A security key's prompts at the terminal: the PIN from `COUNTERSIGN_FIDO_PIN`, else asked
/// for; the touch said on standard error.
#[derive(Debug)]
pub struct TerminalKeyPrompts;

impl countersign_approver::presence::KeyPrompts for TerminalKeyPrompts {
    fn pin(&self) -> Option<String> {
        if let Ok(pin) = std::env::var("COUNTERSIGN_FIDO_PIN") {
            return Some(pin);
        }
        rpassword::prompt_password("Security key PIN: ").ok()
    }

    fn touch(&self) {
        eprintln!("Touch your security key.");
    }
}

/// `countersign fido register`: registers this member's security key with the queue.
pub async fn fido_register(context: &Context) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    let session =
        actions::stored_connection(&store).await?.session().await.map_err(client_failure)?;
    let key = security_key();
    let answer = countersign_approver::presence::register(
        &session,
        &key,
        std::sync::Arc::new(TerminalKeyPrompts),
    )
    .await?;
    let id = answer["credentialId"].as_str().unwrap_or_default();
    outln!("{id}");
    eprintln!(
        "Registered, not yet confirmed: an admin confirms it with `countersign queue fido \
         confirm {id} --url URL --pin PIN --api-key-file ADMIN_KEY` once they have checked the \
         key with you."
    );
    Ok(Outcome::Done)
}

/// `countersign queue fido …` (admin).
pub async fn fido_admin(command: crate::args::QueueFidoCommand) -> Result<Outcome, Failure> {
    use crate::args::QueueFidoCommand;
    let (connection, path, body) = match &command {
        QueueFidoCommand::List { connection } => {
            (connection, "/v1/fido/credentials".to_owned(), None)
        }
        QueueFidoCommand::Confirm { connection, id } => {
            (connection, format!("/v1/fido/credentials/{id}/confirm"), Some(json!({})))
        }
        QueueFidoCommand::Revoke { connection, id } => {
            (connection, format!("/v1/fido/credentials/{id}/revoke"), Some(json!({})))
        }
        QueueFidoCommand::Policy { connection, chain_id, address, policy_file } => {
            let text = read_limited("policy-file", policy_file, 64 * 1024)?;
            let policy: Value = serde_json::from_slice(&text)
                .map_err(|e| Failure::input(format!("policy-file: {e}")))?;
            let body = json!({ "chainId": chain_id, "address": address, "policy": policy });
            (connection, "/v1/vaults/fido-policy".to_owned(), Some(body))
        }
    };
    let session = admin_session(connection).await?;
    let answer = match body {
        Some(body) => session.post(&path, &body).await,
        None => session.get(&path).await,
    }
    .map_err(client_failure)?;
    outln!("{answer}");
    Ok(Outcome::Done)
}

/// The security key over USB, or the software key a test build is pointed at; either way the
/// terminal is told when the request for a software key is ignored, or when it is used.
fn security_key() -> countersign_approver::presence::SecurityKey {
    let asked = std::env::var_os("COUNTERSIGN_FIDO_SOFT_TOKEN").is_some();
    if asked && !countersign_approver::presence::SOFTWARE_KEY_BUILT {
        eprintln!(
            "note: COUNTERSIGN_FIDO_SOFT_TOKEN is ignored: this build has no software key (build \
             with --features countersign-approver/simulators); using USB"
        );
    }
    let key = countersign_approver::presence::SecurityKey::from_env();
    if key.is_software() {
        eprintln!("note: the security key is a SOFTWARE test key, not a device");
    }
    key
}
