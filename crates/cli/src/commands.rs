//! One function per command.

use std::io::{IsTerminal, Write};
use std::path::Path;

use alloy_primitives::Address;
use async_trait::async_trait;
use countersign_core::address::{checksummed, parse_address};
use countersign_core::audit::{verify_chain, AuditEntry, LOCAL};
use countersign_core::guard::{review, CheckedRequest, History, Review};
use countersign_core::policy::{Policy, MAX_POLICY_BYTES};
use countersign_core::request::{parse_object, SafeTxRequest, MAX_REQUEST_BYTES};
use countersign_core::secret::SecretString;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::{Decision, Prompt, Signer};
use countersign_core::tokens::TokenList;
use countersign_core::typed_data::{self, looks_like_typed_data};
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_signers::hsm::TokenKey;
use countersign_signers::ledger::{DerivationPath, Link};
use countersign_signers::software::SoftwareSigner;
use countersign_store::keywrap::Protection;
use countersign_store::{KeyInfo, Store};
use serde_json::json;

use crate::args::{
    AuditCommand, Cli, Command, IncidentCommand, KeyChoice, KeyCommand, PolicyCommand,
    QueueCommand, SignerKind, VaultCommand, VaultFlags,
};
use crate::context::{parse_nonce, read_limited, read_small_text, resolve_vault, Context};
use crate::failure::{Failure, Outcome};
use countersign_approver::{actions, setup, view as report};

pub async fn run(cli: Cli) -> Result<Outcome, Failure> {
    let context = Context::new(&cli)?;
    match cli.command {
        Command::Init { passphrase } => init(&context, passphrase).await,
        Command::Inspect { file, vault, policy, no_store, json } => {
            inspect(&context, &file, &vault, policy.as_deref(), no_store, json).await
        }
        Command::Sign { file, key, yes, json } => sign(&context, &file, &key, yes, json).await,
        Command::Verify { file, signature, vault, json } => {
            verify(&context, &file, &signature, &vault, json).await
        }
        Command::Key(command) => key(&context, command).await,
        Command::Vault(command) => vault(&context, command).await,
        Command::Policy(command) => policy(&context, command).await,
        Command::Incident(command) => incident(&context, command).await,
        Command::Audit(command) => audit(&context, command).await,
        Command::Queue(command) => queue(&context, command).await,
        Command::Sync => crate::queue_commands::run_sync(&context).await,
        Command::Fido(crate::args::FidoCommand::Register) => {
            crate::queue_commands::fido_register(&context).await
        }
        Command::List => crate::queue_commands::list(&context).await,
        Command::Show { id } => crate::queue_commands::show(&context, &id).await,
        Command::Approve { id, key, yes } => {
            crate::queue_commands::approve(&context, &id, &key, yes).await
        }
        Command::Reject { id, reason } => {
            crate::queue_commands::reject(&context, &id, &reason).await
        }
        Command::Erase { yes } => erase(&context, yes).await,
    }
}

async fn init(context: &Context, passphrase: bool) -> Result<Outcome, Failure> {
    let protection = if passphrase {
        Protection::Passphrase(context.new_passphrase()?)
    } else {
        Protection::Keyring
    };
    let store = Store::create(&context.data_dir, protection).await.map_err(|e| match e {
        countersign_store::StoreError::Keyring { detail } => Failure::other(format!(
            "keyring: {detail}. On a machine without an OS keyring use `countersign init --passphrase`"
        )),
        other => other.into(),
    })?;
    outln!(
        "Created a store in {} (data key protected by {})",
        context.data_dir.display(),
        store.protection().name()
    );
    if store.protection() == countersign_store::ProtectionKind::Keyring {
        outln!("Note: a keyring-protected store opens whenever the keyring is unlocked; it cannot be locked separately.");
    }
    store.close().await;
    Ok(Outcome::Done)
}

/// A store when one exists; inspection works without one.
async fn optional_store(context: &Context) -> Result<Option<Store>, Failure> {
    if context.store_exists() {
        Ok(Some(context.open_store().await?))
    } else {
        Ok(None)
    }
}

