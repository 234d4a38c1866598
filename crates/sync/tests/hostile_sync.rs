//! The sync against a queue that lies: a payload changed between two syncs and a wrong claimed
//! hash are marked and open incidents; a queue restarted in the middle is survived.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use alloy_primitives::{Address, B256};
use countersign_core::intent::intent_digest;
use countersign_core::request::SafeTxRequest;
use countersign_core::secret::SecretString;
use countersign_core::signer::Signer;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_queue::api::ApiState;
use countersign_queue::db::Db;
use countersign_queue::model;
use countersign_queue::server;
use countersign_queue::tls::Identity;
use countersign_store::keywrap::Protection;
use countersign_store::Store;
use countersign_sync::sync::{sync, Connection};
use serde_json::{json, Value};

mod common;

use common::{key, rules, transaction, SAFE};

fn vault(owners: &[Address]) -> VaultRecord {
    let mut record = VaultRecord::new(1, SAFE, SafeVersion::V1_3_0);
    record.owners = owners.to_vec();
    record.threshold = Some(2);
    record.next_nonce = Some(alloy_primitives::U256::from(5));
    record
}

struct World {
    db: Db,
    identity: Identity,
    running: server::Running,
    store: Store,
    connection: Connection,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn world() -> World {
    let queue_dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite_in(queue_dir.path()).await.unwrap();
    let admin_key = model::bootstrap(&db).await.unwrap().unwrap();
    let identity = Identity::ephemeral().unwrap();
    let running = server::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        ApiState::new(db.clone(), rules(), Default::default()),
    )
    .await
    .unwrap();
    let (initiator, alice, bob) = (key(0x11), key(0x22), key(0x33));
    let owners = [alice.address(), bob.address(), initiator.address()];

