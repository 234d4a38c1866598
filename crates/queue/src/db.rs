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

/// When a server checkpoints SQLite's write-ahead log (see [`Db::keep_checkpointing`]).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// How often a passive checkpoint runs.
    pub every: Duration,
    /// The log's length, in pages, past which it is started again while writers wait.
    pub most_pages: i64,
    /// After this many checkpoints in a row with no commit between them, the log file is
    /// emptied.
    pub quiet: u32,
}

impl Default for Checkpoints {
    /// Every 100 ms; the log started again past 128 MiB of 4 KiB pages (about 12,000
    /// approvals written without a pause) and emptied after a second without writes.
    fn default() -> Self {
        Self { every: Duration::from_millis(100), most_pages: 32_768, quiet: 10 }
    }
}

/// How long the checkpointer waits for readers and other processes' writers before it gives
/// up a `RESTART` or `TRUNCATE`, holding the write turn meanwhile.
pub const CHECKPOINT_PATIENCE_MS: u32 = 100;

/// How many rounds pass before a given-up `RESTART` or `TRUNCATE` is tried again; a failed
/// round rests as many, and twice as many after each further failure in a row (up to 64).
pub const BACK_OFF: u32 = 10;

/// What a round of the checkpointer does after its passive checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Nothing,
    /// Copy the whole log, wait for its readers, and so have the next writer start it again.
    Restart,
    /// As `Restart`, and empty the file.
    Truncate,
}

/// What the checkpointer remembers from one round to the next.
#[derive(Debug, Default)]
struct Watch {
    /// `PRAGMA data_version` at the last round (per connection: `None` on a new one).
    version: Option<i64>,
    /// Rounds in a row that found no commit.
    quiet: u32,
    /// The log's length after the last `RESTART`, until a commit has come since.
    restarted: Option<i64>,
    /// Rounds left before a given-up `RESTART` or `TRUNCATE` is tried again.
    hold: u32,
    /// Rounds left to skip after a failure, and the failures in a row.
    rest: u32,
    failures: u32,
}

impl Watch {
    /// Takes in a round's `data_version` and the log's length after its passive checkpoint,
    /// and tells what to do next.
    fn round(&mut self, version: i64, pages: i64, when: &Checkpoints) -> Next {
        if self.version == Some(version) {
            self.quiet = self.quiet.saturating_add(1);
        } else {
            // A commit has come: it started the log again if a `RESTART` had copied it all.
            self.quiet = 0;
            self.restarted = None;
        }
        self.version = Some(version);
        if self.hold > 0 {
            self.hold -= 1;
            Next::Nothing
        } else if pages > 0 && self.quiet >= when.quiet {
            Next::Truncate
        } else if pages > when.most_pages && self.restarted != Some(pages) {
            Next::Restart
        } else {
            Next::Nothing
        }
    }

    /// Takes in how a `RESTART` or `TRUNCATE` went: given up for a reader, and the log's
    /// length after it.
    fn done(&mut self, next: Next, busy: bool, pages: i64) {
        if busy {
            self.hold = BACK_OFF;
        } else if next == Next::Restart {
            self.restarted = Some(pages);
        }
    }

    /// A round that failed: the next ones rest, longer after each failure in a row, and the
    /// next connection's `data_version` starts afresh. Whether to say so at warning level.
    fn failed(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.rest = BACK_OFF.saturating_mul(1 << self.failures.min(7).saturating_sub(1)).min(64);
        self.version = None;
        self.failures == 1
    }

    /// Whether this round rests after a failure.
    fn resting(&mut self) -> bool {
        if self.rest > 0 {
            self.rest -= 1;
            return true;
        }
        false
    }
}

/// Changes whenever another connection, of this process or another, has committed.
async fn data_version(connection: &mut AnyConnection) -> Result<i64, QueueError> {
    sqlx::query("PRAGMA data_version")
        .fetch_one(&mut *connection)
        .await
        .and_then(|row| sqlx::Row::try_get(&row, 0))
        .map_err(db_error)
}