/// Parses a request file and reviews it against the pinned vault record and the policy.
async fn review_file(
    store: Option<&Store>,
    input: &[u8],
    flags: &VaultFlags,
    policy: &Policy,
    tokens: &TokenList,
) -> Result<Review, Failure> {
    let request = SafeTxRequest::from_json(input)?;
    let (vault, pinned) = resolve_vault(store, request.safe, flags).await?;
    let history = match store {
        Some(store) if pinned => store.history(&vault, request.tx.nonce).await?,
        _ => History::default(),
    };
    Ok(review(request, &vault, policy, tokens, &history))
}

async fn inspect(
    context: &Context,
    file: &Path,
    flags: &VaultFlags,
    policy_file: Option<&Path>,
    no_store: bool,
    as_json: bool,
) -> Result<Outcome, Failure> {
    let input = read_limited("request", file, MAX_REQUEST_BYTES)?;
    let object = parse_object(&input)?;
    if looks_like_typed_data(&object) {
        let hashes = typed_data::inspect(&input)?;
        if as_json {
            outln!("{}", report::typed_data_json(&hashes));
        } else {
            out!("{}", report::typed_data_text(&hashes));
        }
        return Ok(Outcome::Refused);
    }

    let store = if no_store { None } else { optional_store(context).await? };
    let tokens = context.tokens()?;
    let policy = match (policy_file, &store) {
        (Some(path), _) => Policy::from_json(&read_limited("policy", path, MAX_POLICY_BYTES)?)?,
        (None, Some(store)) => store.policy().await?,
        (None, None) => Policy::default(),
    };
    let review = review_file(store.as_ref(), &input, flags, &policy, &tokens).await?;
    if let Some(store) = &store {
        store.audit("inspected", &report::audit_body(&review, &tokens)).await?;
    }
    print_review(&review, &tokens, as_json);
    Ok(if review.refusals.is_empty() { Outcome::Done } else { Outcome::Refused })
}

fn print_review(review: &Review, tokens: &TokenList, as_json: bool) {
    if as_json {
        outln!("{}", report::review_json(review, tokens));
    } else {
        out!("{}", report::review_text(review, tokens));
    }
}

async fn sign(
    context: &Context,
    file: &Path,
    choice: &KeyChoice,
    yes: bool,
    as_json: bool,
) -> Result<Outcome, Failure> {
    if file == Path::new("-") && !yes {
        return Err(Failure::input("confirmation: a request read from standard input needs --yes"));
    }
    let input = read_limited("request", file, MAX_REQUEST_BYTES)?;
    let store = context.open_store().await?;
    let tokens = context.tokens()?;
    let policy = store.policy().await?;
    let request = SafeTxRequest::from_json(&input)?;
    let vault = pinned_vault(&store, &request).await?;
    let signer = signer(&store, choice).await?;
    let history = store.history(&vault, request.tx.nonce).await?;
    let mut review = review(request, &vault, &policy, &tokens, &history);
    review.check_signer(signer.address());
    let shown = report::audit_body(&review, &tokens);
    store.audit("inspected", &shown).await?;

    let (signature, shown_review) = match sign_reviewed(
        &store,
        review,
        signer.as_ref(),
        yes,
        &tokens,
        &shown,
        as_json,
    )
    .await?
    {
        Signed::Done { signature, review } => (signature, *review),
        Signed::Not(outcome) => return Ok(outcome),
    };
    if as_json {
        let mut out = report::review_json(&shown_review, &tokens);
        out["signature"] = json!(signature.to_hex());
        out["signer"] = json!(checksummed(&signer.address()));
        outln!("{out}");
    } else {
        outln!("\nSigner:    {}", checksummed(&signer.address()));
        outln!("Signature: {}", signature.to_hex());
    }
    Ok(Outcome::Done)
}

/// How [`sign_reviewed`] ended.
pub(crate) enum Signed {
    /// Signed and recorded; the review that was shown.
    Done { signature: OwnerSignature, review: Box<Review> },
    /// Nothing to hand out: refused, declined, or discarded after a late refusal.
    Not(Outcome),
}

/// The end `sign` and `approve` share, as the approver crate runs it (the tripwire, the
/// guards' verdict, the prompt, the signature and its record), printed for a terminal: the
/// review is shown before the prompt asks.
pub(crate) async fn sign_reviewed(
    store: &Store,
    review: Review,
    signer: &dyn Signer,
    yes: bool,
    tokens: &TokenList,
    shown: &serde_json::Value,
    as_json: bool,
) -> Result<Signed, Failure> {
    let preface = (!as_json).then(|| report::review_text(&review, tokens));
    let prompt = TerminalPrompt { yes, preface };
    let signed = actions::sign_reviewed(store, review, signer, &prompt, tokens, shown).await?;
    Ok(printed(signed, tokens, as_json))
}

