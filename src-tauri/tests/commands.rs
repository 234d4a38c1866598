//! The app's commands through Tauri's mock runtime, with no window on screen, against the
//! demo queue over real TLS on loopback and a real SQLite store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_app::state::{AppState, Notifier};
use countersign_core::signer::Signer;
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, MockRuntime, INVOKE_KEY};
use tauri::webview::InvokeRequest;
use tauri::{Listener, Manager, WebviewWindow};

/// Records what the app asked to notify.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Notifier for Recorder {
    fn notify(&self, title: &str, body: &str) {
        self.0.lock().unwrap().push(format!("{title}: {body}"));
    }
}

fn app(
    data_dir: &Path,
    recorder: &Recorder,
) -> (tauri::App<MockRuntime>, WebviewWindow<MockRuntime>) {
    let app = countersign_app::builder(
        mock_builder(),
        data_dir.to_owned(),
        Some(Box::new(recorder.clone())),
    )
    .build(tauri::generate_context!("../tauri.conf.json", test = true))
    .unwrap();
    let mut app = app;
    // The app's setup (its state, its background tasks) runs with the first iteration.
    #[allow(deprecated, reason = "one iteration, not a loop")]
    app.run_iteration(|_, _| {});
    let window = app.get_webview_window("main").expect("the config makes the main window");
    (app, window)
}

