//! The demo, also the desktop app's test fixture: a reference queue on loopback with a fresh
//! TLS key, seeded with a 2-of-3 vault and four realistic requests, and an approver's store
//! connected and pinned to it.
//!
//! The keys are test keys (a byte repeated 32 times): the demo signs nothing of value.

use std::path::Path;

use alloy_primitives::{address, Address, Bytes, U256};
use countersign_core::address::checksummed;
use countersign_core::decode::{encode_batch, encode_transfer};
use countersign_core::intent::intent_digest;
use countersign_core::policy::Policy;
use countersign_core::request::Operation;
use countersign_core::request::SafeTxRequest;
use countersign_core::secret::SecretString;
use countersign_core::signer::Signer;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_queue::api::{ApiState, RateLimit};
use countersign_queue::db::Db;
use countersign_queue::model::{self, QueueRules};
use countersign_queue::server::{self, Running};
use countersign_queue::tls::Identity;
use countersign_signers::software::SoftwareSigner;
use countersign_store::keywrap::Protection;
use countersign_store::Store;
use countersign_sync::sync::Connection;
use serde_json::{json, Value};

/// The demo's Safe on Ethereum mainnet (chain 1).
pub const SAFE: Address = address!("5afE3855358E112B5647B952709E6165e1c1eEEe");
pub const CHAIN_ID: u64 = 1;
pub const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
pub const USDT: Address = address!("dAC17F958D2ee523a2206206994597C13D831ec7");
pub const DAI: Address = address!("6B175474E89094C44Da98b954EedeAC495271d0F");
/// The official MultiSendCallOnly 1.3.0: every policy trusts it.
pub const MULTISEND_CALL_ONLY: Address = address!("40A2aCCbd92BCA938b02010E17A5b8929b49130D");
/// The official MultiSend 1.3.0, which can run nested delegatecalls: the demo queue's policy
/// trusts it, an approver's default policy does not.
pub const MULTISEND: Address = address!("A238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761");
/// The Safe's next nonce on the queue and in the approver's pinned record.
pub const NEXT_NONCE: u64 = 42;

/// The request ids the demo seeds, in order.
pub const USDC_TRANSFER: &str = "usdc-exchange-topup";
pub const ETH_TRANSFER: &str = "eth-gas-wallet";
pub const PAYROLL: &str = "payroll-november";
pub const DELEGATECALL: &str = "vendor-batch-router";

/// A test key: `byte` repeated 32 times.
pub fn test_key(byte: u8) -> SoftwareSigner {
    match SoftwareSigner::from_hex(&SecretString::new(format!("{byte:02x}").repeat(32))) {
        Ok(key) => key,
        Err(_) => unreachable!("a repeated non-zero byte below the curve order is a valid key"),
    }
}

/// The initiator (not an owner) and the three approving owners, alice, bob and carol.
pub fn initiator() -> SoftwareSigner {
    test_key(0x11)
}

pub fn approvers() -> [SoftwareSigner; 3] {
    [test_key(0x21), test_key(0x22), test_key(0x23)]
}

pub const APPROVER_IDS: [&str; 3] = ["alice", "bob", "carol"];

/// The vault record the approvers pin.
pub fn vault() -> VaultRecord {
    let mut record = VaultRecord::new(CHAIN_ID, SAFE, SafeVersion::V1_3_0);
    record.owners = approvers().iter().map(Signer::address).collect();
    record.owners.sort();
    record.threshold = Some(2);
    record.next_nonce = Some(U256::from(NEXT_NONCE));
    record.label = Some("Treasury".to_owned());
    record
}

/// The queue's policy: the default, and the official MultiSend trusted for delegatecalls.
pub fn queue_policy() -> Policy {
    let mut policy = Policy::default();
    policy.trusted_delegatecall_targets.entry(CHAIN_ID).or_default().insert(MULTISEND);
    policy
}

