//! The queue's load benchmark: `cargo run --release -p countersign-sync --example load`.
//!
//! Everything runs on this machine, over TLS on loopback, against a SQLite queue in a temporary
//! folder: a server in this process, and a load generator of concurrent clients beside it. It
//! measures, in one run and in this order:
//!
//! 1. submissions (initiator-signed requests to 2-of-3 vaults);
//! 2. a sync of every pending request into a sealed local store (fetch, re-hash, verify the
//!    intent signature, store), against recovering as many intent signatures on 2 threads;
//! 3. approvals: one distinct pre-signed approval per request (so each stays pending), through
//!    many API keys so the per-key rate limit does not cap the run, against recovering the
//!    same signatures alone on 2 threads (the ceiling, as each approval recovers one);
//! 4. listing: `GET /v1/requests?limit=20` from cursors spread over the queue;
//! 5. an empty answer, `GET /v1/health`: what TLS, HTTP and the load generator cost alone.
//!
//! The recoveries each ratio is taken against are timed before and after what they measure,
//! and their mean is used: the machine's speed drifts within a run. The sync runs several
//! times, each into a fresh store; every trial is printed, and their median is the figure.
//!
//! Submissions and the sync go through the Rust client. Approvals and listing are sent by wrk
//! (`apt install wrk`), a separate process on the same 2 cores, with `load.lua`: a load
//! generator much lighter than a Rust client in this process, so that what is measured is the
//! queue. Its answers are not parsed beyond what counting them needs. Sizes come from the
//! environment: LOAD_REQUESTS (default 10,000), LOAD_CONCURRENCY (64), LOAD_LIST_SECONDS (5),
//! LOAD_SYNC_TRIALS (3).
//! Every loop is bounded and stops by itself; the approvals are counted in the database
//! afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops at the first failure"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{address, Address, B256, U256};
use countersign_core::decode::encode_transfer;
use countersign_core::intent::intent_digest;
use countersign_core::secret::SecretString;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::Signer;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_queue::api::{ApiState, RateLimit};
use countersign_queue::db::Db;
use countersign_queue::model::{self, QueueRules};
use countersign_queue::server;
use countersign_queue::tls::Identity;
use countersign_signers::software::SoftwareSigner;
use countersign_store::keywrap::Protection;
use countersign_store::Store;
use countersign_sync::client::Session;
use countersign_sync::sync::{sync, Connection};
use k256::ecdsa::VerifyingKey;
use serde_json::{json, Value};

const USDC: Address = address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
/// A 2-of-3 vault, as a treasury team runs one.
const APPROVERS: u8 = 3;
const THRESHOLD: u8 = 2;
/// API keys per member, so that the per-key rate limit (50/s, bursts of 100) does not cap
/// the run.
const KEYS_PER_MEMBER: usize = 64;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn key(byte: u8) -> SoftwareSigner {
    SoftwareSigner::from_hex(&SecretString::new(format!("{byte:02x}").repeat(32))).unwrap()
}

/// Requests are spread over vaults, 20 nonces each (the default policy signs at most 20 ahead).
const PER_VAULT: usize = 20;

fn safe(i: usize) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = 0x5a;
    bytes[16..].copy_from_slice(&((i / PER_VAULT) as u32).to_be_bytes());
    Address::from(bytes)
}

fn tx_json(i: usize) -> Value {
    let to = Address::with_last_byte((i % 250) as u8 + 1);
    let data = encode_transfer(to, U256::from(1_000_000u64 + i as u64));
    json!({ "safe": safe(i).to_checksum(None), "to": USDC.to_checksum(None), "value": "0", "data": data.to_string(),
            "operation": 0, "safeTxGas": "0", "baseGas": "0", "gasPrice": "0",
            "gasToken": Address::ZERO.to_checksum(None), "refundReceiver": Address::ZERO.to_checksum(None),
            "nonce": 5 + (i % PER_VAULT) })
}

/// Prints the wall-clock time of a phase boundary to standard error, to line a profile up
/// with the phases (`perf record -k CLOCK_REALTIME`, then `perf report --time START,END`).
fn mark(phase: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    eprintln!("phase {phase} at {:.3}", now.as_secs_f64());
}

/// This process's CPU time so far (user and system, all threads), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the
    // kernel counts them in 100ths of a second.
    Duration::from_millis((ticks(12) + ticks(13)) * 10)
}

