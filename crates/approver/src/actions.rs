//! Reviewing, signing, approving and rejecting a synced request.
//!
//! The order of an approval is the promise of the product: review the synced copy against our
//! own vault record, policy and history; ask the queue for the request as it is now and go on
//! only if it is still pending with the payload reviewed; sign under the guards and record the
//! signature in the store's history before it goes anywhere; then send it.

use crate::presence::{KeyPrompts, SecurityKey};
use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use countersign_core::address::checksummed;
use countersign_core::guard::CheckedRequest;
use countersign_core::guard::{review, Review};
use countersign_core::policy::Policy;
use countersign_core::request::SafeTxRequest;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::{Decision, Prompt, Signer, SignerError};
use countersign_core::tokens::TokenList;
use countersign_store::Recorded;
use countersign_store::{CachedRequest, Store};
use countersign_sync::client::{ClientError, Session};
use countersign_sync::sync::{payload_hash, Connection, SyncError};
use serde_json::{json, Value};

use crate::view::audit_body;
use crate::Problem;

/// The longest expiry a queue may set: a synced request older than this is never signed.
pub const LONGEST_EXPIRY_SECONDS: i64 = 168 * 3600;

/// Why Countersign marked a synced request: each one means it cannot be signed.
pub fn marks(cached: &CachedRequest) -> Vec<String> {
    cached.body["countersign"]["marks"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The marks, and the one the clock adds: older than the longest expiry.
pub fn marks_now(cached: &CachedRequest, now: i64) -> Vec<String> {
    let mut marked = marks(cached);
    let created = cached.body["createdAt"].as_i64().unwrap_or(0);
    if created.saturating_add(LONGEST_EXPIRY_SECONDS) < now {
        marked.push("it is older than the longest expiry (168 hours)".to_owned());
    }
    marked
}

/// A synced request by id.
pub async fn cached(store: &Store, id: &str) -> Result<CachedRequest, Problem> {
    store.cached_request(id).await?.ok_or_else(|| {
        Problem::input("unknown_request", format!("id: no synced request {id}; sync first"))
    })
}

/// The local review of a synced request: our vault record, our policy, our history.
pub async fn local_review(
    store: &Store,
    cached: &CachedRequest,
    tokens: &TokenList,
) -> Result<Review, Problem> {
    let Some(object) = cached.body["transaction"].as_object() else {
        return Err(Problem::other(
            "no_transaction",
            format!("request {}: no transaction in the synced copy", cached.id),
        ));
    };
    let request = SafeTxRequest::from_map(object)?;
    let vault = store.vault(cached.body["chainId"].as_u64().unwrap_or(0), &request.safe).await?;
    let policy: Policy = store.policy().await?;
    let history = store.history(&vault, request.tx.nonce).await?;
    Ok(review(request, &vault, &policy, tokens, &history))
}

/// The stored queue connection.
pub async fn stored_connection(store: &Store) -> Result<Connection, Problem> {
    let (config, _) = store.queue_config().await?.ok_or_else(|| {
        Problem::input("no_queue", "queue: no queue connection is set up; connect to a queue first")
    })?;
    Ok(Connection::from_secret(&config)?)
}

/// How [`sign_reviewed`] ended. Only `Done` carries a signature.
#[derive(Debug)]
pub enum Signed {
    Done {
        signature: OwnerSignature,
        review: Box<Review>,
    },
    /// A tripwire guard refused: an incident is open and the vault is blocked.
    Tripwire {
        review: Box<Review>,
        incident: String,
    },
    /// A guard refused; the review names why.
    Refused {
        review: Box<Review>,
    },
    /// The person (or the device) declined.
    Declined {
        review: Box<Review>,
    },
    /// Another payload was signed for the nonce, or an incident opened, while this one was
    /// being confirmed: the signature was discarded.
    Late {
        review: Box<Review>,
        incident: Option<String>,
    },
}

/// Signs a reviewed request if every guard allows it, and records the signature in the
/// store's history before returning it. `shown` is what the approver was shown, for the audit
/// log.
pub async fn sign_reviewed(
    store: &Store,
    review: Review,
    signer: &dyn Signer,
    prompt: &dyn Prompt,
    tokens: &TokenList,
    shown: &Value,
) -> Result<Signed, Problem> {
    if let Some(tripwire) = review.tripwire() {
        let detail = json!({ "reason": tripwire.to_string(), "shown": shown });
        let incident = store.open_incident(&review.vault, "tripwire", &detail).await?;
        return Ok(Signed::Tripwire { review: Box::new(review), incident });
    }
    let shown_review = review.clone();
    let checked = match review.into_checked() {
        Ok(checked) => checked,
        Err(refused) => return Ok(Signed::Refused { review: refused.0 }),
    };
    let signature = match signer.sign(&checked, prompt).await {
        Ok(signature) => signature,
        Err(SignerError::Declined) => {
            store.audit("declined", shown).await?;
            return Ok(Signed::Declined { review: Box::new(shown_review) });
        }
        Err(SignerError::Unavailable { code, detail }) => return Err(Problem::other(code, detail)),
        Err(error) => return Err(Problem::other("signer_failed", error.to_string())),
    };
    let recorded = store
        .record_signature(
            checked.vault(),
            checked.request().tx.nonce,
            checked.hashes().safe_tx,
            shown_review.is_rejection(),
            signer.address(),
            &signature,
            shown,
        )
        .await?;
    if let Recorded::Refused(refusals) = recorded {
        let mut review = shown_review;
        review.refusals.extend(refusals);
        let mut incident = None;
        if let Some(tripwire) = review.tripwire() {
            let detail =
                json!({ "reason": tripwire.to_string(), "shown": audit_body(&review, tokens) });
            incident = Some(store.open_incident(checked.vault(), "tripwire", &detail).await?);
        }
        return Ok(Signed::Late { review: Box::new(review), incident });
    }
    Ok(Signed::Done { signature, review: Box::new(shown_review) })
}

/// A prompt that approves exactly one safeTxHash: the one the person confirmed on a screen
/// that showed it. Anything else is declined.
#[derive(Debug)]
pub struct ConfirmedHash(pub B256);

#[async_trait]
impl Prompt for ConfirmedHash {
    async fn confirm(&self, request: &CheckedRequest, _signer: Address) -> Decision {
        if request.hashes().safe_tx == self.0 {
            Decision::Approve
        } else {
            Decision::Decline
        }
    }
}

/// The steps of an approval, reported as they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Asking the queue whether the request is still pending with the payload reviewed.
    Checking,
    Signing,
    /// Sending the signature to the queue.
    Sending,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Signing => "signing",
            Self::Sending => "sending",
        }
    }
}

