//! End to end: the built app under Xvfb, driven through WebDriver (tauri-driver in front of
//! WebKitWebDriver), against the demo queue over TLS on loopback. The test starts Xvfb, the
//! driver and the queue itself, and stops them by process id.
//!
//! It needs Xvfb, `/usr/bin/WebKitWebDriver` (Debian's webkit2gtk-driver) and tauri-driver
//! (`TAURI_DRIVER`, else on PATH). The test script sets COUNTERSIGN_REQUIRE_E2E=1, so that a
//! missing piece fails the run instead of skipping this test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use countersign_core::address::checksummed;
use countersign_core::signer::Signer;
use fantoccini::Client;
use serde_json::Value;
use support::{
    absent, click, fill, find, session, start_driver, start_xvfb, text, text_now, until_text,
    Running,
};

fn artifacts() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("e2e-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A screenshot after two animation frames, so that it shows what was just rendered.
///
/// Limitation: drawn without WebKit's compositor (the app's default), WebKitWebDriver takes a
/// screenshot only after the page's next update on screen, and a page that is standing still
/// makes none: the request would wait for ever. So a one-pixel mark in a corner changes
/// shade every frame until the screenshot is in, and the screenshot may show it.
async fn screenshot(client: &Client, name: &str) {
    client
        .execute_async(
            "const done = arguments[0]; \
             const mark = document.createElement('div'); mark.id = 'screenshot-tick'; \
             mark.style.position = 'fixed'; mark.style.right = '0'; mark.style.bottom = '0'; \
             mark.style.width = '1px'; mark.style.height = '1px'; mark.style.pointerEvents = 'none'; \
             document.body.append(mark); let n = 0; \
             (function tick() { if (!mark.isConnected) return; \
               mark.style.background = (n++ % 2) ? 'rgba(0,0,0,0.02)' : 'rgba(0,0,0,0.03)'; \
               requestAnimationFrame(tick); })(); \
             requestAnimationFrame(() => requestAnimationFrame(() => done()));",
            vec![],
        )
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    client.execute("document.getElementById('screenshot-tick')?.remove();", vec![]).await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

fn rows_selector(id: &str) -> String {
    format!("#queue-table .row[data-id=\"{id}\"]")
}

/// Opens a request from the queue's table and waits for its screen. WebDriver reads where
/// the row is, then clicks there: a repaint in between (the table's second read of its rows,
/// a sync's, a live update's) can put another row under the click, or leave the click on a
/// row just taken out. So a screen for another request is left, a click that opened nothing
/// is made again, and after three tries the test fails, saying what the window showed.
async fn open_request(client: &Client, id: &str) {
    let wanted = format!("Request {id} ");
    for _ in 0..3 {
        click(client, &rows_selector(id)).await;
        let mut heading = None;
        for waited in 0..200 {
            heading = text_now(client, "#screen-detail h1").await;
            if heading.as_deref().is_some_and(|h| h.starts_with("Request ")) {
                break;
            }
            // No request screen at all (not even one still reading) 2 s after the click.
            if waited >= 20 && text_now(client, "#screen-detail").await.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match heading {
            Some(heading) if heading.starts_with(&wanted) => return,
            Some(heading) if heading.starts_with("Request ") => {
                eprintln!("{id}: the click opened {heading:?}; clicking its row again");
                click(client, "#back").await;
            }
            _ => eprintln!("{id}: the click opened no request screen; clicking its row again"),
        }
    }
    panic!("{id}: its row did not open it in three clicks");
}

/// One app at a time on these 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether to run: the test script requires it; elsewhere it runs when its tools are here.
fn wanted() -> bool {
    let required = std::env::var("COUNTERSIGN_REQUIRE_E2E").as_deref() == Ok("1");
    let driver_present =
        Command::new(std::env::var("TAURI_DRIVER").unwrap_or_else(|_| "tauri-driver".into()))
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    if !required && (!driver_present || !Path::new("/usr/bin/WebKitWebDriver").exists()) {
        eprintln!(
            "skipped: tauri-driver or WebKitWebDriver missing and COUNTERSIGN_REQUIRE_E2E is not 1"
        );
        return false;
    }
    true
}

/// The demo queue in a temporary folder, and an empty folder for the app's data.
async fn demo_queue() -> (tempfile::TempDir, tempfile::TempDir, countersign_demo::DemoQueue) {
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = countersign_demo::start_queue(queue_dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (queue_dir, data, queue)
}

/// Xvfb, the driver and a session with the app on the store in `data`.
async fn app_on(data: &Path) -> (Running, Running, Client) {
    app_with(data, &[]).await
}

/// `app_on`, the app started with more environment variables.
async fn app_with(data: &Path, env: &[(&str, &std::ffi::OsStr)]) -> (Running, Running, Client) {
    let (xvfb, display) = start_xvfb();
    let (driver, port) = start_driver(&display, data, env);
    let client = session(port, env!("CARGO_BIN_EXE_countersign-app")).await;
    (xvfb, driver, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_store_opens_connected_and_pinned() {
    if !wanted() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_queue_dir, data, queue) = demo_queue().await;
    let protection = if std::env::var("COUNTERSIGN_REQUIRE_KEYRING").as_deref() == Ok("1") {
        countersign_store::keywrap::Protection::Keyring
    } else {
        eprintln!("no keyring here: the demo store gets a passphrase, and the test stops at the lock screen");
        countersign_store::keywrap::Protection::Passphrase(
            countersign_core::secret::SecretString::new("demo passphrase".into()),
        )
    };
    let keyring = matches!(protection, countersign_store::keywrap::Protection::Keyring);
    countersign_demo::prepare_approver(data.path(), &queue, 1, protection)
        .await
        .unwrap()
        .close()
        .await;
    let (_xvfb, driver, client) = app_on(data.path()).await;
    if keyring {
        // No onboarding and no passphrase: the queue screen, a sync away from the requests.
        click(&client, "#sync").await;
        until_text(&client, "#row-count", |t| t.starts_with("4 of 4")).await;
        click(&client, "#nav-settings").await;
        let note = until_text(&client, "#lock-note", |t| !t.is_empty()).await;
        assert!(note.contains("only hides"), "{note}");
    } else {
        find(&client, "#screen-lock").await;
    }
    // Drawn without the compositor, the app's own process loads no OpenGL driver (nor
    // the LLVM that Mesa's links); WebKit's web process, which needs EGL, still does.
    let processes = support::descendants(driver.0.id());
    let maps_of = |name: &str| {
        let pid = processes
            .iter()
            .find(|pid| support::command(**pid).as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name} process"));
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
    };
    let app = maps_of("countersign-app");
    for library in ["_dri.so", "libLLVM", "_mesa.so"] {
        assert!(!app.contains(library), "OpenGL in the app: {library}");
    }
    assert!(maps_of("WebKitWebProces").contains("libEGL_"), "no EGL driver in the web process");
    client.close().await.unwrap();
    queue.running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_onboards_approves_refuses_and_marks_a_lying_queue() {
    if !wanted() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_queue_dir, data, queue) = demo_queue().await;
    let (_xvfb, _driver, client) = app_on(data.path()).await;

    // Onboarding: a store with a passphrase, alice's key, the queue (a wrong pin first).
    fill(&client, "#new-passphrase", "correct horse battery staple").await;
    fill(&client, "#new-passphrase-again", "correct horse battery staple").await;
    click(&client, "#create-store").await;
    fill(&client, "#key-label", "alice").await;
    fill(&client, "#key-secret", &"21".repeat(32)).await;
    click(&client, "#import-key").await;
    let impostor = countersign_queue::tls::Identity::ephemeral().unwrap().pin();
    fill(&client, "#queue-url", &queue.url).await;
    fill(&client, "#queue-pin", &impostor).await;
    fill(&client, "#queue-key", &queue.approver_api_keys[0]).await;
    fill(&client, "#queue-initiators", &checksummed(&countersign_demo::initiator().address()))
        .await;
    click(&client, "#test-queue").await;
    let wrong = text(&client, "#queue-error").await;
    assert!(wrong.contains("does not match the pin"), "{wrong}");
    fill(&client, "#queue-pin", &queue.pin).await;
    click(&client, "#test-queue").await;
    assert!(text(&client, "#queue-ok").await.contains("alice"));
    click(&client, "#connect-queue").await;
    click(&client, ".pin-vault").await;
    until_text(&client, "#step-vaults", |t| t.contains("it agrees with the queue")).await;
    click(&client, "#open-queue").await;

    // The queue: a sync fetches the four seeded requests.
    click(&client, "#sync").await;
    until_text(&client, "#row-count", |t| t.starts_with("4 of 4")).await;
    screenshot(&client, "queue").await;

    // Approve the USDC transfer, then ask the queue itself.
    open_request(&client, countersign_demo::USDC_TRANSFER).await;
    let domain = text(&client, "#domain-hash").await;
    assert!(
        domain.starts_with("0x")
            && domain[2..].chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{domain}"
    );
    screenshot(&client, "request").await;
    click(&client, "#approve").await;
    click(&client, "#confirm-approve").await;
    until_text(&client, "#message", |t| t.contains("recorded your approval")).await;
    let view = countersign_queue::model::request_view(&queue.db, countersign_demo::USDC_TRANSFER)
        .await
        .unwrap();
    let view: Value = serde_json::from_str(&view.json).unwrap();
    let hash: alloy_primitives::B256 = view["safeTxHash"].as_str().unwrap().parse().unwrap();
    let signature = countersign_core::signature::OwnerSignature::parse_hex(
        "signature",
        view["approvals"][0]["signature"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signature.recover(&hash).unwrap(), countersign_demo::approvers()[0].address());

    // The delegatecall the approver's policy does not trust: its reason, no approve button.
    click(&client, "#back").await;
    open_request(&client, countersign_demo::DELEGATECALL).await;
    assert!(text(&client, "#why-not").await.contains("does not trust"));
    assert!(absent(&client, "#approve").await);
    screenshot(&client, "refused-request").await;
    click(&client, "#back").await;

    // The queue turns hostile: the payroll's fields change between two syncs, and the ETH
    // transfer claims a hash that is not its own.
    sqlx::query("UPDATE requests SET view = replace(view, '\"nonce\":44', '\"nonce\":45'), seq = seq + 100 WHERE id = $1")
        .bind(countersign_demo::PAYROLL)
        .execute(&queue.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE requests SET view = replace(view, safe_tx_hash, $1), seq = seq + 200 WHERE id = $2",
    )
    .bind(format!("0x{}", "ee".repeat(32)))
    .bind(countersign_demo::ETH_TRANSFER)
    .execute(&queue.db.pool)
    .await
    .unwrap();
    // Marked requests no longer await approval: show every state.
    client
        .execute(
            "const s = document.getElementById('filter-state'); s.value = 'all'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
    click(&client, "#sync").await;
    until_text(&client, "#message", |t| t.contains("marked")).await;
    for id in [countersign_demo::PAYROLL, countersign_demo::ETH_TRANSFER] {
        until_text(&client, &rows_selector(id), |t| t.contains("MARKED")).await;
        open_request(&client, id).await;
        assert!(!text(&client, "#marks").await.is_empty());
        assert!(absent(&client, "#approve").await, "{id} offers no approval");
        click(&client, "#back").await;
    }
    click(&client, "#nav-incidents").await;
    until_text(&client, "#incident-list", |t| t.contains("queue incident")).await;
    screenshot(&client, "incidents").await;

    client.close().await.unwrap();
    queue.running.stop();
}

/// Connects the onboarding to `queue` with `api_key`, pins the vault at `safe` as shown, and
/// syncs the queue screen until the hardware request is listed.
async fn connect_and_sync(
    client: &Client,
    queue: &countersign_demo::DemoQueue,
    api_key: &str,
    safe: &str,
) {
    fill(client, "#queue-url", &queue.url).await;
    fill(client, "#queue-pin", &queue.pin).await;
    fill(client, "#queue-key", api_key).await;
    fill(client, "#queue-initiators", &checksummed(&countersign_demo::initiator().address())).await;
    click(client, "#connect-queue").await;
    let card = format!(".card[data-address=\"{safe}\"]");
    click(client, &format!("{card} .pin-vault")).await;
    until_text(client, &card, |t| t.contains("it agrees with the queue")).await;
    click(client, "#open-queue").await;
    click(client, "#sync").await;
    until_text(client, "#message", |t| t.starts_with("Synced")).await;
    open_request(client, countersign_demo::HARDWARE_REQUEST).await;
}

/// The hardware request is approved on the queue with a signature that recovers to `owner`.
async fn approved_by(queue: &countersign_demo::DemoQueue, owner: alloy_primitives::Address) {
    let view =
        countersign_queue::model::request_view(&queue.db, countersign_demo::HARDWARE_REQUEST)
            .await
            .unwrap();
    let view: Value = serde_json::from_str(&view.json).unwrap();
    assert_eq!(view["state"], "approved");
    let hash: alloy_primitives::B256 = view["safeTxHash"].as_str().unwrap().parse().unwrap();
    let signature = countersign_core::signature::OwnerSignature::parse_hex(
        "signature",
        view["approvals"][0]["signature"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signature.recover(&hash).unwrap(), owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_and_an_hsm_key_approve_in_the_window() {
    use countersign_signers::ledger::simulator::{Mode, Simulator};
    use countersign_signers::ledger::DerivationPath;
    if !wanted() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;

    // A Ledger: the Ethereum app simulator, its state set through a mode file the app reads.
    let (_queue_dir, data, queue) = demo_queue().await;
    let modes = tempfile::tempdir().unwrap();
    let mode = modes.path().join("ledger-mode");
    let simulator = Simulator::with_mode_file(mode.clone());
    let owner = simulator.address(&DerivationPath::account(0).unwrap());
    let safe = alloy_primitives::Address::repeat_byte(0x4c);
    let (_, api_key) =
        countersign_demo::add_hardware_vault(&queue, safe, owner, "nano").await.unwrap();
    let env = [("COUNTERSIGN_LEDGER_SIMULATOR", mode.as_os_str())];
    let (_xvfb, _driver, client) = app_with(data.path(), &env).await;
    fill(&client, "#new-passphrase", "correct horse battery staple").await;
    fill(&client, "#new-passphrase-again", "correct horse battery staple").await;
    click(&client, "#create-store").await;
    simulator.set_mode(Mode::Locked);
    click(&client, "#use-ledger").await;
    until_text(&client, "#key-error", |t| t.contains("locked")).await;
    simulator.set_mode(Mode::Ready);
    click(&client, "#use-ledger").await;
    until_text(&client, "#message", |t| t.contains(&checksummed(&owner))).await;
    connect_and_sync(&client, &queue, &api_key, &checksummed(&safe)).await;
    click(&client, "#approve").await;
    // The two hashes the window shows, as the device shows them, are what the device signs.
    let domain = text(&client, "#ledger-domain").await;
    let message = text(&client, "#ledger-message").await;
    for shown in [&domain, &message] {
        assert!(
            shown.len() == 66
                && shown[2..].chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
            "{shown}"
        );
    }
    simulator.set_mode(Mode::AppClosed);
    click(&client, "#confirm-approve").await;
    until_text(&client, "#approve-error", |t| t.contains("Ethereum app is not open")).await;
    screenshot(&client, "ledger-app-closed").await;
    simulator.set_mode(Mode::Ready);
    click(&client, "#confirm-approve").await;
    until_text(&client, "#message", |t| t.contains("recorded your approval")).await;
    approved_by(&queue, owner).await;
    let view =
        countersign_queue::model::request_view(&queue.db, countersign_demo::HARDWARE_REQUEST)
            .await
            .unwrap();
    let view: Value = serde_json::from_str(&view.json).unwrap();
    let mut preimage = vec![0x19, 0x01];
    for shown in [&domain, &message] {
        let hash: alloy_primitives::B256 = shown.to_lowercase().parse().unwrap();
        preimage.extend_from_slice(hash.as_slice());
    }
    let signed: alloy_primitives::B256 = view["safeTxHash"].as_str().unwrap().parse().unwrap();
    assert_eq!(alloy_primitives::keccak256(&preimage), signed);
    client.close().await.unwrap();
    queue.running.stop();
    drop((_xvfb, _driver));

    // A key in the test script's SoftHSM2 token, its PIN asked at the approval.
    let Ok(token) = std::env::var("COUNTERSIGN_TEST_HSM_TOKEN") else {
        assert_ne!(std::env::var("COUNTERSIGN_REQUIRE_HSM").as_deref(), Ok("1"), "no HSM token");
        eprintln!("skipped the HSM half: no SoftHSM2 token (run scripts/test)");
        return;
    };
    let pin = std::env::var("COUNTERSIGN_TEST_HSM_PIN").unwrap();
    let (_queue_dir, data, queue) = demo_queue().await;
    let (_xvfb, _driver, client) = app_on(data.path()).await;
    fill(&client, "#new-passphrase", "correct horse battery staple").await;
    fill(&client, "#new-passphrase-again", "correct horse battery staple").await;
    click(&client, "#create-store").await;
    if let Ok(module) = std::env::var("COUNTERSIGN_TEST_HSM_MODULE") {
        fill(&client, "#hsm-module", &module).await;
    }
    fill(&client, "#hsm-token", &token).await;
    fill(&client, "#hsm-key", &format!("e2e-{}", std::process::id())).await;
    fill(&client, "#hsm-pin", &pin).await;
    click(&client, "#hsm-generate").await;
    click(&client, "#use-hsm").await;
    let notice = until_text(&client, "#message", |t| t.contains("is ready")).await;
    let owner: alloy_primitives::Address =
        notice.split_whitespace().nth(1).unwrap().parse().unwrap();
    let safe = alloy_primitives::Address::repeat_byte(0x4d);
    let (_, api_key) =
        countersign_demo::add_hardware_vault(&queue, safe, owner, "vault-hsm").await.unwrap();
    connect_and_sync(&client, &queue, &api_key, &checksummed(&safe)).await;
    click(&client, "#approve").await;
    fill(&client, "#approve-pin", "not-the-pin").await;
    click(&client, "#confirm-approve").await;
    until_text(&client, "#approve-error", |t| t.contains("refused the PIN")).await;
    fill(&client, "#approve-pin", &pin).await;
    click(&client, "#confirm-approve").await;
    until_text(&client, "#message", |t| t.contains("recorded your approval")).await;
    screenshot(&client, "hsm-approved").await;
    approved_by(&queue, owner).await;
    client.close().await.unwrap();
    queue.running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_key_is_registered_and_touched_in_the_window() {
    if !wanted() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_queue_dir, data, queue) = demo_queue().await;
    let admin = queue.connection(&queue.admin_api_key).session().await.unwrap();
    let safe = checksummed(&countersign_demo::SAFE);
    let policy = serde_json::json!({ "chainId": 1, "address": safe, "policy": { "all": true } });
    admin.post("/v1/vaults/fido-policy", &policy).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let token = keys.path().join("security-key");
    let env = [("COUNTERSIGN_FIDO_SOFT_TOKEN", token.as_os_str())];
    let (_xvfb, _driver, client) = app_with(data.path(), &env).await;
    fill(&client, "#new-passphrase", "correct horse battery staple").await;
    fill(&client, "#new-passphrase-again", "correct horse battery staple").await;
    click(&client, "#create-store").await;
    fill(&client, "#key-secret", &"21".repeat(32)).await;
    click(&client, "#import-key").await;
    fill(&client, "#queue-url", &queue.url).await;
    fill(&client, "#queue-pin", &queue.pin).await;
    fill(&client, "#queue-key", &queue.approver_api_keys[0]).await;
    fill(&client, "#queue-initiators", &checksummed(&countersign_demo::initiator().address()))
        .await;
    click(&client, "#connect-queue").await;
    let card = format!(".card[data-address=\"{safe}\"]");
    click(&client, &format!("{card} .pin-vault")).await;
    until_text(&client, &card, |t| t.contains("it agrees with the queue")).await;
    click(&client, "#open-queue").await;
    click(&client, "#sync").await;
    until_text(&client, "#row-count", |t| t.starts_with("4 of 4")).await;

    // Without a confirmed key the approval is refused before anything is signed.
    open_request(&client, countersign_demo::USDC_TRANSFER).await;
    click(&client, "#approve").await;
    click(&client, "#confirm-approve").await;
    until_text(&client, "#approve-error", |t| t.contains("no key an admin confirmed")).await;
    click(&client, "#cancel-approve").await;

    // Register the key in the settings; the admin confirms it.
    click(&client, "#nav-settings").await;
    click(&client, "#register-key").await;
    let registered =
        until_text(&client, "#register-key-ok", |t| t.contains("Registered key")).await;
    let credential = registered.split_whitespace().nth(2).unwrap().trim_end_matches('.').to_owned();
    admin
        .post(&format!("/v1/fido/credentials/{credential}/confirm"), &serde_json::json!({}))
        .await
        .unwrap();

    click(&client, "#nav-queue").await;
    open_request(&client, countersign_demo::USDC_TRANSFER).await;
    click(&client, "#approve").await;
    click(&client, "#confirm-approve").await;
    until_text(&client, "#message", |t| t.contains("recorded your approval")).await;
    screenshot(&client, "security-key-approved").await;
    let alice = checksummed(&countersign_demo::approvers()[0].address());
    let stored = admin
        .get(&format!("/v1/requests/{}/approvals/{alice}/fido", countersign_demo::USDC_TRANSFER))
        .await
        .unwrap();
    let stored: countersign_fido::StoredApproval = serde_json::from_value(stored).unwrap();
    assert!(countersign_fido::reverify(&stored).is_ok());
    client.close().await.unwrap();
    queue.running.stop();
}