/// Prints how signing ended, for a terminal.
pub(crate) fn printed(signed: actions::Signed, tokens: &TokenList, as_json: bool) -> Signed {
    match signed {
        actions::Signed::Done { signature, review } => Signed::Done { signature, review },
        actions::Signed::Tripwire { review, incident } => {
            print_review(&review, tokens, as_json);
            eprintln!(
                "Incident {incident} opened: signing on this vault is blocked until a person clears it."
            );
            Signed::Not(Outcome::Refused)
        }
        actions::Signed::Refused { review } => {
            print_review(&review, tokens, as_json);
            Signed::Not(Outcome::Refused)
        }
        actions::Signed::Declined { .. } => {
            eprintln!("Not signed: declined.");
            Signed::Not(Outcome::Refused)
        }
        actions::Signed::Late { review, incident } => {
            // Another process signed a different payload for this nonce (or opened an
            // incident) while this one was confirming: the signature is discarded, never
            // printed.
            if let Some(incident) = incident {
                eprintln!(
                    "Incident {incident} opened: signing on this vault is blocked until a person clears it."
                );
            }
            print_review(&review, tokens, as_json);
            eprintln!("Not signed: the signature was discarded.");
            Signed::Not(Outcome::Refused)
        }
    }
}

/// Signing needs a pinned vault record: flags are not enough to sign.
async fn pinned_vault(store: &Store, request: &SafeTxRequest) -> Result<VaultRecord, Failure> {
    let mut pinned = store.vaults(Some(&request.safe)).await?;
    match pinned.len() {
        1 => Ok(pinned.remove(0)),
        0 => Err(Failure::input(format!(
            "safe: {} has no pinned vault record; pin it first with `countersign vault add`",
            checksummed(&request.safe)
        ))),
        _ => Err(Failure::input(
            "safe: this Safe is pinned on several chains; Countersign cannot tell which one the request is for",
        )),
    }
}

pub(crate) struct TerminalPrompt {
    pub(crate) yes: bool,
    /// Printed before anything is asked: the review the person confirms.
    pub(crate) preface: Option<String>,
}

