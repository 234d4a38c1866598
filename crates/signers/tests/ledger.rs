//! The Ledger signer: its APDUs against recorded device exchanges, its status words, the real
//! USB transport with no device attached, and signing end to end against the simulator of the
//! Ethereum app behind the transport crate's exchange trait.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod common;

use alloy_primitives::{keccak256, Address, B256};
use common::{checked_s3, json, vectors, Answer};
use countersign_core::signer::{Decision, Signer, SignerError};
use countersign_signers::ledger::apdu::{self, DerivationPath};
use countersign_signers::ledger::simulator::{Mode, Simulator};
use countersign_signers::ledger::{
    read_address, read_address_within, LedgerError, LedgerSigner, Link,
};

fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text.trim_start_matches("0x")).unwrap()
}

fn hash(text: &str) -> B256 {
    text.parse().unwrap()
}

fn path(text: &str) -> DerivationPath {
    DerivationPath::parse("path", text).unwrap()
}

/// The answer's data without its status word, which must be 0x9000.
fn data(answer: &[u8]) -> &[u8] {
    let (data, status) = answer.split_at(answer.len() - 2);
    assert_eq!(status, [0x90, 0x00]);
    data
}

#[test]
fn derivation_paths_encode_as_the_app_specifies() {
    let default = DerivationPath::account(0).unwrap();
    assert_eq!(default.to_string(), "m/44'/60'/0'/0/0");
    assert_eq!(hex::encode(default.encode()), "058000002c8000003c800000000000000000000000");
    assert_eq!(
        hex::encode(path("44'/60'/0'/0'/0").encode()),
        "058000002c8000003c800000008000000000000000"
    );
    assert_eq!(DerivationPath::account(3).unwrap(), path("m/44h/60h/3h/0/0"));
    let encoded = path("m/44'/60'/1'/2/3").encode();
    let (back, rest) = DerivationPath::decode(&encoded).unwrap();
    assert_eq!((back.to_string().as_str(), rest), ("m/44'/60'/1'/2/3", &[][..]));
}

#[test]
fn fail_bad_derivation_paths() {
    for text in
        ["", "m/", "44'/60'/x", "44''/60", "2147483648/0", "-1", "44'/ 60'", &"0/".repeat(11)]
    {
        let error = DerivationPath::parse("path", text.trim_end_matches('/')).unwrap_err();
        assert_eq!(error.field, "path", "{text}");
    }
    assert!(DerivationPath::account(1 << 31).is_err());
    assert!(DerivationPath::decode(&[11]).is_none(), "more than ten components");
    assert!(DerivationPath::decode(&[2, 0, 0, 0]).is_none(), "shorter than it says");
}

#[test]
fn commands_match_the_recorded_exchanges() {
    let recorded = json(vectors("ledger/recorded.json"));
    let get = &recorded["getAddress"];
    let command = apdu::get_address(&path(get["path"].as_str().unwrap()), false).unwrap();
    assert_eq!(hex::encode(command.serialize()), get["command"].as_str().unwrap());

    let sign = &recorded["signEIP712HashedMessage"];
    let domain = hash(sign["domain"].as_str().unwrap());
    let message = hash(sign["message"].as_str().unwrap());
    let command =
        apdu::sign_eip712_hashed(&path(sign["path"].as_str().unwrap()), &domain, &message).unwrap();
    let expected = format!(
        "{}{}{}",
        sign["commandPrefix"].as_str().unwrap(),
        hex::encode(domain),
        hex::encode(message)
    );
    assert_eq!(hex::encode(command.serialize()), expected);

    let config = &recorded["getAppConfiguration"];
    assert_eq!(
        hex::encode(apdu::get_configuration().serialize()),
        config["command"].as_str().unwrap()
    );
}

