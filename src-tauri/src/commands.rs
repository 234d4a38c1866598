//! The window's commands. Each checks its arguments, calls the approver crate or the store,
//! and answers data or a `{code, message}` problem. None of them decides anything itself.

use std::path::PathBuf;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use countersign_approver::actions::{self, Approved, ConfirmedHash, Signed, Step};
use countersign_approver::{setup, Problem};
use countersign_core::address::{checksummed, parse_address};
use countersign_core::secret::SecretString;
use countersign_signers::hsm::TokenKey;
use countersign_signers::ledger::DerivationPath;
use countersign_store::keywrap::Protection;
use countersign_store::{ProtectionKind, Store};
use countersign_sync::sync::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tauri::{AppHandle, Emitter, Runtime, State};

use crate::state::{AppState, IDLE_RANGE};

type Answer<T> = Result<T, Problem>;

/// Every command the window may call, for tauri-build's app manifest (build.rs includes the
/// same file) and the invoke handler.
pub const NAMES: &[&str] = include!("command_names.in");

const MAX_TEXT: usize = 1000;

/// A command's arguments, read strictly: an object, each unknown, missing or mistyped field
/// named by its path, and never the value that was sent (it may be a secret).
fn parse<T: serde::de::DeserializeOwned>(args: Option<Value>) -> Answer<T> {
    let args = args.ok_or_else(|| bad("args", "missing"))?;
    if !args.is_object() {
        return Err(bad("args", "must be an object of named fields"));
    }
    serde_path_to_error::deserialize(args).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let quoted = |prefix: &str| {
            inner.strip_prefix(prefix).and_then(|rest| rest.split('`').next()).map(str::to_owned)
        };
        if let Some(field) = quoted("unknown field `") {
            bad(&field, "is not an argument of this command")
        } else if let Some(field) = quoted("missing field `") {
            let field = if path == "." { field } else { format!("{path}.{field}") };
            bad(&field, "missing")
        } else if inner.starts_with("invalid type") {
            bad(&path, "has the wrong type")
        } else {
            bad(&path, "is not valid")
        }
    })
}

fn bad(field: &str, what: &str) -> Problem {
    Problem::input("invalid_argument", format!("{field}: {what}"))
}

/// A request id as the queue defines them.
fn check_id(field: &str, id: &str) -> Answer<()> {
    Ok(countersign_core::intent::check_request_id(field, id)?)
}

/// Free text from a person: not empty, not too long, no control characters.
fn check_text(field: &str, text: &str) -> Answer<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(bad(field, &format!("is longer than {MAX_TEXT} characters")));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(field, "holds control characters"));
    }
    if text.chars().any(countersign_core::is_invisible) {
        return Err(bad(field, "holds invisible or direction-changing characters"));
    }
    Ok(text.to_owned())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `none` (no store yet), `locked` or `unlocked`.
    pub store: &'static str,
    pub protection: Option<&'static str>,
    pub queue: Option<String>,
    pub keys: Vec<String>,
    /// The signing key's kind: `software`, `ledger` or `hsm`.
    pub signer: Option<String>,
}

#[tauri::command]
pub async fn app_status(state: State<'_, AppState>) -> Answer<Status> {
    if state.first_status()
        && Store::exists(&state.data_dir)
        && Store::protection_of(&state.data_dir).await? == ProtectionKind::Keyring
    {
        let store =
            Store::open(&state.data_dir, || Err(countersign_store::StoreError::PassphraseRequired))
                .await?;
        // The rows are not read ahead here: the store has one connection, and the queue
        // screen's first screenful would wait behind them.
        state.set_store(store).await;
    }
    status(&state).await
}