#[async_trait]
impl Prompt for TerminalPrompt {
    async fn confirm(&self, request: &CheckedRequest, signer: Address) -> Decision {
        if let Some(preface) = &self.preface {
            out!("{preface}");
        }
        if self.yes {
            return Decision::Approve;
        }
        if !std::io::stdin().is_terminal() {
            eprintln!("No terminal to confirm on; pass --yes to sign from a script.");
            return Decision::Decline;
        }
        eprint!(
            "\nSign safeTxHash {} with {}? Type yes to sign: ",
            request.hashes().safe_tx,
            checksummed(&signer)
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() {
            return Decision::Decline;
        }
        if answer.trim() == "yes" {
            Decision::Approve
        } else {
            Decision::Decline
        }
    }
}

/// The signer for the chosen key, whatever its kind: a Ledger over USB HID, an HSM logged into
/// with its PIN (COUNTERSIGN_HSM_PIN, else asked for), or the software key.
pub(crate) async fn signer(store: &Store, choice: &KeyChoice) -> Result<Box<dyn Signer>, Failure> {
    let key = choose_key(store, choice).await?;
    let pin = (key.kind == setup::HSM).then(hsm_pin).transpose()?;
    Ok(setup::signer(store, &key, &ledger_link(), pin.as_ref()).await?)
}

/// The Ledger over USB, or the simulator in a test build asked for it. A build without the
/// simulator says that it ignores the request, rather than looking for USB silently.
fn ledger_link() -> Link {
    if !countersign_signers::ledger::SIMULATOR_BUILT
        && std::env::var_os("COUNTERSIGN_LEDGER_SIMULATOR").is_some()
    {
        eprintln!(
            "note: COUNTERSIGN_LEDGER_SIMULATOR is ignored: this build has no simulator (build \
             with --features countersign-signers/simulators); using USB"
        );
    }
    let link = Link::from_env();
    if link.is_simulated() {
        eprintln!(
            "note: the Ledger is the SIMULATOR (a test double with public keys), not a device"
        );
    }
    link
}

/// The chosen key as a software key: an initiator's intent is signed as a bare digest, which
/// only the software signer offers.
// Limitation: intents are signed with software keys only; a Ledger or HSM initiator is not built.
pub(crate) async fn software_signer(
    store: &Store,
    choice: &KeyChoice,
) -> Result<SoftwareSigner, Failure> {
    let key = choose_key(store, choice).await?;
    if key.kind != setup::SOFTWARE {
        return Err(Failure::input(format!(
            "key: an intent is signed with a software key; {} is a {} key",
            checksummed(&key.address),
            key.kind
        )));
    }
    let secret = store.key_secret(&key.address).await?;
    SoftwareSigner::from_secret(&secret)
        .map_err(|e| Failure::other(format!("key {}: {e}", checksummed(&key.address))))
}

fn hsm_pin() -> Result<SecretString, Failure> {
    if let Ok(pin) = std::env::var("COUNTERSIGN_HSM_PIN") {
        return Ok(SecretString::new(pin));
    }
    rpassword::prompt_password("HSM token PIN: ").map(SecretString::new).map_err(|_| {
        Failure::input("pin: give the token's PIN in COUNTERSIGN_HSM_PIN or at a terminal")
    })
}

async fn choose_key(store: &Store, choice: &KeyChoice) -> Result<KeyInfo, Failure> {
    let keys: Vec<KeyInfo> = store
        .keys()
        .await?
        .into_iter()
        .filter(|k| choice.signer.is_none_or(|kind| k.kind == kind.name()))
        .collect();
    let kind = choice.signer.map(|k| format!("{} ", k.name())).unwrap_or_default();
    let Some(wanted) = &choice.key else {
        return match keys.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(Failure::input(format!(
                "key: the store has no {kind}key; add one with {}",
                match choice.signer {
                    Some(SignerKind::Ledger) => "`countersign key add-ledger`",
                    Some(SignerKind::Hsm) => "`countersign key add-hsm`",
                    Some(SignerKind::Software) => "`countersign key new` or `key import`",
                    None => "`countersign key new`, `key add-ledger` or `key add-hsm`",
                }
            ))),
            _ => Err(Failure::input(format!(
                "key: the store has several {kind}keys; choose one with --key ADDRESS|LABEL"
            ))),
        };
    };
    let by_address = parse_address("key", wanted).ok().map(|p| p.address);
    keys.into_iter()
        .find(|k| Some(k.address) == by_address || k.label.as_deref() == Some(wanted.as_str()))
        .ok_or_else(|| {
            Failure::input(format!("key: no {kind}key with address or label {wanted:?}"))
        })
}

async fn verify(
    context: &Context,
    file: &Path,
    signature: &str,
    flags: &VaultFlags,
    as_json: bool,
) -> Result<Outcome, Failure> {
    let input = read_limited("request", file, MAX_REQUEST_BYTES)?;
    let signature = OwnerSignature::parse_hex("signature", signature)?;
    let store = optional_store(context).await?;
    let request = SafeTxRequest::from_json(&input)?;
    let (vault, _) = resolve_vault(store.as_ref(), request.safe, flags).await?;
    let hashes = vault.domain().hashes(&request.tx);
    let signer = signature
        .recover(&hashes.safe_tx)
        .map_err(|problem| Failure::input(format!("signature: {problem}")))?;
    let owner = (!vault.owners.is_empty()).then(|| vault.owners.contains(&signer));
    if as_json {
        outln!(
            "{}",
            json!({ "safeTxHash": hashes.safe_tx.to_string(), "signer": checksummed(&signer), "owner": owner })
        );
    } else {
        outln!("safeTxHash: {}", hashes.safe_tx);
        outln!("Signer:     {}", checksummed(&signer));
        match owner {
            Some(true) => outln!("The signer is an owner of the pinned vault."),
            Some(false) => outln!("The signer is NOT an owner of the pinned vault."),
            None => outln!("The vault's owners are not pinned, so ownership was not checked."),
        }
    }
    Ok(if owner == Some(false) { Outcome::Refused } else { Outcome::Done })
}

