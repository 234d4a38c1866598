//! Approvals, written in batches.
//!
//! What an approval costs is mostly recovering its signer, and that needs no write: it runs
//! on the caller's task, so approvals recover on every core at once. What must be written goes
//! to one writer task, which takes every approval waiting and writes them in one transaction:
//! one write turn, one audit append and a few statements for the whole batch, where one
//! approval at a time would queue each behind a dozen round trips to the database.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256};
use countersign_core::address::checksummed;
use countersign_core::signature::OwnerSignature;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::db::{int, optional_text, text, Db};
use crate::error::ApiError;
use crate::model::{
    audit_many, closed, db, list_marks, ordered_signatures, parse_signature, placeholders,
    request_view, shown_state, string_field, Approval, Member, RequestRow, RequestView, Role,
};

/// The most approvals written in one transaction.
const BATCH: usize = 64;

/// One approval that passed every check that needs no write.
struct Job {
    request_id: String,
    approval: Approval,
    threshold: usize,
    /// The security key assertion the vault's presence policy asked for.
    fido: Option<crate::fido::FidoUse>,
    reply: oneshot::Sender<Result<RequestView, ApiError>>,
}

/// What decides whether an approval needs a security key.
#[derive(Clone, Copy)]
#[expect(missing_debug_implementations, reason = "references to the queue's configuration")]
pub struct Presence<'a> {
    pub fido: Option<&'a crate::fido::Fido>,
    pub rules: &'a crate::model::QueueRules,
}

/// The handle to the writer task, and what the checks remember.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "a channel and a cache; nothing to show")]
pub struct ApprovalWriter {
    jobs: mpsc::Sender<Job>,
    /// Approver members by address. Members are never changed or removed, so an entry
    /// cannot go stale; an address not found is looked up again next time.
    approvers: Arc<Mutex<HashMap<Address, String>>>,
}

impl ApprovalWriter {
    /// Starts the writer task on the current Tokio runtime; it ends when every handle is gone.
    pub fn start(store: Db) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Job>(4 * BATCH);
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                write_batch(&store, batch).await;
            }
        });
        Self { jobs, approvers: Arc::default() }
    }

    async fn approver(&self, store: &Db, owner: &Address) -> Result<Option<String>, ApiError> {
        if let Some(id) = self.approvers.lock().ok().and_then(|m| m.get(owner).cloned()) {
            return Ok(Some(id));
        }
        let row = sqlx::query("SELECT id FROM members WHERE address = $1 AND role = 'approver'")
            .bind(checksummed(owner))
            .fetch_optional(&store.pool)
            .await
            .map_err(db)?;
        let id = row.map(|r| text(&r, "id"));
        if let (Some(id), Ok(mut cache)) = (&id, self.approvers.lock()) {
            cache.insert(*owner, id.clone());
        }
        Ok(id)
    }
}

