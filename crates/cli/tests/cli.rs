//! The `countersign` binary, run as a user runs it, against fresh data folders.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
}

fn repo(sub: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests").join(sub)
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn file(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, body).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&[], args)
    }

    /// `run` with more environment variables.
    fn run_with(&self, env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> Output {
        bin()
            .envs(env.iter().copied())
            .env("COUNTERSIGN_DATA_DIR", self.data())
            .env("COUNTERSIGN_PASSPHRASE_FILE", self.dir.path().join("passphrase"))
            .env_remove("COUNTERSIGN_LOG")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A passphrase store with one key and the case files' vault pinned.
    fn with_store(&self) -> String {
        self.file("passphrase", "a long test passphrase\n");
        assert_ok(&self.run(&["init", "--passphrase"]));
        let address = stdout(&self.run(&["key", "new", "--label", "desk"])).trim().to_owned();
        let pin = self.run(&[
            "vault",
            "add",
            "--chain-id",
            "1",
            "--address",
            SAFE,
            "--safe-version",
            "1.3.0",
            "--owner",
            &address,
            "--threshold",
            "1",
            "--next-nonce",
            "5",
            "--label",
            "Treasury",
        ]);
        assert_ok(&pin);
        address
    }
}

const SAFE: &str = "0x111CEEee040739fD91D29C34C33E6B3E112F2177";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[test]
fn inspect_reproduces_every_vector() {
    let home = Home::new();
    for entry in fs::read_dir(repo("vectors/safe")).unwrap() {
        let dir = entry.unwrap().path();
        let expected: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let chain = expected["chainId"].to_string();
        let version = expected["safeVersion"].as_str().unwrap();
        let request = dir.join("request.json");
        let output = home.run(&[
            "inspect",
            request.to_str().unwrap(),
            "--chain-id",
            &chain,
            "--safe-version",
            version,
            "--json",
        ]);
        let report = json_of(&output);
        for field in ["domainHash", "messageHash", "safeTxHash"] {
            assert_eq!(report[field], expected[field], "{} {field}", dir.display());
        }
        let refused = report["verdict"] == "refused";
        assert_eq!(output.status.code(), Some(if refused { 1 } else { 0 }));
        assert!(report["reasons"].is_array());

        let text = home.run(&[
            "inspect",
            request.to_str().unwrap(),
            "--chain-id",
            &chain,
            "--safe-version",
            version,
        ]);
        assert!(
            stdout(&text).contains(expected["safeTxHash"].as_str().unwrap()),
            "{}",
            dir.display()
        );
    }
    assert!(!home.data().exists(), "inspect with flags writes no store");
}

#[test]
fn inspect_typed_data_is_shown_but_not_signable() {
    let home = Home::new();
    let mail = repo("vectors/eip712/mail.json");
    let output = home.run(&["inspect", mail.to_str().unwrap(), "--json"]);
    let report = json_of(&output);
    assert_eq!(
        report["digest"],
        "0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    );
    assert_eq!(report["verdict"], "refused");
    assert_eq!(report["reasons"][0]["code"], "not_signable");
    assert_eq!(output.status.code(), Some(1));
}

/// Every guard case that needs no signing history, through the binary.
#[test]
fn inspect_guard_cases() {
    let home = Home::new();
    let mut ran = 0;
    for entry in fs::read_dir(repo("cases")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let case: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        if case.get("history").is_some() || case["vault"].get("address").is_some() {
            continue;
        }
        let vault = &case["vault"];
        let request = dir.join("request.json");
        let chain = vault["chainId"].to_string();
        let next = vault["nextNonce"].to_string();
        let mut args = vec![
            "inspect".to_owned(),
            request.to_string_lossy().into_owned(),
            "--json".into(),
            "--chain-id".into(),
            chain,
            "--safe-version".into(),
            vault["safeVersion"].as_str().unwrap().to_owned(),
            "--next-nonce".into(),
            next,
        ];
        if let Some(policy) = case.get("policy") {
            args.push("--policy".into());
            args.push(home.file("policy.json", &policy.to_string()).to_string_lossy().into_owned());
        }
        if let Some(tokens) = case.get("tokens") {
            let list = serde_json::json!({ "tokens": tokens });
            args.push("--token-list".into());
            args.push(home.file("tokens.json", &list.to_string()).to_string_lossy().into_owned());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = home.run(&refs);
        let report = json_of(&output);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(report["verdict"], case["expect"]["verdict"], "{name}");
        let code = if name.starts_with("fail_") { 1 } else { 0 };
        assert_eq!(output.status.code(), Some(code), "{name}");
        for reason in case["expect"]["refusals"].as_array().into_iter().flatten() {
            let codes: Vec<&Value> =
                report["reasons"].as_array().unwrap().iter().map(|r| &r["code"]).collect();
            assert!(codes.contains(&reason), "{name}: {reason} not in {codes:?}");
        }
        for line in case["expect"]["lines"].as_array().into_iter().flatten() {
            let intent = report["intent"].to_string();
            assert!(intent.contains(line.as_str().unwrap()), "{name}: {line} not in {intent}");
        }
        ran += 1;
    }
    assert!(ran >= 25, "only {ran} cases ran");
}

fn s3_with(field: &str, value: &str) -> String {
    let text = fs::read_to_string(repo("vectors/safe/S3/request.json")).unwrap();
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    match value {
        "<missing>" => {
            object.remove(field);
        }
        _ => {
            object.insert(field.to_owned(), serde_json::from_str(value).unwrap());
        }
    }
    Value::Object(object).to_string()
}

#[test]
fn fail_bad_input_names_the_field_with_exit_2() {
    let home = Home::new();
    let cases = [
        ("not json", "{not json".to_owned(), "request"),
        ("missing field", s3_with("nonce", "<missing>"), "nonce"),
        ("wrong type", s3_with("value", "true"), "value"),
        ("bad checksum", s3_with("to", "\"0x255c3912f91eF11bFDadd405F13144a823Da8cc5\""), "to"),
        ("float", s3_with("gasPrice", "1.5"), "gasPrice"),
        ("too big", format!("{}{}", s3_with("nonce", "4"), " ".repeat(256 * 1024)), "request"),
    ];
    for (what, body, field) in cases {
        let path = home.file("bad.json", &body);
        let output = home.run(&[
            "inspect",
            path.to_str().unwrap(),
            "--chain-id",
            "11155111",
            "--safe-version",
            "1.3.0",
        ]);
        assert_eq!(output.status.code(), Some(2), "{what}: {}", stderr(&output));
        let message = stderr(&output);
        assert_eq!(message.trim().lines().count(), 1, "{what}: one line, got {message}");
        assert!(message.contains(field), "{what}: {message} should name {field}");
        assert!(stdout(&output).is_empty(), "{what}");
    }
    let output = home.run(&[
        "inspect",
        repo("vectors/safe/S3/request.json").to_str().unwrap(),
        "--chain-id",
        "1",
        "--safe-version",
        "9.9.9",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("safeVersion"));
}

#[test]
fn sign_then_verify_recovers_to_the_key() {
    let home = Home::new();
    let address = home.with_store();
    let request = repo("cases/ok_usdc_transfer/request.json");
    let signed = home.run(&["sign", request.to_str().unwrap(), "--yes", "--json"]);
    assert_ok(&signed);
    let report = json_of(&signed);
    let signature = report["signature"].as_str().unwrap().to_owned();
    assert_eq!(report["signer"], address.as_str());
    assert_eq!(signature.len(), 132);

    let verified =
        home.run(&["verify", request.to_str().unwrap(), "--signature", &signature, "--json"]);
    assert_ok(&verified);
    let verdict = json_of(&verified);
    assert_eq!(verdict["signer"], address.as_str());
    assert_eq!(verdict["owner"], true);
    assert_eq!(verdict["safeTxHash"], report["safeTxHash"]);

    let text = home.run(&["verify", request.to_str().unwrap(), "--signature", &signature]);
    assert!(stdout(&text).contains(&address));
}

#[test]
fn fail_sign_refuses_a_guarded_request_and_writes_no_signature() {
    let home = Home::new();
    home.with_store();
    let request = repo("cases/fail_multisend_hidden_delegatecall/request.json");
    let output = home.run(&["sign", request.to_str().unwrap(), "--yes"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("untrusted_delegatecall"));
    assert!(!stdout(&output).contains("Signature:"));
}

#[test]
fn fail_tripwire_opens_an_incident_that_blocks_until_cleared() {
    let home = Home::new();
    home.with_store();
    let first = repo("cases/ok_usdc_transfer/request.json");
    let second = repo("cases/ok_native_transfer/request.json");
    let rejection = home.file("rejection.json", &format!(
        r#"{{"safe":"{SAFE}","to":"{SAFE}","value":"0","data":null,"operation":0,"safeTxGas":"0",
        "baseGas":"0","gasPrice":"0","gasToken":"0x0000000000000000000000000000000000000000",
        "refundReceiver":"0x0000000000000000000000000000000000000000","nonce":5}}"#
    ));
    assert_ok(&home.run(&["sign", first.to_str().unwrap(), "--yes"]));
    assert_ok(&home.run(&["sign", first.to_str().unwrap(), "--yes"]));

    let tripped = home.run(&["sign", second.to_str().unwrap(), "--yes", "--json"]);
    assert_eq!(tripped.status.code(), Some(1));
    let report = json_of(&tripped);
    assert!(report["reasons"].to_string().contains("tripwire"));
    assert!(stderr(&tripped).contains("Incident"));

    let listed = home.run(&["incident", "list", "--json"]);
    let incident: Value = serde_json::from_str(stdout(&listed).lines().next().unwrap()).unwrap();
    assert_eq!(incident["kind"], "tripwire");
    let id = incident["id"].as_str().unwrap().to_owned();

    let blocked = home.run(&["sign", rejection.to_str().unwrap(), "--yes", "--json"]);
    assert_eq!(blocked.status.code(), Some(1));
    assert!(json_of(&blocked)["reasons"].to_string().contains("open_incident"));

    assert_eq!(home.run(&["incident", "clear", &id, "--note", ""]).status.code(), Some(2));
    // Several are cleared together or not at all: with an id that is not open, none is.
    let unknown = home.run(&["incident", "clear", &id, "i-unknown", "--note", "checked"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("i-unknown"), "{}", stderr(&unknown));
    // Named twice, it is cleared once, and said so once.
    let cleared =
        home.run(&["incident", "clear", &id, &id, "--note", "initiator confirmed by phone"]);
    assert_ok(&cleared);
    assert_eq!(stdout(&cleared).matches("cleared").count(), 1, "{}", stdout(&cleared));
    assert_ok(&home.run(&["sign", rejection.to_str().unwrap(), "--yes"]));
    let again = home.run(&["sign", second.to_str().unwrap(), "--yes"]);
    assert_eq!(again.status.code(), Some(1), "the second payload stays refused");
    assert_ok(&home.run(&["audit", "verify"]));
}

#[test]
fn fail_audit_verify_names_a_tampered_entry() {
    let home = Home::new();
    home.with_store();
    let request = repo("cases/ok_usdc_transfer/request.json");
    assert_ok(&home.run(&["inspect", request.to_str().unwrap()]));
    assert_ok(&home.run(&["audit", "verify"]));
    let exported = home.dir.path().join("audit.jsonl");
    assert_ok(&home.run(&["audit", "export", exported.to_str().unwrap()]));
    assert_ok(&home.run(&["audit", "verify", "--file", exported.to_str().unwrap()]));

    let text = fs::read_to_string(&exported).unwrap().replacen("vault_added", "vault_removed", 1);
    fs::write(&exported, text).unwrap();
    let broken = home.run(&["audit", "verify", "--file", exported.to_str().unwrap()]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(stdout(&broken).contains("broken at entry 3"), "{}", stdout(&broken));
}

#[test]
fn keys_import_from_hex_and_a_wrong_passphrase_is_refused() {
    let home = Home::new();
    home.file("passphrase", "a long test passphrase\n");
    assert_ok(&home.run(&["init", "--passphrase"]));
    let hex = home
        .file("key.hex", "0x4646464646464646464646464646464646464646464646464646464646464646\n");
    let imported =
        home.run(&["key", "import", "--hex-file", hex.to_str().unwrap(), "--label", "eip155"]);
    assert_ok(&imported);
    assert_eq!(stdout(&imported).trim(), "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F");
    let again = home.run(&["key", "import", "--hex-file", hex.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "a duplicate key is refused");

    let bad = home.file("bad.hex", "not a key");
    let output = home.run(&["key", "import", "--hex-file", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!stderr(&output).contains("not a key"), "the secret is not echoed");
    let listed = stdout(&home.run(&["key", "list"]));
    assert!(listed.contains("eip155"));
    let wrong = bin()
        .env("COUNTERSIGN_DATA_DIR", home.data())
        .env("COUNTERSIGN_PASSPHRASE_FILE", home.file("wrong", "not the passphrase\n"))
        .args(["key", "list"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(3));
    assert!(stderr(&wrong).contains("wrong passphrase"));
}

/// With the README's test command a Secret Service is running and this must pass.
#[test]
fn keyring_store_via_the_cli() {
    if std::env::var("COUNTERSIGN_REQUIRE_KEYRING").as_deref() != Ok("1") {
        eprintln!("skipped: COUNTERSIGN_REQUIRE_KEYRING is not 1");
        return;
    }
    let home = Home::new();
    assert_ok(&home.run(&["init"]));
    assert_ok(&home.run(&["key", "new"]));
    assert_ok(&home.run(&["erase", "--yes"]));
}

#[test]
fn fail_sign_with_a_key_that_is_not_an_owner() {
    let home = Home::new();
    home.with_store();
    assert_ok(&home.run(&["key", "new", "--label", "stranger"]));
    let request = repo("cases/ok_usdc_transfer/request.json");
    let output =
        home.run(&["sign", request.to_str().unwrap(), "--key", "stranger", "--yes", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json_of(&output);
    assert!(report["reasons"].to_string().contains("not_an_owner"), "{report}");
    assert!(report.get("signature").is_none());
    let duplicate = home.run(&["key", "new", "--label", "stranger"]);
    assert_eq!(duplicate.status.code(), Some(2), "labels are unique");
}

#[test]
fn fail_next_nonce_never_moves_back() {
    let home = Home::new();
    home.with_store();
    let lower =
        home.run(&["vault", "set-next-nonce", SAFE, "--chain-id", "1", "--next-nonce", "3"]);
    assert_eq!(lower.status.code(), Some(2));
    assert!(stderr(&lower).contains("nextNonce"));
    assert_ok(&home.run(&[
        "vault",
        "set-next-nonce",
        SAFE,
        "--chain-id",
        "1",
        "--next-nonce",
        "6",
    ]));
}

#[test]
fn inspect_can_skip_the_store_and_an_export_checks_its_head() {
    let home = Home::new();
    home.with_store();
    let s3 = repo("vectors/safe/S3/request.json");
    let locked = bin()
        .env("COUNTERSIGN_DATA_DIR", home.data())
        .env_remove("COUNTERSIGN_PASSPHRASE_FILE")
        .args([
            "inspect",
            s3.to_str().unwrap(),
            "--chain-id",
            "11155111",
            "--safe-version",
            "1.3.0",
            "--no-store",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&locked);

    let verified = home.run(&["audit", "verify"]);
    let head = stdout(&verified).trim().rsplit(' ').next().unwrap().to_owned();
    let exported = home.dir.path().join("audit.jsonl");
    assert_ok(&home.run(&["audit", "export", exported.to_str().unwrap()]));
    let file = exported.to_str().unwrap();
    assert_ok(&home.run(&["audit", "verify", "--file", file, "--head", &head]));
    let text = fs::read_to_string(&exported).unwrap();
    let cut: Vec<&str> = text.lines().collect();
    fs::write(&exported, cut[..cut.len() - 1].join("\n") + "\n").unwrap();
    let broken = home.run(&["audit", "verify", "--file", file, "--head", &head]);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
}

#[test]
fn fail_token_list_cannot_rename_or_impersonate_listed_tokens() {
    let home = Home::new();
    let s3 = repo("cases/ok_usdc_transfer/request.json");
    let flags = ["--chain-id", "1", "--safe-version", "1.3.0", "--no-store"];
    let usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
    for entry in [
        format!(r#"{{"chainId":1,"address":"{usdc}","symbol":"USDC","decimals":18}}"#),
        r#"{"chainId":1,"address":"0x2222222222222222222222222222222222222222","symbol":"usdc","decimals":6}"#.to_owned(),
    ] {
        let list = home.file("tokens.json", &format!(r#"{{"tokens":[{entry}]}}"#));
        let mut args = vec!["--token-list", list.to_str().unwrap(), "inspect", s3.to_str().unwrap()];
        args.extend(flags);
        let output = home.run(&args);
        assert_eq!(output.status.code(), Some(2), "{entry}: {}", stderr(&output));
    }
}

#[test]
fn fail_vault_add_checks_owners_and_threshold() {
    let home = Home::new();
    home.file("passphrase", "a long test passphrase\n");
    assert_ok(&home.run(&["init", "--passphrase"]));
    let owner = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let base = ["vault", "add", "--chain-id", "1", "--address", SAFE, "--safe-version", "1.3.0"];
    let twice: Vec<&str> =
        base.iter().copied().chain(["--owner", owner, "--owner", owner]).collect();
    assert_eq!(home.run(&twice).status.code(), Some(2));
    let no_owners: Vec<&str> = base.iter().copied().chain(["--threshold", "2"]).collect();
    assert_eq!(home.run(&no_owners).status.code(), Some(2));
}

/// `queue serve` as a process: its printed URL and pin, a ping with the pin and one without.
#[test]
fn queue_serve_prints_url_and_pin_and_ping_checks_the_pin() {
    use std::io::{BufRead, BufReader};

    let home = Home::new();
    let queue_dir = home.dir.path().join("queue");
    let mut server = bin()
        .args([
            "queue",
            "serve",
            "--queue-dir",
            queue_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Server)
        .unwrap();
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap().strip_prefix("url: ").unwrap().to_owned();
    let pin = lines.next().unwrap().unwrap().strip_prefix("pin-sha256: ").unwrap().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let ping = home.run(&["queue", "ping", "--url", &url, "--pin", &pin]);
    let wrong = home.run(&[
        "queue",
        "ping",
        "--url",
        &url,
        "--pin",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    ]);
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    let status = server.0.wait().unwrap();

    assert_ok(&ping);
    assert_eq!(wrong.status.code(), Some(3));
    assert!(stderr(&wrong).contains("pin"), "{}", stderr(&wrong));
    assert!(status.success(), "the server stops cleanly on SIGTERM");
}

#[test]
fn fail_token_look_alikes_and_address_labels() {
    let home = Home::new();
    let s3 = repo("cases/ok_usdc_transfer/request.json");
    for entry in [
        r#"{"chainId":1,"address":"0x2222222222222222222222222222222222222222","symbol":"ETH","decimals":18}"#,
        r#"{"chainId":1,"address":"0x2222222222222222222222222222222222222222","symbol":"DAl","decimals":18}"#,
        r#"{"chainId":1,"address":"0x2222222222222222222222222222222222222222","symbol":"U5DC","decimals":6}"#,
    ] {
        let list = home.file("tokens.json", &format!(r#"{{"tokens":[{entry}]}}"#));
        let args = [
            "--token-list",
            list.to_str().unwrap(),
            "inspect",
            s3.to_str().unwrap(),
            "--chain-id",
            "1",
            "--safe-version",
            "1.3.0",
            "--no-store",
        ];
        assert_eq!(home.run(&args).status.code(), Some(2), "{entry}");
    }
    home.with_store();
    let other = "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359";
    assert_eq!(home.run(&["key", "new", "--label", other]).status.code(), Some(2));
    assert_eq!(home.run(&["key", "new", "--label", " "]).status.code(), Some(2));
}

/// The README's walkthrough: a queue, an admin, an initiator and two approvers, each with their
/// own store, take a request from submitted to approved by hand.
#[test]
fn queue_walkthrough_from_submitted_to_approved() {
    let queue = Queue::start();
    let (admin, conn, url, pin) = (&queue.admin, queue.conn(), &queue.url, &queue.pin);

    // Three people, each with a store and a key.
    let people: Vec<(Home, String)> = (0..3)
        .map(|_| {
            let home = Home::new();
            home.file("passphrase", "a long test passphrase\n");
            assert_ok(&home.run(&["init", "--passphrase"]));
            let address = stdout(&home.run(&["key", "new"])).trim().to_owned();
            (home, address)
        })
        .collect();
    let (initiator, alice, bob) = (&people[0], &people[1], &people[2]);
    let owners = [alice.1.as_str(), bob.1.as_str(), initiator.1.as_str()];

    queue.add_vault(&owners);
    for (id, role, (home, address)) in
        [("init", "initiator", initiator), ("alice", "approver", alice), ("bob", "approver", bob)]
    {
        queue.enroll(id, role, home, address, &owners, &initiator.1);
        // Another queue would drop the synced copy and its marks: refused.
        let key_file = home.dir.path().join("api.key");
        let elsewhere = home.run(&[
            "queue",
            "connect",
            "--url",
            "https://127.0.0.1:9",
            "--pin",
            pin,
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--initiator",
            &initiator.1,
        ]);
        assert_eq!(elsewhere.status.code(), Some(1), "{}", stderr(&elsewhere));
        assert!(stderr(&elsewhere).contains("another queue needs a store of its own"));
    }

    let request = repo("cases/ok_usdc_transfer/request.json");
    assert_ok(&initiator.0.run(&[
        "queue",
        "submit",
        request.to_str().unwrap(),
        "--id",
        "payroll-1",
        "--chain-id",
        "1",
    ]));
    for (home, _) in [alice, bob] {
        assert_ok(&home.run(&["sync"]));
        assert!(stdout(&home.run(&["list"])).contains("payroll-1  pending"));
        let shown = home.run(&["show", "payroll-1"]);
        assert_ok(&shown);
        assert!(stdout(&shown).contains("Transfer 1500 USDC"));
    }
    let first = alice.0.run(&["approve", "payroll-1", "--yes"]);
    assert_ok(&first);
    assert!(stdout(&first).contains("pending with 1 approval"), "{}", stdout(&first));
    let second = bob.0.run(&["approve", "payroll-1", "--yes"]);
    assert_ok(&second);
    assert!(stdout(&second).contains("approved with 2 approval"), "{}", stdout(&second));
    assert_ok(&alice.0.run(&["sync"]));
    assert!(stdout(&alice.0.run(&["list"])).contains("payroll-1  approved"));

    // A request rejected on the queue after this approver synced it is not signed.
    let third = with_nonce(&initiator.0, "third.json", "cases/ok_transfer_from/request.json", 7);
    assert_ok(&initiator.0.run(&[
        "queue",
        "submit",
        third.to_str().unwrap(),
        "--id",
        "p3",
        "--chain-id",
        "1",
    ]));
    assert_ok(&alice.0.run(&["sync"]));
    // Only a request synced here can be rejected from here: its mark holds the no.
    let unsynced = bob.0.run(&["reject", "p3", "--reason", "not ours"]);
    assert_eq!(unsynced.status.code(), Some(2), "{}", stderr(&unsynced));
    assert!(stderr(&unsynced).contains("sync first"), "{}", stderr(&unsynced));
    for (reason, why) in [("!!!", "in words"), ("not \u{202e}ours", "direction-changing")] {
        let refused = bob.0.run(&["reject", "p3", "--reason", reason]);
        assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
        assert!(stderr(&refused).contains(why), "{}", stderr(&refused));
    }
    assert_ok(&bob.0.run(&["sync"]));
    assert_ok(&bob.0.run(&["reject", "p3", "--reason", "not ours"]));
    let late = alice.0.run(&["approve", "p3", "--yes"]);
    assert_eq!(late.status.code(), Some(1), "{}", stderr(&late));
    assert!(!stdout(&late).contains("Step 1"), "nothing is signed for a closed request");
    let closed = alice.0.run(&["reject", "p3", "--reason", "also no"]);
    assert_eq!(closed.status.code(), Some(1), "a queue refusal exits 1: {}", stderr(&closed));
    assert!(stderr(&closed).contains("p3 is marked rejected here"), "{}", stderr(&closed));
    // Her no holds here all the same, and her copy says the queue refused it.
    let shown = stdout(&alice.0.run(&["show", "p3"]));
    assert!(
        shown.contains("MARKED: this approver rejected it; the queue answered 409 request_closed"),
        "{shown}"
    );

    // A request whose intent is signed by someone this approver did not pin is marked.
    let other = with_nonce(&initiator.0, "other.json", "cases/ok_native_transfer/request.json", 6);
    assert_ok(&initiator.0.run(&[
        "queue",
        "submit",
        other.to_str().unwrap(),
        "--id",
        "p2",
        "--chain-id",
        "1",
    ]));
    let untrusted = Home::new();
    untrusted.file("passphrase", "a long test passphrase\n");
    assert_ok(&untrusted.run(&["init", "--passphrase"]));
    assert_ok(&untrusted.run(&["key", "new"]));
    assert_ok(&untrusted.run(&with_vault(vec!["vault", "add"], &owners)));
    let bob_key = bob.0.dir.path().join("api.key");
    let connect = untrusted.run(&[
        "queue",
        "connect",
        "--url",
        url,
        "--pin",
        pin,
        "--api-key-file",
        bob_key.to_str().unwrap(),
        "--initiator",
        SAFE,
    ]);
    assert_ok(&connect);
    let synced = untrusted.run(&["sync"]);
    assert_eq!(synced.status.code(), Some(1));
    assert!(stdout(&synced).contains("MARKED p2"), "{}", stdout(&synced));
    let refused = untrusted.run(&["approve", "p2", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));

    // The admin changes the queue's vault record: sync shows it, nothing changes until accepted.
    let newcomer = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
    let mut change = vec!["queue", "vault", "add"];
    change.extend(conn);
    let grown = [owners[0], owners[1], owners[2], newcomer];
    assert_ok(&admin.run(&with_vault(change, &grown)));
    let synced = alice.0.run(&["sync"]);
    assert!(stdout(&synced).contains("differs"), "{}", stdout(&synced));
    assert!(!stdout(&alice.0.run(&["vault", "show", SAFE])).contains(newcomer));
    let asked = alice.0.run(&["vault", "accept-queue", SAFE, "--chain-id", "1"]);
    assert_eq!(asked.status.code(), Some(1), "without --yes nothing is pinned");
    assert_ok(&alice.0.run(&["vault", "accept-queue", SAFE, "--chain-id", "1", "--yes"]));
    assert!(stdout(&alice.0.run(&["vault", "show", SAFE])).contains(newcomer));
    assert_ok(&alice.0.run(&["audit", "verify"]));

    // With the queue unreachable, a rejection still holds here: this store signs it no more.
    assert!(!stdout(&alice.0.run(&["show", "p2"])).contains("this approver rejected it"));
    queue.stop();
    let unsent = alice.0.run(&["reject", "p2", "--reason", "not ours"]);
    assert_eq!(unsent.status.code(), Some(3), "{}", stderr(&unsent));
    assert!(stderr(&unsent).contains("could not be reached"), "{}", stderr(&unsent));
    assert!(stderr(&unsent).contains("p2 is marked rejected here"), "{}", stderr(&unsent));
    let shown = stdout(&alice.0.run(&["show", "p2"]));
    assert!(
        shown.contains("MARKED: this approver rejected it; the queue did not confirm it"),
        "{shown}"
    );
    let late = alice.0.run(&["approve", "p2", "--yes"]);
    assert_eq!(late.status.code(), Some(1), "{}", stderr(&late));
    assert!(!stdout(&late).contains("Step 1"), "nothing is signed for a request rejected here");
}

/// A Ledger (the Ethereum app simulator behind the transport's exchange trait) and a key in a
/// SoftHSM2 token each approve a request from the queue through the CLI; the queue checks each
/// signature against its owner. The device's states each give their own message.
#[test]
fn hardware_signers_approve_through_the_cli() {
    let Ok(token) = std::env::var("COUNTERSIGN_TEST_HSM_TOKEN") else {
        assert_ne!(std::env::var("COUNTERSIGN_REQUIRE_HSM").as_deref(), Ok("1"), "no HSM token");
        eprintln!("skipped: no SoftHSM2 token (run scripts/test)");
        return;
    };
    let pin = std::env::var("COUNTERSIGN_TEST_HSM_PIN").unwrap();
    let queue = Queue::start();
    let home = || {
        let home = Home::new();
        home.file("passphrase", "a long test passphrase\n");
        assert_ok(&home.run(&["init", "--passphrase"]));
        home
    };
    let (initiator, ledger, hsm) = (home(), home(), home());
    let init_address = stdout(&initiator.run(&["key", "new"])).trim().to_owned();

    let mode = ledger.dir.path().join("ledger-mode");
    let on_ledger = |word: &str, args: &[&str]| {
        fs::write(&mode, word).unwrap();
        ledger.run_with(&[("COUNTERSIGN_LEDGER_SIMULATOR", mode.as_os_str())], args)
    };
    let locked = on_ledger("locked", &["key", "add-ledger", "--account", "1"]);
    assert_eq!(locked.status.code(), Some(3), "{}", stderr(&locked));
    assert!(stderr(&locked).contains("the Ledger is locked"), "{}", stderr(&locked));
    let refused = on_ledger("rejects", &["key", "add-ledger", "--account", "1"]);
    assert!(stderr(&refused).contains("rejected on the Ledger"), "{}", stderr(&refused));
    let added = on_ledger("ready", &["key", "add-ledger", "--account", "1", "--label", "nano"]);
    assert_ok(&added);
    let ledger_address = stdout(&added).trim().to_owned();
    assert!(stdout(&ledger.run(&["key", "list"])).contains("ledger  nano"));

    let key_label = format!("cli-{}", std::process::id());
    let with_pin = |pin: &str, args: &[&str]| {
        hsm.run_with(&[("COUNTERSIGN_HSM_PIN", std::ffi::OsStr::new(pin))], args)
    };
    let hsm_key = ["key", "add-hsm", "--token", &token, "--key-label", &key_label, "--generate"];
    let wrong = with_pin("not-the-pin", &hsm_key);
    assert!(stderr(&wrong).contains("refused the PIN"), "{}", stderr(&wrong));
    assert!(!stderr(&wrong).contains("not-the-pin"));
    let added = with_pin(&pin, &hsm_key);
    assert_ok(&added);
    let hsm_address = stdout(&added).trim().to_owned();

    let owners = [ledger_address.as_str(), hsm_address.as_str(), init_address.as_str()];
    queue.add_vault(&owners);
    queue.enroll("init", "initiator", &initiator, &init_address, &owners, &init_address);
    queue.enroll("nano", "approver", &ledger, &ledger_address, &owners, &init_address);
    queue.enroll("vault-hsm", "approver", &hsm, &hsm_address, &owners, &init_address);
    let request = repo("cases/ok_usdc_transfer/request.json");
    let submit = ["queue", "submit", request.to_str().unwrap(), "--id", "hw-1", "--chain-id", "1"];
    assert_ok(&initiator.run(&submit));
    assert_ok(&ledger.run(&["sync"]));
    assert_ok(&hsm.run(&["sync"]));

    let approve = ["approve", "hw-1", "--yes", "--signer", "ledger"];
    for (word, message) in [
        ("app-closed", "Ethereum app is not open"),
        ("setting-off", "Blind signing"),
        ("unplugged", "no Ledger found"),
        ("goes-away", "went away"),
        ("rejects", "declined"),
    ] {
        let outcome = on_ledger(word, &approve);
        assert!(!outcome.status.success(), "{word}: {}", stderr(&outcome));
        assert!(stderr(&outcome).contains(message), "{word}: {}", stderr(&outcome));
        assert!(!stdout(&outcome).contains("Step 2"), "{word}: nothing reached the queue");
    }
    // A key enrolled from the simulator never signs as if it were a device.
    let usb = ledger.run(&approve);
    assert!(stderr(&usb).contains("enrolled from the Ledger simulator"), "{}", stderr(&usb));
    let software = ledger.run(&["approve", "hw-1", "--yes", "--signer", "software"]);
    assert!(stderr(&software).contains("no software key"), "{}", stderr(&software));
    let first = on_ledger("ready", &approve);
    assert_ok(&first);
    assert!(stdout(&first).contains("pending with 1 approval"), "{}", stdout(&first));
    // Approving again signs nothing: the queue lists this owner's approval already.
    let again = on_ledger("ready", &approve);
    assert!(stderr(&again).contains("already"), "{}", stderr(&again));
    assert!(!stdout(&again).contains("Step 1"), "{}", stdout(&again));

    let approve = ["approve", "hw-1", "--yes", "--signer", "hsm"];
    let wrong = with_pin("not-the-pin", &approve);
    assert!(stderr(&wrong).contains("refused the PIN"), "{}", stderr(&wrong));
    let second = with_pin(&pin, &approve);
    assert_ok(&second);
    assert!(stdout(&second).contains("approved with 2 approval"), "{}", stdout(&second));
    queue.stop();
}

/// A `queue serve` child on loopback, with its admin's home and the lines it printed.
struct Queue {
    server: Server,
    admin: Home,
    url: String,
    pin: String,
    admin_key_file: PathBuf,
}

impl Queue {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// `queue serve` with more arguments.
    fn start_with(extra: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let admin = Home::new();
        let queue_dir = admin.dir.path().join("queue");
        let mut server = bin()
            .args(["queue", "serve", "--queue-dir", queue_dir.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map(Server)
            .unwrap();
        let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
        let mut next =
            |prefix: &str| lines.next().unwrap().unwrap().strip_prefix(prefix).unwrap().to_owned();
        let (url, pin, admin_key) = (next("url: "), next("pin-sha256: "), next("admin-api-key: "));
        let admin_key_file = admin.file("admin.key", &admin_key);
        Self { server, admin, url, pin, admin_key_file }
    }

    /// The admin's connection flags.
    fn conn(&self) -> [&str; 6] {
        let key = self.admin_key_file.to_str().unwrap();
        ["--url", &self.url, "--pin", &self.pin, "--api-key-file", key]
    }

    /// The walkthrough's vault on the queue, with `owners`.
    fn add_vault(&self, owners: &[&str]) {
        let mut add = vec!["queue", "vault", "add"];
        add.extend(self.conn());
        assert_ok(&self.admin.run(&with_vault(add, owners)));
    }

    /// Makes `address` member `id` with `role`, hands `home` an API key (in `api.key`), pins
    /// the vault in its store and connects it, trusting `initiator`.
    fn enroll(
        &self,
        id: &str,
        role: &str,
        home: &Home,
        address: &str,
        owners: &[&str],
        initiator: &str,
    ) {
        let mut member = vec!["queue", "member", "add"];
        member.extend(self.conn());
        member.extend(["--id", id, "--name", id, "--role", role, "--address", address]);
        assert_ok(&self.admin.run(&member));
        let mut key = vec!["queue", "api-key", "new"];
        key.extend(self.conn());
        key.push(id);
        let api_key = stdout(&self.admin.run(&key)).trim().to_owned();
        let key_file = home.file("api.key", &api_key);
        assert_ok(&home.run(&with_vault(vec!["vault", "add"], owners)));
        let connect = home.run(&[
            "queue",
            "connect",
            "--url",
            &self.url,
            "--pin",
            &self.pin,
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--initiator",
            initiator,
        ]);
        assert_ok(&connect);
    }

    fn stop(mut self) {
        Command::new("kill").args(["-TERM", &self.server.0.id().to_string()]).status().unwrap();
        self.server.0.wait().unwrap();
    }
}

/// A copy of a case's request with another nonce, in `home`'s folder.
fn with_nonce(home: &Home, name: &str, case: &str, nonce: u64) -> PathBuf {
    let mut request: Value =
        serde_json::from_str(&fs::read_to_string(repo(case)).unwrap()).unwrap();
    request["nonce"] = serde_json::json!(nonce);
    home.file(name, &request.to_string())
}

/// A `queue serve` child, killed by its process id when the test ends, passed or not.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `args` followed by the walkthrough's vault: the example Safe on chain 1, Safe 1.3.0,
/// threshold 2, next nonce 5, and `owners`.
fn with_vault<'a>(mut args: Vec<&'a str>, owners: &[&'a str]) -> Vec<&'a str> {
    args.extend(["--chain-id", "1", "--address", SAFE, "--safe-version", "1.3.0"]);
    args.extend(["--threshold", "2", "--next-nonce", "5"]);
    for owner in owners {
        args.extend(["--owner", owner]);
    }
    args
}

#[test]
fn audit_verify_approval_checks_a_stored_fido_approval_offline() {
    let home = Home::new();
    let stored = repo("fido/stored-approval.json");
    let ok = home.run(&["audit", "verify-approval", stored.to_str().unwrap()]);
    assert_ok(&ok);
    assert!(stdout(&ok).contains("approval of request payroll-1"), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("Key SHA-256:"), "{}", stdout(&ok));
    let mut moved: Value = serde_json::from_str(&fs::read_to_string(&stored).unwrap()).unwrap();
    moved["requestId"] = serde_json::json!("payroll-2");
    let moved = home.file("moved.json", &moved.to_string());
    let refused = home.run(&["audit", "verify-approval", moved.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("fido_other_approval"), "{}", stderr(&refused));
    let junk = home.file("junk.json", "{\"requestId\": 1}");
    let bad = home.run(&["audit", "verify-approval", junk.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// A vault whose presence policy asks for a security key on every approval: the CLI
/// registers a key (webauthn-authenticator-rs's software key, in a file, behind the same
/// backend trait as its USB transport), is refused until an admin confirms it, and then
/// approves with an assertion the queue checks; an approver with no key is refused before
/// anything is signed.
#[test]
fn fido_register_confirm_and_approve_through_the_cli() {
    let queue =
        Queue::start_with(&["--fido-rp-id", "localhost", "--fido-origin", "https://localhost"]);
    let home = || {
        let home = Home::new();
        home.file("passphrase", "a long test passphrase\n");
        assert_ok(&home.run(&["init", "--passphrase"]));
        let address = stdout(&home.run(&["key", "new"])).trim().to_owned();
        (home, address)
    };
    let (initiator, alice, bob) = (home(), home(), home());
    let owners = [alice.1.as_str(), bob.1.as_str(), initiator.1.as_str()];
    queue.add_vault(&owners);
    queue.enroll("init", "initiator", &initiator.0, &initiator.1, &owners, &initiator.1);
    queue.enroll("alice", "approver", &alice.0, &alice.1, &owners, &initiator.1);
    queue.enroll("bob", "approver", &bob.0, &bob.1, &owners, &initiator.1);
    let policy = queue.admin.file("policy.json", "{\"all\": true}");
    let mut set = vec!["queue", "fido", "policy"];
    set.extend(queue.conn());
    set.extend(["--chain-id", "1", "--address", SAFE, "--policy-file", policy.to_str().unwrap()]);
    assert_ok(&queue.admin.run(&set));
    let request = repo("cases/ok_usdc_transfer/request.json");
    let submit =
        ["queue", "submit", request.to_str().unwrap(), "--id", "fido-1", "--chain-id", "1"];
    assert_ok(&initiator.0.run(&submit));

    let token = alice.0.dir.path().join("security-key");
    let with_key = |args: &[&str]| {
        alice.0.run_with(&[("COUNTERSIGN_FIDO_SOFT_TOKEN", token.as_os_str())], args)
    };
    let registered = with_key(&["fido", "register"]);
    assert_ok(&registered);
    let credential = stdout(&registered).trim().to_owned();
    assert!(stderr(&registered).contains("not yet confirmed"), "{}", stderr(&registered));
    assert_ok(&alice.0.run(&["sync"]));
    let approve = ["approve", "fido-1", "--yes"];
    let early = with_key(&approve);
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    assert!(stderr(&early).contains("no key an admin confirmed"), "{}", stderr(&early));
    assert!(!stdout(&early).contains("Step 1"), "nothing was signed");

    let mut confirm = vec!["queue", "fido", "confirm"];
    confirm.extend(queue.conn());
    confirm.push(&credential);
    assert_ok(&queue.admin.run(&confirm));
    let mut list = vec!["queue", "fido", "list"];
    list.extend(queue.conn());
    assert!(stdout(&queue.admin.run(&list)).contains("publicKeySha256"));
    // Another key than the registered one: refused, and no owner signature is left behind.
    let other = alice.0.dir.path().join("other-key");
    let wrong = alice.0.run_with(&[("COUNTERSIGN_FIDO_SOFT_TOKEN", other.as_os_str())], &approve);
    assert!(!wrong.status.success(), "{}", stderr(&wrong));
    let audit = stdout(&alice.0.run(&["audit", "export"]));
    assert!(!audit.contains("\"signed\""), "nothing was signed: {audit}");
    let approved = with_key(&approve);
    assert_ok(&approved);
    assert!(stdout(&approved).contains("pending with 1 approval"), "{}", stdout(&approved));
    assert!(stdout(&alice.0.run(&["audit", "export"])).contains("\"signed\""));
    assert!(stderr(&approved).contains("Touch your security key"), "{}", stderr(&approved));

    // Bob has no key: refused before anything is signed.
    assert_ok(&bob.0.run(&["sync"]));
    let refused = bob.0.run(&approve);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("no key an admin confirmed"), "{}", stderr(&refused));
    queue.stop();
}