async fn key(context: &Context, command: KeyCommand) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    match command {
        KeyCommand::New { label } => {
            let signer = SoftwareSigner::generate();
            save_key(&store, &signer, label.as_deref()).await?;
        }
        KeyCommand::Import { hex_file, keystore, password_file, label } => {
            let signer =
                import_key(hex_file.as_deref(), keystore.as_deref(), password_file.as_deref())?;
            save_key(&store, &signer, label.as_deref()).await?;
        }
        KeyCommand::AddLedger { account, path, no_confirm, label } => {
            let path = match path {
                Some(path) => DerivationPath::parse("path", &path)?,
                None => DerivationPath::account(account.unwrap_or(0))?,
            };
            if !no_confirm {
                eprintln!("Confirm the address on the Ledger ({path}).");
            }
            let link = ledger_link();
            let address =
                setup::add_ledger_key(&store, &link, &path, label.as_deref(), !no_confirm).await?;
            outln!("{}", checksummed(&address));
        }
        KeyCommand::AddHsm { module, token, key_label, generate, label } => {
            let token = TokenKey { module, token, key: key_label };
            let pin = hsm_pin()?;
            let address =
                setup::add_hsm_key(&store, &token, &pin, generate, label.as_deref()).await?;
            outln!("{}", checksummed(&address));
        }
        KeyCommand::List => {
            for key in store.keys().await? {
                let label = key.label.map(|l| format!("  {l}")).unwrap_or_default();
                outln!("{}  {}{label}", checksummed(&key.address), key.kind);
            }
        }
        KeyCommand::Address { key } => {
            outln!("{}", checksummed(&choose_key(&store, &key).await?.address))
        }
    }
    Ok(Outcome::Done)
}

async fn save_key(
    store: &Store,
    signer: &SoftwareSigner,
    label: Option<&str>,
) -> Result<(), Failure> {
    let secret = signer.expose_secret();
    store.add_key(signer.address(), "software", label, &secret).await?;
    outln!("{}", checksummed(&signer.address()));
    Ok(())
}

fn import_key(
    hex_file: Option<&Path>,
    keystore: Option<&Path>,
    password_file: Option<&Path>,
) -> Result<SoftwareSigner, Failure> {
    if let Some(path) = hex_file {
        let text = read_small_text(path).map_err(|e| Failure::input(format!("hex-file: {e}")))?;
        let text = SecretString::new(text);
        return SoftwareSigner::from_hex(&text)
            .map_err(|e| Failure::input(format!("hex-file: {e}")));
    }
    let Some(path) = keystore else {
        return Err(Failure::input("give --hex-file or --keystore"));
    };
    let password = match password_file {
        Some(file) => {
            let text =
                read_small_text(file).map_err(|e| Failure::input(format!("password-file: {e}")))?;
            SecretString::new(text.lines().next().unwrap_or_default().to_owned())
        }
        None => SecretString::new(
            rpassword::prompt_password("Keystore password: ")
                .map_err(|_| Failure::input("password: give --password-file"))?,
        ),
    };
    SoftwareSigner::from_keystore(path, &password)
        .map_err(|e| Failure::input(format!("keystore: {e}")))
}