/// Records an approval, and the signatures in owner order once the threshold is reached.
pub async fn approve(
    store: &Db,
    writer: &ApprovalWriter,
    presence: &Presence<'_>,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<RequestView, ApiError> {
    caller.require(&[Role::Approver])?;
    let claimed =
        countersign_core::request::parse_hash("safeTxHash", &string_field(body, "safeTxHash")?)?;
    let signature = parse_signature(&string_field(body, "signature")?)?;

    let row = sqlx::query(
        "SELECT r.state, r.expires_at, r.safe_tx_hash, r.initiator_address, r.vault_id, \
         r.transaction_json, v.owners, v.threshold \
         FROM requests r LEFT JOIN vaults v ON v.id = r.vault_id WHERE r.id = $1",
    )
    .bind(id.to_owned())
    .fetch_optional(&store.pool)
    .await
    .map_err(db)?
    .ok_or_else(|| ApiError::not_found(format!("request {id}")))?;
    let state = text(&row, "state");
    let state = shown_state(&state, int(&row, "expires_at"));
    if state != "pending" {
        // A retry of an approval already recorded answers as the first did, even once the
        // request has moved on (the first answer may have been lost on the way back).
        if recorded(store, id, &signature).await? {
            return request_view(store, id).await;
        }
        return Err(closed(id, state));
    }
    let safe_tx_hash = B256::from_str(&text(&row, "safe_tx_hash")).unwrap_or_default();
    if claimed != safe_tx_hash {
        return Err(ApiError::unprocessable("hash_mismatch",
            format!("safeTxHash: the approval signed {claimed}, the request's safeTxHash is {safe_tx_hash} (another vault, chain or request)")));
    }
    let owner = recover(&signature, &safe_tx_hash)?;
    let owners: Vec<String> = optional_text(&row, "owners")
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let owner_text = checksummed(&owner);
    if !owners.contains(&owner_text) {
        return Err(ApiError::unprocessable(
            "not_an_owner",
            format!("signature: recovers to {owner_text}, which is not an owner of the vault"),
        ));
    }
    let Some(member_id) = writer.approver(store, &owner).await? else {
        return Err(ApiError::unprocessable(
            "not_an_approver",
            format!("signature: owner {owner_text} is not a member with the approver role"),
        ));
    };
    // The signature proves the owner's consent, so an approver may relay another approver's
    // signature; the approval is recorded under the member whose address signed it.
    if text(&row, "initiator_address") == owner_text {
        return Err(ApiError::unprocessable(
            "self_approval",
            "signature: the initiator cannot approve their own request",
        ));
    }

    let approval = crate::fido::ApprovalFacts {
        request_id: id,
        vault: &text(&row, "vault_id"),
        transaction_json: &text(&row, "transaction_json"),
        safe_tx_hash: &safe_tx_hash,
        owner: &owner,
        member_id: &member_id,
    };
    let fido =
        match crate::fido::check_approval(store, presence.fido, presence.rules, &approval, body)
            .await
        {
            Ok(fido) => fido,
            // The identical approval again answers as the first did: its assertion, used once,
            // now looks replayed, and a retry may leave it out. Looked up only on this path.
            Err(refusal) => {
                if recorded(store, id, &signature).await? {
                    return request_view(store, id).await;
                }
                return Err(refusal);
            }
        };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        fido,
        request_id: id.to_owned(),
        approval: Approval {
            owner: owner_text,
            member_id,
            signature: signature.to_hex(),
            at: crate::model::now(),
        },
        threshold: usize::try_from(int(&row, "threshold")).unwrap_or(usize::MAX).max(1),
        reply,
    };
    let stopped =
        || ApiError::from(crate::QueueError::Database("the approval writer has stopped".into()));
    writer.jobs.send(job).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// Whether this very signature is recorded as an approval of request `id`.
async fn recorded(store: &Db, id: &str, signature: &OwnerSignature) -> Result<bool, ApiError> {
    let row = sqlx::query("SELECT owner FROM approvals WHERE request_id = $1 AND signature = $2")
        .bind(id.to_owned())
        .bind(signature.to_hex())
        .fetch_optional(&store.pool)
        .await
        .map_err(db)?;
    Ok(row.is_some())
}

fn recover(signature: &OwnerSignature, hash: &B256) -> Result<Address, ApiError> {
    signature.recover(hash).map_err(|_| {
        ApiError::unprocessable("bad_signature", "signature: does not recover to any address")
    })
}

/// Writes a batch in one transaction and answers every job. A database failure fails the
/// whole batch and writes nothing.
async fn write_batch(store: &Db, batch: Vec<Job>) {
    let (jobs, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.request_id, job.approval, job.threshold, job.fido), job.reply))
        .unzip();
    match write(store, &jobs).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn internal() -> ApiError {
    ApiError::from(crate::QueueError::Database("an approval went unanswered".into()))
}

/// The requests of a batch as they stand inside its transaction, with their approvals.
struct Open {
    request: RequestRow,
    approvals: Vec<Approval>,
    changed: bool,
}