pub async fn status(state: &AppState) -> Answer<Status> {
    if !Store::exists(&state.data_dir) {
        return Ok(Status {
            store: "none",
            protection: None,
            queue: None,
            keys: vec![],
            signer: None,
        });
    }
    let Some(store) = state.store_quietly().await else {
        let protection = Store::protection_of(&state.data_dir).await?;
        return Ok(Status {
            store: "locked",
            protection: Some(protection_name(protection)),
            queue: None,
            keys: vec![],
            signer: None,
        });
    };
    let queue = match actions::stored_connection(&store).await {
        Ok(connection) => Some(connection.url),
        Err(_) => None,
    };
    let stored = store.keys().await?;
    let keys = stored.iter().map(|k| checksummed(&k.address)).collect();
    Ok(Status {
        store: "unlocked",
        protection: Some(protection_name(store.protection())),
        queue,
        keys,
        signer: stored.first().map(|k| k.kind.clone()),
    })
}

fn protection_name(kind: ProtectionKind) -> &'static str {
    match kind {
        ProtectionKind::Keyring => "keyring",
        ProtectionKind::Passphrase => "passphrase",
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassphraseArgs {
    /// None for a store whose key the OS keyring keeps.
    pub passphrase: Option<String>,
}

/// Minimum passphrase length for a new store.
const MIN_PASSPHRASE: usize = 12;

#[tauri::command]
pub async fn create_store(state: State<'_, AppState>, args: Option<Value>) -> Answer<Status> {
    let args: PassphraseArgs = parse(args)?;
    if Store::exists(&state.data_dir) {
        return Err(Problem::input("store_exists", "a Countersign store already exists here"));
    }
    let protection = match args.passphrase {
        None => Protection::Keyring,
        Some(p) if p.chars().count() < MIN_PASSPHRASE => {
            return Err(bad("passphrase", &format!("use at least {MIN_PASSPHRASE} characters")))
        }
        Some(p) => Protection::Passphrase(SecretString::new(p)),
    };
    std::fs::create_dir_all(&state.data_dir).map_err(|e| {
        Problem::other("data_dir", format!("the data folder could not be made: {e}"))
    })?;
    let store = Store::create(&state.data_dir, protection).await?;
    state.set_store(store).await;
    status(&state).await
}

#[tauri::command]
pub async fn unlock(state: State<'_, AppState>, args: Option<Value>) -> Answer<Status> {
    let args: PassphraseArgs = parse(args)?;
    let passphrase = args.passphrase.map(SecretString::new);
    let store = Store::open(&state.data_dir, move || {
        passphrase.ok_or(countersign_store::StoreError::PassphraseRequired)
    })
    .await?;
    state.set_store(store).await;
    status(&state).await
}

#[tauri::command]
pub async fn lock(state: State<'_, AppState>) -> Answer<bool> {
    Ok(state.lock().await)
}

/// The signer to set up, by `kind`: a software key, a Ledger account (its address confirmed on
/// the device), or a key in a PKCS#11 token.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SoftwareKeyArgs {
    /// A 32-byte secret in hex to import; none makes a new key.
    pub secret_hex: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LedgerKeyArgs {
    /// Ledger Live's account index (`44'/60'/index'/0/0`), or a full path.
    pub account: Option<u32>,
    pub path: Option<String>,
    pub label: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HsmKeyArgs {
    pub module: String,
    pub token: String,
    pub key_label: String,
    pub pin: String,
    #[serde(default)]
    pub generate: bool,
    pub label: Option<String>,
}

impl std::fmt::Debug for HsmKeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKeyArgs")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .field("generate", &self.generate)
            .finish_non_exhaustive()
    }
}

fn key_label(label: Option<&str>) -> Answer<Option<String>> {
    let label = label.map(|l| check_text("label", l)).transpose()?;
    if label.as_ref().is_some_and(|l| l.chars().count() > 64 || l.contains('\n')) {
        return Err(bad("label", "is longer than 64 characters or spans lines"));
    }
    Ok(label)
}