async fn vault(context: &Context, command: VaultCommand) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    match command {
        VaultCommand::Add {
            chain_id,
            address,
            safe_version,
            owners,
            threshold,
            next_nonce,
            label,
        } => {
            if chain_id == 0 {
                return Err(Failure::input("chainId: must be a positive chain id"));
            }
            // Signing checks the key against the owners and the threshold, so a record
            // without them would turn that check off.
            if owners.is_empty() || threshold.is_none() {
                return Err(Failure::input(
                    "owner: pin the vault's owners (--owner, once per owner) and its --threshold",
                ));
            }
            let address = parse_address("address", &address)?.address;
            let mut record = VaultRecord::new(
                chain_id,
                address,
                SafeVersion::parse("safeVersion", &safe_version)?,
            );
            for (index, owner) in owners.iter().enumerate() {
                let owner = parse_address(&format!("owner[{index}]"), owner)?.address;
                if record.owners.contains(&owner) {
                    let problem = format!("{} is given twice", checksummed(&owner));
                    return Err(Failure::input(format!("owner[{index}]: {problem}")));
                }
                record.owners.push(owner);
            }
            if let Some(threshold) = threshold {
                let owners = record.owners.len() as u32;
                if threshold == 0 || threshold > owners {
                    return Err(Failure::input(format!(
                        "threshold: must be between 1 and the number of owners given with --owner ({owners})"
                    )));
                }
                record.threshold = Some(threshold);
            }
            record.next_nonce = next_nonce.map(|n| parse_nonce("nextNonce", &n)).transpose()?;
            record.label = label;
            store.add_vault(&record).await?;
            outln!("Pinned {}", describe_vault(&record));
        }
        VaultCommand::List { json } => {
            for record in store.vaults(None).await? {
                if json {
                    outln!("{}", record.to_json());
                } else {
                    outln!("{}", describe_vault(&record));
                }
            }
        }
        VaultCommand::Show { address, chain_id, json } => {
            let address = parse_address("address", &address)?.address;
            let flags = VaultFlags { chain_id, ..VaultFlags::default() };
            let (record, _) = resolve_vault(Some(&store), address, &flags).await?;
            if json {
                outln!("{}", record.to_json());
            } else {
                outln!("{}", describe_vault(&record));
                for owner in &record.owners {
                    outln!("  owner {}", checksummed(owner));
                }
            }
        }
        VaultCommand::AcceptQueue { address, chain_id, yes } => {
            let address = parse_address("address", &address)?.address;
            return crate::queue_commands::accept_queue_vault(&store, chain_id, address, yes).await;
        }
        VaultCommand::SetNextNonce { address, chain_id, next_nonce } => {
            let address = parse_address("address", &address)?.address;
            let record = store
                .set_next_nonce(chain_id, &address, parse_nonce("nextNonce", &next_nonce)?)
                .await?;
            outln!("{}", describe_vault(&record));
        }
    }
    Ok(Outcome::Done)
}

fn describe_vault(record: &VaultRecord) -> String {
    let threshold = match record.threshold {
        Some(t) => format!(", {t} of {} owners", record.owners.len()),
        None if record.owners.is_empty() => String::new(),
        None => format!(", {} owners", record.owners.len()),
    };
    let next = record.next_nonce.map(|n| format!(", next nonce {n}")).unwrap_or_default();
    format!(
        "{} on chain {}, Safe {}{threshold}{next}",
        record.display_name(),
        record.chain_id,
        record.version
    )
}

async fn policy(context: &Context, command: PolicyCommand) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    match command {
        PolicyCommand::Show => outln!("{}", store.policy().await?.to_json()),
        PolicyCommand::Set { file } => {
            let policy = Policy::from_json(&read_limited("policy", &file, MAX_POLICY_BYTES)?)?;
            store.set_policy(&policy).await?;
            outln!("{}", policy.to_json());
        }
    }
    Ok(Outcome::Done)
}

async fn incident(context: &Context, command: IncidentCommand) -> Result<Outcome, Failure> {
    let store = context.open_store().await?;
    match command {
        IncidentCommand::List { all, json } => {
            let incidents = store.incidents(all).await?;
            if incidents.is_empty() && !json {
                outln!("No {}incidents.", if all { "" } else { "open " });
            }
            for incident in incidents {
                if json {
                    outln!(
                        "{}",
                        json!({
                            "id": incident.id, "vault": incident.vault_id, "kind": incident.kind,
                            "openedAt": incident.opened_at, "detail": incident.detail,
                            "clearedAt": incident.cleared_at, "note": incident.note,
                        })
                    );
                    continue;
                }
                let state = match incident.cleared_at {
                    Some(_) => format!("cleared: {}", incident.note.unwrap_or_default()),
                    None => "OPEN".to_owned(),
                };
                let reason = incident.detail["reason"].as_str().unwrap_or_default().to_owned();
                outln!(
                    "{}  {}  {}  {state}\n    {reason}",
                    incident.id,
                    incident.vault_id,
                    incident.kind
                );
            }
        }
        IncidentCommand::Clear { ids, note } => {
            let named: Vec<&str> = ids.iter().map(String::as_str).collect();
            store.clear_incidents(&named, &note).await?;
            // An id named twice was cleared once: it is said once.
            let mut said = std::collections::HashSet::new();
            for id in ids.iter().filter(|id| said.insert(id.as_str())) {
                outln!("Incident {id} cleared.");
            }
        }
    }
    Ok(Outcome::Done)
}