/// The machine's stolen and idle time so far (all CPUs), from /proc/stat.
fn machine_idle_and_steal() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let at = |i: usize| Duration::from_millis(fields.get(i).copied().unwrap_or(0) * 10);
    // user nice system idle iowait irq softirq steal
    (at(3) + at(4), at(7))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `jobs` through `concurrency` workers; returns (wall time, sorted latencies).
async fn drive<F, Fut>(jobs: Vec<Value>, concurrency: usize, work: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize, Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let queue = Arc::new(tokio::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (queue, work) = (queue.clone(), work.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some((index, job)) = queue.lock().await.pop() else { break };
                let began = Instant::now();
                work(index, job).await;
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all.sort();
    (start.elapsed(), all)
}

/// Signature recoveries per second on `threads` OS threads, each taking the next signature
/// from a shared counter (as the sync's threads take the next request), so that a thread
/// held up by anything else on the machine does not leave the other idle at the end.
fn recovery_rate(signatures: &[(OwnerSignature, B256)], threads: usize) -> f64 {
    shared_rate(signatures.len(), threads, |i| {
        let (signature, hash) = &signatures[i];
        signature.recover(hash).unwrap();
    })
}

/// Signatures per second checked against their signers' known keys on `threads` threads, as
/// the queue checks an approver's own signature once it has seen their key.
fn known_key_rate(signatures: &[(OwnerSignature, B256, VerifyingKey)], threads: usize) -> f64 {
    shared_rate(signatures.len(), threads, |i| {
        let (signature, hash, key) = &signatures[i];
        assert!(signature.is_by(hash, key));
    })
}

/// Items per second through `work`, shared out one at a time between `threads` threads.
fn shared_rate(items: usize, threads: usize, work: impl Fn(usize) + Sync) -> f64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items {
                    break;
                }
                work(i);
            });
        }
    });
    items as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Quiet unless asked: `RUST_LOG=countersign_queue=debug` shows each batch of approvals.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let requests = env("LOAD_REQUESTS", 10_000);
    let concurrency = env("LOAD_CONCURRENCY", 64);
    let list_seconds = env("LOAD_LIST_SECONDS", 5) as u64;
    let sync_trials = env("LOAD_SYNC_TRIALS", 3).max(1);

    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite_in(dir.path()).await.unwrap();
    let admin_key = model::bootstrap(&db).await.unwrap().unwrap();
    let rules = QueueRules {
        policy: Default::default(),
        tokens: countersign_core::tokens::TokenList::shipped().unwrap(),
    };
    let identity = Identity::ephemeral().unwrap();
    let running = server::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        ApiState::new(db.clone(), rules, RateLimit::default()),
    )
    .await
    .unwrap();
    let connect = |api_key: String| Connection {
        url: running.url(),
        pins: vec![running.pin.clone()],
        api_key: SecretString::new(api_key),
        initiators: vec![],
    };

    // Setup: 2-of-3 vaults, an initiator (not an owner), 3 approving owners, each member
    // with many API keys.
    let initiator = key(0xf0);
    let approvers: Vec<SoftwareSigner> = (1..=APPROVERS).map(key).collect();
    let owners: Vec<String> = approvers.iter().map(|k| k.address().to_checksum(None)).collect();
    let admin = connect(admin_key).session().await.unwrap();
    let vaults = requests.div_ceil(PER_VAULT);
    for v in 0..vaults {
        let body = json!({ "chainId": 1, "address": safe(v * PER_VAULT).to_checksum(None),
            "safeVersion": "1.3.0", "owners": owners, "threshold": THRESHOLD, "nextNonce": "5" });
        admin.post("/v1/vaults", &body).await.unwrap();
    }
    let mut member_keys = Vec::new();
    for (i, signer) in std::iter::once(&initiator).chain(approvers.iter()).enumerate() {
        let (id, role) =
            if i == 0 { ("init".to_owned(), "initiator") } else { (format!("a{i}"), "approver") };
        admin.post("/v1/members", &json!({ "id": id, "name": id, "role": role, "address": signer.address().to_checksum(None) })).await.unwrap();
        let mut keys = Vec::new();
        for _ in 0..KEYS_PER_MEMBER {
            keys.push(
                admin.post(&format!("/v1/members/{id}/api-keys"), &json!({})).await.unwrap()
                    ["apiKey"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        member_keys.push(keys);
    }
    let vault_of = |i: usize| {
        let mut vault = VaultRecord::new(1, safe(i), SafeVersion::V1_3_0);
        vault.owners = approvers.iter().map(|k| k.address()).collect();
        vault.threshold = Some(u32::from(THRESHOLD));
        vault.next_nonce = Some(U256::from(5));
        vault
    };

    // 1. Submissions (a by-product, measured too).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut hashes = Vec::new();
    let mut intents = Vec::new();
    let mut submissions = Vec::new();
    for i in 0..requests {
        let tx = tx_json(i);
        let parsed =
            countersign_core::request::SafeTxRequest::from_json(tx.to_string().as_bytes()).unwrap();
        let hash = vault_of(i).domain().hashes(&parsed.tx).safe_tx;
        let id = format!("r{i}");
        let digest = intent_digest(1, &id, safe(i), hash, now);
        let signature = initiator.sign_digest(&digest).unwrap();
        hashes.push(hash);
        intents.push((signature, digest));
        submissions.push(json!({ "id": id, "chainId": 1, "transaction": tx, "createdAt": now, "initiatorSignature": signature.to_hex() }));
    }
    let sessions = Arc::new(sessions_for(&member_keys[..1], &connect).await);
    let (submit_time, submit_lat) = drive(submissions, concurrency, move |i, body| {
        let sessions = sessions.clone();
        async move {
            sessions[i % sessions.len()].post_bytes("/v1/requests", &body).await.unwrap();
        }
    })
    .await;

    // 2. Syncs of every pending request, each into a fresh sealed store, against recovering
    //    the same intent signatures on 2 threads. The machine's speed drifts by several per
    //    cent within a run: the recoveries are timed before each sync and after it, and each
    //    sync is compared with the mean of the two; the median of the trials is the figure.
    let connection =
        Connection { initiators: vec![initiator.address()], ..connect(member_keys[1][0].clone()) };
    // The sync checks an intent against the initiator's key once it has recovered one, so
    // it is also compared with as many such checks, the cheapest verification there is.
    let initiator_key = intents[0].0.recover_key(&intents[0].1).unwrap();
    let intent_checks: Vec<_> = intents.iter().map(|(s, d)| (*s, *d, initiator_key)).collect();
    let timed_recoveries = || {
        let (start, cpu) = (Instant::now(), cpu_time());
        recovery_rate(&intents, 2);
        let recovered = (start.elapsed(), cpu_time() - cpu);
        let start = Instant::now();
        known_key_rate(&intent_checks, 2);
        (recovered.0, recovered.1, start.elapsed())
    };
    let mut trials: Vec<SyncTrial> = Vec::new();
    let mut before = timed_recoveries();
    for trial in 0..sync_trials {
        let local = tempfile::tempdir().unwrap();
        let store = Store::create(
            local.path(),
            Protection::Passphrase(SecretString::new("load benchmark".into())),
        )
        .await
        .unwrap();
        for v in 0..vaults {
            store.add_vault(&vault_of(v * PER_VAULT)).await.unwrap();
        }
        store.set_queue_config(&connection.to_secret()).await.unwrap();
        let (start, cpu, (idle, steal)) = (Instant::now(), cpu_time(), machine_idle_and_steal());
        mark(&format!("sync {trial} start"));
        let report = sync(&store, &connection).await.unwrap();
        let (time, cpu) = (start.elapsed(), cpu_time() - cpu);
        let (idle_after, steal_after) = machine_idle_and_steal();
        mark(&format!("sync {trial} end"));
        assert_eq!(report.fetched, requests);
        assert!(report.marked.is_empty(), "{:?}", report.marked.first());
        let after = timed_recoveries();
        trials.push(SyncTrial {
            time,
            cpu,
            recoveries: (before.0 + after.0) / 2,
            recoveries_cpu: (before.1 + after.1) / 2,
            checks: (before.2 + after.2) / 2,
            idle: idle_after - idle,
            steal: steal_after - steal,
        });
        before = after;
    }

    // 3. Approvals: distinct and signed beforehand, one per request (the vault needs two, so
    //    every request stays pending), against recovering the same signatures on 2 threads.
    let approver_keys: Vec<VerifyingKey> = approvers
        .iter()
        .map(|signer| signer.sign_digest(&B256::ZERO).unwrap().recover_key(&B256::ZERO).unwrap())
        .collect();
    let mut approvals = Vec::new();
    let mut recoveries = Vec::new();
    let mut known = Vec::new();
    for (r, hash) in hashes.iter().enumerate() {
        let a = r % approvers.len();
        let signature = approvers[a].sign_digest(hash).unwrap();
        recoveries.push((signature, *hash));
        known.push((signature, *hash, approver_keys[a]));
        approvals.push(json!({ "approver": a, "request": r, "safeTxHash": hash.to_string(), "signature": signature.to_hex() }));
    }
    let recovery_before = recovery_rate(&recoveries, 2);
    let known_before = known_key_rate(&known, 2);
    let mut tokens = Vec::new();
    for keys in &member_keys[1..] {
        let mut own = Vec::new();
        for key in keys {
            own.push(model::open_session(&db, key).await.unwrap().0);
        }
        tokens.push(own);
    }
    let lines: Vec<String> = approvals
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let a = body["approver"].as_u64().unwrap() as usize;
            let r = body["request"].as_u64().unwrap();
            let sent = json!({ "safeTxHash": body["safeTxHash"], "signature": body["signature"] });
            format!("POST /v1/requests/r{r}/approvals {} {sent}", tokens[a][i % KEYS_PER_MEMBER])
        })
        .collect();
    let total_approvals = lines.len();
    mark("approve start");
    let approved =
        wrk(&running.url(), dir.path(), "approvals", lines, concurrency, 600, "once").await;
    mark("approve end");
    assert_eq!(approved.errors, 0, "every approval is accepted");
    let recovery_after = recovery_rate(&recoveries, 2);
    let recovery_2 = (recovery_before + recovery_after) / 2.0;
    let known_2 = (known_before + known_key_rate(&known, 2)) / 2.0;
    let written: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM approvals").fetch_one(&db.pool).await.unwrap(),
        "n",
    );
    assert_eq!(written as usize, total_approvals, "every approval is written");

    // 4. Listing pages of 20 from cursors spread over the queue, for a fixed time.
    let last_seq = (requests * 2) as u64;
    let all_tokens: Vec<&String> = tokens.iter().flatten().collect();
    let lines: Vec<String> = (0..5000u64)
        .map(|j| {
            let after = (j * 7919) % last_seq;
            let token = all_tokens[j as usize % all_tokens.len()];
            format!("GET /v1/requests?limit=20&after={after} {token}")
        })
        .collect();
    mark("list start");
    let listed =
        wrk(&running.url(), dir.path(), "listing", lines, concurrency, list_seconds, "cycle").await;
    mark("list end");
    assert_eq!(listed.errors, 0, "every listing is answered");

    // 5. The floor: an empty answer, `GET /v1/health`, through the same TLS, HTTP and wrk.
    let lines: Vec<String> =
        all_tokens.iter().take(64).map(|token| format!("GET /v1/health {token}")).collect();
    mark("health start");
    let empty =
        wrk(&running.url(), dir.path(), "health", lines, concurrency, list_seconds, "cycle").await;
    mark("health end");
    assert_eq!(empty.errors, 0, "every health check is answered");

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let approve_rate = total_approvals as f64 / approved.duration.as_secs_f64();
    println!("\n| measurement ({requests} requests, {concurrency} concurrent clients, SQLite, TLS on loopback) | figure |");
    println!("|---|---:|");
    println!(
        "| submissions | {:.0}/s, p99 {:.1} ms |",
        requests as f64 / submit_time.as_secs_f64(),
        ms(percentile(&submit_lat, 0.99))
    );
    let ratio = |t: &SyncTrial| t.time.as_secs_f64() / t.recoveries.as_secs_f64();
    let check_ratio = |t: &SyncTrial| t.time.as_secs_f64() / t.checks.as_secs_f64();
    let median = |of: &dyn Fn(&SyncTrial) -> f64| {
        let mut ratios: Vec<f64> = trials.iter().map(of).collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    for (n, t) in trials.iter().enumerate() {
        println!(
            "| sync {} of {requests} pending requests | {:.0} ms = {:.2} × the {requests} intent recoveries on 2 threads ({:.0} ms) = {:.2} × as many checks against the initiator's known key ({:.0} ms); CPU {:.0} ms, all threads, queue included (the recoveries: {:.0} ms); the machine idle {:.0} ms, stolen {:.0} ms |",
            n + 1,
            ms(t.time),
            ratio(t),
            ms(t.recoveries),
            check_ratio(t),
            ms(t.checks),
            ms(t.cpu),
            ms(t.recoveries_cpu),
            ms(t.idle),
            ms(t.steal)
        );
    }
    println!(
        "| sync ÷ recoveries, the median of {} | {:.2} (goal ≤ 1.3) |",
        trials.len(),
        median(&ratio)
    );
    println!(
        "| sync ÷ known-key checks, the median of {} | {:.2} (goal ≤ 1.3 if a verification is the cheaper check) |",
        trials.len(),
        median(&check_ratio)
    );
    println!("| signature recovery alone, 2 threads | {recovery_2:.0}/s, the mean of {recovery_before:.0}/s before the approvals and {recovery_after:.0}/s after |");
    println!("| an approver's signature checked against their known key alone, 2 threads (what the queue does once it has seen the key) | {known_2:.0}/s, the mean of before and after |");
    println!("| approvals ({total_approvals} distinct, wrk) | {approve_rate:.0}/s = {:.2} × recovery (goal ≥ 0.7) = {:.2} × the known-key check, p99 {:.1} ms |", approve_rate / recovery_2, approve_rate / known_2, ms(approved.p99));
    println!(
        "| listing, GET /v1/requests?limit=20 (wrk) | {:.0}/s, p99 {:.1} ms |",
        listed.requests as f64 / listed.duration.as_secs_f64(),
        ms(listed.p99)
    );
    let empty_rate = empty.requests as f64 / empty.duration.as_secs_f64();
    println!(
        "| an empty answer, GET /v1/health (wrk) | {empty_rate:.0}/s: {:.0} µs of the 2 cores each, where an approval takes {:.0} µs and its recovery alone {:.0} µs |",
        2e6 / empty_rate,
        2e6 / approve_rate,
        2e6 / recovery_2
    );
    running.stop();
}