fn tx(to: Address, value: U256, data: Bytes, operation: Operation, nonce: u64) -> Value {
    let zero = checksummed(&Address::ZERO);
    json!({
        "safe": checksummed(&SAFE), "to": checksummed(&to), "value": value.to_string(),
        "data": data.to_string(), "operation": operation.0, "safeTxGas": "0", "baseGas": "0",
        "gasPrice": "0", "gasToken": zero, "refundReceiver": zero, "nonce": nonce,
    })
}

fn usdc(units: u64) -> U256 {
    U256::from(units) * U256::from(1_000_000u64)
}

/// The four seeded transactions: `(id, transaction)`.
pub fn transactions() -> Vec<(&'static str, Value)> {
    let exchange = address!("28C6c06298d514Db089934071355E5743bf21d60");
    let gas_wallet = address!("00000000219ab540356cBB839Cbe05303d7705Fa");
    let staff = [
        address!("1111111111111111111111111111111111111112"),
        address!("2222222222222222222222222222222222222223"),
        address!("3333333333333333333333333333333333333334"),
        address!("4444444444444444444444444444444444444445"),
    ];
    let payroll = encode_batch(&[
        (Operation::CALL, USDC, U256::ZERO, encode_transfer(staff[0], usdc(8_500))),
        (Operation::CALL, USDC, U256::ZERO, encode_transfer(staff[1], usdc(7_200))),
        (Operation::CALL, USDT, U256::ZERO, encode_transfer(staff[2], usdc(6_400))),
        (
            Operation::CALL,
            DAI,
            U256::ZERO,
            encode_transfer(staff[3], U256::from(5_900u64) * U256::from(10u64).pow(U256::from(18))),
        ),
    ]);
    let router_batch = encode_batch(&[
        (Operation::CALL, USDC, U256::ZERO, encode_transfer(staff[0], usdc(1_000))),
        (Operation::CALL, USDC, U256::ZERO, encode_transfer(staff[1], usdc(1_000))),
    ]);
    let n = NEXT_NONCE;
    vec![
        (
            USDC_TRANSFER,
            tx(USDC, U256::ZERO, encode_transfer(exchange, usdc(250_000)), Operation::CALL, n),
        ),
        (
            ETH_TRANSFER,
            tx(
                gas_wallet,
                U256::from(3u64) * U256::from(10u64).pow(U256::from(18)),
                Bytes::new(),
                Operation::CALL,
                n + 1,
            ),
        ),
        (PAYROLL, tx(MULTISEND_CALL_ONLY, U256::ZERO, payroll, Operation::DELEGATECALL, n + 2)),
        (DELEGATECALL, tx(MULTISEND, U256::ZERO, router_batch, Operation::DELEGATECALL, n + 3)),
    ]
}

/// A running demo queue and what an approver needs to reach it.
#[derive(Debug)]
pub struct DemoQueue {
    pub running: Running,
    pub db: Db,
    pub url: String,
    pub pin: String,
    /// API keys of alice, bob and carol (approvers) and of the initiator.
    pub approver_api_keys: [String; 3],
    pub initiator_api_key: String,
    pub admin_api_key: String,
}

impl DemoQueue {
    /// A connection to this queue with `api_key`, trusting no initiator.
    pub fn connection(&self, api_key: &str) -> Connection {
        connection(&self.url, &self.pin, api_key)
    }
}

fn connection(url: &str, pin: &str, api_key: &str) -> Connection {
    Connection {
        url: url.to_owned(),
        pins: vec![pin.to_owned()],
        api_key: SecretString::new(api_key.to_owned()),
        initiators: vec![],
    }
}

#[derive(Debug)]
pub struct DemoError(pub String);

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoError {}

fn fail(what: &str) -> impl Fn(&dyn std::fmt::Display) -> DemoError + '_ {
    move |e| DemoError(format!("{what}: {e}"))
}