async fn audit(context: &Context, command: AuditCommand) -> Result<Outcome, Failure> {
    match command {
        AuditCommand::Verify { file: Some(path), head } => {
            let bytes = read_limited("file", &path, 256 * 1024 * 1024)?;
            let text = String::from_utf8_lossy(&bytes);
            let entries = text
                .lines()
                .enumerate()
                .map(|(i, line)| {
                    serde_json::from_str::<AuditEntry>(line).map_err(|e| {
                        Failure::input(format!("line {}: not an audit entry: {e}", i + 1))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let result = verify_chain(LOCAL, &entries).and_then(|report| match head {
                Some(head) if !head.trim_start_matches("0x").eq_ignore_ascii_case(&report.head) => {
                    let problem = format!(
                        "the file ends at entry {} whose hash is not the given head: entries \
                         were cut off or the file is another log",
                        report.entries
                    );
                    Err(countersign_core::audit::ChainBreak { seq: report.entries + 1, problem })
                }
                _ => Ok(report),
            });
            Ok(report_chain(result))
        }
        AuditCommand::VerifyApproval { file } => {
            let bytes = read_limited("file", &file, 1024 * 1024)?;
            let stored: countersign_fido::StoredApproval = serde_json::from_slice(&bytes)
                .map_err(|e| Failure::input(format!("file: not a stored approval: {e}")))?;
            match countersign_fido::reverify(&stored) {
                Ok(verified) => {
                    let printable = countersign_core::printable;
                    outln!(
                        "OK: the key in this file signed, for a person's touch, the challenge of \
                         {}'s approval of request {} at safeTxHash {} (counter {}, user verified: {})",
                        checksummed(&stored.owner),
                        printable(&stored.request_id),
                        stored.safe_tx_hash,
                        verified.counter,
                        verified.user_verified
                    );
                    outln!("Member:            {}", printable(&stored.member));
                    outln!("Credential:        {}", printable(&stored.assertion.credential_id));
                    outln!("Key SHA-256:       {}", stored.key_fingerprint());
                    outln!(
                        "Relying party:     {} ({})",
                        printable(&stored.relying_party.id),
                        stored.relying_party.origin
                    );
                    outln!(
                        "The file carries its own key: compare the key's SHA-256 with the queue's \
                         list of confirmed keys (GET /v1/fido/credentials)."
                    );
                    Ok(Outcome::Done)
                }
                Err(refusal) => {
                    eprintln!("REFUSED ({}): {refusal}", refusal.code());
                    Ok(Outcome::Refused)
                }
            }
        }
        AuditCommand::Verify { file: None, .. } => {
            let store = context.open_store().await?;
            Ok(report_chain(store.verify_audit().await?))
        }
        AuditCommand::Export { file } => {
            let store = context.open_store().await?;
            let mut out = String::new();
            for entry in store.audit_entries().await? {
                let line =
                    serde_json::to_string(&entry).map_err(|e| Failure::other(e.to_string()))?;
                out.push_str(&line);
                out.push('\n');
            }
            match file {
                Some(path) => std::fs::write(&path, out)
                    .map_err(|e| Failure::other(format!("{}: {e}", path.display())))?,
                None => out!("{out}"),
            }
            Ok(Outcome::Done)
        }
    }
}

fn report_chain(
    result: Result<countersign_core::audit::ChainReport, countersign_core::audit::ChainBreak>,
) -> Outcome {
    match result {
        Ok(report) => {
            outln!("The audit chain holds: {} entries, head 0x{}", report.entries, report.head);
            Outcome::Done
        }
        Err(broken) => {
            outln!("The audit chain is broken at entry {}: {}", broken.seq, broken.problem);
            Outcome::Refused
        }
    }
}

async fn erase(context: &Context, yes: bool) -> Result<Outcome, Failure> {
    if !yes {
        return Err(Failure::input(
            "erase: this deletes every key in the store; pass --yes to confirm",
        ));
    }
    let store = context.open_store().await?;
    store.erase().await?;
    outln!("Erased the store in {}", context.data_dir.display());
    Ok(Outcome::Done)
}

async fn queue(context: &Context, command: QueueCommand) -> Result<Outcome, Failure> {
    match command {
        QueueCommand::Connect { url, pins, api_key_file, initiators } => {
            crate::queue_commands::connect(context, url, pins, &api_key_file, initiators).await
        }
        QueueCommand::Submit { file, id, chain_id, key } => {
            crate::queue_commands::submit(context, &file, &id, chain_id, &key).await
        }
        QueueCommand::Vault(command) => crate::queue_commands::vault(command).await,
        QueueCommand::Member(command) => crate::queue_commands::member(command).await,
        QueueCommand::ApiKey(command) => crate::queue_commands::api_key_new(command).await,
        QueueCommand::Fido(command) => crate::queue_commands::fido_admin(command).await,
        QueueCommand::Audit(crate::args::QueueAuditCommand::Verify { queue_dir, database }) => {
            if database.is_none() && !queue_dir.join("queue.db").is_file() {
                return Err(Failure::input(format!(
                    "queue-dir: no queue.db in {}",
                    queue_dir.display()
                )));
            }
            let db = match &database {
                Some(url) => countersign_queue::db::Db::connect(url).await,
                None => countersign_queue::db::Db::sqlite_in(&queue_dir).await,
            }
            .map_err(|e| Failure::other(e.to_string()))?;
            let result = countersign_queue::model::verify_audit(&db)
                .await
                .map_err(|e| Failure::other(e.message))?;
            Ok(report_chain(result))
        }
        QueueCommand::Serve {
            queue_dir,
            listen,
            database,
            policy,
            allow_ip,
            fido_rp_id,
            fido_origin,
        } => {
            let allow = allow_ip
                .iter()
                .enumerate()
                .map(|(i, net)| {
                    net.parse::<ipnet::IpNet>()
                        .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            Failure::input(format!(
                                "allow-ip[{i}]: {net:?} is not a network like 10.0.0.0/8"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            std::fs::create_dir_all(&queue_dir)
                .map_err(|e| Failure::other(format!("{}: {e}", queue_dir.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&queue_dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| Failure::other(format!("{}: {e}", queue_dir.display())))?;
            }
            let identity = countersign_queue::tls::Identity::load_or_create(&queue_dir)
                .map_err(|e| Failure::other(e.to_string()))?;
            let db = match &database {
                Some(url) => countersign_queue::db::Db::connect(url).await,
                None => countersign_queue::db::Db::sqlite_in(&queue_dir).await,
            }
            .map_err(|e| Failure::other(e.to_string()))?;
            let policy = match &policy {
                Some(path) => Policy::from_json(&read_limited("policy", path, MAX_POLICY_BYTES)?)?,
                None => Policy::default(),
            };
            let rules =
                countersign_queue::model::QueueRules { policy, tokens: TokenList::shipped()? };
            // Bootstrap may write a transaction a request (views for a database from before
            // them), so the log is checkpointed meanwhile; the server's state does it after.
            let bootstrapping = db.keep_checkpointing(Default::default());
            let admin_key = countersign_queue::model::bootstrap(&db)
                .await
                .map_err(|e| Failure::other(e.message))?;
            drop(bootstrapping);
            let mut api = countersign_queue::api::ApiState::new(db, rules, Default::default())
                .with_allowlist(allow);
            if let (Some(rp_id), Some(origin)) = (&fido_rp_id, &fido_origin) {
                let fido = countersign_queue::fido::Fido::new(rp_id, origin)
                    .map_err(|e| Failure::input(format!("fido: {e}")))?;
                api = api.with_fido(fido);
            }
            let running = countersign_queue::server::start(listen, &identity, api)
                .await
                .map_err(|e| Failure::other(e.to_string()))?;
            outln!("url: {}", running.url());
            outln!("pin-sha256: {}", running.pin);
            if let Some(key) = admin_key {
                // Shown once: the queue keeps only its hash.
                outln!("admin-api-key: {key}");
            }
            wait_for_stop().await;
            running.stop();
            Ok(Outcome::Done)
        }
        QueueCommand::Ping { url, pins } => {
            let texts: Vec<&str> = pins.iter().map(String::as_str).collect();
            let pins = countersign_sync::pin::Pins::parse(&texts)
                .map_err(|e| Failure::input(e.to_string()))?;
            let client = countersign_sync::client::QueueClient::new(&url, pins)
                .map_err(|e| Failure::input(e.to_string()))?;
            let health = client.health().await.map_err(|e| Failure::other(e.to_string()))?;
            outln!("The queue at {url} answered with the pinned key: {}", health["status"]);
            Ok(Outcome::Done)
        }
    }
}

/// Until SIGINT or SIGTERM.
async fn wait_for_stop() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
