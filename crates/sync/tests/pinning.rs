//! Pinned TLS against real queue servers on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use countersign_queue::server;
use countersign_queue::tls::Identity;
use countersign_sync::client::{ClientError, QueueClient};
use countersign_sync::pin::Pins;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A queue server with a fresh SQLite database, on loopback.
async fn start(identity: &Identity) -> (server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = countersign_queue::db::Db::sqlite_in(dir.path()).await.unwrap();
    let rules = countersign_queue::model::QueueRules {
        policy: countersign_core::policy::Policy::default(),
        tokens: countersign_core::tokens::TokenList::shipped().unwrap(),
    };
    let api = countersign_queue::api::ApiState::new(db, rules, Default::default());
    (server::start(loopback(), identity, api).await.unwrap(), dir)
}

#[tokio::test]
async fn the_pinned_server_answers() {
    let identity = Identity::ephemeral().unwrap();
    let (running, _db) = start(&identity).await;
    let client = QueueClient::new(&running.url(), Pins::parse(&[&running.pin]).unwrap()).unwrap();
    let health = client.health().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(running.counters.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn fail_a_server_with_another_key_gets_no_request_byte() {
    let pinned = Identity::ephemeral().unwrap();
    let impostor = Identity::ephemeral().unwrap();
    assert_ne!(pinned.pin(), impostor.pin());
    let (running, _db) = start(&impostor).await;

    let client = QueueClient::new(&running.url(), Pins::parse(&[&pinned.pin()]).unwrap()).unwrap();
    let error = client.health().await.unwrap_err();
    assert!(matches!(error, ClientError::PinMismatch), "{error:?}");
    assert!(error.to_string().contains("none of the configured pins"), "{error}");
    assert_eq!(running.counters.requests.load(Ordering::Relaxed), 0, "no request reached it");
    assert_eq!(running.counters.handshakes.load(Ordering::Relaxed), 0, "no handshake completed");
}

#[tokio::test]
async fn the_second_pin_serves_a_rotation() {
    let old = Identity::ephemeral().unwrap();
    let new = Identity::ephemeral().unwrap();
    let (running, _db) = start(&new).await;
    let pins = Pins::parse(&[&old.pin(), &new.pin()]).unwrap();
    let client = QueueClient::new(&running.url(), pins).unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn fail_a_tls12_only_server_is_refused() {
    let identity = Identity::ephemeral().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        acceptor.accept(stream).await.is_ok()
    });

    let client =
        QueueClient::new(&format!("https://{addr}"), Pins::parse(&[&identity.pin()]).unwrap())
            .unwrap();
    assert!(client.health().await.is_err());
    assert!(!served.await.unwrap(), "the TLS 1.2 handshake must not complete");
}

#[test]
fn fail_malformed_pins() {
    assert!(Pins::parse(&[]).is_err());
    assert!(Pins::parse(&["a", "b", "c"]).is_err());
    assert!(Pins::parse(&["not base64!"]).is_err());
    assert!(Pins::parse(&["AAAA"]).is_err(), "3 bytes is no SHA-256");
}

#[test]
fn the_key_and_so_the_pin_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Identity::load_or_create(dir.path()).unwrap();
    let again = Identity::load_or_create(dir.path()).unwrap();
    assert_eq!(first.pin(), again.pin());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