/// Starts a queue in `dir` on `listen` with a fresh TLS key, and seeds it: the vault, an
/// initiator, three approvers, and the four requests of [`transactions`], each signed by the
/// initiator.
pub async fn start_queue(dir: &Path, listen: std::net::SocketAddr) -> Result<DemoQueue, DemoError> {
    let db = Db::sqlite_in(dir).await.map_err(|e| fail("queue database")(&e))?;
    let admin_api_key = model::bootstrap(&db)
        .await
        .map_err(|e| DemoError(format!("queue bootstrap: {e:?}")))?
        .ok_or_else(|| DemoError("the queue's data folder is not fresh".into()))?;
    let tokens = countersign_core::tokens::TokenList::shipped().map_err(|e| fail("tokens")(&e))?;
    let rules = QueueRules { policy: queue_policy(), tokens };
    let identity = Identity::ephemeral().map_err(|e| fail("TLS key")(&e))?;
    let running = server::start(listen, &identity, api_state(db.clone(), rules)?)
        .await
        .map_err(|e| fail("queue server")(&e))?;
    let url = running.url();
    let pin = running.pin.clone();
    let connect = |api_key: &str| connection(&url, &pin, api_key);
    let admin = connect(&admin_api_key).session().await.map_err(|e| fail("admin session")(&e))?;
    let record = vault();
    let owners: Vec<String> = record.owners.iter().map(checksummed).collect();
    admin
        .post(
            "/v1/vaults",
            &json!({ "chainId": CHAIN_ID, "address": checksummed(&SAFE), "safeVersion": "1.3.0",
                     "owners": owners, "threshold": 2, "nextNonce": NEXT_NONCE.to_string() }),
        )
        .await
        .map_err(|e| fail("vault")(&e))?;
    let initiator_key = initiator();
    let initiator_api_key = add_member(&admin, "ops", "initiator", &initiator_key).await?;
    let approvers = approvers();
    let mut approver_api_keys = Vec::new();
    for (id, signer) in APPROVER_IDS.iter().zip(approvers.iter()) {
        approver_api_keys.push(add_member(&admin, id, "approver", signer).await?);
    }
    let ops =
        connect(&initiator_api_key).session().await.map_err(|e| fail("initiator session")(&e))?;
    for (id, transaction) in transactions() {
        submit(&ops, &initiator_key, id, transaction).await?;
    }
    let approver_api_keys: [String; 3] =
        approver_api_keys.try_into().map_err(|_| DemoError("three approvers".into()))?;
    Ok(DemoQueue { running, db, url, pin, approver_api_keys, initiator_api_key, admin_api_key })
}

/// The demo queue's FIDO2 relying party: security keys bind to it.
pub const FIDO_RP_ID: &str = "localhost";
pub const FIDO_ORIGIN: &str = "https://localhost";

fn api_state(db: Db, rules: QueueRules) -> Result<ApiState, DemoError> {
    let fido = countersign_queue::fido::Fido::new(FIDO_RP_ID, FIDO_ORIGIN).map_err(DemoError)?;
    Ok(ApiState::new(db, rules, RateLimit::default()).with_fido(fido))
}

/// Adds a member with one API key, and returns the key.
async fn add_member(
    admin: &countersign_sync::client::Session,
    id: &str,
    role: &str,
    signer: &SoftwareSigner,
) -> Result<String, DemoError> {
    let body =
        json!({ "id": id, "name": id, "role": role, "address": checksummed(&signer.address()) });
    admin.post("/v1/members", &body).await.map_err(|e| fail("member")(&e))?;
    let key = admin
        .post(&format!("/v1/members/{id}/api-keys"), &json!({}))
        .await
        .map_err(|e| fail("api key")(&e))?;
    Ok(key["apiKey"].as_str().unwrap_or_default().to_owned())
}

