//! Syncing the queue into the local store: fetch by cursor, then decode, hash and check every
//! request again against the vault record pinned locally, never against what the queue says.
//!
//! A request is *marked* (shown, never signable) when its safeTxHash differs from ours, its
//! intent signature does not recover to a pinned initiator, its payload changed since an
//! earlier sync, its vault is not pinned here, or it cannot be read. The first three open an
//! incident on the vault, which blocks signing there until a person clears it. Marks stay.

use std::str::FromStr;
use std::sync::Arc;

use alloy_primitives::{keccak256, Address, B256};
use countersign_core::address::checksummed;
use countersign_core::hash::SafeDomain;
use countersign_core::intent::IntentDomain;
use countersign_core::request::SafeTxRequest;
use countersign_core::secret::{SecretBytes, SecretString};
use countersign_core::signature::{KnownKeys, OwnerSignature};
use countersign_core::vault::VaultRecord;
use countersign_store::{CachedRequest, Store, StoreError};
use serde_json::{json, Value};

use crate::client::{ClientError, QueueClient, Session};
use crate::pin::Pins;

/// Where the queue is, how it is recognised, and whose requests count.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub pins: Vec<String>,
    pub api_key: SecretString,
    /// Addresses whose intent signatures this approver accepts.
    pub initiators: Vec<Address>,
}

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the queue connection: {0}")]
    Config(String),
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub fetched: usize,
    /// `(request id, why)` for every request marked in this sync.
    pub marked: Vec<(String, String)>,
    pub incidents: Vec<String>,
    /// Differences between the queue's vault records and the pinned ones; nothing changed.
    pub vault_differences: Vec<String>,
    /// The sync stopped after [`MAX_PAGES`] pages with more to come; sync again.
    pub more: bool,
}

impl Connection {
    pub fn client(&self) -> Result<QueueClient, SyncError> {
        let pins: Vec<&str> = self.pins.iter().map(String::as_str).collect();
        let pins = Pins::parse(&pins).map_err(|e| SyncError::Config(e.to_string()))?;
        Ok(QueueClient::new(&self.url, pins)?)
    }

    pub async fn session(&self) -> Result<Session, SyncError> {
        Ok(self.client()?.session(self.api_key.expose()).await?)
    }

    /// The sealed form kept in the local store.
    pub fn to_secret(&self) -> SecretBytes {
        let value = json!({
            "url": self.url, "pins": self.pins, "apiKey": self.api_key.expose(),
            "initiators": self.initiators.iter().map(checksummed).collect::<Vec<_>>(),
        });
        SecretBytes::new(value.to_string().into_bytes())
    }