/// Runs `PRAGMA wal_checkpoint(MODE)`: whether it gave up for a reader or writer, and the
/// log's length in pages.
async fn wal_checkpoint(
    connection: &mut AnyConnection,
    mode: &str,
) -> Result<(bool, i64), QueueError> {
    let row = sqlx::query(&format!("PRAGMA wal_checkpoint({mode})"))
        .fetch_one(&mut *connection)
        .await
        .map_err(db_error)?;
    // Its columns: whether it gave up, the log's pages, and those copied.
    let busy: i64 = sqlx::Row::try_get(&row, 0).map_err(db_error)?;
    let pages: i64 = sqlx::Row::try_get(&row, 1).map_err(db_error)?;
    Ok((busy != 0, pages))
}

/// Stops checkpointing when dropped.
#[derive(Debug)]
pub struct Checkpointer(tokio::task::AbortHandle);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
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
                        // No connection checkpoints as it commits: a server checkpoints
                        // beside its writers (`Db::keep_checkpointing`); SQLite reads the log
                        // with the database file, so what another process leaves in it is
                        // checkpointed by the next server.
                        sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&mut *conn).await?;
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

    /// On SQLite, checkpoints the write-ahead log from a task of its own, on a connection of
    /// its own, until the answer is dropped; on PostgreSQL, nothing. A checkpoint copies the
    /// log's pages into the database file and syncs both; done in the commit that crossed
    /// SQLite's threshold, it held up that writer and every approval waiting on it for about
    /// 10 ms, several times a second under load. Here a passive checkpoint runs beside the
    /// writers (it takes no lock they wait for). SQLite starts the log again from its
    /// beginning only when a writer finds every page of it copied, which under writes that
    /// never pause does not happen: past `most_pages` the checkpointer takes the write turn
    /// and has the log started again (`RESTART`); once no commit has come for `quiet`
    /// checkpoints it empties the file (`TRUNCATE`). Both wait for readers that still use the
    /// log, and writers wait meanwhile, so they give up after [`CHECKPOINT_PATIENCE_MS`] and
    /// are tried again once [`BACK_OFF`] rounds have passed: a reader that lasts holds writers
    /// up about 100 ms a second.
    // Limitation: dropping the answer aborts the task, so a `RESTART` or `TRUNCATE` under way
    // finishes on SQLite's thread after the turn is given back; a writer then waits for it in
    // SQLite's busy handler (its patience, plus copying and syncing what is left).
    pub fn keep_checkpointing(&self, when: Checkpoints) -> Option<Checkpointer> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let db = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(when.every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = Watch::default();
            let mut connection: Option<AnyConnection> = None;
            loop {
                ticks.tick().await;
                if watch.resting() {
                    continue;
                }
                let done = match &mut connection {
                    Some(connection) => db.checkpoint(connection, &when, &mut watch).await,
                    None => match db.checkpointer_connection().await {
                        Ok(fresh) => {
                            db.checkpoint(connection.insert(fresh), &when, &mut watch).await
                        }
                        Err(error) => Err(error),
                    },
                };
                match done {
                    Ok(()) => watch.failures = 0,
                    Err(error) => {
                        if watch.failed() {
                            tracing::warn!(%error, "the write-ahead log was not checkpointed");
                        } else {
                            tracing::debug!(%error, "the write-ahead log was not checkpointed");
                        }
                        connection = None;
                    }
                }
            }
        });
        Some(Checkpointer(task.abort_handle()))
    }

    /// A connection taken out of the pool for good, that waits for others only briefly.
    async fn checkpointer_connection(&self) -> Result<AnyConnection, QueueError> {
        let mut connection = self.pool.acquire().await.map_err(db_error)?.detach();
        sqlx::query(&format!("PRAGMA busy_timeout = {CHECKPOINT_PATIENCE_MS}"))
            .execute(&mut connection)
            .await
            .map_err(db_error)?;
        Ok(connection)
    }

    /// One round of [`Db::keep_checkpointing`].
    async fn checkpoint(
        &self,
        connection: &mut AnyConnection,
        when: &Checkpoints,
        watch: &mut Watch,
    ) -> Result<(), QueueError> {
        let version = data_version(connection).await?;
        let (_, pages) = wal_checkpoint(connection, "PASSIVE").await?;
        let next = watch.round(version, pages, when);
        let mode = match next {
            Next::Nothing => return Ok(()),
            Next::Restart => "RESTART",
            Next::Truncate => "TRUNCATE",
        };
        let _turn = self.turn().await;
        // A commit may have come while the turn was awaited: then it is not quiet after all.
        if next == Next::Truncate && data_version(connection).await? != version {
            return Ok(());
        }
        let (busy, after) = wal_checkpoint(connection, mode).await?;
        if busy {
            tracing::debug!(mode, pages, "a reader held the write-ahead log; tried again later");
        }
        watch.done(next, busy, after);
        Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests stop at the first failure")]

    use super::*;

    /// The value of the `probe` counter in a copy of `queue.db` alone, without its log; `None`
    /// while the copy lacks it (or was taken in the middle of a checkpoint).
    async fn in_database_file(dir: &Path) -> Option<i64> {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("queue.db"), copy.path().join("copy.db")).ok()?;
        let url = format!("sqlite://{}?mode=ro", copy.path().join("copy.db").display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.ok()?;
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'probe'")
            .fetch_optional(&pool)
            .await
            .ok()??;
        pool.close().await;
        Some(int(&row, "value"))
    }

    async fn write_counter(db: &Db, name: String) {
        let (mut tx, _turn) = db.begin().await.unwrap();
        sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 7)")
            .bind(name)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// Checkpoints every 10 ms; the log started again past `most_pages`, emptied when quiet
    /// for `quiet` checkpoints.
    fn often(most_pages: i64, quiet: u32) -> Checkpoints {
        Checkpoints { every: Duration::from_millis(10), most_pages, quiet }
    }

    fn log_length(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("queue.db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    /// The rows [`write_counter`] wrote.
    async fn written_rows(db: &Db) -> i64 {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM counters WHERE value = 7")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        int(&row, "n")
    }

    /// Writes `count` rows of about `size` bytes each, one transaction each, with names from
    /// `first` on.
    async fn write_rows(db: &Db, first: usize, count: usize, size: usize) {
        for n in first..first + count {
            write_counter(db, format!("{n:06}{}", "x".repeat(size))).await;
        }
    }

    #[tokio::test]
    async fn commits_reach_the_database_file_through_the_checkpointer_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite_in(dir.path()).await.unwrap();
        write_counter(&db, "probe".to_owned()).await;
        // Past SQLite's own threshold of 1,000 pages, where a commit would checkpoint.
        write_rows(&db, 0, 150, 30_000).await;
        assert!(log_length(dir.path()) > 1_100 * 4096, "the log holds the writes");
        assert_eq!(in_database_file(dir.path()).await, None, "no commit checkpoints by itself");

        let checkpointer = db.keep_checkpointing(often(1 << 30, u32::MAX));
        assert!(checkpointer.is_some(), "SQLite is checkpointed");
        let mut found = None;
        for _ in 0..500 {
            found = in_database_file(dir.path()).await;
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(found, Some(7), "the committed row is copied into the database file");
    }

    #[tokio::test]
    async fn the_log_is_emptied_once_writes_stop_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite_in(dir.path()).await.unwrap();
        let _checkpointer = db.keep_checkpointing(often(1 << 30, 30));
        // A commit every 20 ms: never thirty checkpoints in a row without one.
        for n in 0..25 {
            write_rows(&db, n, 1, 3000).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(log_length(dir.path()) > 0, "the log is kept while writes go on");
        }
        let mut emptied = false;
        for _ in 0..500 {
            if log_length(dir.path()) == 0 {
                emptied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(emptied, "the checkpointer empties the log once writes have stopped");
        assert_eq!(written_rows(&db).await, 25, "every write is kept");
    }

    #[tokio::test]
    async fn a_log_past_its_limit_is_started_again_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite_in(dir.path()).await.unwrap();
        let _checkpointer = db.keep_checkpointing(often(64, u32::MAX));
        let mut longest = 0;
        for round in 0..20 {
            write_rows(&db, round * 40, 40, 3000).await;
            longest = longest.max(log_length(dir.path()));
        }
        // 800 rows of 3 KB took some 2,400 pages; started again past 64, the file (which
        // keeps its length when the log starts again) stays far shorter.
        assert!(longest < 1_000 * 4096, "the log was started again ({longest} bytes)");
        assert_eq!(written_rows(&db).await, 800, "every write is kept");
    }

    #[tokio::test]
    async fn a_reader_holds_writers_up_for_a_moment_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite_in(dir.path()).await.unwrap();
        // A reader keeps its snapshot open, so that no checkpoint can copy the writes after
        // it and the log cannot start again while it lasts.
        let mut reader = db.pool.begin().await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM counters").fetch_one(&mut *reader).await.unwrap();
        write_rows(&db, 0, 40, 3000).await;
        let _checkpointer = db.keep_checkpointing(often(16, u32::MAX));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The checkpointer tries to start the log again, which waits for the reader; it
        // gives up soon, and each writer waits that long at most.
        for n in 0..5 {
            let write =
                tokio::time::timeout(Duration::from_secs(1), write_rows(&db, 40 + n, 1, 10));
            assert!(write.await.is_ok(), "a writer is not held up while the reader lasts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reader.rollback().await.unwrap();
    }

    fn rule(most_pages: i64, quiet: u32) -> Checkpoints {
        Checkpoints { every: Duration::from_millis(100), most_pages, quiet }
    }

    #[test]
    fn a_long_log_is_restarted_once_until_a_commit_comes() {
        let when = rule(64, u32::MAX);
        let mut watch = Watch::default();
        assert_eq!(watch.round(1, 10, &when), Next::Nothing, "short");
        assert_eq!(watch.round(2, 100, &when), Next::Restart, "past the limit");
        watch.done(Next::Restart, false, 100);
        assert_eq!(watch.round(2, 100, &when), Next::Nothing, "no commit since: copied already");
        assert_eq!(watch.round(2, 100, &when), Next::Nothing, "still none");
        assert_eq!(watch.round(3, 100, &when), Next::Restart, "a commit, and long again");
    }

    #[test]
    fn a_given_up_checkpoint_is_tried_again_after_the_back_off() {
        let when = rule(64, u32::MAX);
        let mut watch = Watch::default();
        assert_eq!(watch.round(1, 100, &when), Next::Restart);
        watch.done(Next::Restart, true, 100);
        for n in 0..BACK_OFF {
            assert_eq!(watch.round(2 + i64::from(n), 100, &when), Next::Nothing, "round {n}");
        }
        assert_eq!(watch.round(100, 100, &when), Next::Restart, "tried again");
    }

    #[test]
    fn the_log_is_emptied_after_rounds_without_a_commit_only() {
        let when = rule(1 << 30, 3);
        let mut watch = Watch::default();
        assert_eq!(watch.round(1, 5, &when), Next::Nothing);
        assert_eq!(watch.round(1, 5, &when), Next::Nothing, "one quiet round");
        assert_eq!(watch.round(1, 5, &when), Next::Nothing, "two");
        assert_eq!(watch.round(2, 5, &when), Next::Nothing, "a commit, of the same length");
        assert_eq!(watch.round(2, 5, &when), Next::Nothing);
        assert_eq!(watch.round(2, 5, &when), Next::Nothing);
        assert_eq!(watch.round(2, 5, &when), Next::Truncate, "three quiet rounds");
        watch.done(Next::Truncate, false, 0);
        assert_eq!(watch.round(2, 0, &when), Next::Nothing, "an empty log stays");
    }

    #[test]
    fn failed_rounds_rest_longer_each_time_and_forget_the_connection() {
        let mut watch = Watch { version: Some(7), ..Watch::default() };
        assert!(watch.failed(), "the first failure is a warning");
        assert_eq!(watch.version, None, "the next connection counts afresh");
        let rested = |watch: &mut Watch| (0..100).take_while(|_| watch.resting()).count();
        assert_eq!(rested(&mut watch), BACK_OFF as usize);
        assert!(!watch.failed(), "the next in a row is not");
        assert_eq!(rested(&mut watch), 2 * BACK_OFF as usize);
        watch.failed();
        watch.failed();
        assert_eq!(rested(&mut watch), 64, "at most 64");
    }
}