/// How an approval ended.
#[derive(Debug)]
pub enum Approved {
    /// Countersign marked the request: nothing was signed.
    Marked { review: Box<Review>, marks: Vec<String> },
    /// Not signed, or signed and discarded: see [`Signed`].
    NotSigned(Signed),
    /// The queue recorded the approval.
    Sent { signer: Address, review: Box<Review>, state: String, approvals: usize },
}

/// Approves a synced request: reviews it, checks it is unchanged and pending on the queue,
/// signs it under the guards and sends the signature. `on_step` hears each step as it starts
/// and answers whether to go on (false: the caller was locked meanwhile; nothing further is
/// signed or sent).
/// The security key an approval may need, and how to ask the person for its PIN and touch.
pub type KeyAccess<'a> = (&'a SecurityKey, std::sync::Arc<dyn KeyPrompts>);

pub async fn approve(
    store: &Store,
    tokens: &TokenList,
    id: &str,
    signer: &dyn Signer,
    prompt: &dyn Prompt,
    security_key: Option<KeyAccess<'_>>,
    on_step: &(dyn Fn(Step) -> bool + Send + Sync),
) -> Result<Approved, Problem> {
    let cached = cached(store, id).await?;
    let mut review = local_review(store, &cached, tokens).await?;
    review.check_signer(signer.address());
    let shown = audit_body(&review, tokens);
    store.audit("inspected", &shown).await?;
    let marked = marks_now(&cached, countersign_store::unix_now());
    if !marked.is_empty() {
        return Ok(Approved::Marked { review: Box::new(review), marks: marked });
    }
    if cached.body["safeTxHash"].as_str() != Some(review.hashes.safe_tx.to_string().as_str()) {
        return Err(Problem::other(
            "hash_differs",
            "the synced safeTxHash differs from ours; sync again, which marks it",
        ));
    }
    // What was reviewed is the synced copy: ask the queue for the request as it is now, and
    // sign only if it is still pending and its payload is the one reviewed.
    if !on_step(Step::Checking) {
        return Err(stopped());
    }
    let session = stored_connection(store).await?.session().await?;
    let current = session.get(&format!("/v1/requests/{id}")).await?;
    if payload_hash(&current) != cached.payload_hash {
        return Err(Problem::refused(
            "changed_on_queue",
            format!(
                "request {id} changed on the queue since it was synced; sync again, which marks it"
            ),
        ));
    }
    if current["state"] != json!("pending") {
        return Err(Problem::refused(
            "not_pending",
            format!(
                "request {id} is {} on the queue; nothing was signed",
                countersign_core::printable(current["state"].as_str().unwrap_or("?"))
            ),
        ));
    }
    // A second signature by the same owner would be refused by the queue, and a Ledger's or
    // an HSM's would differ from the first: sign nothing when this owner approved already.
    let me = checksummed(&signer.address());
    let already = current["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["owner"].as_str().is_some_and(|owner| owner.eq_ignore_ascii_case(&me)));
    if already {
        return Err(Problem::refused(
            "already_approved",
            format!("the queue lists {me}'s approval of request {id} already; nothing was signed"),
        ));
    }
    let hash = review.hashes.safe_tx;
    // Where the vault's presence policy asks for a security key, nothing is signed without
    // a way to make the assertion.
    let needs = crate::presence::requirement(&session, id).await?;
    let user_verification = needs["userVerification"] == json!(true);
    let key = if needs["required"] == json!(true) {
        let reason = countersign_core::printable(needs["reason"].as_str().unwrap_or("its policy"));
        match security_key {
            Some(key) => Some((key, crate::presence::confirmed_keys(&session).await?)),
            None => {
                return Err(Problem::refused(
                    "fido_unsupported",
                    format!(
                        "this approval needs a security key ({reason}), which this client cannot \
                         use yet; approve with the CLI; nothing was signed"
                    ),
                ))
            }
        }
    } else {
        None
    };
    // The security key's assertion comes first: its challenge needs only the request, its
    // safeTxHash and the owner, and a key that is missing, wrong or declined then leaves no
    // owner signature behind that was never sent.
    let fido = match key {
        Some(((key, prompts), allow)) => Some(
            crate::presence::assertion(
                &session,
                key,
                prompts,
                allow,
                id,
                &hash,
                &signer.address(),
                user_verification,
            )
            .await?,
        ),
        None => None,
    };
    if !on_step(Step::Signing) {
        return Err(stopped());
    }
    let (signature, review) =
        match sign_reviewed(store, review, signer, prompt, tokens, &shown).await? {
            Signed::Done { signature, review } => (signature, review),
            other => return Ok(Approved::NotSigned(other)),
        };
    if !on_step(Step::Sending) {
        return Err(stopped());
    }
    let reply = send_approval(&session, id, hash, &signature, fido).await?;
    Ok(Approved::Sent {
        signer: signer.address(),
        review,
        state: countersign_core::printable(reply["state"].as_str().unwrap_or("?")),
        approvals: reply["approvals"].as_array().map(Vec::len).unwrap_or(0),
    })
}

fn stopped() -> Problem {
    Problem::refused(
        "locked",
        "Countersign was locked during the approval; nothing further was signed or sent",
    )
}

async fn send_approval(
    session: &Session,
    id: &str,
    hash: B256,
    signature: &OwnerSignature,
    fido: Option<Value>,
) -> Result<Value, Problem> {
    let mut body = json!({ "safeTxHash": hash.to_string(), "signature": signature.to_hex() });
    if let Some(fido) = fido {
        body["fido"] = fido;
    }
    Ok(session.post(&format!("/v1/requests/{id}/approvals"), &body).await?)
}

/// The mark a rejection leaves on this store's copy: this approver signs it no more.
const REJECTED_HERE: &str = "this approver rejected it";

/// The reason as the queue takes it (letters or digits, at most 1000 characters), and
/// nothing that would read differently from what it holds.
fn check_reason(reason: &str) -> Result<&str, Problem> {
    let reason = reason.trim();
    let bad = |what: &str| Err(Problem::input("reason_invalid", format!("reason: {what}")));
    if !reason.chars().any(char::is_alphanumeric) {
        return bad("say why the request is rejected, in words (letters or digits)");
    }
    if reason.chars().count() > 1000 {
        return bad("at most 1000 characters");
    }
    if reason.chars().any(|c| (c.is_control() && c != '\n') || countersign_core::is_invisible(c)) {
        return bad("holds control, invisible or direction-changing characters");
    }
    Ok(reason)
}

/// Rejects a synced request on the queue with a reason. The approver's no holds in this store
/// whatever the queue answers: the local copy is marked, and the local audit log records the
/// rejection, in words that say whether the queue recorded it, answered otherwise (the request
/// closed already, say; or a queue that does not keep its contract) or did not answer, so
/// that this approver never signs what they rejected. A reason or id that is bad input is
/// refused here, before anything is sent or written.
pub async fn reject(store: &Store, id: &str, reason: &str) -> Result<String, Problem> {
    countersign_core::intent::check_request_id("id", id)?;
    let reason = check_reason(reason)?;
    // Only a request synced here: its mark is what keeps this approver from signing it.
    cached(store, id).await?;
    let connection = stored_connection(store).await?;
    let answer = match connection.session().await {
        Ok(session) => session
            .post(&format!("/v1/requests/{id}/rejections"), &json!({ "reason": reason }))
            .await
            .map_err(SyncError::Client),
        Err(error) => Err(error),
    };
    // What keeps the rejection from being confirmed, if anything.
    let unconfirmed: Option<String> = match &answer {
        Ok(reply) if reply["state"] == "rejected" => None,
        Ok(reply) => Some(format!(
            "the queue answered, but shows it {}",
            countersign_core::printable(
                &reply["state"].as_str().unwrap_or("?").chars().take(32).collect::<String>()
            )
        )),
        // The client has made the queue's code printable and short.
        Err(SyncError::Client(ClientError::Status { status, code, .. })) => {
            Some(format!("the queue answered {status} {code}"))
        }
        Err(_) => Some("the queue did not confirm it".to_owned()),
    };
    let outcome = unconfirmed.clone().unwrap_or_else(|| "recorded by the queue".to_owned());
    let mark = match &unconfirmed {
        None => REJECTED_HERE.to_owned(),
        Some(why) => format!("{REJECTED_HERE}; {why}"),
    };
    // A sync running at this very moment keeps the mark: it adds the stored copy's marks to
    // the copy it writes.
    if let Err(error) = store.add_mark(id, &mark).await {
        return Err(Problem::other(
            "not_marked",
            format!(
                "request {id}: rejection {outcome}, but this store could not mark it ({}); \
                 reject it again",
                Problem::from(error).message
            ),
        ));
    }
    let audited =
        store.audit("rejected", &json!({ "id": id, "reason": reason, "queue": outcome })).await;
    if let Err(error) = audited {
        return Err(Problem::other(
            "not_audited",
            format!(
                "request {id}: rejection {outcome}, and marked rejected here, but the local \
                 audit log could not record it ({})",
                Problem::from(error).message
            ),
        ));
    }
    match (answer, unconfirmed) {
        (Ok(_), None) => Ok("rejected".to_owned()),
        (Ok(_), Some(why)) => Err(Problem::refused(
            "rejection_unconfirmed",
            format!("request {id}: {why}; it is marked rejected here"),
        )),
        (Err(error), _) => {
            let mut problem = Problem::from(error);
            // The id and the reason were checked here: a 400 is the queue's, not bad input.
            if problem.kind == crate::problem::Kind::Input {
                problem = Problem::refused("rejection_unconfirmed", problem.message);
            }
            problem.message = format!("{}; request {id} is marked rejected here", problem.message);
            Err(problem)
        }
    }
}

/// The owners whose approvals Countersign verified, and how many the queue listed.
pub fn approvals_of(cached: &CachedRequest) -> (Vec<String>, usize) {
    let verified: Vec<String> = cached.body["countersign"]["approvedBy"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str().map(str::to_owned))
        .collect();
    let claimed = cached.body["approvals"].as_array().map(Vec::len).unwrap_or(0);
    (verified, claimed)
}

/// Everything the request screen shows: the review as one object, the queue's state, the
/// marks, the verified approvals, and whether this approver may approve (and if not, why).
pub async fn detail(
    store: &Store,
    tokens: &TokenList,
    id: &str,
    signer: Option<Address>,
) -> Result<Value, Problem> {
    let cached = cached(store, id).await?;
    let mut review = local_review(store, &cached, tokens).await?;
    if let Some(signer) = signer {
        review.check_signer(signer);
    }
    let marks = marks_now(&cached, countersign_store::unix_now());
    let (verified, claimed) = approvals_of(&cached);
    let state = countersign_core::printable(cached.body["state"].as_str().unwrap_or("?"));
    let mut why_not: Vec<String> = marks.iter().map(|m| format!("Marked: {m}.")).collect();
    why_not.extend(review.refusals.iter().map(|r| format!("{r}.")));
    if state != "pending" {
        why_not.push(format!("The request is {state} on the queue."));
    }
    if signer.is_none() {
        why_not.push("This app has no signing key.".to_owned());
    }
    if let Some(signer) = signer {
        if verified.iter().any(|o| o.eq_ignore_ascii_case(&checksummed(&signer))) {
            why_not.push("This approver has already approved it.".to_owned());
        }
    }
    let mut out = crate::view::review_json(&review, tokens);
    out["id"] = json!(cached.id);
    out["ledgerDomainHash"] = json!(crate::view::ledger_form(&review.hashes.domain));
    out["ledgerMessageHash"] = json!(crate::view::ledger_form(&review.hashes.message));
    out["state"] = json!(state);
    out["marks"] = json!(marks);
    out["approvedBy"] = json!(verified);
    out["unverifiedApprovals"] = json!(claimed.saturating_sub(verified.len()));
    out["threshold"] = json!(review.vault.threshold);
    out["createdAt"] = cached.body["createdAt"].clone();
    out["initiator"] = cached.body["initiator"].clone();
    out["canApprove"] = json!(why_not.is_empty());
    out["whyNot"] = json!(why_not);
    Ok(out)
}