    let admin = Connection {
        url: running.url(),
        pins: vec![running.pin.clone()],
        api_key: SecretString::new(admin_key),
        initiators: vec![],
    };
    let admin = admin.session().await.unwrap();
    let owner_texts: Vec<String> = owners.iter().map(|o| o.to_checksum(None)).collect();
    admin.post("/v1/vaults", &json!({ "chainId": 1, "address": SAFE.to_checksum(None), "safeVersion": "1.3.0", "owners": owner_texts, "threshold": 2, "nextNonce": "5" })).await.unwrap();
    let mut keys = Vec::new();
    for (id, role, address) in
        [("init", "initiator", initiator.address()), ("alice", "approver", alice.address())]
    {
        admin.post("/v1/members", &json!({ "id": id, "name": id, "role": role, "address": address.to_checksum(None) })).await.unwrap();
        keys.push(
            admin.post(&format!("/v1/members/{id}/api-keys"), &json!({})).await.unwrap()["apiKey"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let init = Connection {
        url: running.url(),
        pins: vec![running.pin.clone()],
        api_key: SecretString::new(keys[0].clone()),
        initiators: vec![],
    };
    let init = init.session().await.unwrap();
    let cases =
        [("r1", "ok_usdc_transfer"), ("r2", "ok_native_transfer"), ("r3", "ok_transfer_from")];
    for (n, (id, file)) in cases.into_iter().enumerate() {
        let mut tx = transaction(file);
        tx["nonce"] = json!(5 + n);
        let request = SafeTxRequest::from_json(tx.to_string().as_bytes()).unwrap();
        let hash = vault(&owners).domain().hashes(&request.tx).safe_tx;
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let signature = initiator.sign_digest(&intent_digest(1, id, SAFE, hash, created)).unwrap();
        init.post("/v1/requests", &json!({ "id": id, "chainId": 1, "transaction": tx, "createdAt": created, "initiatorSignature": signature.to_hex() })).await.unwrap();
    }

    let local_dir = tempfile::tempdir().unwrap();
    let store = Store::create(
        local_dir.path(),
        Protection::Passphrase(SecretString::new("long passphrase".into())),
    )
    .await
    .unwrap();
    store.add_vault(&vault(&owners)).await.unwrap();
    let connection = Connection {
        url: running.url(),
        pins: vec![running.pin.clone()],
        api_key: SecretString::new(keys[1].clone()),
        initiators: vec![initiator.address()],
    };
    store.set_queue_config(&connection.to_secret()).await.unwrap();
    World { db, identity, running, store, connection, _dirs: (queue_dir, local_dir) }
}

async fn marks(store: &Store, id: &str) -> Vec<Value> {
    store.cached_request(id).await.unwrap().unwrap().body["countersign"]["marks"]
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn fail_a_lying_queue_is_marked_and_opens_incidents() {
    let world = world().await;
    let first = sync(&world.store, &world.connection).await.unwrap();
    assert_eq!(first.fetched, 3);
    assert!(first.marked.is_empty(), "{:?}", first.marked);

    // The queue changes r1's payload and claims a wrong hash for r2, bumping both to resync
    // (what it serves is the stored view).
    sqlx::query("UPDATE requests SET view = replace(view, '\"nonce\":5', '\"nonce\":6'), seq = seq + 100 WHERE id = 'r1'")
        .execute(&world.db.pool).await.unwrap();
    sqlx::query("UPDATE requests SET view = replace(view, safe_tx_hash, $1), seq = seq + 200 WHERE id = 'r2'")
        .bind(B256::repeat_byte(0xee).to_string())
        .execute(&world.db.pool)
        .await
        .unwrap();
    let second = sync(&world.store, &world.connection).await.unwrap();
    let marked: Vec<&str> = second.marked.iter().map(|(id, _)| id.as_str()).collect();
    assert!(marked.contains(&"r1") && marked.contains(&"r2"), "{:?}", second.marked);
    assert!(marks(&world.store, "r1")
        .await
        .iter()
        .any(|m| m.as_str().unwrap().contains("payload changed")));
    assert!(marks(&world.store, "r2")
        .await
        .iter()
        .any(|m| m.as_str().unwrap().contains("claims safeTxHash")));
    assert!(marks(&world.store, "r3").await.is_empty());
    assert!(second.incidents.len() >= 2);
    let history = world.store.history(&vault(&[]), alloy_primitives::U256::from(5)).await.unwrap();
    assert!(history.open_incidents >= 2, "signing on the vault is blocked");

    // Marks stay, even if the queue puts the old payload back.
    let third = sync(&world.store, &world.connection).await.unwrap();
    assert_eq!(third.fetched, 0);
    assert!(!marks(&world.store, "r1").await.is_empty());
}

#[tokio::test]
async fn a_queue_restart_mid_sync_is_survived_without_duplicates() {
    let world = world().await;
    let addr = world.running.addr;
    world.running.stop();
    drop(world.running);
    let db = world.db.clone();
    let identity = world.identity;
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        server::start(addr, &identity, ApiState::new(db, rules(), Default::default()))
            .await
            .unwrap()
    });
    let report = sync(&world.store, &world.connection).await.unwrap();
    let _server = restarted.await.unwrap();
    assert_eq!(report.fetched, 3);
    assert_eq!(world.store.cached_requests().await.unwrap().len(), 3);
    let again = sync(&world.store, &world.connection).await.unwrap();
    assert_eq!(again.fetched, 0, "the cursor was stored with the batch");
    assert_eq!(world.store.cached_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn views_missing_from_an_older_database_are_rendered_again() {
    let world = world().await;
    let before = model::list(&world.db, None, None, 0, 100).await.unwrap();
    // At start.
    sqlx::query("UPDATE requests SET view = NULL").execute(&world.db.pool).await.unwrap();
    assert!(model::bootstrap(&world.db).await.unwrap().is_none(), "the admin exists already");
    assert_eq!(model::list(&world.db, None, None, 0, 100).await.unwrap(), before);
    // While serving (a row written by an older server on the same database).
    sqlx::query("UPDATE requests SET view = NULL WHERE id = 'r2'")
        .execute(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(model::list(&world.db, None, None, 0, 100).await.unwrap(), before);
    sqlx::query("UPDATE requests SET view = '' WHERE id = 'r3'")
        .execute(&world.db.pool)
        .await
        .unwrap();
    let one = model::request_view(&world.db, "r3").await.unwrap();
    assert!(before.contains(&one.json));
    assert_eq!(model::fill_views(&world.db).await.unwrap(), 0, "nothing is left to render");
}

/// What the stand-in queue answers to `GET /v1/requests?after=N`.
type Pages = std::sync::Arc<dyn Fn(i64) -> String + Send + Sync>;

/// A stand-in for the queue over TLS: a session for any key, no vaults, and the listing from
/// `pages` (a body, or `SLEEP:<ms>:` and a body to answer late). One request per connection. Returns the URL, the pin and a count of listings.
async fn stand_in(pages: Pages) -> (String, String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = Identity::ephemeral().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listings = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = listings.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, pages, counter) = (acceptor.clone(), pages.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                tls.read_exact(&mut body).await.unwrap();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let mut answer = if path.starts_with("/v1/session") {
                    json!({ "token": "t", "expiresAt": 4_000_000_000u64, "member": { "id": "alice" } }).to_string()
                } else if path.starts_with("/v1/events") {
                    // One event that never ends: a line of data with no blank line after it.
                    format!("data: {}", "x".repeat(countersign_sync::client::MAX_EVENT_BYTES * 2))
                } else if path.starts_with("/v1/vaults") {
                    json!({ "vaults": [] }).to_string()
                } else if let Some(rest) = path.strip_prefix("/v1/requests?after=") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    pages(rest.split('&').next().unwrap().parse().unwrap())
                } else {
                    "{}".to_owned()
                };
                // `SLEEP:<ms>:` before a body: a queue slow to answer.
                if let Some((ms, body)) =
                    answer.strip_prefix("SLEEP:").and_then(|rest| rest.split_once(':'))
                {
                    let ms: u64 = ms.parse().unwrap();
                    let body = body.to_owned();
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    answer = body;
                }
                let reply = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}", answer.len());
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}"), identity.pin(), listings)
}

fn page<V: serde::Serialize>(views: &[V], cursor: i64, more: bool) -> String {
    json!({ "requests": views, "cursor": cursor, "more": more }).to_string()
}

async fn through_stand_in(
    world: &World,
    pages: Pages,
) -> (Connection, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let (url, pin, listings) = stand_in(pages).await;
    (Connection { url, pins: vec![pin], ..world.connection.clone() }, listings)
}

async fn real_views(world: &World) -> Vec<Value> {
    let listing: Value =
        serde_json::from_str(&model::list(&world.db, None, None, 0, 100).await.unwrap()).unwrap();
    listing["requests"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_a_stand_in_queue_cannot_bend_the_cursor_or_the_pages() {
    let world = world().await;
    let views = real_views(&world).await;
    let (r1, r2) = (views[0].clone(), views[1].clone());

    // The same request twice in a page: refused, nothing stored.
    let twice = r1.clone();
    let (connection, _) =
        through_stand_in(&world, std::sync::Arc::new(move |_| page(&[&twice, &twice], 10, false)))
            .await;
    let error = sync(&world.store, &connection).await.unwrap_err().to_string();
    assert!(error.contains("twice"), "{error}");
    assert!(world.store.cached_request(views[0]["id"].as_str().unwrap()).await.unwrap().is_none());

    // A cursor moved back: refused, the stored cursor stays.
    let (connection, _) =
        through_stand_in(&world, std::sync::Arc::new(|_| page::<Value>(&[], -100, false))).await;
    let error = sync(&world.store, &connection).await.unwrap_err().to_string();
    assert!(error.contains("back"), "{error}");
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, 0);

    // A request listed again in the next page with another payload is marked.
    let mut changed = r1.clone();
    changed["createdAt"] = json!(changed["createdAt"].as_u64().unwrap() + 1);
    let pages: Pages = std::sync::Arc::new(move |after| match after {
        0 => page(&[&r1, &r2], 10, true),
        10 => page(&[&changed], 20, false),
        _ => page::<Value>(&[], after, false),
    });
    let (connection, _) = through_stand_in(&world, pages).await;
    let report = sync(&world.store, &connection).await.unwrap();
    assert!(
        report.marked.iter().any(|(id, why)| id == "r1" && why.contains("payload changed")),
        "{:?}",
        report.marked
    );

    // A queue that always says more follow: the sync stops after MAX_PAGES and says so.
    let (connection, listings) =
        through_stand_in(&world, std::sync::Arc::new(|after| page::<Value>(&[], after + 1, true)))
            .await;
    let report = sync(&world.store, &connection).await.unwrap();
    assert!(report.more);
    assert_eq!(
        listings.load(std::sync::atomic::Ordering::SeqCst),
        countersign_sync::sync::MAX_PAGES as u64
    );
}

/// Pages are checked ahead of the one being stored: a request listed again two pages on,
/// while its first listing may still wait to be stored, is compared with that listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_a_request_changed_two_pages_on_is_marked() {
    let world = world().await;
    let views = real_views(&world).await;
    let (r1, r2, r3) = (views[0].clone(), views[1].clone(), views[2].clone());
    let mut changed = r1.clone();
    changed["transaction"]["value"] = json!("7");
    let pages: Pages = std::sync::Arc::new(move |after| match after {
        0 => page(&[&r1], 10, true),
        10 => page(&[&r2], 20, true),
        20 => page(&[&r3, &changed], 30, false),
        _ => page::<Value>(&[], after, false),
    });
    let (connection, _) = through_stand_in(&world, pages).await;
    let report = sync(&world.store, &connection).await.unwrap();
    assert!(
        report.marked.iter().any(|(id, why)| id == "r1" && why.contains("payload changed")),
        "{:?}",
        report.marked
    );
    assert_eq!(report.fetched, 4, "each listing is checked and stored, in order");
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, 30);
    let stored = world.store.cached_request("r1").await.unwrap().unwrap();
    assert_eq!(stored.body["transaction"]["value"], json!("7"), "the later listing is kept");
    for id in ["r2", "r3"] {
        assert!(marks(&world.store, id).await.is_empty(), "{id} is not marked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_listed_approvals_count_once_and_only_from_pinned_owners() {
    let world = world().await;
    let mut view = real_views(&world).await[0].clone();
    let hash: B256 = view["safeTxHash"].as_str().unwrap().parse().unwrap();
    let (alice, stranger) = (key(0x22), key(0x77));
    let approval = |signer: &countersign_signers::software::SoftwareSigner| {
        json!({ "owner": signer.address().to_checksum(None), "memberId": "x",
                "signature": signer.sign_digest(&hash).unwrap().to_hex(), "at": 1 })
    };
    view["approvals"] = json!([approval(&alice), approval(&stranger), approval(&alice)]);
    let (connection, _) =
        through_stand_in(&world, std::sync::Arc::new(move |_| page(&[&view], 10, false))).await;
    sync(&world.store, &connection).await.unwrap();
    let cached = world.store.cached_request("r1").await.unwrap().unwrap();
    assert_eq!(
        cached.body["countersign"]["approvedBy"],
        json!([alice.address().to_checksum(None)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_an_event_that_never_ends_is_refused_at_its_cap() {
    let world = world().await;
    let (connection, _) =
        through_stand_in(&world, std::sync::Arc::new(|_| page::<Value>(&[], 0, false))).await;
    let session = connection.session().await.unwrap();
    let mut events = session.events().await.unwrap();
    let error = events.next().await.unwrap_err();
    assert!(error.to_string().contains("over 65536 bytes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_owners_in_another_order_are_no_difference_and_another_owner_is() {
    let world = world().await;
    let pinned = world.store.vaults(None).await.unwrap().remove(0);
    let mut reversed = pinned.owners.clone();
    reversed.reverse();
    world.store.replace_vault(&vault(&reversed), "test").await.unwrap();
    let same = sync(&world.store, &world.connection).await.unwrap();
    assert!(same.vault_differences.is_empty(), "{:?}", same.vault_differences);

    let mut other = reversed.clone();
    other[0] = key(0x44).address();
    world.store.replace_vault(&vault(&other), "test").await.unwrap();
    let differs = sync(&world.store, &world.connection).await.unwrap();
    assert_eq!(differs.vault_differences.len(), 1);
    assert!(differs.vault_differences[0].contains("owners"), "{:?}", differs.vault_differences);
    assert!(!differs.vault_differences[0].contains("Some("), "{:?}", differs.vault_differences);
}

/// A valid request like `base` with another id and creation time, its intent signed anew.
fn like(base: &Value, id: &str, created: u64) -> Value {
    let mut view = base.clone();
    view["id"] = json!(id);
    view["createdAt"] = json!(created);
    let hash: B256 = view["safeTxHash"].as_str().unwrap().parse().unwrap();
    let signature = key(0x11).sign_digest(&intent_digest(1, id, SAFE, hash, created)).unwrap();
    view["initiatorSignature"] = json!(signature.to_hex());
    view
}

/// Pages served in order from the stored cursor `start`, page i ending at start + 10 (i + 1);
/// the last says no more follow. After the last: an empty page.
async fn scripted(world: &World, pages: Vec<Vec<Value>>) -> (Connection, Vec<i64>) {
    let start = world.store.queue_config().await.unwrap().unwrap().1;
    let cursors: Vec<i64> = (0..pages.len() as i64).map(|i| start + 10 * (i + 1)).collect();
    let n = pages.len();
    let serve: Pages = std::sync::Arc::new(move |after| {
        let i = ((after - start) / 10) as usize;
        match pages.get(i) {
            Some(views) if (after - start) % 10 == 0 => {
                page(views, start + 10 * (i as i64 + 1), i + 1 < n)
            }
            _ => page::<Value>(&[], after, false),
        }
    });
    (through_stand_in(world, serve).await.0, cursors)
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn sync_in_time(
    store: &Store,
    connection: &Connection,
) -> Result<countersign_sync::sync::SyncReport, countersign_sync::sync::SyncError> {
    tokio::time::timeout(LIMIT, sync(store, connection)).await.expect("the sync hangs")
}

fn changed_marks<'a>(report: &'a countersign_sync::sync::SyncReport, id: &str) -> Vec<&'a str> {
    report
        .marked
        .iter()
        .filter(|(i, why)| i == id && why.contains("payload changed"))
        .map(|(_, why)| why.as_str())
        .collect()
}

fn fillers(base: &Value, tag: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| like(base, &format!("{tag}-{i}"), 1_700_000_000 + i as u64)).collect()
}

/// `pages` from the stored cursor `start` (page i ending at start + 10 (i + 1), each saying
/// more follow), then `last` for every listing after them.
fn then(pages: &[Vec<Value>], start: i64, last: &'static str) -> Pages {
    let served = pages.to_vec();
    std::sync::Arc::new(move |after| {
        let i = ((after - start) / 10) as usize;
        match served.get(i) {
            Some(views) => page(views, start + 10 * (i as i64 + 1), true),
            None => last.to_owned(),
        }
    })
}

async fn stored_is_a_prefix(world: &World, pages: &[Vec<Value>], cursors: &[i64], start: i64) {
    let cursor = world.store.queue_config().await.unwrap().unwrap().1;
    let upto = if cursor == start {
        0
    } else {
        cursors.iter().position(|c| *c == cursor).expect("the cursor is a page's end") + 1
    };
    let stored: std::collections::HashSet<String> =
        world.store.cached_requests().await.unwrap().into_iter().map(|c| c.id).collect();
    for (i, views) in pages.iter().enumerate() {
        for view in views {
            let id = view["id"].as_str().unwrap();
            assert_eq!(stored.contains(id), i < upto, "{id} of page {i}, cursor {cursor}");
        }
    }
}

/// A request listed again k pages on (k = 1..=6), with fillers in between that keep the
/// recovering threads busy, is compared with its first listing and marked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relisted_k_pages_on_is_marked_for_every_k() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    for k in 1..=6usize {
        let id = format!("k{k}");
        let first = like(&base, &id, 1_700_000_000);
        let later = like(&base, &id, 1_700_000_001);
        let mut pages = vec![vec![first]];
        pages[0].extend(fillers(&base, &format!("k{k}p0"), 30));
        for p in 1..k {
            pages.push(fillers(&base, &format!("k{k}p{p}"), 30));
        }
        let mut last = fillers(&base, &format!("k{k}p{k}"), 30);
        last.insert(15, later);
        pages.push(last);
        let total: usize = pages.iter().map(Vec::len).sum();
        let (connection, cursors) = scripted(&world, pages).await;
        let report = sync_in_time(&world.store, &connection).await.unwrap();
        assert_eq!(changed_marks(&report, &id).len(), 1, "k={k}: {:?}", report.marked);
        assert_eq!(report.marked.len(), 1, "k={k}: only the change: {:?}", report.marked);
        assert_eq!(report.incidents.len(), 1, "k={k}");
        assert_eq!(report.fetched, total, "k={k}");
        assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, *cursors.last().unwrap());
        let stored = world.store.cached_request(&id).await.unwrap().unwrap();
        assert_eq!(stored.body["createdAt"], json!(1_700_000_001u64), "k={k}: the later is kept");
    }
}

/// A page that cannot be read after several good ones: the sync fails, what is stored is a
/// prefix of whole pages with their cursor, and the next sync goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_a_page_error_after_good_pages_leaves_a_prefix_of_whole_pages() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let start = world.store.queue_config().await.unwrap().unwrap().1;
    let pages: Vec<Vec<Value>> = (0..6).map(|p| fillers(&base, &format!("g{p}"), 150)).collect();
    let cursors: Vec<i64> = (1..=6).map(|i| start + 10 * i).collect();
    // After the good pages, an answer with no list of requests.
    let connection = through_stand_in(&world, then(&pages, start, "{}")).await.0;
    let error = sync_in_time(&world.store, &connection).await.unwrap_err().to_string();
    assert!(error.contains("no list"), "{error}");
    stored_is_a_prefix(&world, &pages, &cursors, start).await;

    // The next sync, from the stored cursor, changes one of the first page's requests.
    let cursor = world.store.queue_config().await.unwrap().unwrap().1;
    let stored_one = world.store.cached_requests().await.unwrap().first().map(|c| c.id.clone());
    let mut rest: Vec<Vec<Value>> =
        pages[cursors.iter().position(|c| *c == cursor).map_or(0, |p| p + 1)..].to_vec();
    if let Some(id) = &stored_one {
        rest.push(vec![like(&base, id, 1_600_000_000)]);
    }
    let expected: usize = rest.iter().map(Vec::len).sum();
    let (connection, _) = scripted(&world, rest).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, expected);
    if let Some(id) = &stored_one {
        assert_eq!(changed_marks(&report, id).len(), 1, "{:?}", report.marked);
    }
    assert_eq!(world.store.cached_requests().await.unwrap().len(), 6 * 150);
}

/// Malformed intent and approval signatures: each request is marked, none fails the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_malformed_signatures_are_marked_and_the_sync_goes_on() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let good = like(&base, "m-good", 1_700_000_000);
    let sig = good["initiatorSignature"].as_str().unwrap().to_owned();
    let n = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
    let bad_intents: Vec<Value> = vec![
        json!("0x"),
        json!("0xzz"),
        json!(format!("{}1b", "0x".to_owned() + &"00".repeat(64))),
        json!(format!("{}00", &sig[..sig.len() - 2])),
        json!(format!("{}1d", &sig[..sig.len() - 2])),
        json!(format!("0x{n}{n}1b")),
        json!(format!("0x{}{}1c", "11".repeat(32), "7f".repeat(32))),
        json!(&sig[..sig.len() - 2]),
        json!(format!("{sig}00")),
        json!(12345),
        json!({ "signature": sig }),
        Value::Null,
        json!("0x".to_owned() + &"ab".repeat(100_000)),
    ];
    let mut pages = Vec::new();
    for (p, chunk) in bad_intents.chunks(3).enumerate() {
        let mut views = fillers(&base, &format!("mf{p}"), 20);
        for (i, bad) in chunk.iter().enumerate() {
            let mut view = like(&base, &format!("m{p}-{i}"), 1_700_000_000);
            view["initiatorSignature"] = bad.clone();
            views.push(view);
        }
        pages.push(views);
    }
    // Approvals of every malformed shape on otherwise good requests.
    let hash: B256 = base["safeTxHash"].as_str().unwrap().parse().unwrap();
    let alice = key(0x22);
    let real = alice.sign_digest(&hash).unwrap().to_hex();
    let approvals = [
        json!("not a list"),
        json!([1, "x", null, {}, { "owner": 5, "signature": 7 }]),
        json!([{ "owner": alice.address().to_checksum(None), "signature": "0xzz" }]),
        json!([{ "owner": alice.address().to_checksum(None).to_lowercase(), "signature": real }]),
        json!((0..5000)
            .map(|_| json!({ "owner": "0x0", "signature": format!("0x{n}{n}1b") }))
            .collect::<Vec<_>>()),
    ];
    let mut views = Vec::new();
    for (i, a) in approvals.iter().enumerate() {
        let mut view = like(&base, &format!("ma{i}"), 1_700_000_000);
        view["approvals"] = a.clone();
        views.push(view);
    }
    pages.push(views);
    let total: usize = pages.iter().map(Vec::len).sum();
    let (connection, _) = scripted(&world, pages).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, total);
    for p in 0..bad_intents.len().div_ceil(3) {
        for i in 0..3 {
            let id = format!("m{p}-{i}");
            if p * 3 + i < bad_intents.len() {
                assert!(report.marked.iter().any(|(m, _)| *m == id), "{id}: {:?}", report.marked);
            }
        }
    }
    for i in 0..approvals.len() {
        let id = format!("ma{i}");
        assert!(!report.marked.iter().any(|(m, _)| *m == id), "{id}: {:?}", report.marked);
        let cached = world.store.cached_request(&id).await.unwrap().unwrap();
        assert_eq!(cached.body["countersign"]["approvedBy"], json!([]), "{id}");
    }
    assert_eq!(report.marked.len(), bad_intents.len(), "only the bad intents: {:?}", report.marked);
}

