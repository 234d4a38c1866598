//! The security key's real USB HID transport, with no key attached to these machines: the
//! client crate finds none, and that is said in words with its own code.

#![allow(clippy::expect_used, reason = "a test fails by panicking")]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usb_transport_finds_no_security_key() {
    let key = countersign_approver::presence::SecurityKey::Usb;
    let outcome = key.probe(std::time::Duration::from_millis(500)).await;
    let problem = outcome.expect_err("no security key is attached here");
    assert!(
        ["fido_no_key", "fido_permission"].contains(&problem.code),
        "{}: {}",
        problem.code,
        problem.message
    );
}