    pub fn from_secret(secret: &SecretBytes) -> Result<Self, SyncError> {
        let value: Value = serde_json::from_slice(secret.expose())
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let strings = |name: &str| -> Vec<String> {
            value[name]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        Ok(Self {
            url: value["url"].as_str().unwrap_or_default().to_owned(),
            pins: strings("pins"),
            api_key: SecretString::new(value["apiKey"].as_str().unwrap_or_default().to_owned()),
            initiators: strings("initiators")
                .iter()
                .filter_map(|a| Address::from_str(a).ok())
                .collect(),
        })
    }
}

/// Fetches every change after the stored cursor, checks it, and stores it sealed.
///
/// Three things overlap: the next page is fetched and read while this one is checked, and
/// pages' signatures are recovered on every core while later pages' fields are checked.
pub async fn sync(store: &Store, connection: &Connection) -> Result<SyncReport, SyncError> {
    let (_, cursor) = store
        .queue_config()
        .await?
        .ok_or_else(|| SyncError::Config("no queue is connected".into()))?;
    let session = connection.session().await?;
    let (sender, pages) = tokio::sync::mpsc::channel(1);
    let fetcher = tokio::spawn(fetch_pages(session.clone(), cursor, sender));
    let remote_vaults = {
        let session = session.clone();
        tokio::spawn(async move { session.get("/v1/vaults").await })
    };
    // The pinned records are read while the first page is on its way.
    let checked = match PinnedVaults::load(store).await {
        Ok(vaults) => check_pages(store, connection, &vaults, pages).await.map(|r| (r, vaults)),
        Err(error) => Err(error),
    };
    let (mut report, vaults) = checked.inspect_err(|_| {
        fetcher.abort();
        remote_vaults.abort();
    })?;
    report.more = fetcher.await.unwrap_or(false);
    let remote = remote_vaults
        .await
        .map_err(|e| SyncError::Config(format!("reading the queue's vaults stopped: {e}")))??;
    compare_vaults(&vaults, &remote, &mut report);
    tracing::info!(fetched = report.fetched, marked = report.marked.len(), "queue synced");
    Ok(report)
}

/// One page of the listing, read.
struct Page {
    views: Vec<Value>,
    cursor: i64,
}

/// A sync reads at most this many pages (of [`PAGE`]); the next sync goes on from there, so
/// a queue that always says more follow cannot keep one running for ever.
pub const MAX_PAGES: usize = 1000;

/// Requests asked for in a page.
const PAGE: usize = 500;

/// Requests asked for in the first page: a small one arrives sooner, so the signature checks
/// start sooner, and the pages after it come while they run.
const FIRST_PAGE: usize = 100;

/// Fetches pages after `cursor` until the queue says no more follow, or [`MAX_PAGES`].
/// Returns whether the queue said more follow.
async fn fetch_pages(
    session: Session,
    mut cursor: i64,
    pages: tokio::sync::mpsc::Sender<Result<Page, SyncError>>,
) -> bool {
    for n in 0..MAX_PAGES {
        let page = fetch_page(&session, cursor, if n == 0 { FIRST_PAGE } else { PAGE }).await;
        let more = matches!(&page, Ok((_, true)));
        let page = page.map(|(page, _)| page);
        if let Ok(page) = &page {
            cursor = page.cursor;
        }
        if pages.send(page).await.is_err() || !more {
            return false;
        }
    }
    true
}

async fn fetch_page(
    session: &Session,
    cursor: i64,
    limit: usize,
) -> Result<(Page, bool), SyncError> {
    let bytes = session.get_bytes(&format!("/v1/requests?after={cursor}&limit={limit}")).await?;
    let mut page: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Body(format!("the listing: {e}")))?;
    let views = match page["requests"].take() {
        Value::Array(views) => views,
        _ => return Err(SyncError::Config("the listing has no list of requests".into())),
    };
    let next = page["cursor"].as_i64().unwrap_or(cursor);
    let more = page["more"] == json!(true);
    if next < cursor {
        return Err(SyncError::Config(format!(
            "the queue moves the cursor back, from {cursor} to {next}"
        )));
    }
    if more && next <= cursor {
        return Err(SyncError::Config(format!(
            "the queue says more changes follow cursor {cursor} but does not move the cursor"
        )));
    }
    Ok((Page { views, cursor: next }, more))
}

/// Pages whose signatures are queued or being recovered while later pages are read and
/// checked. Two keep the recovering threads busy from one page to the next: while the
/// oldest is stored, the next is already queued.
const PAGES_AHEAD: usize = 2;

/// A page whose fields are checked and whose signatures are being recovered.
struct Checking {
    pending: Vec<Pending>,
    signatures: Recovering,
    cursor: i64,
}