/// Submits `transaction` to the demo's vault as request `id`, signed by `initiator` over the
/// queue's intent.
pub async fn submit(
    session: &countersign_sync::client::Session,
    initiator: &SoftwareSigner,
    id: &str,
    transaction: Value,
) -> Result<Value, DemoError> {
    submit_to(session, initiator, &vault(), id, transaction).await
}

async fn submit_to(
    session: &countersign_sync::client::Session,
    initiator: &SoftwareSigner,
    record: &VaultRecord,
    id: &str,
    transaction: Value,
) -> Result<Value, DemoError> {
    let parsed = SafeTxRequest::from_json(transaction.to_string().as_bytes())
        .map_err(|e| fail("transaction")(&e))?;
    let hash = record.domain().hashes(&parsed.tx).safe_tx;
    let created = countersign_store::unix_now();
    let created =
        u64::try_from(created).map_err(|_| DemoError("the clock is before 1970".into()))?;
    let digest = intent_digest(CHAIN_ID, id, record.address, hash, created);
    let signature = initiator.sign_digest(&digest).map_err(|e| fail("intent signature")(&e))?;
    session
        .post(
            "/v1/requests",
            &json!({ "id": id, "chainId": CHAIN_ID, "transaction": transaction,
                     "createdAt": created, "initiatorSignature": signature.to_hex() }),
        )
        .await
        .map_err(|e| fail(id)(&e))
}

/// Makes an approver's store in `dir` for approver `index` (0 alice, 1 bob, 2 carol): their
/// key imported, the queue connected and pinned, the initiator trusted, the vault pinned, and
/// the default (strict) local policy.
pub async fn prepare_approver(
    dir: &Path,
    queue: &DemoQueue,
    index: usize,
    protection: Protection,
) -> Result<Store, DemoError> {
    let store = Store::create(dir, protection).await.map_err(|e| fail("store")(&e))?;
    let key = format!("{:02x}", 0x21 + index).repeat(32);
    countersign_approver::setup::add_software_key(
        &store,
        Some(&SecretString::new(key)),
        Some(APPROVER_IDS.get(index).copied().unwrap_or("approver")),
    )
    .await
    .map_err(|e| fail("key")(&e))?;
    store.add_vault(&vault()).await.map_err(|e| fail("vault")(&e))?;
    let connection = Connection {
        initiators: vec![initiator().address()],
        ..queue.connection(queue.approver_api_keys.get(index).map_or("", String::as_str))
    };
    countersign_approver::setup::connect(&store, &connection)
        .await
        .map_err(|e| fail("connect")(&e))?;
    Ok(store)
}

/// Requests per vault in [`load`]: a strict policy signs at most 20 nonces ahead.
const LOAD_PER_VAULT: usize = 20;

/// The `n`-th vault of [`load`]: the demo's owners and threshold at another address.
pub fn load_vault(n: usize) -> VaultRecord {
    let mut bytes = [0u8; 20];
    bytes[0] = 0x10;
    bytes[12..20].copy_from_slice(&(n as u64).to_be_bytes());
    let mut record = vault();
    record.address = Address::from(bytes);
    record.next_nonce = Some(U256::ZERO);
    record.label = Some(format!("Desk {n}"));
    record
}