#[test]
fn answers_parse_as_recorded() {
    let recorded = json(vectors("ledger/recorded.json"));
    let get = &recorded["getAddress"];
    let answer = bytes(get["answer"].as_str().unwrap());
    let parsed = apdu::parse_address(data(&answer)).unwrap();
    let expected: Address = get["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(parsed.address, expected);
    assert_eq!(parsed.public_key[..4], [0x04, 0xdf, 0x00, 0xad]);

    let sign = &recorded["signEIP712HashedMessage"];
    let answer = bytes(sign["answer"].as_str().unwrap());
    let signature = apdu::parse_signature(data(&answer)).unwrap();
    assert_eq!(signature.as_bytes()[64], 28, "v stays 28");
    let mut preimage = vec![0x19, 0x01];
    preimage.extend(bytes(sign["domain"].as_str().unwrap()));
    preimage.extend(bytes(sign["message"].as_str().unwrap()));
    let digest = keccak256(&preimage);
    assert_eq!(digest, hash(sign["digest"].as_str().unwrap()));
    let signer: Address = sign["recoversTo"].as_str().unwrap().parse().unwrap();
    assert_eq!(signature.recover(&digest).unwrap(), signer);

    let config = &recorded["getAppConfiguration"];
    let parsed = apdu::parse_configuration(data(&bytes(config["answer"].as_str().unwrap())));
    assert_eq!(parsed.unwrap(), apdu::AppConfiguration { flags: 1, version: (1, 1, 6) });
}

#[test]
fn fail_malformed_answers() {
    let recorded = json(vectors("ledger/recorded.json"));
    let good = bytes(recorded["getAddress"]["answer"].as_str().unwrap());
    let good = data(&good).to_vec();
    let mut wrong_address = good.clone();
    // One hex digit of the ASCII address changed: no longer the key's address.
    let last = wrong_address.len() - 1;
    wrong_address[last] = if wrong_address[last] == b'1' { b'2' } else { b'1' };
    let mut compressed = good.clone();
    compressed[1] = 0x02;
    for answer in
        [vec![], good[..60].to_vec(), wrong_address, compressed, [good.clone(), vec![0]].concat()]
    {
        assert!(matches!(apdu::parse_address(&answer), Err(LedgerError::Answer { .. })));
    }
    let signature = bytes(recorded["signEIP712HashedMessage"]["answer"].as_str().unwrap());
    let signature = data(&signature).to_vec();
    let mut v = signature.clone();
    v[0] = 37;
    let mut high_s = signature.clone();
    // s' = n - s: the same signature with a high s, which is refused, not flipped.
    let n = bytes("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(signature[33 + i]) - borrow;
        high_s[33 + i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    for answer in [vec![], signature[..64].to_vec(), v, high_s] {
        assert!(matches!(apdu::parse_signature(&answer), Err(LedgerError::Answer { .. })));
    }
    assert!(apdu::parse_configuration(&[1, 2]).is_err());
}

#[test]
fn data_over_one_apdu_is_refused_not_truncated() {
    assert!(apdu::command(apdu::INS_GET_ADDRESS, 0, 0, vec![0; 255]).is_ok());
    let refused = apdu::command(apdu::INS_GET_ADDRESS, 0, 0, vec![0; 256]);
    assert!(matches!(refused, Err(LedgerError::Answer { .. })));
    // The longest command Countersign sends: ten path components and two hashes.
    let long = path(&["1'"; 10].join("/"));
    let command = apdu::sign_eip712_hashed(&long, &B256::ZERO, &B256::ZERO).unwrap();
    assert_eq!(command.serialize()[4], 105);
}

#[test]
fn status_words_have_their_own_meaning() {
    use apdu::{status_error, INS_GET_ADDRESS, INS_SIGN_EIP712};
    assert_eq!(status_error(0x6985, INS_SIGN_EIP712), LedgerError::Rejected);
    assert_eq!(status_error(0x5515, INS_SIGN_EIP712), LedgerError::Locked);
    assert_eq!(status_error(0x6982, INS_GET_ADDRESS), LedgerError::Locked);
    for word in [0x6E00, 0x6E01, 0x6D00, 0x6511] {
        assert_eq!(status_error(word, INS_GET_ADDRESS), LedgerError::AppClosed);
    }
    assert_eq!(status_error(0x6A80, INS_SIGN_EIP712), LedgerError::SettingOff);
    assert_eq!(status_error(0x6A80, INS_GET_ADDRESS), LedgerError::Status { status: 0x6A80 });
    let codes: Vec<&str> = [
        LedgerError::NoDevice,
        LedgerError::Locked,
        LedgerError::AppClosed,
        LedgerError::SettingOff,
        LedgerError::Rejected,
        LedgerError::Timeout,
        LedgerError::Disconnected,
        LedgerError::Busy,
    ]
    .iter()
    .map(LedgerError::code)
    .collect();
    let mut distinct = codes.clone();
    distinct.dedup();
    assert_eq!(codes, distinct);
    assert_eq!(SignerError::from(LedgerError::Rejected), SignerError::Declined);
}

#[tokio::test]
async fn the_real_usb_transport_finds_no_device() {
    // No Ledger is attached to the machines this runs on: ledger-transport-hid answers "device
    // not found", which becomes the no-device message.
    let error = read_address(&Link::Usb, &DerivationPath::account(0).unwrap(), false).await;
    assert_eq!(error.unwrap_err(), LedgerError::NoDevice);
    let signer =
        LedgerSigner::enrolled(Link::Usb, DerivationPath::account(0).unwrap(), Address::ZERO);
    let outcome = signer.sign(&checked_s3(), &Answer(Decision::Approve)).await.unwrap_err();
    assert!(matches!(outcome, SignerError::Unavailable { code: "ledger_not_found", .. }));
    assert!(outcome.to_string().contains("no Ledger found"), "{outcome}");
}

#[tokio::test]
async fn the_simulator_answers_the_hardhat_accounts() {
    let simulator = Simulator::test();
    let link = Link::Simulated(simulator.clone());
    let account = |i| DerivationPath::account(i).unwrap();
    // Hardhat's documented accounts 0 and 1 for its test mnemonic, at m/44'/60'/0'/0/i.
    let expected: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap();
    assert_eq!(read_address(&link, &account(0), true).await.unwrap().address, expected);
    let second = read_address(&link, &path("m/44'/60'/0'/0/1"), false).await.unwrap();
    let expected: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".parse().unwrap();
    assert_eq!(second.address, expected);
    assert_ne!(simulator.address(&account(1)), simulator.address(&account(0)));
}

#[tokio::test]
async fn signs_a_safe_transaction_on_the_simulator() {
    let simulator = Simulator::test();
    let account = DerivationPath::account(2).unwrap();
    let address = simulator.address(&account);
    let signer = LedgerSigner::enrolled(Link::Simulated(simulator.clone()), account, address);
    let request = checked_s3();
    let signature = signer.sign(&request, &Answer(Decision::Approve)).await.unwrap();
    assert_eq!(signature.recover(&request.hashes().safe_tx).unwrap(), address);
    // The device was shown the same two hashes as the app shows.
    let shown = simulator.shown();
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (shown[0].domain, shown[0].message),
        (request.hashes().domain, request.hashes().message)
    );
    // It checked the device's address first, then asked for the signature: two commands.
    let commands = simulator.commands();
    assert_eq!(commands.iter().map(|c| c[1]).collect::<Vec<_>>(), [0x02, 0x0C]);
}

#[tokio::test]
async fn each_device_state_has_its_own_outcome() {
    let simulator = Simulator::test();
    let account = DerivationPath::account(0).unwrap();
    let address = simulator.address(&account);
    let signer = LedgerSigner::enrolled(Link::Simulated(simulator.clone()), account, address);
    let request = checked_s3();
    let cases = [
        (Mode::Locked, "ledger_locked", "locked"),
        (Mode::AppClosed, "ledger_app_closed", "Ethereum app is not open"),
        (Mode::SettingOff, "ledger_setting_off", "Blind signing"),
        (Mode::Unplugged, "ledger_not_found", "no Ledger found"),
        (Mode::GoesAway, "ledger_disconnected", "went away"),
    ];
    for (mode, code, words) in cases {
        simulator.set_mode(mode);
        let error = signer.sign(&request, &Answer(Decision::Approve)).await.unwrap_err();
        let SignerError::Unavailable { code: got, detail } = &error else {
            panic!("{mode:?}: {error}")
        };
        assert_eq!(*got, code, "{mode:?}");
        assert!(detail.contains(words), "{mode:?}: {detail}");
    }
    // After going away it is unplugged; plugged back in, it signs again without a restart.
    assert_eq!(simulator.mode(), Mode::Unplugged);
    simulator.set_mode(Mode::Ready);
    assert!(signer.sign(&request, &Answer(Decision::Approve)).await.is_ok());
    simulator.set_mode(Mode::Rejects);
    let outcome = signer.sign(&request, &Answer(Decision::Approve)).await;
    assert_eq!(outcome, Err(SignerError::Declined), "a rejection on the device is a decision");
    // Declined in the app: the device is never asked.
    simulator.set_mode(Mode::Ready);
    let before = simulator.commands().len();
    let outcome = signer.sign(&request, &Answer(Decision::Decline)).await;
    assert_eq!((outcome, simulator.commands().len()), (Err(SignerError::Declined), before));
}

#[tokio::test]
async fn another_device_is_refused_before_anything_is_signed() {
    let simulator = Simulator::test();
    let account = DerivationPath::account(0).unwrap();
    let enrolled = Address::repeat_byte(0x42);
    let signer = LedgerSigner::enrolled(Link::Simulated(simulator.clone()), account, enrolled);
    let error = signer.sign(&checked_s3(), &Answer(Decision::Approve)).await.unwrap_err();
    assert!(
        matches!(error, SignerError::Unavailable { code: "ledger_other_device", .. }),
        "{error}"
    );
    assert!(simulator.shown().is_empty(), "the device was never asked to sign");
}

#[tokio::test]
async fn a_mode_file_drives_a_simulator_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mode");
    let simulator = Simulator::with_mode_file(file.clone());
    assert_eq!(simulator.mode(), Mode::Ready, "no file: ready");
    std::fs::write(&file, "locked\n").unwrap();
    let link = Link::Simulated(simulator);
    let error = read_address(&link, &DerivationPath::account(0).unwrap(), false).await;
    assert_eq!(error.unwrap_err(), LedgerError::Locked);
}

#[test]
fn ledger_answer_fuzz_corpus() {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../fuzz/corpus/ledger_answer");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        apdu::fuzz_answer(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count >= 4);
}

#[tokio::test]
async fn a_device_that_never_answers_times_out() {
    let simulator = Simulator::test();
    simulator.set_mode(Mode::Hangs);
    let link = Link::Simulated(simulator.clone());
    let account = DerivationPath::account(0).unwrap();
    let limit = std::time::Duration::from_millis(200);
    let error = read_address_within(&link, &account, true, limit).await.unwrap_err();
    assert_eq!(error, LedgerError::Timeout);
    assert_eq!(error.code(), "ledger_timeout");
    assert!(error.to_string().contains("did not answer in time"), "{error}");
    // Once the person answers (the hang is over) the device works again.
    simulator.set_mode(Mode::Ready);
    tokio::time::sleep(countersign_signers::ledger::simulator::HANG).await;
    assert!(read_address(&link, &account, false).await.is_ok());
}