/// The answer to each job, in order.
async fn write(
    store: &Db,
    jobs: &[(String, Approval, usize, Option<crate::fido::FidoUse>)],
) -> Result<Vec<Result<RequestView, ApiError>>, ApiError> {
    let (mut tx, _writer) = store.begin().await?;
    let mut ids: Vec<&str> = jobs.iter().map(|(id, _, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let statement = format!("SELECT * FROM requests WHERE id IN ({})", list_marks(ids.len()));
    let mut query = sqlx::query(&statement);
    for id in &ids {
        query = query.bind((*id).to_owned());
    }
    let mut open: HashMap<String, Open> = HashMap::new();
    for row in query.fetch_all(&mut *tx).await.map_err(db)? {
        let request = RequestRow::from_row(&row);
        open.insert(request.id.clone(), Open { request, approvals: Vec::new(), changed: false });
    }
    let statement = format!(
        "SELECT request_id, owner, member_id, signature, created_at FROM approvals \
         WHERE request_id IN ({})",
        list_marks(ids.len())
    );
    let mut query = sqlx::query(&statement);
    for id in &ids {
        query = query.bind((*id).to_owned());
    }
    for row in query.fetch_all(&mut *tx).await.map_err(db)? {
        if let Some(entry) = open.get_mut(&text(&row, "request_id")) {
            entry.approvals.push(Approval::from_row(&row));
        }
    }

    let mut views: HashMap<String, RequestView> = HashMap::new();
    // Each approval in order, against the state the earlier ones left.
    let mut accepted: Vec<(usize, &str)> = Vec::new();
    let mut outcome: Vec<Result<(), ApiError>> = Vec::with_capacity(jobs.len());
    for (index, (id, approval, threshold, fido)) in jobs.iter().enumerate() {
        let Some(entry) = open.get_mut(id) else {
            outcome.push(Err(ApiError::not_found(format!("request {id}"))));
            continue;
        };
        if let Some(existing) = entry.approvals.iter().find(|a| a.owner == approval.owner) {
            outcome.push(if existing.signature == approval.signature {
                Ok(())
            } else {
                Err(ApiError::conflict(
                    "duplicate_approval",
                    format!("owner {} already approved this request", approval.owner),
                ))
            });
            continue;
        }
        if entry.request.shown_state() != "pending" {
            outcome.push(Err(closed(&entry.request.id, entry.request.shown_state())));
            continue;
        }
        // The key's counter moves forward with the approval, or the assertion was used
        // already (by an approval earlier in this batch or before it).
        if let Some(used) = fido {
            if !crate::fido::advance_counter(&mut tx, used).await? {
                outcome.push(Err(ApiError::unprocessable(
                    "fido_replayed",
                    "fido: the security key's counter did not move past the last one seen: a replay",
                )));
                continue;
            }
        }
        entry.approvals.push(approval.clone());
        entry.changed = true;
        if entry.approvals.len() >= *threshold {
            entry.request.state = "approved".to_owned();
            entry.request.signatures = Some(ordered_signatures(&entry.approvals));
        }
        accepted.push((index, id.as_str()));
        outcome.push(Ok(()));
    }

    if !accepted.is_empty() {
        let row = sqlx::query(
            "UPDATE counters SET value = value + $1 WHERE name = 'request_seq' RETURNING value",
        )
        .bind(accepted.len() as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let first_seq = int(&row, "value") - accepted.len() as i64 + 1;
        let mut entries: Vec<(&str, Value)> = Vec::new();
        for (n, (index, id)) in accepted.iter().enumerate() {
            let approval = &jobs[*index].1;
            if let Some(entry) = open.get_mut(*id) {
                entry.request.seq = first_seq + n as i64;
            }
            entries.push((
                "approved",
                json!({ "id": id, "owner": approval.owner, "signature": approval.signature }),
            ));
        }
        for chunk in accepted.chunks(100) {
            let statement = format!(
                "INSERT INTO approvals (request_id, owner, member_id, signature, created_at) \
                 VALUES {}",
                placeholders(chunk.len(), 5)
            );
            let mut query = sqlx::query(&statement);
            for (index, id) in chunk {
                let approval = &jobs[*index].1;
                query = query
                    .bind((*id).to_owned())
                    .bind(approval.owner.clone())
                    .bind(approval.member_id.clone())
                    .bind(approval.signature.clone())
                    .bind(approval.at);
            }
            query.execute(&mut *tx).await.map_err(db)?;
        }
        for (index, id) in &accepted {
            let (_, approval, _, fido) = &jobs[*index];
            if let Some(used) = fido {
                sqlx::query("UPDATE approvals SET fido = $1 WHERE request_id = $2 AND owner = $3")
                    .bind(used.stored.clone())
                    .bind((*id).to_owned())
                    .bind(approval.owner.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        let mut changed: Vec<&Open> = open.values().filter(|entry| entry.changed).collect();
        changed.sort_by_key(|entry| entry.request.seq);
        for entry in &changed {
            views.insert(
                entry.request.id.clone(),
                entry.request.save(&mut tx, &entry.approvals).await?,
            );
            if entry.request.state == "approved" {
                entries.push(("threshold_reached", json!({ "id": entry.request.id })));
            }
        }
        audit_many(&mut tx, &entries).await?;
    }
    tx.commit().await.map_err(db)?;

    for entry in open.values().filter(|entry| entry.changed) {
        if entry.request.state == "approved" {
            tracing::info!(request = %entry.request.id, "threshold reached");
        }
    }
    let mut answers = Vec::with_capacity(jobs.len());
    for ((id, _, _, _), result) in jobs.iter().zip(outcome) {
        answers.push(result.and_then(|()| {
            if let Some(view) = views.get(id) {
                return Ok(view.clone());
            }
            // An idempotent retry on a request this batch did not change.
            let entry = open.get(id).ok_or_else(internal)?;
            let view = RequestView::new(
                entry.request.id.clone(),
                entry.request.seq,
                entry.request.shown_state(),
                &entry.request.stored_view(&entry.approvals),
            );
            views.insert(id.clone(), view.clone());
            Ok(view)
        }));
    }
    Ok(answers)
}