/// Once the sync knows the pinned initiator's and an owner's keys (from signatures it
/// recovered), signatures that name them but were made by another key, or over another
/// digest, are still refused: the known key is only tried first, never taken on the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_signatures_in_a_known_signers_name_by_another_key_are_still_refused() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let hash: B256 = base["safeTxHash"].as_str().unwrap().parse().unwrap();
    let (alice, stranger) = (key(0x22), key(0x77));
    let by = |signer: &countersign_signers::software::SoftwareSigner, digest: &B256| {
        json!({ "owner": alice.address().to_checksum(None), "memberId": "alice",
                "signature": signer.sign_digest(digest).unwrap().to_hex(), "at": 1 })
    };
    // Page one: good intents and Alice's own approvals, so both keys are known after it.
    let mut first = fillers(&base, "k", 30);
    for view in &mut first {
        view["approvals"] = json!([by(&alice, &hash)]);
    }
    // Page two: in the initiator's and in Alice's name, signed by a stranger or over
    // another digest.
    let mut other_key = like(&base, "k-other-key", 1_700_000_000);
    let created = 1_700_000_000;
    let stranger_intent =
        stranger.sign_digest(&intent_digest(1, "k-other-key", SAFE, hash, created)).unwrap();
    other_key["initiatorSignature"] = json!(stranger_intent.to_hex());
    let mut other_digest = like(&base, "k-other-digest", created);
    let elsewhere = key(0x11)
        .sign_digest(&intent_digest(1, "k-other-digest", SAFE, hash, created + 1))
        .unwrap();
    other_digest["initiatorSignature"] = json!(elsewhere.to_hex());
    let mut forged_approvals = like(&base, "k-approvals", created);
    forged_approvals["approvals"] = json!([by(&stranger, &hash), by(&alice, &B256::ZERO)]);
    let mut second = fillers(&base, "k2", 10);
    second.extend([other_key, other_digest, forged_approvals]);
    let (connection, _) = scripted(&world, vec![first, second]).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, 43);
    let marked: Vec<&str> = report.marked.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(marked, ["k-other-key", "k-other-digest"], "{:?}", report.marked);
    for (_, why) in &report.marked {
        assert!(why.contains("not a pinned initiator"), "{why}");
    }
    let approved = |id: &str| {
        let store = &world.store;
        let id = id.to_owned();
        async move {
            store.cached_request(&id).await.unwrap().unwrap().body["countersign"]["approvedBy"]
                .clone()
        }
    };
    assert_eq!(approved("k-29").await, json!([alice.address().to_checksum(None)]));
    assert_eq!(approved("k-approvals").await, json!([]));
}