async fn check_pages(
    store: &Store,
    connection: &Connection,
    vaults: &PinnedVaults,
    mut pages: tokio::sync::mpsc::Receiver<Result<Page, SyncError>>,
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    // Which requests are cached already, read once; each stored page is added to it.
    let mut known = store.cached_payload_hashes().await?;
    let recoverers = Recoverers::start(connection.initiators.clone());
    let mut in_flight: std::collections::VecDeque<Checking> = std::collections::VecDeque::new();
    loop {
        // While the next page is on its way, the oldest is stored as soon as its signatures
        // are in: a fetch that fails or a sync cut short then loses as little as it can.
        let next = match in_flight.front() {
            Some(oldest) => tokio::select! {
                biased;
                page = pages.recv() => Some(page),
                () = oldest.signatures.done() => None,
            },
            None => Some(pages.recv().await),
        };
        let page = match next {
            None => {
                if let Some(oldest) = in_flight.pop_front() {
                    store_page(store, connection, oldest, &mut known, &mut report).await?;
                }
                continue;
            }
            Some(None) => break,
            Some(Some(page)) => page?,
        };
        // A request that changed during the sync is listed again; its earlier version is
        // stored first, so that the change is seen.
        let relisted = {
            let ids: std::collections::HashSet<&str> = in_flight
                .iter()
                .flat_map(|earlier| earlier.pending.iter().map(|p| p.id.as_str()))
                .collect();
            page.views.iter().any(|view| view["id"].as_str().is_some_and(|id| ids.contains(id)))
        };
        if relisted {
            while let Some(earlier) = in_flight.pop_front() {
                store_page(store, connection, earlier, &mut known, &mut report).await?;
            }
        }
        in_flight.push_back(start_checks(store, page, &known, vaults, &recoverers).await?);
        // Store the pages already recovered, and the oldest once enough are queued behind it.
        while in_flight.len() > PAGES_AHEAD
            || in_flight.front().is_some_and(|oldest| oldest.signatures.is_done())
        {
            let Some(oldest) = in_flight.pop_front() else { break };
            store_page(store, connection, oldest, &mut known, &mut report).await?;
        }
    }
    while let Some(earlier) = in_flight.pop_front() {
        store_page(store, connection, earlier, &mut known, &mut report).await?;
    }
    Ok(report)
}

/// What one request's signatures came to: who signed its intent, and which pinned owners'
/// listed approvals verified.
type Recovered = (Option<Address>, Vec<String>);

/// The listed approvals of a request, the safeTxHash they must be over, and the pinned vault
/// whose owners count.
type Listed = (Value, Option<B256>, Option<Arc<Pinned>>);

/// One request's signatures, to be recovered.
struct Job {
    intent: Option<Intent>,
    approvals: Listed,
    index: usize,
    page: Arc<Answers>,
}

/// A page's answers, filled in by the threads in any order. The sync is woken once, when
/// the last is in, not for each: a wake-up a request cost more than checking its fields.
struct Answers {
    slots: Vec<std::sync::OnceLock<Recovered>>,
    /// Requests not answered yet; one whose answer is lost (a panic) is counted too, and
    /// its empty slot fails the page.
    remaining: std::sync::atomic::AtomicUsize,
    complete: tokio::sync::Notify,
    /// Set when the sync stops waiting for the page (it failed): its work is skipped.
    abandoned: std::sync::atomic::AtomicBool,
}

impl Answers {
    fn settle(&self, index: usize, recovered: Option<Recovered>) {
        if let (Some(recovered), Some(slot)) = (recovered, self.slots.get(index)) {
            let _ = slot.set(recovered);
        }
        if self.remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.complete.notify_one();
        }
    }
}

/// Threads that recover signatures for the whole of a sync. They take one request at a time
/// from a shared queue, so none idles while another still has work, and none waits for a
/// page to be stored before starting on the next. They stop when the sync drops its handle.
struct Recoverers {
    jobs: crossbeam_channel::Sender<Job>,
}