#[tauri::command]
pub async fn add_key(state: State<'_, AppState>, args: Option<Value>) -> Answer<String> {
    // The kind first, then the kind's own fields, so that a bad field is named by its name.
    let mut args = args.ok_or_else(|| bad("args", "missing"))?;
    let kind = match args.as_object_mut().map(|fields| fields.remove("kind")) {
        Some(Some(Value::String(kind))) => kind,
        Some(_) => return Err(bad("kind", "missing: software, ledger or hsm")),
        None => return Err(bad("args", "must be an object of named fields")),
    };
    let store = state.store().await?;
    let _one_at_a_time = state.adding_key.lock().await;
    if !store.keys().await?.is_empty() {
        return Err(Problem::input(
            "key_exists",
            "key: this store has a signing key already; the app signs with one key",
        ));
    }
    let address = match kind.as_str() {
        "software" => {
            let SoftwareKeyArgs { secret_hex, label } = parse(Some(args))?;
            let label = key_label(label.as_deref())?;
            let secret = secret_hex.map(SecretString::new);
            setup::add_software_key(&store, secret.as_ref(), label.as_deref()).await?
        }
        "ledger" => {
            let LedgerKeyArgs { account, path, label } = parse(Some(args))?;
            let label = key_label(label.as_deref())?;
            let path = match (account, path) {
                (Some(_), Some(_)) => {
                    return Err(bad("path", "give an account or a path, not both"))
                }
                (_, Some(path)) => DerivationPath::parse("path", &path)?,
                (account, None) => DerivationPath::account(account.unwrap_or(0))?,
            };
            setup::add_ledger_key(&store, &state.ledger, &path, label.as_deref(), true).await?
        }
        "hsm" => {
            let HsmKeyArgs { module, token, key_label: key, pin, generate, label } =
                parse(Some(args))?;
            let label = key_label(label.as_deref())?;
            let pin = SecretString::new(pin);
            if pin.expose().is_empty() {
                return Err(bad("pin", "is empty"));
            }
            let token = TokenKey { module: PathBuf::from(module.trim()), token, key };
            setup::add_hsm_key(&store, &token, &pin, generate, label.as_deref()).await?
        }
        _ => return Err(bad("kind", "is not software, ledger or hsm")),
    };
    Ok(checksummed(&address))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectArgs {
    pub url: String,
    /// One pin, or two during a rotation.
    pub pins: Vec<String>,
    pub api_key: String,
    /// The initiators' addresses whose intent signatures this approver trusts.
    #[serde(default)]
    pub initiators: Vec<String>,
}

/// At most this many trusted initiators.
const MAX_INITIATORS: usize = 64;

fn connection(args: ConnectArgs) -> Answer<Connection> {
    let url = queue_url(&args.url)?;
    if args.pins.is_empty() || args.pins.len() > 2 {
        return Err(bad("pins", "give one pin, or two during a rotation"));
    }
    let pins: Vec<String> = args.pins.iter().map(|p| p.trim().to_owned()).collect();
    if pins.len() == 2 && pins[0] == pins[1] {
        return Err(bad("pins", "the two pins are the same"));
    }
    let api_key = args.api_key.trim();
    if api_key.is_empty() || api_key.len() > 256 || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("apiKey", "is not an API key (printable characters, at most 256)"));
    }
    if args.initiators.len() > MAX_INITIATORS {
        return Err(bad("initiators", &format!("at most {MAX_INITIATORS}")));
    }
    let initiators = args
        .initiators
        .iter()
        .enumerate()
        .map(|(i, a)| parse_address(&format!("initiators[{i}]"), a.trim()).map(|p| p.address))
        .collect::<Result<Vec<Address>, _>>()?;
    Ok(Connection { url, pins, api_key: SecretString::new(api_key.to_owned()), initiators })
}

