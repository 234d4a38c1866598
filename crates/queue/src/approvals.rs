//! Approvals, written in batches.
//!
//! What an approval costs is mostly checking its signer (a recovery, or for an approver seen
//! before a check against their known key), and that needs neither a read nor a write: it
//! runs on the caller's task, so approvals are checked on every core at once. The rest
//! goes to one writer task, which takes every approval waiting and checks and writes them in
//! one transaction: a few reads, one write turn and one audit append for the whole batch,
//! where one approval at a time would queue each behind a dozen round trips to the database.
//! The writer keeps one connection from batch to batch: SQLite keeps the pages it read in
//! that connection's cache, and the pool neither checks the connection nor takes it back
//! between batches.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use alloy_primitives::{Address, B256};
use countersign_core::address::checksummed;
use countersign_core::signature::KnownKeys;
use serde_json::{json, Value};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};
use tokio::sync::{mpsc, oneshot};

use crate::db::{int, optional_text, text, Db};
use crate::error::ApiError;
use crate::fido::{ApprovalFacts, Fido, FidoUse};
use crate::model::{
    audit_many, closed, db, list_marks, ordered_signatures, parse_signature, placeholders,
    save_all, string_field, Approval, Member, QueueRules, RequestRow, RequestView, Role,
    ROW_COLUMNS,
};

/// The most approvals written in one transaction.
const BATCH: usize = 64;

/// One approval whose signer is recovered, to be checked against its request and written.
struct Job {
    request_id: String,
    /// The safeTxHash the approval says it signed, and the owner it recovers to over it.
    claimed: B256,
    owner: Address,
    signature: String,
    /// The security key assertion sent with it, if any.
    assertion: Option<Value>,
    reply: oneshot::Sender<Result<RequestView, ApiError>>,
}

/// What the checks need besides the database: the queue's rules and its relying party.
struct Checks {
    rules: Arc<QueueRules>,
    fido: Option<Fido>,
    /// Approver members by address. Members are never changed or removed, so an entry
    /// cannot go stale; an address not found is looked up again next time.
    approvers: HashMap<Address, String>,
}

/// The handle to the writer task.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "a channel; nothing to show")]
pub struct ApprovalWriter {
    jobs: mpsc::Sender<Job>,
    /// The keys of approvers who signed before, by their member address.
    keys: Arc<KnownKeys>,
}

impl ApprovalWriter {
    /// Starts the writer task on the current Tokio runtime; it ends when every handle is gone.
    pub fn start(store: Db, rules: Arc<QueueRules>, fido: Option<Fido>) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Job>(4 * BATCH);
        tokio::spawn(async move {
            let fresh =
                || Checks { rules: rules.clone(), fido: fido.clone(), approvers: HashMap::new() };
            let mut checks = fresh();
            // The writer's own connection, kept from batch to batch; after a failed batch
            // the next takes a fresh one from the pool.
            let mut connection: Option<PoolConnection<Any>> = None;
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                // Each batch in a task of its own: a panic fails that batch (its handlers
                // answer that the writer stopped, and nothing of it is written), not every
                // approval after it.
                let store = store.clone();
                let task = tokio::spawn(async move {
                    write_batch(&store, &mut checks, &mut connection, batch).await;
                    (checks, connection)
                });
                (checks, connection) = task.await.unwrap_or_else(|_| {
                    tracing::error!("a batch of approvals failed: its task panicked");
                    (fresh(), None)
                });
            }
        });
        Self { jobs, keys: Arc::default() }
    }
}