impl Recoverers {
    /// `initiators` are the pinned initiators: an intent that names one of them is checked
    /// against their key once a recovery has found it, at less than half the cost of another
    /// recovery and with the same answer. Only pinned addresses are remembered, so a queue
    /// cannot grow the map with keys of its own.
    fn start(initiators: Vec<Address>) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let keys = Arc::new(KnownKeys::default());
        let initiators = Arc::new(initiators);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        for _ in 0..threads {
            let (queue, keys, initiators) = (queue.clone(), keys.clone(), initiators.clone());
            let spawned =
                std::thread::Builder::new().name("sync-recover".into()).spawn(move || {
                    for job in queue.iter() {
                        // A sync that stopped no longer waits for its answers.
                        if job.page.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                            continue;
                        }
                        // A panic loses this request's answer, which fails its page, not the
                        // thread: the pages after it are still answered.
                        let recovered = std::panic::catch_unwind(|| {
                            let signer = job.intent.and_then(|(signature, digest, claimed)| {
                                let expected = claimed.filter(|a| initiators.contains(a));
                                keys.signer(&signature, &digest, expected).ok()
                            });
                            let approved = match &job.approvals {
                                (approvals, Some(hash), Some(vault)) => verified_approvals(
                                    approvals,
                                    *hash,
                                    &vault.record.owners,
                                    &keys,
                                ),
                                _ => Vec::new(),
                            };
                            (signer, approved)
                        });
                        job.page.settle(job.index, recovered.ok());
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "a signature-recovering thread did not start");
            }
        }
        Self { jobs }
    }

    /// A page of `len` requests, whose signatures [`Self::queue`] hands to the threads one
    /// request at a time; the answers come back in any order.
    fn page(&self, len: usize) -> Recovering {
        Recovering {
            page: Arc::new(Answers {
                slots: (0..len).map(|_| std::sync::OnceLock::new()).collect(),
                remaining: std::sync::atomic::AtomicUsize::new(len),
                complete: tokio::sync::Notify::new(),
                abandoned: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Queues the signatures of request `index` of `page`, to be recovered at once.
    fn queue(&self, page: &Recovering, index: usize, intent: Option<Intent>, approvals: Listed) {
        // Refused only when no thread started: the answer is lost, and the page fails.
        if let Err(refused) =
            self.jobs.send(Job { intent, approvals, index, page: page.page.clone() })
        {
            refused.0.page.settle(index, None);
        }
    }
}

/// A page's signatures on their way back.
struct Recovering {
    page: Arc<Answers>,
}

impl Drop for Recovering {
    fn drop(&mut self) {
        self.page.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Recovering {
    /// Whether every answer is in, without waiting.
    fn is_done(&self) -> bool {
        self.page.remaining.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Waits until every answer is in. `notify_one` keeps its permit when nobody waits yet,
    /// so no wake-up is missed; a page with no requests is done at once.
    async fn done(&self) {
        while !self.is_done() {
            self.page.complete.notified().await;
        }
    }

    /// Every answer, in the page's order.
    async fn all(self) -> Result<Vec<Recovered>, SyncError> {
        self.done().await;
        let lost =
            || SyncError::Config("the signature checks stopped before the end of a page".into());
        self.page.slots.iter().map(|slot| slot.get().cloned().ok_or_else(lost)).collect()
    }
}

/// The vault records pinned here, read once per sync.
struct PinnedVaults(std::collections::HashMap<(u64, Address), Arc<Pinned>>);

/// A pinned vault record with its two EIP-712 domains, each separator computed once.
struct Pinned {
    record: VaultRecord,
    safe: SafeDomain,
    intent: IntentDomain,
}

impl PinnedVaults {
    async fn load(store: &Store) -> Result<Self, SyncError> {
        let records = store.vaults(None).await?;
        Ok(Self(
            records
                .into_iter()
                .map(|record| {
                    let pinned = Pinned {
                        safe: record.domain(),
                        intent: IntentDomain::new(record.chain_id),
                        record,
                    };
                    ((pinned.record.chain_id, pinned.record.address), Arc::new(pinned))
                })
                .collect(),
        ))
    }

    fn get(&self, chain_id: u64, address: Address) -> Option<Arc<Pinned>> {
        self.0.get(&(chain_id, address)).cloned()
    }
}

/// One request between the checks: what was found so far.
struct Pending {
    view: Value,
    id: String,
    previous: Option<CachedRequest>,
    marks: Vec<String>,
    alarms: Vec<String>,
    vault: Option<Arc<Pinned>>,
    ours: Option<B256>,
    intent: Option<Intent>,
    payload_hash: String,
    /// The Safe and the nonce as Countersign read them from the transaction.
    read: Option<(Address, alloy_primitives::U256)>,
}

/// Checks a page's fields in order, queueing each request's signatures to be recovered.
async fn start_checks(
    store: &Store,
    page: Page,
    known: &std::collections::HashMap<String, String>,
    vaults: &PinnedVaults,
    recoverers: &Recoverers,
) -> Result<Checking, SyncError> {
    let mut pending = Vec::with_capacity(page.views.len());
    let mut seen = std::collections::HashSet::with_capacity(page.views.len());
    let signatures = recoverers.page(page.views.len());
    for (index, view) in page.views.into_iter().enumerate() {
        let id = view["id"].as_str().unwrap_or_default().to_owned();
        if countersign_core::intent::check_request_id("id", &id).is_err() {
            let shown = countersign_core::printable(&id.chars().take(80).collect::<String>());
            return Err(SyncError::Config(format!(
                "the queue sent a request with an invalid id {shown:?}"
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(SyncError::Config(format!(
                "the queue listed request {id} twice in one page"
            )));
        }
        let previous = match known.contains_key(&id) {
            true => store.cached_request(&id).await?,
            false => None,
        };
        let checked = first_checks(view, id, previous, vaults);
        // Each request's signatures are recovered as soon as its fields are read, so the
        // threads do not wait for the rest of the page.
        let listed = (checked.view["approvals"].clone(), checked.ours, checked.vault.clone());
        recoverers.queue(&signatures, index, checked.intent, listed);
        pending.push(checked);
    }
    Ok(Checking { pending, signatures, cursor: page.cursor })
}

/// Waits for a page's signatures, settles each request, and stores the page with its cursor.
async fn store_page(
    store: &Store,
    connection: &Connection,
    page: Checking,
    known: &mut std::collections::HashMap<String, String>,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let recovered = page.signatures.all().await?;
    let mut batch = Vec::with_capacity(page.pending.len());
    let mut incidents = Vec::new();
    for (mut item, (signer, approved_by)) in page.pending.into_iter().zip(recovered) {
        if item.intent.is_some() {
            match signer {
                Some(signer) if connection.initiators.contains(&signer) => {}
                Some(signer) => item.alarms.push(format!(
                    "its intent signature recovers to {}, which is not a pinned initiator",
                    checksummed(&signer)
                )),
                None => item.alarms.push("its intent signature recovers to no address".to_owned()),
            }
        }
        batch.push(finish(item, approved_by, &mut incidents, report));
    }
    // The page's incidents in one transaction, before the requests that opened them.
    let opening: Vec<_> =
        incidents.iter().map(|(vault, detail)| (&vault.record, "queue", detail)).collect();
    report.incidents.extend(store.open_incidents(&opening).await?);
    report.fetched += batch.len();
    store.store_synced(&batch, page.cursor).await?;
    known.extend(batch.into_iter().map(|cached| (cached.id, cached.payload_hash)));
    Ok(())
}

fn first_checks(
    view: Value,
    id: String,
    previous: Option<CachedRequest>,
    vaults: &PinnedVaults,
) -> Pending {
    let mut marks: Vec<String> = previous
        .as_ref()
        .and_then(|p| p.body["countersign"]["marks"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let mut alarms = Vec::new();
    let payload_hash = payload_hash(&view);
    if previous.as_ref().is_some_and(|p| p.payload_hash != payload_hash) {
        alarms.push("its payload changed between two syncs".to_owned());
    }
    let (mut vault, mut ours, mut intent, mut read) = (None, None, None, None);
    match parse(&view) {
        Err(problem) => marks.push(format!("it cannot be read: {problem}")),
        Ok(request) => {
            read = Some((request.safe, request.tx.nonce));
            vault = vaults.get(view["chainId"].as_u64().unwrap_or(0), request.safe);
            match &vault {
                None => marks.push("its vault is not pinned on this machine".to_owned()),
                Some(pinned) => {
                    let hash = pinned.safe.hashes(&request.tx).safe_tx;
                    ours = Some(hash);
                    if view["safeTxHash"].as_str() != Some(hash.to_string().as_str()) {
                        alarms.push(format!(
                            "the queue claims safeTxHash {} but its fields hash to {hash}",
                            view["safeTxHash"]
                        ));
                    }
                    match intent_to_check(&view, pinned, hash) {
                        Ok(pair) => intent = Some(pair),
                        Err(problem) => alarms.push(problem),
                    }
                }
            }
        }
    }
    Pending { view, id, previous, marks, alarms, vault, ours, intent, payload_hash, read }
}

/// The request as it is to be stored, and the incidents its alarms open added to `incidents`.
fn finish(
    item: Pending,
    approved_by: Vec<String>,
    incidents: &mut Vec<(Arc<Pinned>, Value)>,
    report: &mut SyncReport,
) -> CachedRequest {
    let Pending { view, id, previous, mut marks, alarms, vault, ours, payload_hash, read, .. } =
        item;
    for alarm in &alarms {
        if let Some(vault) = &vault {
            incidents.push((vault.clone(), json!({ "request": id, "reason": alarm })));
        }
        marks.push(alarm.clone());
    }
    for mark in marks.iter().skip(previous_mark_count(&previous)) {
        report.marked.push((id.clone(), mark.clone()));
    }
    marks.dedup();
    let mut body = view;
    body["countersign"] = json!({
        "marks": marks,
        "safeTxHash": ours.map(|h| h.to_string()),
        // What Countersign itself read from the transaction, for lists and screens.
        "safe": read.map(|(safe, _)| checksummed(&safe)),
        "nonce": read.map(|(_, nonce)| nonce.to_string()),
        // Owners whose approval signature recovers over our safeTxHash; others are not shown.
        "approvedBy": approved_by,
    });
    let seq = body["seq"].as_i64().unwrap_or(0);
    CachedRequest { id, seq, payload_hash, body }
}

/// The pinned owners whose listed approval signatures recover to them over `hash`, each once.
/// An owner's key, once recovered, checks their next signatures (`keys` remembers owners'
/// keys only).
fn verified_approvals(
    approvals: &Value,
    hash: B256,
    owners: &[Address],
    keys: &KnownKeys,
) -> Vec<String> {
    let mut verified: Vec<String> = approvals
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|approval| {
            let signature =
                OwnerSignature::parse_hex("signature", approval["signature"].as_str()?).ok()?;
            let named = approval["owner"].as_str().and_then(|a| Address::from_str(a).ok());
            let expected = named.filter(|a| owners.contains(a));
            let owner = keys.signer(&signature, &hash, expected).ok()?;
            (owners.contains(&owner)
                && approval["owner"].as_str() == Some(checksummed(&owner).as_str()))
            .then(|| checksummed(&owner))
        })
        .collect();
    verified.sort();
    verified.dedup();
    verified
}

fn previous_mark_count(previous: &Option<CachedRequest>) -> usize {
    previous
        .as_ref()
        .and_then(|p| p.body["countersign"]["marks"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The request's payload as the initiator fixed it: id, chain, transaction, creation time,
/// intent signature. Approvals and state are allowed to change; these are not.
pub fn payload_hash(view: &Value) -> String {
    /// The fields in the order a JSON object of them writes them (by name), borrowed from the
    /// view rather than copied into one.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload<'a> {
        chain_id: &'a Value,
        created_at: &'a Value,
        id: &'a Value,
        initiator_signature: &'a Value,
        transaction: &'a Value,
    }
    let payload = Payload {
        chain_id: &view["chainId"],
        created_at: &view["createdAt"],
        id: &view["id"],
        initiator_signature: &view["initiatorSignature"],
        transaction: &view["transaction"],
    };
    // Writing JSON values into memory cannot fail.
    keccak256(serde_json::to_vec(&payload).unwrap_or_default()).to_string()
}

fn parse(view: &Value) -> Result<SafeTxRequest, String> {
    let Some(object) = view["transaction"].as_object() else {
        return Err("transaction: missing".into());
    };
    SafeTxRequest::from_map(object).map_err(|e| e.to_string())
}

/// An intent signature, the digest it must be over, and the initiator the request names.
type Intent = (OwnerSignature, B256, Option<Address>);

/// The intent signature and the digest it must be over, for the batch recovery.
fn intent_to_check(view: &Value, vault: &Pinned, hash: B256) -> Result<Intent, String> {
    let id = view["id"].as_str().unwrap_or_default();
    let created_at = view["createdAt"].as_u64().unwrap_or(0);
    let digest = vault.intent.digest(id, vault.record.address, hash, created_at);
    let text = view["initiatorSignature"].as_str().unwrap_or_default();
    let signature = OwnerSignature::parse_hex("initiatorSignature", text)
        .map_err(|e| format!("its intent signature is malformed: {e}"))?;
    // Only a hint of whose key to try first: who signed is what recovery finds.
    let claimed = view["initiator"]["address"].as_str().and_then(|a| Address::from_str(a).ok());
    Ok((signature, digest, claimed))
}

fn compare_vaults(vaults: &PinnedVaults, remote: &Value, report: &mut SyncReport) {
    for theirs in remote["vaults"].as_array().cloned().unwrap_or_default() {
        let chain = theirs["chainId"].as_u64().unwrap_or(0);
        let Ok(address) = Address::from_str(theirs["address"].as_str().unwrap_or_default()) else {
            continue;
        };
        let Some(pinned) = vaults.get(chain, address) else {
            continue;
        };
        let ours = &pinned.record;
        let owners: Vec<String> = ours.owners.iter().map(checksummed).collect();
        // The owners are a set: the same addresses in another order are the same owners.
        let mut pinned_set = ours.owners.clone();
        pinned_set.sort();
        let mut their_set: Vec<Option<Address>> = theirs["owners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o.as_str().and_then(|o| Address::from_str(o).ok()))
            .collect();
        their_set.sort();
        let mut differences = Vec::new();
        if theirs["safeVersion"] != json!(ours.version.to_string()) {
            differences
                .push(format!("version {} (pinned {})", theirs["safeVersion"], ours.version));
        }
        if their_set != pinned_set.into_iter().map(Some).collect::<Vec<_>>() {
            differences.push(format!("owners {} (pinned {})", theirs["owners"], owners.join(", ")));
        }
        if theirs["threshold"] != json!(ours.threshold) {
            let pinned = ours.threshold.map_or_else(|| "none".to_owned(), |t| t.to_string());
            differences.push(format!("threshold {} (pinned {pinned})", theirs["threshold"]));
        }
        if !differences.is_empty() {
            report.vault_differences.push(format!(
                "the queue's record of {} on chain {chain} differs: {}; the pinned record is unchanged",
                checksummed(&address),
                differences.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload hash stays what earlier versions stored: a JSON object of the five fields,
    /// written by name order, with `null` for a missing one.
    #[test]
    fn the_payload_hash_is_the_stored_encoding() {
        let views = [
            json!({ "id": "r1", "chainId": 1, "createdAt": 1_700_000_000u64,
                    "initiatorSignature": "0xab", "state": "pending", "approvals": [],
                    "transaction": { "to": "0x01", "value": "0", "data": "0x", "nonce": 5,
                                     "operation": 0, "z": [1, {"b": 2, "a": "\u{e9}\""}] } }),
            json!({ "id": "r2", "transaction": null }),
            json!({}),
        ];
        for view in &views {
            let earlier = json!({
                "id": view["id"], "chainId": view["chainId"], "transaction": view["transaction"],
                "createdAt": view["createdAt"], "initiatorSignature": view["initiatorSignature"],
            });
            assert_eq!(payload_hash(view), keccak256(earlier.to_string()).to_string());
        }
        let mut changed = views[0].clone();
        changed["transaction"]["value"] = json!("1");
        assert_ne!(payload_hash(&changed), payload_hash(&views[0]));
        changed = views[0].clone();
        changed["state"] = json!("approved");
        assert_eq!(payload_hash(&changed), payload_hash(&views[0]), "the state may change");
    }
}