/// next page: a page that fails after a long wait loses none of the pages before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_pages_are_stored_while_the_next_page_is_slow() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let start = world.store.queue_config().await.unwrap().unwrap().1;
    let pages: Vec<Vec<Value>> = (0..4).map(|p| fillers(&base, &format!("s{p}"), 100)).collect();
    let cursors: Vec<i64> = (1..=4).map(|i| start + 10 * i).collect();
    // After the good pages, the same answer, 8 s late.
    let connection = through_stand_in(&world, then(&pages, start, "SLEEP:8000:{}")).await.0;
    let error = sync_in_time(&world.store, &connection).await.unwrap_err().to_string();
    assert!(error.contains("no list"), "{error}");
    stored_is_a_prefix(&world, &pages, &cursors, start).await;
    assert_eq!(
        world.store.queue_config().await.unwrap().unwrap().1,
        cursors[3],
        "every page recovered during the 8 s wait was stored"
    );
}

/// A sync cut short by a timeout at many points, each followed by a full sync: a cut that
/// lands while a write transaction begins must not leave the store unable to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_a_sync_cut_short_never_leaves_the_store_in_a_transaction() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let pages: Vec<Vec<Value>> = (0..4).map(|p| fillers(&base, &format!("t{p}"), 60)).collect();
    let mut broken = Vec::new();
    for round in 0..16u64 {
        let ms = 60 + round * 45;
        let (connection, _) = scripted(&world, pages.clone()).await;
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(ms),
            sync(&world.store, &connection),
        )
        .await;
        let (connection, _) = scripted(&world, pages.clone()).await;
        if let Err(error) = sync_in_time(&world.store, &connection).await {
            broken.push(format!("round {round} ({ms} ms): {error}"));
            // Does it heal?
            let mut healed = false;
            for _ in 0..5 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if world.store.queue_config().await.is_ok()
                    && world.store.audit("probe", &json!({})).await.is_ok()
                {
                    healed = true;
                    break;
                }
            }
            broken.push(format!("  healed within 1 s: {healed}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

// ---- attack8: a page of many lies opens its incidents together ----

fn lying(base: &Value, tag: &str, n: usize) -> Vec<Value> {
    let mut wrong = base.clone();
    wrong["safeTxHash"] = json!(B256::repeat_byte(0xee).to_string());
    (0..n).map(|i| like(&wrong, &format!("{tag}-{i}"), 1_700_000_000 + i as u64)).collect()
}

async fn local_count(world: &World, sql: &str) -> i64 {
    use sqlx::Connection as _;
    let url =
        format!("sqlite://{}", world._dirs.1.path().join(countersign_store::DB_FILE).display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::Row::get(&sqlx::query(sql).fetch_one(&mut db).await.unwrap(), 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_thousands_of_lies_in_one_page_open_incidents_and_block() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    // 500 (the limit asked for) and then 2500 in one page (a queue ignoring the limit).
    let pages = vec![lying(&base, "a", 500), lying(&base, "b", 2500)];
    let (connection, _) = scripted(&world, pages).await;
    let started = std::time::Instant::now();
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    eprintln!("3000 lies synced in {:?}, {} incidents", started.elapsed(), report.incidents.len());
    assert_eq!(report.fetched, 3000);
    for tag in ["a-0", "a-499", "b-0", "b-2499"] {
        assert!(report.marked.iter().any(|(m, _)| m == tag), "{tag}");
        assert!(!marks(&world.store, tag).await.is_empty(), "{tag}");
    }
    assert!(report.incidents.len() >= 3000, "{}", report.incidents.len());
    let history = world.store.history(&vault(&[]), alloy_primitives::U256::from(5)).await.unwrap();
    assert!(history.open_incidents >= 3000, "signing on the vault is blocked");
    assert_eq!(world.store.incidents(false).await.unwrap().len(), report.incidents.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_tampered_incident_ledger_fails_the_lying_page_whole() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let (connection, _) = scripted(&world, vec![lying(&base, "a", 5)]).await;
    let first = sync_in_time(&world.store, &connection).await.unwrap();
    assert!(first.incidents.len() >= 5);
    let cursor = world.store.queue_config().await.unwrap().unwrap().1;
    // An incident deleted by hand, then a page with more lies.
    {
        use sqlx::Connection as _;
        let url =
            format!("sqlite://{}", world._dirs.1.path().join(countersign_store::DB_FILE).display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM incidents WHERE id = ?")
            .bind(&first.incidents[2])
            .execute(&mut db)
            .await
            .unwrap();
    }
    let rows = local_count(&world, "SELECT COUNT(*) FROM incidents").await;
    let audits = local_count(&world, "SELECT COUNT(*) FROM audit").await;
    let requests = world.store.cached_requests().await.unwrap().len();
    let (connection, _) = scripted(&world, vec![lying(&base, "b", 50)]).await;
    let second = sync_in_time(&world.store, &connection).await;
    assert!(second.is_err(), "{second:?}");
    eprintln!("{:?}", second.unwrap_err().to_string());
    assert_eq!(local_count(&world, "SELECT COUNT(*) FROM incidents").await, rows);
    assert_eq!(local_count(&world, "SELECT COUNT(*) FROM audit").await, audits);
    assert_eq!(world.store.cached_requests().await.unwrap().len(), requests);
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, cursor);
    assert!(world.store.history(&vault(&[]), alloy_primitives::U256::from(5)).await.is_err());
}

// ---- attack8 (second round): a page refused after some of its signatures were queued ----

async fn local_db(world: &World) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let url =
        format!("sqlite://{}", world._dirs.1.path().join(countersign_store::DB_FILE).display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

/// Each request's signatures are queued as soon as its fields are read, so an invalid or
/// repeated id late in a page comes after many of its jobs are with the threads. The sync
/// must fail at once (not wait for a page that will never be whole), store nothing of that
/// page, and the next sync must work, with every request stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_bad_id_late_in_a_page_fails_cleanly_and_the_next_sync_works() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let mut expected = std::collections::HashSet::new();
    for (n, (what, page_of_bad)) in [
        ("an invalid id", 0usize),
        ("an invalid id", 1),
        ("an id repeated", 0),
        ("an id repeated", 1),
        ("an id that is not text", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("c{n}");
        let mut pages: Vec<Vec<Value>> =
            (0..3).map(|p| fillers(&base, &format!("{tag}p{p}"), 120)).collect();
        let good = pages.clone();
        let bad = match what {
            "an invalid id" => {
                let mut view = pages[page_of_bad][0].clone();
                view["id"] = json!("not an id \u{202e}");
                view
            }
            "an id repeated" => pages[page_of_bad][3].clone(),
            _ => {
                let mut view = pages[page_of_bad][0].clone();
                view["id"] = json!(12);
                view
            }
        };
        pages[page_of_bad].push(bad);
        let start = world.store.queue_config().await.unwrap().unwrap().1;
        let stored_before = world.store.cached_requests().await.unwrap().len();
        let (connection, cursors) = scripted(&world, pages.clone()).await;
        let error = sync_in_time(&world.store, &connection).await.unwrap_err().to_string();
        assert!(error.contains("id") || error.contains("twice"), "{what}: {error}");
        // Only whole pages before the bad one, with their cursor.
        stored_is_a_prefix(&world, &good, &cursors, start).await;
        let cursor = world.store.queue_config().await.unwrap().unwrap().1;
        let upto = cursors.iter().position(|c| *c == cursor).map_or(0, |p| p + 1);
        assert!(upto <= page_of_bad, "{what}: the bad page is not stored");
        let stored = world.store.cached_requests().await.unwrap().len();
        assert_eq!(stored, stored_before + 120 * upto, "{what}");

        // The queue mends its listing: the next sync stores the rest, each request once.
        let (connection, _) = scripted(&world, good[upto..].to_vec()).await;
        let report = sync_in_time(&world.store, &connection).await.unwrap();
        assert_eq!(report.fetched, 120 * (3 - upto), "{what}");
        assert!(report.marked.is_empty(), "{what}: {:?}", report.marked);
        for view in good.iter().flatten() {
            expected.insert(view["id"].as_str().unwrap().to_owned());
        }
        let ids: Vec<String> =
            world.store.cached_requests().await.unwrap().into_iter().map(|c| c.id).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{what}: a request stored twice");
        for id in &expected {
            assert!(distinct.contains(id), "{what}: {id} lost");
        }
    }
}

/// A first page longer than the 100 asked for, an empty first page that says more follow,
/// and a page after it longer than 500: every request is read and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_pages_longer_than_asked_or_empty_are_read_whole() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let pages = vec![fillers(&base, "long", 260), vec![], fillers(&base, "longer", 620), vec![]];
    let (connection, cursors) = scripted(&world, pages).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, 880);
    assert!(report.marked.is_empty(), "{:?}", report.marked);
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, *cursors.last().unwrap());

    let start = world.store.queue_config().await.unwrap().unwrap().1;
    let pages = vec![vec![], fillers(&base, "after-empty", 130)];
    let (connection, _) = scripted(&world, pages).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, 130);
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, start + 20);
    assert_eq!(world.store.cached_requests().await.unwrap().len(), 1010);
}

/// The pinned vaults are now read while the first page is fetched: when reading them fails,
/// the sync fails with the store's error, stores nothing, and the next one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_the_pinned_vaults_failing_to_load_fails_the_sync_cleanly() {
    let world = world().await;
    let base = real_views(&world).await[0].clone();
    let mut db = local_db(&world).await;
    let sealed: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT sealed_record FROM vaults").fetch_one(&mut db).await.unwrap(),
        0,
    );
    sqlx::query("UPDATE vaults SET sealed_record = x'00'").execute(&mut db).await.unwrap();
    let pages = vec![fillers(&base, "v", 150), fillers(&base, "w", 10)];
    let (connection, _) = scripted(&world, pages.clone()).await;
    let error = sync_in_time(&world.store, &connection).await.unwrap_err().to_string();
    assert!(!error.contains("long passphrase"), "{error}");
    assert_eq!(world.store.queue_config().await.unwrap().unwrap().1, 0);
    assert!(world.store.cached_requests().await.unwrap().is_empty());

    sqlx::query("UPDATE vaults SET sealed_record = ?").bind(sealed).execute(&mut db).await.unwrap();
    let (connection, _) = scripted(&world, pages).await;
    let report = sync_in_time(&world.store, &connection).await.unwrap();
    assert_eq!(report.fetched, 160);
    assert!(report.marked.is_empty(), "{:?}", report.marked);
}