/// Records an approval, and the signatures in owner order once the threshold is reached.
pub async fn approve(
    writer: &ApprovalWriter,
    caller: &Member,
    id: &str,
    body: &Value,
) -> Result<RequestView, ApiError> {
    caller.require(&[Role::Approver])?;
    let claimed =
        countersign_core::request::parse_hash("safeTxHash", &string_field(body, "safeTxHash")?)?;
    let signature = parse_signature(&string_field(body, "signature")?)?;
    // Over the claimed hash: whether it is the request's is checked with the request. An
    // approver usually sends their own signature, so the caller's key, once known, is
    // checked first: the same answer as recovery at less than half its cost.
    let owner = writer.keys.signer(&signature, &claimed, caller.address).map_err(|_| {
        ApiError::unprocessable("bad_signature", "signature: does not recover to any address")
    })?;
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request_id: id.to_owned(),
        claimed,
        owner,
        signature: signature.to_hex(),
        assertion: body.get("fido").cloned(),
        reply,
    };
    let stopped =
        || ApiError::from(crate::QueueError::Database("the approval writer has stopped".into()));
    writer.jobs.send(job).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// Checks and writes a batch in one transaction and answers every job. A database failure
/// fails the whole batch and writes nothing; a refusal fails its own job only.
async fn write_batch(
    store: &Db,
    checks: &mut Checks,
    connection: &mut Option<PoolConnection<Any>>,
    batch: Vec<Job>,
) {
    let (jobs, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| {
            let Job { request_id, claimed, owner, signature, assertion, reply } = job;
            (Asked { request_id, claimed, owner, signature, assertion }, reply)
        })
        .unzip();
    let written = match connection {
        Some(connection) => write(store, checks, connection, &jobs).await,
        None => match store.pool.acquire().await {
            Ok(fresh) => write(store, checks, connection.insert(fresh), &jobs).await,
            Err(error) => Err(crate::model::db(error)),
        },
    };
    if written.is_err() {
        *connection = None;
    }
    match written {
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

/// A job without its reply.
struct Asked {
    request_id: String,
    claimed: B256,
    owner: Address,
    signature: String,
    assertion: Option<Value>,
}

fn internal() -> ApiError {
    ApiError::from(crate::QueueError::Database("an approval went unanswered".into()))
}

/// The requests of a batch as they stand inside its transaction, with their approvals and
/// what their vault says.
struct Open {
    request: RequestRow,
    approvals: Vec<Approval>,
    owners: Vec<String>,
    threshold: usize,
    /// The vault's presence policy as stored, if it has one.
    policy: Option<String>,
    changed: bool,
}

/// An approval that passed every check, with the assertion its vault asked for.
struct Accepted {
    index: usize,
    approval: Approval,
    fido: Option<FidoUse>,
}

/// The answer to each job, in order.
async fn write(
    store: &Db,
    checks: &mut Checks,
    connection: &mut AnyConnection,
    jobs: &[Asked],
) -> Result<Vec<Result<RequestView, ApiError>>, ApiError> {
    let (mut tx, _writer) = store.begin_on(connection).await?;
    let mut ids: Vec<&str> = jobs.iter().map(|job| job.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let columns: Vec<String> = ROW_COLUMNS.iter().map(|c| format!("r.{c}")).collect();
    let statement = format!(
        "SELECT {}, v.owners AS vault_owners, v.threshold AS vault_threshold, \
         p.policy AS presence_policy FROM requests r \
         LEFT JOIN vaults v ON v.id = r.vault_id LEFT JOIN fido_policies p ON p.vault_id = r.vault_id \
         WHERE r.id IN ({})",
        columns.join(", "),
        list_marks(&tx, ids.len())
    );
    let mut query = sqlx::query(&statement);
    for id in &ids {
        query = query.bind((*id).to_owned());
    }
    let mut open: HashMap<String, Open> = HashMap::new();
    for row in query.fetch_all(&mut *tx).await.map_err(db)? {
        let request = RequestRow::from_row(&row);
        let owners = optional_text(&row, "vault_owners")
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let threshold = usize::try_from(int(&row, "vault_threshold")).unwrap_or(usize::MAX).max(1);
        let entry = Open {
            request,
            approvals: Vec::new(),
            owners,
            threshold,
            policy: optional_text(&row, "presence_policy"),
            changed: false,
        };
        open.insert(entry.request.id.clone(), entry);
    }
    let statement = format!(
        "SELECT request_id, owner, member_id, signature, created_at FROM approvals \
         WHERE request_id IN ({})",
        list_marks(&tx, ids.len())
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

    // Each approval in order, against the state the earlier ones left.
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut outcome: Vec<Result<(), ApiError>> = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        outcome.push(match take(&mut tx, checks, &mut open, job).await? {
            Taken::Accepted(approval, fido) => {
                accepted.push(Accepted { index, approval, fido });
                Ok(())
            }
            Taken::Recorded => Ok(()),
            Taken::Refused(refusal) => Err(refusal),
        });
    }

    let mut views: HashMap<String, RequestView> = HashMap::new();
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
        for (n, taken) in accepted.iter().enumerate() {
            let id = &jobs[taken.index].request_id;
            if let Some(entry) = open.get_mut(id) {
                entry.request.seq = first_seq + n as i64;
            }
            let approval = &taken.approval;
            entries.push((
                "approved",
                json!({ "id": id, "owner": approval.owner, "signature": approval.signature }),
            ));
        }
        for chunk in accepted.chunks(100) {
            let statement = format!(
                "INSERT INTO approvals (request_id, owner, member_id, signature, created_at, fido) \
                 VALUES {}",
                placeholders(&tx, chunk.len(), 6)
            );
            let mut query = sqlx::query(&statement);
            for taken in chunk {
                let approval = &taken.approval;
                query = query
                    .bind(jobs[taken.index].request_id.clone())
                    .bind(approval.owner.clone())
                    .bind(approval.member_id.clone())
                    .bind(approval.signature.clone())
                    .bind(approval.at)
                    .bind(taken.fido.as_ref().map(|used| used.stored.clone()));
            }
            query.execute(&mut *tx).await.map_err(db)?;
        }
        let mut changed: Vec<&Open> = open.values().filter(|entry| entry.changed).collect();
        changed.sort_by_key(|entry| entry.request.seq);
        let saved: Vec<(&RequestRow, &[Approval])> =
            changed.iter().map(|entry| (&entry.request, entry.approvals.as_slice())).collect();
        for view in save_all(&mut tx, &saved).await? {
            views.insert(view.id.clone(), view);
        }
        for entry in &changed {
            if entry.request.state == "approved" {
                entries.push(("threshold_reached", json!({ "id": entry.request.id })));
            }
        }
        audit_many(&mut tx, &entries).await?;
    }
    tx.commit().await.map_err(db)?;
    tracing::debug!(
        approvals = jobs.len(),
        accepted = accepted.len(),
        "a batch of approvals written"
    );

    for entry in open.values().filter(|entry| entry.changed) {
        if entry.request.state == "approved" {
            tracing::info!(request = %entry.request.id, "threshold reached");
        }
    }
    let mut answers = Vec::with_capacity(jobs.len());
    for (job, result) in jobs.iter().zip(outcome) {
        let id = &job.request_id;
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

/// What checking one approval came to.
enum Taken {
    Accepted(Approval, Option<FidoUse>),
    /// This very approval is recorded already: a retry answers as the first did, even once
    /// the request has moved on (the first answer may have been lost on the way back) and
    /// although its assertion, used once, would now look replayed.
    Recorded,
    Refused(ApiError),
}

/// Checks one approval against its request as the earlier approvals of the batch left it,
/// and takes it in. An error is a database failure, which fails the whole batch.
async fn take(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    checks: &mut Checks,
    open: &mut HashMap<String, Open>,
    job: &Asked,
) -> Result<Taken, ApiError> {
    let id = &job.request_id;
    let Some(entry) = open.get_mut(id) else {
        return Ok(Taken::Refused(ApiError::not_found(format!("request {id}"))));
    };
    let owner = checksummed(&job.owner);
    if entry.approvals.iter().any(|a| a.owner == owner && a.signature == job.signature) {
        return Ok(Taken::Recorded);
    }
    let state = entry.request.shown_state();
    if state != "pending" {
        return Ok(Taken::Refused(closed(id, state)));
    }
    let safe_tx_hash = B256::from_str(&entry.request.safe_tx_hash).unwrap_or_default();
    if job.claimed != safe_tx_hash {
        return Ok(Taken::Refused(ApiError::unprocessable("hash_mismatch",
            format!("safeTxHash: the approval signed {}, the request's safeTxHash is {safe_tx_hash} (another vault, chain or request)", job.claimed))));
    }
    if !entry.owners.contains(&owner) {
        return Ok(Taken::Refused(ApiError::unprocessable(
            "not_an_owner",
            format!("signature: recovers to {owner}, which is not an owner of the vault"),
        )));
    }
    let Some(member_id) = approver(tx, checks, &job.owner).await? else {
        return Ok(Taken::Refused(ApiError::unprocessable(
            "not_an_approver",
            format!("signature: owner {owner} is not a member with the approver role"),
        )));
    };
    // The signature proves the owner's consent, so an approver may relay another approver's
    // signature; the approval is recorded under the member whose address signed it.
    if entry.request.initiator_address == owner {
        return Ok(Taken::Refused(ApiError::unprocessable(
            "self_approval",
            "signature: the initiator cannot approve their own request",
        )));
    }
    if entry.approvals.iter().any(|a| a.owner == owner) {
        return Ok(Taken::Refused(ApiError::conflict(
            "duplicate_approval",
            format!("owner {owner} already approved this request"),
        )));
    }
    let policy = match crate::fido::read_policy(&entry.request.vault_id, entry.policy.clone()) {
        Ok(policy) => policy,
        Err(refusal) => return Ok(Taken::Refused(refusal)),
    };
    let facts = ApprovalFacts {
        request_id: id,
        vault: &entry.request.vault_id,
        transaction_json: &entry.request.transaction_json,
        safe_tx_hash: &safe_tx_hash,
        owner: &job.owner,
        member_id: &member_id,
    };
    let checked = crate::fido::check_approval(
        tx,
        checks.fido.as_ref(),
        &checks.rules,
        policy,
        &facts,
        job.assertion.as_ref(),
    )
    .await?;
    let fido = match checked {
        Ok(fido) => fido,
        Err(refusal) => return Ok(Taken::Refused(refusal)),
    };
    // The key's counter moves forward with the approval, or the assertion was used already
    // (by an approval earlier in this batch or before it).
    if let Some(used) = &fido {
        if !crate::fido::advance_counter(tx, used).await? {
            return Ok(Taken::Refused(ApiError::unprocessable(
                "fido_replayed",
                "fido: the security key's counter did not move past the last one seen: a replay",
            )));
        }
    }
    let approval =
        Approval { owner, member_id, signature: job.signature.clone(), at: crate::model::now() };
    entry.approvals.push(approval.clone());
    entry.changed = true;
    if entry.approvals.len() >= entry.threshold {
        entry.request.state = "approved".to_owned();
        entry.request.signatures = Some(ordered_signatures(&entry.approvals));
    }
    Ok(Taken::Accepted(approval, fido))
}

/// The approver member whose address is `owner`, if there is one.
async fn approver(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    checks: &mut Checks,
    owner: &Address,
) -> Result<Option<String>, ApiError> {
    if let Some(id) = checks.approvers.get(owner) {
        return Ok(Some(id.clone()));
    }
    let row = sqlx::query("SELECT id FROM members WHERE address = $1 AND role = 'approver'")
        .bind(checksummed(owner))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let id = row.map(|r| text(&r, "id"));
    if let Some(id) = &id {
        checks.approvers.insert(*owner, id.clone());
    }
    Ok(id)
}
