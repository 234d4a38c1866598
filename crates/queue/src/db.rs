//! Storage through sqlx's `Any` driver: SQLite by default, PostgreSQL for a `postgres://` URL.
//!
//! One schema serves both: only TEXT and BIGINT columns, `$n` placeholders written in
//! ascending order (SQLite numbers named parameters by first appearance), and every change in
//! one transaction. Writers take turns: on SQLite behind a mutex and `BEGIN IMMEDIATE`, on
//! PostgreSQL behind a transaction-scoped advisory lock that every queue process on the
//! database shares, so no write transaction ever fails for a concurrent one.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Transaction};

use crate::QueueError;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, \
     address TEXT, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, member_id TEXT NOT NULL, \
     created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (token_hash TEXT PRIMARY KEY, member_id TEXT NOT NULL, \
     key_hash TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS vaults (id TEXT PRIMARY KEY, chain_id BIGINT NOT NULL, address TEXT NOT NULL, \
     safe_version TEXT NOT NULL, owners TEXT NOT NULL, threshold BIGINT NOT NULL, next_nonce TEXT NOT NULL, \
     updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, vault_id TEXT NOT NULL, seq BIGINT NOT NULL, \
     state TEXT NOT NULL, transaction_json TEXT NOT NULL, safe_tx_hash TEXT NOT NULL, nonce TEXT NOT NULL, \
     initiator_id TEXT NOT NULL, initiator_address TEXT NOT NULL, initiator_signature TEXT NOT NULL, \
     created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, reason TEXT, executed_tx TEXT, signatures TEXT, \
     view TEXT, rejected_by TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_seq ON requests (seq)",
    "CREATE INDEX IF NOT EXISTS requests_vault_nonce ON requests (vault_id, nonce)",
    "CREATE TABLE IF NOT EXISTS approvals (request_id TEXT NOT NULL, owner TEXT NOT NULL, member_id TEXT NOT NULL, \
     signature TEXT NOT NULL, created_at BIGINT NOT NULL, fido TEXT, PRIMARY KEY (request_id, owner))",
    "CREATE TABLE IF NOT EXISTS fido_credentials (id TEXT PRIMARY KEY, member_id TEXT NOT NULL, \
     public_key TEXT NOT NULL, counter BIGINT NOT NULL, created_at BIGINT NOT NULL, confirmed_at BIGINT, \
     confirmed_by TEXT, revoked_at BIGINT, revoked_by TEXT, attestation TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fido_registrations (member_id TEXT PRIMARY KEY, state TEXT NOT NULL, \
     created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fido_policies (vault_id TEXT PRIMARY KEY, policy TEXT NOT NULL, \
     updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO counters (name, value) VALUES ('request_seq', 0) ON CONFLICT (name) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS audit (seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, kind TEXT NOT NULL, \
     body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
];

/// Which database the URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The queue's database.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite takes one writer at a time; queueing writers here, in order, is faster than
    /// letting them collide in SQLite's busy handler, which sleeps and retries.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Held for as long as a SQLite write transaction runs (nothing on PostgreSQL).
pub type WriteTurn = Option<tokio::sync::OwnedMutexGuard<()>>;

impl Db {
    /// The SQLite file `queue.db` in `dir`, created readable by its owner only (SQLite gives
    /// its `-wal` and `-shm` files the same mode).
    pub async fn sqlite_in(dir: &Path) -> Result<Self, QueueError> {
        let path = dir.join("queue.db");
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options
            .open(&path)
            .map_err(|e| QueueError::Database(format!("{}: {e}", path.display())))?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and creates the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(QueueError::Database(
                "the database URL must start with sqlite: or postgres://".into(),
            ));
        };
        let options = AnyPoolOptions::new()
            // On SQLite the approval writer keeps one of the five; four serve the rest.
            .max_connections(if backend == Backend::Sqlite { 5 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        // WAL with NORMAL: a killed process loses nothing committed; an OS
                        // crash or power loss can lose the last commits (see the README).
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        // Pages read through a mapping, not copied in by read(2) each time
                        // another connection's commit empties this one's cache.
                        sqlx::query("PRAGMA mmap_size = 268435456").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(url).await.map_err(db_error)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(db_error)?;
        }
        // Columns added since the first schema, for databases made before them: requests'
        // rendered views (filled in by `model::fill_views` at start), approvals' FIDO2
        // assertions, and who rejected a request.
        for (table, column) in
            [("requests", "view"), ("approvals", "fido"), ("requests", "rejected_by")]
        {
            let probe = format!("SELECT {column} FROM {table} LIMIT 1");
            if sqlx::query(&probe).fetch_optional(&pool).await.is_err() {
                sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
                    .execute(&pool)
                    .await
                    .map_err(db_error)?;
            }
        }
        Ok(Self { pool, backend, writer: Default::default() })
    }

    /// A write transaction that holds off other writers until it ends. Keep the turn alive
    /// as long as the transaction.
    pub async fn begin(&self) -> Result<(Transaction<'static, Any>, WriteTurn), QueueError> {
        let turn = self.turn().await;
        let tx = self.pool.begin_with(self.begin_statement()).await.map_err(db_error)?;
        self.take_turns(tx, turn).await
    }

    /// As [`Db::begin`], on a connection the caller keeps: one that writes again and again
    /// keeps what SQLite has read into its cache, and is neither checked nor handed back to
    /// the pool between transactions.
    pub async fn begin_on<'c>(
        &self,
        connection: &'c mut AnyConnection,
    ) -> Result<(Transaction<'c, Any>, WriteTurn), QueueError> {
        let turn = self.turn().await;
        let tx = connection.begin_with(self.begin_statement()).await.map_err(db_error)?;
        self.take_turns(tx, turn).await
    }

    async fn turn(&self) -> WriteTurn {
        match self.backend {
            Backend::Sqlite => Some(self.writer.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }

    fn begin_statement(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }

    async fn take_turns<'c>(
        &self,
        mut tx: Transaction<'c, Any>,
        turn: WriteTurn,
    ) -> Result<(Transaction<'c, Any>, WriteTurn), QueueError> {
        if self.backend == Backend::Postgres {
            // Writers take turns on PostgreSQL too, across every queue process on the
            // database: each statement after the lock sees every earlier writer's commit.
            sqlx::query("SELECT pg_advisory_xact_lock(7201)")
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        Ok((tx, turn))
    }
}

pub fn db_error(error: sqlx::Error) -> QueueError {
    QueueError::Database(error.to_string())
}

pub fn text(row: &AnyRow, column: &str) -> String {
    sqlx::Row::try_get::<String, _>(row, column).unwrap_or_default()
}

pub fn optional_text(row: &AnyRow, column: &str) -> Option<String> {
    sqlx::Row::try_get::<Option<String>, _>(row, column).ok().flatten()
}

pub fn optional_int(row: &AnyRow, column: &str) -> Option<i64> {
    sqlx::Row::try_get::<Option<i64>, _>(row, column).ok().flatten()
}

pub fn int(row: &AnyRow, column: &str) -> i64 {
    sqlx::Row::try_get::<i64, _>(row, column).unwrap_or_default()
}