/// One sync, and the recoveries it is compared with.
struct SyncTrial {
    time: Duration,
    cpu: Duration,
    /// The mean of the recoveries timed just before the sync and just after.
    recoveries: Duration,
    recoveries_cpu: Duration,
    /// The mean of as many checks against the initiator's known key, before and after.
    checks: Duration,
    idle: Duration,
    steal: Duration,
}

/// What a wrk run measured.
struct WrkRun {
    duration: Duration,
    requests: u64,
    errors: u64,
    p99: Duration,
}

/// Runs wrk (2 threads, `connections` connections) with `load.lua` over `lines` (one request
/// each, see the script), for at most `seconds`. A `once` run is timed from the first request
/// sent to the last answer in.
async fn wrk(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    lines: Vec<String>,
    connections: usize,
    seconds: u64,
    mode: &str,
) -> WrkRun {
    let script = dir.join("load.lua");
    std::fs::write(&script, include_str!("load.lua")).unwrap();
    let file = dir.join(format!("{name}.txt"));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let args: Vec<String> = vec![
        "-t2".into(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "30s".into(),
        "-s".into(),
        script.display().to_string(),
        url.to_owned(),
        "--".into(),
        file.display().to_string(),
        "2".into(),
        mode.to_owned(),
    ];
    // On a blocking thread: the queue runs on this runtime's two workers.
    let (output, timed) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("wrk")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("wrk runs the load (apt install wrk)");
        let stderr = child.stderr.take().unwrap();
        let (mut started, mut finished) = (None, 0);
        let mut timed = None;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            match line.as_str() {
                "started" => {
                    started.get_or_insert_with(Instant::now);
                }
                "finished" => {
                    finished += 1;
                    if finished == 2 {
                        timed = started.map(|s: Instant| s.elapsed());
                        // Both threads are done; wrk itself waits out its -d.
                        std::process::Command::new("kill")
                            .args(["-INT", &child.id().to_string()])
                            .status()
                            .unwrap();
                    }
                }
                other if other.starts_with("failed") => {
                    let _ = child.kill();
                    panic!("wrk: {other}");
                }
                other => eprintln!("{other}"),
            }
        }
        (child.wait_with_output().unwrap(), timed)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix("wrk-result "))
        .unwrap_or_else(|| panic!("wrk gave no result:\n{stdout}"));
    let field = |key: &str| -> u64 {
        result
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    WrkRun {
        duration: timed.unwrap_or_else(|| Duration::from_micros(field("duration_us"))),
        requests: field("requests"),
        errors: field("errors"),
        p99: Duration::from_micros(field("p99_us")),
    }
}

/// A session for every key of every member in `members`.
async fn sessions_for(
    members: &[Vec<String>],
    connect: &impl Fn(String) -> Connection,
) -> Vec<Session> {
    let mut out = Vec::new();
    for key in members.iter().flatten() {
        out.push(connect(key.clone()).session().await.unwrap());
    }
    out
}