fn invoke(window: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Result<Value, Value> {
    let request = InvokeRequest {
        cmd: cmd.into(),
        callback: CallbackFn(0),
        error: CallbackFn(1),
        url: "tauri://localhost".parse().unwrap(),
        body: InvokeBody::Json(args),
        headers: Default::default(),
        invoke_key: INVOKE_KEY.to_string(),
    };
    get_ipc_response(window, request).map(|body| match body {
        // queue_rows answers raw JSON bytes.
        tauri::ipc::InvokeResponseBody::Raw(bytes) => serde_json::from_slice(&bytes).unwrap(),
        json => json.deserialize::<Value>().unwrap(),
    })
}

fn ok(window: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Value {
    invoke(window, cmd, args).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// The error's code, after checking it is `{code, message}` with a message.
fn code(window: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> String {
    let error = invoke(window, cmd, args).expect_err(cmd);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    error["code"].as_str().unwrap().to_owned()
}

fn message(window: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> String {
    invoke(window, cmd, args).expect_err(cmd)["message"].as_str().unwrap().to_owned()
}

const PASSPHRASE: &str = "correct horse battery staple";

#[test]
fn the_manifest_the_capability_and_the_handler_list_the_same_commands() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let capability: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/capabilities/main.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(capability["windows"], json!(["main"]));
    let allowed: Vec<String> = capability["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str()?.strip_prefix("allow-").map(|n| n.replace('-', "_")))
        .collect();
    assert_eq!(allowed, countersign_app::commands::NAMES);
}

#[test]
fn fail_a_window_the_capability_does_not_name_may_call_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (app, _main) = app(data.path(), &Recorder::default());
    let other =
        tauri::WebviewWindowBuilder::new(&app, "other", Default::default()).build().unwrap();
    let refused = invoke(&other, "app_status", json!({})).unwrap_err();
    assert!(refused.to_string().contains("not allowed"), "{refused}");
}

#[test]
fn an_approver_onboards_reviews_approves_and_rejects_through_the_commands() {
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = tauri::async_runtime::block_on(countersign_demo::start_queue(
        queue_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let recorder = Recorder::default();
    let (app, w) = app(data.path(), &recorder);

    // Onboarding, each bad argument named.
    assert_eq!(ok(&w, "app_status", json!({}))["store"], "none");
    assert!(message(&w, "create_store", json!({ "args": { "passphrase": "short" } }))
        .starts_with("passphrase:"));
    assert!(!countersign_store::Store::exists(data.path()), "a refused store is not made");
    ok(&w, "create_store", json!({ "args": { "passphrase": PASSPHRASE } }));
    assert_eq!(
        code(&w, "create_store", json!({ "args": { "passphrase": PASSPHRASE } })),
        "store_exists"
    );
    assert!(message(
        &w,
        "add_key",
        json!({ "args": { "kind": "software", "secretHex": "zz", "label": null } })
    )
    .starts_with("secret:"));
    let alice = countersign_demo::approvers()[0].address();
    let imported = ok(
        &w,
        "add_key",
        json!({ "args": { "kind": "software", "secretHex": "21".repeat(32), "label": "alice" } }),
    );
    assert_eq!(imported, json!(countersign_core::address::checksummed(&alice)));
    assert_eq!(
        code(
            &w,
            "add_key",
            json!({ "args": { "kind": "software", "secretHex": null, "label": "second" } })
        ),
        "key_exists",
        "the app signs with one key"
    );
    let connect = |pin: &str, key: &str| {
        json!({ "args": { "url": queue.url, "pins": [pin], "apiKey": key,
                          "initiators": [countersign_core::address::checksummed(&countersign_demo::initiator().address())] } })
    };
    let impostor = countersign_queue::tls::Identity::ephemeral().unwrap().pin();
    assert_eq!(
        code(&w, "test_queue", connect(&impostor, &queue.approver_api_keys[0])),
        "wrong_pin"
    );
    // The address is the queue's and nothing else; two pins differ; an API key is one line.
    let with = |url: &str, pins: Vec<&str>, key: &str| json!({ "args": { "url": url, "pins": pins, "apiKey": key } });
    let at = |rest: &str| queue.url.replace("https://", rest);
    for url in [at("https://user:pw@"), format!("{}/v1?x=1", queue.url), at("https://\n")] {
        let refused = message(&w, "test_queue", with(&url, vec![&queue.pin], "k"));
        assert!(refused.starts_with("url:"), "{url}: {refused}");
    }
    assert!(message(&w, "test_queue", with(&queue.url, vec![&queue.pin, &queue.pin], "k"))
        .starts_with("pins:"));
    assert!(message(&w, "test_queue", with(&queue.url, vec![&queue.pin], "a\r\nb"))
        .starts_with("apiKey:"));
    // A mistyped argument is named, and its value is not repeated.
    let mistyped = message(
        &w,
        "test_queue",
        json!({ "args": { "url": queue.url, "pins": [queue.pin], "apiKey": 31415926535897932u64 } }),
    );
    assert!(mistyped.starts_with("apiKey:") && !mistyped.contains("31415926"), "{mistyped}");
    assert!(message(&w, "set_idle_lock", json!({ "args": [300] })).starts_with("args:"));
    assert_eq!(
        code(&w, "connect_queue", connect(&impostor, &queue.approver_api_keys[0])),
        "wrong_pin"
    );
    assert_eq!(
        ok(&w, "app_status", json!({}))["queue"],
        Value::Null,
        "a refused connection is not kept"
    );
    assert_eq!(code(&w, "test_queue", connect(&queue.pin, "not-a-key")), "queue_refused");
    assert!(message(
        &w,
        "connect_queue",
        json!({ "args": { "url": "http://x", "pins": [queue.pin], "apiKey": "k" } })
    )
    .starts_with("url:"));
    assert_eq!(
        ok(&w, "test_queue", connect(&queue.pin, &queue.approver_api_keys[0]))["id"],
        "alice"
    );
    ok(&w, "connect_queue", connect(&queue.pin, &queue.approver_api_keys[0]));
    let vaults = ok(&w, "queue_vaults", json!({}));
    assert_eq!(vaults[0]["pinned"], Value::Null);
    // Only the record the window showed is pinned.
    let shown = &vaults[0]["queue"];
    let mut other = shown.clone();
    other["threshold"] = json!(1);
    let pin = |record: &Value| {
        json!({ "args": { "chainId": record["chainId"], "address": record["address"],
                          "safeVersion": record["safeVersion"], "owners": record["owners"],
                          "threshold": record["threshold"] } })
    };
    assert_eq!(code(&w, "pin_queue_vault", pin(&other)), "record_changed");
    assert_eq!(ok(&w, "queue_vaults", json!({}))[0]["pinned"], Value::Null, "nothing pinned");
    ok(&w, "pin_queue_vault", pin(shown));
    assert_eq!(ok(&w, "queue_vaults", json!({}))[0]["agrees"], true);

    // Sync: every seeded request awaits alice, and each is announced once.
    let synced = ok(&w, "sync_queue", json!({}));
    assert_eq!(synced["fetched"], 4);
    assert_eq!(synced["notified"].as_array().unwrap().len(), 4);
    assert_eq!(recorder.0.lock().unwrap().len(), 4);
    let asked = recorder.0.lock().unwrap().clone();
    assert!(asked.iter().any(|n| n.contains("transfer 250000 USDC from 0x5aFE")), "{asked:?}");
    assert_eq!(ok(&w, "sync_queue", json!({}))["notified"], json!([]));
    assert_eq!(recorder.0.lock().unwrap().len(), 4);

    // A first screenful, read without reading every request: the newest rows, in the order
    // of the whole list.
    let first = ok(&w, "queue_rows", json!({ "args": { "first": 2 } }));
    let rows = ok(&w, "queue_rows", json!({}));
    assert_eq!(first.as_array().unwrap().as_slice(), &rows.as_array().unwrap()[..2]);
    let again = ok(&w, "queue_rows", json!({ "args": { "first": 2 } }));
    assert_eq!(again, first, "the same from the rows kept since");
    for wrong in [json!({ "first": 0 }), json!({ "first": 501 }), json!({ "last": 2 })] {
        assert_eq!(code(&w, "queue_rows", json!({ "args": wrong })), "invalid_argument");
    }
    let row = |id: &str| rows.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(row(countersign_demo::USDC_TRANSFER)["amount"], "250000");
    assert_eq!(row(countersign_demo::USDC_TRANSFER)["asset"], "USDC");
    assert_eq!(
        row(countersign_demo::USDC_TRANSFER)["vault"],
        Value::Null,
        "the queue's record has no label"
    );
    assert_eq!(row(countersign_demo::ETH_TRANSFER)["operation"], "native transfer");
    assert_eq!(row(countersign_demo::PAYROLL)["operation"], "MultiSend (4 steps)");
    assert_eq!(row(countersign_demo::PAYROLL)["asset"], "several assets");
    assert_eq!(
        row(countersign_demo::DELEGATECALL)["operation"],
        "untrusted delegatecall: MultiSend (2 steps)"
    );
    assert_eq!(row(countersign_demo::DELEGATECALL)["asset"], "USDC");
    assert_eq!(row(countersign_demo::DELEGATECALL)["amount"], "2000");
    assert_eq!(row(countersign_demo::USDC_TRANSFER)["approvals"], 0);
    assert_eq!(row(countersign_demo::USDC_TRANSFER)["threshold"], 2);

    // The delegatecall the queue trusts and alice's policy does not: no approval, its reason.
    let delegatecall =
        ok(&w, "request_detail", json!({ "args": { "id": countersign_demo::DELEGATECALL } }));
    assert_eq!(delegatecall["canApprove"], false);
    assert_eq!(delegatecall["verdict"], "refused");
    assert!(
        delegatecall["whyNot"].to_string().contains("does not trust"),
        "{}",
        delegatecall["whyNot"]
    );
    let hash = delegatecall["safeTxHash"].as_str().unwrap().to_owned();
    assert_eq!(
        code(
            &w,
            "approve_request",
            json!({ "args": { "id": countersign_demo::DELEGATECALL, "safeTxHash": hash } })
        ),
        "guard_refused"
    );

    let usdc =
        ok(&w, "request_detail", json!({ "args": { "id": countersign_demo::USDC_TRANSFER } }));
    assert_eq!(usdc["canApprove"], true, "{}", usdc["whyNot"]);
    let ledger = usdc["ledgerDomainHash"].as_str().unwrap();
    assert_eq!(ledger, format!("0x{}", usdc["domainHash"].as_str().unwrap()[2..].to_uppercase()));
    assert!(usdc["intent"][0].as_str().unwrap().contains("250000 USDC"), "{}", usdc["intent"]);

    // Approve: a hash other than the one confirmed signs nothing; bad ids are named.
    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = steps.clone();
    app.listen_any("approval-step", move |event| {
        seen.lock().unwrap().push(event.payload().to_owned())
    });
    let wrong = format!("0x{}", "ab".repeat(32));
    assert_eq!(
        code(
            &w,
            "approve_request",
            json!({ "args": { "id": countersign_demo::USDC_TRANSFER, "safeTxHash": wrong } })
        ),
        "not_confirmed"
    );
    assert!(message(
        &w,
        "approve_request",
        json!({ "args": { "id": "../x", "safeTxHash": wrong } })
    )
    .starts_with("id:"));
    assert!(message(
        &w,
        "approve_request",
        json!({ "args": { "id": "r1", "safeTxHash": "0x12" } })
    )
    .starts_with("safeTxHash:"));
    let unknown = message(&w, "approve_request", json!({ "args": { "id": "r1", "extra": 1 } }));
    assert!(unknown.starts_with("extra:"), "{unknown}");
    assert_eq!(code(&w, "approve_request", json!({})), "invalid_argument");
    let hash = usdc["safeTxHash"].as_str().unwrap();
    let approved = ok(
        &w,
        "approve_request",
        json!({ "args": { "id": countersign_demo::USDC_TRANSFER, "safeTxHash": hash } }),
    );
    assert_eq!(approved["state"], "pending");
    assert_eq!(approved["approvals"], 1);
    let on_queue = tauri::async_runtime::block_on(countersign_queue::model::request_view(
        &queue.db,
        countersign_demo::USDC_TRANSFER,
    ))
    .unwrap();
    let view: Value = serde_json::from_str(&on_queue.json).unwrap();
    let approval = &view["approvals"][0];
    let signature = countersign_core::signature::OwnerSignature::parse_hex(
        "signature",
        approval["signature"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        signature.recover(&hash.parse().unwrap()).unwrap(),
        alice,
        "the queue holds alice's signature"
    );
    let steps = steps.lock().unwrap().clone();
    for step in ["checking", "signing", "sending"] {
        assert!(steps.iter().any(|s| s.contains(step)), "{steps:?}");
    }

    // Connecting again: the same queue keeps the synced copy; another queue is refused.
    ok(&w, "connect_queue", connect(&queue.pin, &queue.approver_api_keys[0]));
    assert_eq!(ok(&w, "queue_rows", json!({})).as_array().unwrap().len(), 4);
    let elsewhere =
        json!({ "args": { "url": "https://127.0.0.1:9", "pins": [queue.pin], "apiKey": "k" } });
    assert_eq!(code(&w, "connect_queue", elsewhere), "already_connected");
    // A label that reads differently from what it holds is refused.
    assert!(message(
        &w,
        "reject_request",
        json!({ "args": { "id": countersign_demo::ETH_TRANSFER, "reason": "ok\u{202e}txt" } })
    )
    .starts_with("reason:"));

    // Reject: a reason is required.
    assert!(message(
        &w,
        "reject_request",
        json!({ "args": { "id": countersign_demo::ETH_TRANSFER, "reason": "  " } })
    )
    .starts_with("reason:"));
    let rejected = ok(
        &w,
        "reject_request",
        json!({ "args": { "id": countersign_demo::ETH_TRANSFER, "reason": "not ours" } }),
    );
    assert_eq!(rejected, "rejected");

    // Settings and the lock.
    let settings = ok(&w, "settings", json!({}));
    assert_eq!(settings["canTrulyLock"], true);
    assert_eq!(ok(&w, "incidents", json!({})), json!([]));
    assert!(
        message(&w, "set_idle_lock", json!({ "args": { "seconds": 5 } })).starts_with("seconds:")
    );
    assert_eq!(ok(&w, "set_idle_lock", json!({ "args": { "seconds": 120 } })), 120);
    assert_eq!(ok(&w, "lock", json!({})), true);
    assert_eq!(code(&w, "queue_rows", json!({})), "locked");
    assert_eq!(
        code(&w, "unlock", json!({ "args": { "passphrase": "wrong passphrase!" } })),
        "wrong_passphrase"
    );
    assert_eq!(
        code(&w, "unlock", json!({ "args": { "passphrase": null } })),
        "passphrase_required"
    );
    ok(&w, "unlock", json!({ "args": { "passphrase": PASSPHRASE } }));
    assert_eq!(ok(&w, "queue_rows", json!({})).as_array().unwrap().len(), 4);

    // The idle lock drops the store by itself and says so.
    let locked = Arc::new(Mutex::new(false));
    let heard = locked.clone();
    app.listen_any("locked", move |_| *heard.lock().unwrap() = true);
    app.state::<AppState>().set_idle_after(Duration::from_millis(300));
    for _ in 0..100 {
        if *locked.lock().unwrap() {
            break;
        }
        // Redraws (as after live updates) are not the person's activity: they do not hold
        // the lock off.
        let _ = invoke(&w, "queue_rows", json!({}));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(*locked.lock().unwrap(), "the idle lock fired");
    assert_eq!(ok(&w, "app_status", json!({}))["store"], "locked");
    queue.running.stop();
}

/// The store connected to the demo queue as the member with `api_key`, trusting the demo's
/// initiator: the vault at `safe` pinned as the window showed it, and synced.
fn connected_approver(
    w: &WebviewWindow<MockRuntime>,
    queue: &countersign_demo::DemoQueue,
    api_key: &str,
    safe: &str,
) {
    let initiator =
        countersign_core::address::checksummed(&countersign_demo::initiator().address());
    let connect = json!({ "args": { "url": queue.url, "pins": [queue.pin], "apiKey": api_key,
                                    "initiators": [initiator] } });
    ok(w, "connect_queue", connect);
    let vaults = ok(w, "queue_vaults", json!({}));
    let shown = vaults
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["queue"])
        .find(|v| v["address"] == safe)
        .unwrap()
        .clone();
    ok(
        w,
        "pin_queue_vault",
        json!({ "args": { "chainId": shown["chainId"], "address": shown["address"],
        "safeVersion": shown["safeVersion"], "owners": shown["owners"], "threshold": shown["threshold"] } }),
    );
    ok(w, "sync_queue", json!({}));
}

/// The signature the queue holds for the hardware request recovers to `owner`.
fn queue_holds_signature_of(
    queue: &countersign_demo::DemoQueue,
    hash: &str,
    owner: alloy_primitives::Address,
) {
    let on_queue = tauri::async_runtime::block_on(countersign_queue::model::request_view(
        &queue.db,
        countersign_demo::HARDWARE_REQUEST,
    ))
    .unwrap();
    let view: Value = serde_json::from_str(&on_queue.json).unwrap();
    assert_eq!(view["state"], "approved", "{view}");
    let signature = countersign_core::signature::OwnerSignature::parse_hex(
        "signature",
        view["approvals"][0]["signature"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(signature.recover(&hash.parse().unwrap()).unwrap(), owner);
}

#[test]
fn a_ledger_approves_through_the_commands() {
    use countersign_signers::ledger::{simulator::Simulator, DerivationPath};
    let modes = tempfile::tempdir().unwrap();
    let mode = modes.path().join("ledger-mode");
    // The app reaches the simulator (a test build only) through this mode file.
    std::env::set_var("COUNTERSIGN_LEDGER_SIMULATOR", &mode);
    let simulator = Simulator::with_mode_file(mode.clone());
    let owner = simulator.address(&DerivationPath::account(0).unwrap());
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = tauri::async_runtime::block_on(countersign_demo::start_queue(
        queue_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let safe = alloy_primitives::Address::repeat_byte(0x4c);
    let (_, api_key) = tauri::async_runtime::block_on(countersign_demo::add_hardware_vault(
        &queue, safe, owner, "nano",
    ))
    .unwrap();
    let (_app, w) = app(data.path(), &Recorder::default());
    ok(&w, "create_store", json!({ "args": { "passphrase": PASSPHRASE } }));
    let ledger = json!({ "args": { "kind": "ledger", "account": 0 } });
    for (word, expected) in [
        ("locked", "ledger_locked"),
        ("app-closed", "ledger_app_closed"),
        ("rejects", "ledger_rejected"),
        ("unplugged", "ledger_not_found"),
    ] {
        simulator.set_mode(word.parse().unwrap());
        assert_eq!(code(&w, "add_key", ledger.clone()), expected, "{word}");
    }
    assert_eq!(ok(&w, "app_status", json!({}))["keys"], json!([]), "nothing kept");
    assert!(message(&w, "add_key", json!({ "args": { "kind": "ledger", "path": "44'/x" } }))
        .starts_with("path:"));
    simulator.set_mode("ready".parse().unwrap());
    let added = ok(&w, "add_key", ledger);
    assert_eq!(added, json!(countersign_core::address::checksummed(&owner)));
    assert_eq!(ok(&w, "app_status", json!({}))["signer"], "ledger");

    connected_approver(&w, &queue, &api_key, &countersign_core::address::checksummed(&safe));
    let detail =
        ok(&w, "request_detail", json!({ "args": { "id": countersign_demo::HARDWARE_REQUEST } }));
    assert_eq!(detail["canApprove"], true, "{}", detail["whyNot"]);
    let hash = detail["safeTxHash"].as_str().unwrap().to_owned();
    let approve =
        json!({ "args": { "id": countersign_demo::HARDWARE_REQUEST, "safeTxHash": hash } });
    for (word, expected, words) in [
        ("locked", "ledger_locked", "unlock it"),
        ("setting-off", "ledger_setting_off", "Blind signing"),
        ("goes-away", "ledger_disconnected", "went away"),
    ] {
        simulator.set_mode(word.parse().unwrap());
        assert_eq!(code(&w, "approve_request", approve.clone()), expected, "{word}");
        assert!(
            message(&w, "approve_request", approve.clone()).contains(words) || word == "goes-away"
        );
    }
    // Plugged back in, without restarting the app.
    simulator.set_mode("ready".parse().unwrap());
    let approved = ok(&w, "approve_request", approve);
    assert_eq!(approved["state"], "approved");
    queue_holds_signature_of(&queue, &hash, owner);
}

#[test]
fn an_hsm_key_approves_through_the_commands() {
    let Ok(token) = std::env::var("COUNTERSIGN_TEST_HSM_TOKEN") else {
        assert_ne!(std::env::var("COUNTERSIGN_REQUIRE_HSM").as_deref(), Ok("1"), "no HSM token");
        eprintln!("skipped: no SoftHSM2 token (run scripts/test)");
        return;
    };
    let pin = std::env::var("COUNTERSIGN_TEST_HSM_PIN").unwrap();
    let module = std::env::var("COUNTERSIGN_TEST_HSM_MODULE")
        .unwrap_or_else(|_| countersign_signers::hsm::SOFTHSM_MODULE.to_owned());
    let key_label = format!("app-{}", std::process::id());
    let hsm = |pin: &str| {
        json!({ "args": { "kind": "hsm", "module": module, "token": token,
                                           "keyLabel": key_label, "pin": pin, "generate": true } })
    };
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = tauri::async_runtime::block_on(countersign_demo::start_queue(
        queue_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let (_app, w) = app(data.path(), &Recorder::default());
    ok(&w, "create_store", json!({ "args": { "passphrase": PASSPHRASE } }));
    let mistyped = json!({ "args": { "kind": "hsm", "module": 1, "token": "t", "keyLabel": "k", "pin": "p" } });
    assert!(message(&w, "add_key", mistyped).starts_with("module:"));
    assert!(message(&w, "add_key", json!({ "args": { "kind": "paper" } })).starts_with("kind:"));
    assert!(message(&w, "add_key", json!({ "args": { "label": "x" } })).starts_with("kind:"));
    let wrong = message(&w, "add_key", hsm("wrong-pin"));
    assert!(wrong.contains("refused the PIN") && !wrong.contains("wrong-pin"), "{wrong}");
    let added = ok(&w, "add_key", hsm(&pin));
    let owner: alloy_primitives::Address = added.as_str().unwrap().parse().unwrap();
    assert_eq!(ok(&w, "app_status", json!({}))["signer"], "hsm");
    let safe = alloy_primitives::Address::repeat_byte(0x4d);
    let (_, api_key) = tauri::async_runtime::block_on(countersign_demo::add_hardware_vault(
        &queue,
        safe,
        owner,
        "vault-hsm",
    ))
    .unwrap();
    connected_approver(&w, &queue, &api_key, &countersign_core::address::checksummed(&safe));
    let detail =
        ok(&w, "request_detail", json!({ "args": { "id": countersign_demo::HARDWARE_REQUEST } }));
    let hash = detail["safeTxHash"].as_str().unwrap().to_owned();
    let approve = |pin: Option<&str>| {
        json!({ "args": { "id": countersign_demo::HARDWARE_REQUEST,
                                                        "safeTxHash": hash, "pin": pin } })
    };
    assert_eq!(code(&w, "approve_request", approve(None)), "pin_missing");
    assert_eq!(code(&w, "approve_request", approve(Some("wrong-pin"))), "hsm_wrong_pin");
    let approved = ok(&w, "approve_request", approve(Some(&pin)));
    assert_eq!(approved["state"], "approved");
    queue_holds_signature_of(&queue, &hash, owner);
}

#[test]
fn a_security_key_is_registered_and_touched_for_an_approval_through_the_commands() {
    let keys = tempfile::tempdir().unwrap();
    // The app reaches webauthn-authenticator-rs's software key (a test build only).
    std::env::set_var("COUNTERSIGN_FIDO_SOFT_TOKEN", keys.path().join("security-key"));
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = tauri::async_runtime::block_on(countersign_demo::start_queue(
        queue_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let admin =
        tauri::async_runtime::block_on(queue.connection(&queue.admin_api_key).session()).unwrap();
    let policy = json!({ "chainId": 1, "address": countersign_core::address::checksummed(&countersign_demo::SAFE),
                         "policy": { "all": true } });
    tauri::async_runtime::block_on(admin.post("/v1/vaults/fido-policy", &policy)).unwrap();
    let (app, w) = app(data.path(), &Recorder::default());
    ok(&w, "create_store", json!({ "args": { "passphrase": PASSPHRASE } }));
    ok(&w, "add_key", json!({ "args": { "kind": "software", "secretHex": "21".repeat(32) } }));
    let safe = countersign_core::address::checksummed(&countersign_demo::SAFE);
    connected_approver(&w, &queue, &queue.approver_api_keys[0], &safe);
    let detail =
        ok(&w, "request_detail", json!({ "args": { "id": countersign_demo::USDC_TRANSFER } }));
    let hash = detail["safeTxHash"].as_str().unwrap().to_owned();
    let approve = json!({ "args": { "id": countersign_demo::USDC_TRANSFER, "safeTxHash": hash } });
    assert_eq!(code(&w, "approve_request", approve.clone()), "fido_no_confirmed_key");

    let touched = Arc::new(Mutex::new(Vec::new()));
    let seen = touched.clone();
    app.listen_any("approval-step", move |event| {
        seen.lock().unwrap().push(event.payload().to_owned())
    });
    let credential = ok(&w, "register_security_key", json!({ "args": {} }));
    let credential = credential.as_str().unwrap().to_owned();
    assert_eq!(
        code(&w, "approve_request", approve.clone()),
        "fido_no_confirmed_key",
        "not confirmed yet"
    );
    tauri::async_runtime::block_on(
        admin.post(&format!("/v1/fido/credentials/{credential}/confirm"), &json!({})),
    )
    .unwrap();
    let approved = ok(&w, "approve_request", approve);
    assert_eq!(approved["approvals"], 1);
    assert!(
        touched.lock().unwrap().iter().any(|s| s.contains("touch")),
        "the window was told to ask for a touch"
    );
    let alice = countersign_core::address::checksummed(&countersign_demo::approvers()[0].address());
    let stored =
        tauri::async_runtime::block_on(admin.get(&format!(
            "/v1/requests/{}/approvals/{alice}/fido",
            countersign_demo::USDC_TRANSFER
        )))
        .unwrap();
    let stored: countersign_fido::StoredApproval = serde_json::from_value(stored).unwrap();
    assert!(countersign_fido::reverify(&stored).is_ok());
}

#[test]
fn rows_are_not_read_from_a_store_locked_meanwhile() {
    tauri::async_runtime::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let passphrase = countersign_core::secret::SecretString::new("rows test passphrase".into());
        let store = countersign_store::Store::create(
            dir.path(),
            countersign_store::keywrap::Protection::Passphrase(passphrase),
        )
        .await
        .unwrap();
        let state = AppState::new(
            dir.path().to_owned(),
            countersign_core::tokens::TokenList::shipped().unwrap(),
            Box::new(Recorder::default()),
        );
        state.set_store(store).await;
        let open = state.store().await.unwrap();
        state.rows(&open).await.unwrap();
        assert!(state.kept_rows().is_some(), "read from the open store: kept");
        // A call that took the store before the app locked reads nothing from it after.
        state.lock().await;
        assert_eq!(state.rows(&open).await.unwrap_err().code, "locked");
        assert!(state.kept_rows().is_none(), "a store locked meanwhile: nothing kept");
    });
}
