//! What the sync crate's test binaries share: the example Safe, test keys, case files and the
//! queue's default rules.

#![allow(dead_code, reason = "each test binary uses part of it")]
#![allow(clippy::unwrap_used, clippy::panic, reason = "a test fails by panicking")]

use alloy_primitives::{address, Address};
use countersign_core::secret::SecretString;
use countersign_queue::db::Db;
use countersign_queue::model::QueueRules;
use countersign_signers::software::SoftwareSigner;
use serde_json::Value;

/// The Safe of the case files.
pub const SAFE: Address = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");

/// The private key `byte` repeated 32 times, as hex.
pub fn hex_of(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A software key from [`hex_of`].
pub fn key(byte: u8) -> SoftwareSigner {
    SoftwareSigner::from_hex(&SecretString::new(hex_of(byte))).unwrap()
}

/// The request of a case under the workspace's `tests/cases/`.
pub fn transaction(file: &str) -> Value {
    let path = format!(
        "{}/../../tests/cases/{file}/request.json",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The queue's rules with the default policy and the shipped token list.
pub fn rules() -> QueueRules {
    QueueRules {
        policy: Default::default(),
        tokens: countersign_core::tokens::TokenList::shipped().unwrap(),
    }
}

/// Empty databases to run against, by URL: a SQLite file always, and a PostgreSQL database
/// of its own when a server is configured.
pub async fn empty_databases() -> Vec<(String, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("sqlite://{}?mode=rwc", dir.path().join("queue.db").display());
    let mut out = vec![("sqlite".to_owned(), file, dir)];
    match std::env::var("COUNTERSIGN_TEST_POSTGRES_URL") {
        Ok(url) => {
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&url).await.unwrap();
            let name = format!("cs_{}", hex::encode(rand::random::<[u8; 8]>()));
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
            let (base, _) = url.rsplit_once('/').unwrap();
            out.push((
                "postgres".to_owned(),
                format!("{base}/{name}"),
                tempfile::tempdir().unwrap(),
            ));
        }
        Err(_) if std::env::var("COUNTERSIGN_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("COUNTERSIGN_REQUIRE_POSTGRES=1 but COUNTERSIGN_TEST_POSTGRES_URL is not set");
        }
        Err(_) => eprintln!("PostgreSQL suite skipped: COUNTERSIGN_TEST_POSTGRES_URL is not set"),
    }
    out
}

/// The databases to run against, with the queue's schema: SQLite always, PostgreSQL when
/// configured.
pub async fn databases() -> Vec<(String, Db, tempfile::TempDir)> {
    let mut out = Vec::new();
    for (backend, url, dir) in empty_databases().await {
        let db = match backend.as_str() {
            "sqlite" => Db::sqlite_in(dir.path()).await,
            _ => Db::connect(&url).await,
        };
        out.push((backend, db.unwrap(), dir));
    }
    out
}