/// Adds `requests` pending USDC transfers to the demo queue, spread over as many vaults as
/// they need, for benchmarks. Returns the vault records to pin.
pub async fn load(queue: &DemoQueue, requests: usize) -> Result<Vec<VaultRecord>, DemoError> {
    let connect = |api_key: &str| queue.connection(api_key);
    let admin = connect(&queue.admin_api_key).session().await.map_err(|e| fail("admin")(&e))?;
    let vaults: Vec<VaultRecord> = (0..requests.div_ceil(LOAD_PER_VAULT)).map(load_vault).collect();
    for record in &vaults {
        let owners: Vec<String> = record.owners.iter().map(checksummed).collect();
        admin
            .post(
                "/v1/vaults",
                &json!({ "chainId": CHAIN_ID, "address": checksummed(&record.address),
                         "safeVersion": "1.3.0", "owners": owners, "threshold": 2, "nextNonce": "0" }),
            )
            .await
            .map_err(|e| fail("vault")(&e))?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // One API key a submitter, so that the per-key rate limit does not pace the load.
    for _ in 0..16 {
        let key = admin
            .post("/v1/members/ops/api-keys", &json!({}))
            .await
            .map_err(|e| fail("api key")(&e))?;
        let ops = connect(key["apiKey"].as_str().unwrap_or_default())
            .session()
            .await
            .map_err(|e| fail("initiator")(&e))?;
        let (next, vaults) = (next.clone(), vaults.clone());
        tasks.spawn(async move {
            let initiator = initiator();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return Ok::<(), DemoError>(());
                }
                let Some(record) = vaults.get(i / LOAD_PER_VAULT) else { return Ok(()) };
                let to = Address::with_last_byte((i % 250) as u8 + 1);
                let mut transaction = tx(
                    USDC,
                    U256::ZERO,
                    encode_transfer(to, usdc(1_000 + i as u64)),
                    Operation::CALL,
                    (i % LOAD_PER_VAULT) as u64,
                );
                transaction["safe"] = json!(checksummed(&record.address));
                submit_to(&ops, &initiator, record, &format!("load-{i}"), transaction).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| DemoError(e.to_string()))??;
    }
    Ok(vaults)
}

/// The one request of each [`add_hardware_vault`].
pub const HARDWARE_REQUEST: &str = "hardware-usdc-topup";

/// Adds a 1-of-2 vault whose owners are `owner` (a Ledger's or an HSM's address) and alice,
/// at `safe`, makes `owner` the approver member `id`, and submits one USDC transfer to it
/// ([`HARDWARE_REQUEST`], once per queue). Returns the vault record and the member's API key.
pub async fn add_hardware_vault(
    queue: &DemoQueue,
    safe: Address,
    owner: Address,
    id: &str,
) -> Result<(VaultRecord, String), DemoError> {
    let mut record = VaultRecord::new(CHAIN_ID, safe, SafeVersion::V1_3_0);
    record.owners = vec![owner, approvers()[0].address()];
    record.owners.sort();
    record.threshold = Some(1);
    record.next_nonce = Some(U256::ZERO);
    let admin = queue
        .connection(&queue.admin_api_key)
        .session()
        .await
        .map_err(|e| fail("admin session")(&e))?;
    let owners: Vec<String> = record.owners.iter().map(checksummed).collect();
    admin
        .post(
            "/v1/vaults",
            &json!({ "chainId": CHAIN_ID, "address": checksummed(&safe),
                     "safeVersion": "1.3.0", "owners": owners, "threshold": 1, "nextNonce": "0" }),
        )
        .await
        .map_err(|e| fail("vault")(&e))?;
    let body = json!({ "id": id, "name": id, "role": "approver", "address": checksummed(&owner) });
    admin.post("/v1/members", &body).await.map_err(|e| fail("member")(&e))?;
    let key = admin
        .post(&format!("/v1/members/{id}/api-keys"), &json!({}))
        .await
        .map_err(|e| fail("api key")(&e))?;
    let ops = queue
        .connection(&queue.initiator_api_key)
        .session()
        .await
        .map_err(|e| fail("initiator session")(&e))?;
    let exchange = address!("28C6c06298d514Db089934071355E5743bf21d60");
    let mut transaction =
        tx(USDC, U256::ZERO, encode_transfer(exchange, usdc(12_000)), Operation::CALL, 0);
    transaction["safe"] = json!(checksummed(&safe));
    submit_to(&ops, &initiator(), &record, HARDWARE_REQUEST, transaction).await?;
    Ok((record, key["apiKey"].as_str().unwrap_or_default().to_owned()))
}