/// `https://host[:port]`, nothing else: no user, path, query or fragment.
fn queue_url(text: &str) -> Answer<String> {
    let text = text.trim().trim_end_matches('/');
    if text.chars().any(|c| c.is_control() || countersign_core::is_invisible(c)) {
        return Err(bad("url", "holds control or invisible characters"));
    }
    let url = url::Url::parse(text).map_err(|_| bad("url", "is not a URL"))?;
    if url.scheme() != "https" {
        return Err(bad("url", "the queue is reached over https:// only"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("url", "holds a user name or password; the API key goes in its own field"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("url", "give the queue's address only: https://host:port"));
    }
    let Some(host) = url.host_str() else { return Err(bad("url", "has no host")) };
    Ok(match url.port() {
        Some(port) => format!("https://{host}:{port}"),
        None => format!("https://{host}"),
    })
}

#[tauri::command]
pub async fn test_queue(state: State<'_, AppState>, args: Option<Value>) -> Answer<Value> {
    let args: ConnectArgs = parse(args)?;
    state.touch();
    setup::test_connection(&connection(args)?).await
}

#[tauri::command]
pub async fn connect_queue(state: State<'_, AppState>, args: Option<Value>) -> Answer<Value> {
    let args: ConnectArgs = parse(args)?;
    let store = state.store().await?;
    let connected = setup::connect(&store, &connection(args)?).await;
    // Another queue's synced copy is gone: so are its rows.
    state.forget_rows().await;
    connected
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSummary {
    pub fetched: usize,
    pub marked: Vec<Value>,
    pub incidents: Vec<String>,
    pub vault_differences: Vec<String>,
    pub more: bool,
    /// Requests this sync asked a desktop notification for.
    pub notified: Vec<String>,
}

#[tauri::command]
pub async fn sync_queue(state: State<'_, AppState>) -> Answer<SyncSummary> {
    let store = state.store().await?;
    sync_and_notify(&state, &store).await
}

/// Syncs, then asks for one notification for each request newly awaiting this approver.
pub async fn sync_and_notify(state: &AppState, store: &Store) -> Answer<SyncSummary> {
    let connection = actions::stored_connection(store).await?;
    let report = countersign_sync::sync::sync(store, &connection).await;
    state.forget_rows().await;
    let report = report?;
    let notified = notify_awaiting(state, store).await?;
    Ok(SyncSummary {
        fetched: report.fetched,
        marked: report.marked.iter().map(|(id, why)| json!({ "id": id, "why": why })).collect(),
        incidents: report.incidents,
        vault_differences: report.vault_differences,
        more: report.more,
        notified,
    })
}

/// Pending, unmarked requests on a vault where one of this store's keys is an owner that has
/// not approved yet: each is announced once per unlock.
async fn notify_awaiting(state: &AppState, store: &Store) -> Answer<Vec<String>> {
    let keys: Vec<String> = store.keys().await?.iter().map(|k| checksummed(&k.address)).collect();
    let vaults = store.vaults(None).await?;
    // The rows the queue screen reads next: read once for both.
    let kept = state.rows(store).await?;
    let mut notified = Vec::new();
    for row in &kept.rows {
        if row.state != "pending" || row.marked {
            continue;
        }
        let Some(vault) = vaults
            .iter()
            .find(|v| v.chain_id == row.chain_id && checksummed(&v.address) == row.safe)
        else {
            continue;
        };
        let awaits = keys.iter().any(|k| {
            vault.owners.iter().any(|o| checksummed(o) == *k) && !row.approved_by.contains(k)
        });
        if awaits && state.first_notice(&row.id) {
            let what = [row.operation.as_str(), row.amount.as_str(), row.asset.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let vault = row.vault.clone().unwrap_or_else(|| row.safe.clone());
            state
                .notifier
                .notify("A withdrawal awaits your approval", &format!("{what} from {vault}"));
            notified.push(row.id.clone());
        }
    }
    Ok(notified)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RowsArgs {
    /// Only the newest rows, as many: a first screenful while the rest are read.
    pub first: Option<u32>,
}

#[tauri::command]
pub async fn queue_rows(
    state: State<'_, AppState>,
    args: Option<Value>,
) -> Answer<tauri::ipc::Response> {
    let args: RowsArgs = match args {
        None => RowsArgs::default(),
        given => parse(given)?,
    };
    let store = state.store().await?;
    // Raw bytes: the window parses the JSON itself, rather than the IPC converting it twice.
    if let Some(first) = args.first {
        if !(1..=500).contains(&first) {
            return Err(bad("first", "from 1 to 500 rows"));
        }
        // Not waiting for a read of every row under way (after a sync, say): the newest are
        // read on their own meanwhile.
        let rows = match state.kept_rows() {
            Some(kept) => kept.rows.iter().take(first as usize).cloned().collect(),
            None => countersign_approver::rows::newest(&store, &state.tokens, first).await?,
        };
        let json =
            serde_json::to_vec(&rows).map_err(|e| Problem::other("internal", e.to_string()))?;
        return Ok(tauri::ipc::Response::new(json));
    }
    let kept = state.rows(&store).await?;
    Ok(tauri::ipc::Response::new(kept.json.clone()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdArgs {
    pub id: String,
}

/// The address of the store's only key, if it has exactly one.
async fn own_address(store: &Store) -> Answer<Option<Address>> {
    let keys = store.keys().await?;
    Ok(match keys.as_slice() {
        [only] => Some(only.address),
        _ => None,
    })
}

#[tauri::command]
pub async fn request_detail(state: State<'_, AppState>, args: Option<Value>) -> Answer<Value> {
    let args: IdArgs = parse(args)?;
    check_id("id", &args.id)?;
    let store = state.store().await?;
    let signer = own_address(&store).await?;
    let mut detail = actions::detail(&store, &state.tokens, &args.id, signer).await?;
    if signer.is_none() && !store.keys().await?.is_empty() {
        detail["canApprove"] = json!(false);
        detail["whyNot"] = json!([
            "This store has several keys and the app signs with one: approve with the CLI's --key."
        ]);
    }
    // What the approval screen asks for: the Ledger's hashes to compare, or the token's PIN.
    detail["signer"] = json!(store.keys().await?.first().map(|k| k.kind.clone()));
    Ok(detail)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproveArgs {
    pub id: String,
    /// The safeTxHash the person saw when they confirmed: nothing else is signed.
    pub safe_tx_hash: String,
    /// The token's PIN, for a key in an HSM; used for this approval only.
    pub pin: Option<String>,
    /// The security key's PIN, where the vault asks for a security key and the key has one.
    pub key_pin: Option<String>,
}

impl std::fmt::Debug for ApproveArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApproveArgs")
            .field("id", &self.id)
            .field("safe_tx_hash", &self.safe_tx_hash)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApproveAnswer {
    pub signer: String,
    pub state: String,
    pub approvals: usize,
}

#[tauri::command]
pub async fn approve_request<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
    args: Option<Value>,
) -> Answer<ApproveAnswer> {
    let mut args: ApproveArgs = parse(args)?;
    check_id("id", &args.id)?;
    let confirmed: B256 = args
        .safe_tx_hash
        .trim()
        .parse()
        .map_err(|_| bad("safeTxHash", "is not a 32-byte hex hash"))?;
    let store = state.store().await?;
    let key = setup::key_info(&store, None).await?;
    let pin = args.pin.map(SecretString::new);
    let signer = setup::signer(&store, &key, &state.ledger, pin.as_ref()).await?;
    let id = args.id.clone();
    let key_prompts = key_prompts(&app, args.key_pin.take(), &args.id)?;
    let gate = state.inner();
    // Each step goes on only while the app is unlocked: a lock during an approval stops it
    // before the signature is made or sent.
    let on_step = move |step: Step| {
        let _ = app.emit("approval-step", json!({ "id": id, "step": step.name() }));
        gate.unlocked_now()
    };
    let approved = actions::approve(
        &store,
        &state.tokens,
        &args.id,
        signer.as_ref(),
        &ConfirmedHash(confirmed),
        Some((&state.security_key, key_prompts)),
        &on_step,
    )
    .await;
    state.forget_rows().await;
    match approved? {
        Approved::Sent { signer, state, approvals, .. } => {
            Ok(ApproveAnswer { signer: checksummed(&signer), state, approvals })
        }
        Approved::Marked { marks, .. } => Err(Problem::refused(
            "marked",
            format!("Not signed: Countersign marked this request ({}).", marks.join("; ")),
        )),
        Approved::NotSigned(signed) => Err(not_signed(signed, signer.address())),
    }
}

fn not_signed(signed: Signed, _signer: Address) -> Problem {
    let reasons = |review: &countersign_core::guard::Review| {
        review.refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    };
    match signed {
        Signed::Tripwire { review, incident } => Problem::refused(
            "tripwire",
            format!(
                "Not signed: {}. Incident {incident} is open and blocks signing on this vault until a person clears it.",
                reasons(&review)
            ),
        ),
        Signed::Refused { review } => {
            Problem::refused("guard_refused", format!("Not signed: {}.", reasons(&review)))
        }
        Signed::Declined { .. } => Problem::refused(
            "not_confirmed",
            "Not signed: the request's safeTxHash is not the one you confirmed; open it again",
        ),
        Signed::Late { review, .. } => Problem::refused(
            "discarded",
            format!("Not signed: the signature was discarded ({}).", reasons(&review)),
        ),
        Signed::Done { .. } => Problem::other("internal", "a signature was made but not sent"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejectArgs {
    pub id: String,
    pub reason: String,
}

#[tauri::command]
pub async fn reject_request(state: State<'_, AppState>, args: Option<Value>) -> Answer<String> {
    let args: RejectArgs = parse(args)?;
    check_id("id", &args.id)?;
    let reason = check_text("reason", &args.reason)?;
    let store = state.store().await?;
    let rejected = actions::reject(&store, &args.id, &reason).await;
    state.forget_rows().await;
    rejected
}

#[tauri::command]
pub async fn incidents(state: State<'_, AppState>) -> Answer<Vec<Value>> {
    let store = state.store().await?;
    Ok(store
        .incidents(false)
        .await?
        .into_iter()
        .map(|i| {
            json!({ "id": i.id, "vault": i.vault_id, "kind": i.kind, "openedAt": i.opened_at,
                    "detail": i.detail })
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClearArgs {
    pub id: String,
    pub note: String,
}

#[tauri::command]
pub async fn clear_incident(state: State<'_, AppState>, args: Option<Value>) -> Answer<()> {
    let args: ClearArgs = parse(args)?;
    let note = check_text("note", &args.note)?;
    if args.id.is_empty()
        || args.id.len() > 64
        || !args.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad("id", "is not an incident id"));
    }
    let store = state.store().await?;
    Ok(store.clear_incident(&args.id, &note).await?)
}

#[tauri::command]
pub async fn settings(state: State<'_, AppState>) -> Answer<Value> {
    let store = state.store().await?;
    let connection = actions::stored_connection(&store).await.ok();
    let vaults: Vec<Value> = store.vaults(None).await?.iter().map(|v| v.to_json()).collect();
    let keys: Vec<Value> = store
        .keys()
        .await?
        .iter()
        .map(|k| json!({ "address": checksummed(&k.address), "kind": k.kind, "label": k.label }))
        .collect();
    let protection = store.protection();
    Ok(json!({
        "queue": connection.as_ref().map(|c| json!({ "url": c.url, "pins": c.pins,
            "initiators": c.initiators.iter().map(checksummed).collect::<Vec<_>>() })),
        "idleLockSeconds": state.idle_after().as_secs(),
        "protection": protection_name(protection),
        // The keyring hands the data key back without asking: locking then only hides.
        "canTrulyLock": protection == ProtectionKind::Passphrase,
        "vaults": vaults,
        "keys": keys,
        "dataDir": state.data_dir.display().to_string(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdleArgs {
    pub seconds: u64,
}

#[tauri::command]
pub async fn set_idle_lock(state: State<'_, AppState>, args: Option<Value>) -> Answer<u64> {
    let args: IdleArgs = parse(args)?;
    if !IDLE_RANGE.contains(&args.seconds) {
        return Err(bad(
            "seconds",
            &format!("must be from {} to {}", IDLE_RANGE.start(), IDLE_RANGE.end()),
        ));
    }
    state.set_idle_after(Duration::from_secs(args.seconds));
    Ok(args.seconds)
}

#[tauri::command]
pub async fn queue_vaults(state: State<'_, AppState>) -> Answer<Vec<Value>> {
    let store = state.store().await?;
    countersign_approver::vaults::compare(&store).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PinVaultArgs {
    pub chain_id: u64,
    pub address: String,
    /// The record as the window showed it: only this record is pinned.
    pub safe_version: String,
    pub owners: Vec<String>,
    pub threshold: Option<u32>,
}

#[tauri::command]
pub async fn pin_queue_vault(state: State<'_, AppState>, args: Option<Value>) -> Answer<Value> {
    let args: PinVaultArgs = parse(args)?;
    let address = parse_address("address", args.address.trim())?.address;
    let version = countersign_core::version::SafeVersion::parse("safeVersion", &args.safe_version)?;
    let mut shown = countersign_core::vault::VaultRecord::new(args.chain_id, address, version);
    for (i, owner) in args.owners.iter().enumerate() {
        shown.owners.push(parse_address(&format!("owners[{i}]"), owner.trim())?.address);
    }
    shown.threshold = args.threshold;
    let store = state.store().await?;
    let record = countersign_approver::vaults::pin(&store, &shown).await?;
    state.forget_rows().await;
    Ok(record.to_json())
}

/// The person did something in the window: the idle lock starts again. Only this and the
/// commands a person starts count; redraws after live updates do not.
#[tauri::command]
pub async fn user_active(state: State<'_, AppState>) -> Answer<()> {
    state.touch();
    Ok(())
}

/// The security key's prompts in the window: the PIN the person typed with the request, and
/// the touch announced as an approval step (`touch`) for the window to show.
struct WindowKeyPrompts<R: Runtime> {
    app: AppHandle<R>,
    pin: Option<SecretString>,
    id: String,
}

impl<R: Runtime> std::fmt::Debug for WindowKeyPrompts<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowKeyPrompts").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<R: Runtime> countersign_approver::presence::KeyPrompts for WindowKeyPrompts<R> {
    fn pin(&self) -> Option<String> {
        // The client crate takes the PIN as a String; this copy lives for its one call.
        self.pin.as_ref().map(|p| p.expose().to_owned()).filter(|p| !p.is_empty())
    }

    fn touch(&self) {
        let _ = self.app.emit("approval-step", json!({ "id": self.id, "step": "touch" }));
    }
}

/// A security key's PIN is at most 63 bytes (CTAP2).
const MAX_KEY_PIN: usize = 63;

fn key_prompts<R: Runtime>(
    app: &AppHandle<R>,
    pin: Option<String>,
    id: &str,
) -> Answer<std::sync::Arc<dyn countersign_approver::presence::KeyPrompts>> {
    if pin.as_ref().is_some_and(|p| p.len() > MAX_KEY_PIN) {
        return Err(bad("keyPin", "is longer than a security key's PIN (63 bytes)"));
    }
    let pin = pin.map(SecretString::new);
    Ok(std::sync::Arc::new(WindowKeyPrompts { app: app.clone(), pin, id: id.to_owned() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterKeyArgs {
    /// The security key's PIN, if it has one.
    pub key_pin: Option<String>,
}

impl std::fmt::Debug for RegisterKeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterKeyArgs").finish_non_exhaustive()
    }
}

/// Registers the approver's security key with the connected queue; an admin confirms it
/// before it counts. Answers the credential id.
#[tauri::command]
pub async fn register_security_key<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
    args: Option<Value>,
) -> Answer<String> {
    let args: RegisterKeyArgs = parse(args.or_else(|| Some(json!({}))))?;
    let store = state.store().await?;
    let session = actions::stored_connection(&store).await?.session().await?;
    let prompts = key_prompts(&app, args.key_pin, "registration")?;
    let answer =
        countersign_approver::presence::register(&session, &state.security_key, prompts).await?;
    Ok(answer["credentialId"].as_str().unwrap_or_default().to_owned())
}
