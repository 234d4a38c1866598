//! Countersign's local store: one SQLite file, every sensitive value sealed.
//!
//! - [`seal`]: AES-256-GCM with associated data naming table, column and row.
//! - [`keywrap`]: the data key, wrapped by the OS keyring or by a passphrase (Argon2id).
//! - [`audit`]: the hash-chained log of what the approver saw and did.
//!
//! Every change is one SQLite transaction (WAL, `synchronous = FULL`), begun `IMMEDIATE` so a
//! second process waits instead of failing half way; a process killed mid-write leaves the last
//! committed state. The audit entry describing a change is written in the change's own
//! transaction, so the log and the data cannot disagree.

pub mod keywrap;
mod queue;
mod records;
pub mod seal;
mod tripwire;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use countersign_core::secret::SecretString;
use countersign_core::InputError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

pub use queue::{row_part, CachedRequest};
pub use records::KeyInfo;
pub use tripwire::{Incident, Recorded};

use crate::keywrap::{KdfParams, Protection};
use crate::seal::{Place, Sealer};
use countersign_core::audit::{
    self, entry_hash, verify_chain, AuditEntry, ChainBreak, ChainReport, LOCAL,
};

/// The database file inside the data folder.
pub const DB_FILE: &str = "countersign.db";

const FORMAT: &str = "countersign-store-1";

/// Why the store could not do what was asked. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no Countersign store in {path}; create one with `countersign init`")]
    NotInitialized { path: PathBuf },
    #[error("a Countersign store already exists in {path}")]
    AlreadyInitialized { path: PathBuf },
    #[error("wrong passphrase (or the wrapped data key was altered)")]
    WrongPassphrase,
    #[error("a passphrase is needed: give it with --passphrase-file, or run in a terminal")]
    PassphraseRequired,
    #[error("keyring: {detail}")]
    Keyring { detail: String },
    #[error(
        "the sealed value in {table}.{column} for row {row} was altered or moved; it was not used"
    )]
    Tampered { table: &'static str, column: &'static str, row: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    Duplicate { what: String },
    #[error("the store is damaged: {detail}")]
    Corrupt { detail: String },
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("database: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Database(error.to_string())
    }
}

/// How the store's data key is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectionKind {
    Keyring,
    Passphrase,
}

impl ProtectionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Keyring => "keyring",
            Self::Passphrase => "passphrase",
        }
    }
}

/// An open, unlocked store.
pub struct Store {
    pool: SqlitePool,
    sealer: Sealer,
    store_id: String,
    protection: ProtectionKind,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Whether `dir` holds a store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// Creates a store in `dir` with a fresh data key.
    pub async fn create(dir: &Path, protection: Protection) -> Result<Self, StoreError> {
        if Self::exists(dir) {
            return Err(StoreError::AlreadyInitialized { path: dir.to_owned() });
        }
        create_private_dir(dir)?;
        let store_id = hex::encode(keywrap::new_data_key().expose().get(..16).unwrap_or_default());
        let data_key = keywrap::new_data_key();

        let (kind, kek, kdf) = match &protection {
            Protection::Keyring => {
                (ProtectionKind::Keyring, keywrap::keyring_create(&store_id).await?, None)
            }
            Protection::Passphrase(passphrase) => {
                let params = KdfParams::fresh();
                (ProtectionKind::Passphrase, keywrap::derive(passphrase, &params)?, Some(params))
            }
        };
        let wrapped = keywrap::wrap(&kek, &store_id, &data_key)?;

        // Built under a temporary name and renamed when complete, so a process killed during
        // `init` leaves no half-made store behind.
        let mut suffix = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        let building = dir.join(format!("{DB_FILE}.init-{}", hex::encode(suffix)));
        let pool = connect_file(&building, true).await?;
        restrict_file(&building)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let store = Self {
            pool,
            sealer: Sealer::new(&data_key)?,
            store_id: store_id.clone(),
            protection: kind,
            path: dir.to_owned(),
        };

        let mut tx = store.begin().await?;
        insert_meta(&mut tx, "format", FORMAT.as_bytes()).await?;
        insert_meta(&mut tx, "store_id", store_id.as_bytes()).await?;
        insert_meta(&mut tx, "protection", kind.name().as_bytes()).await?;
        if let Some(params) = kdf {
            let text = serde_json::to_vec(&params)
                .map_err(|e| StoreError::Corrupt { detail: e.to_string() })?;
            insert_meta(&mut tx, "kdf", &text).await?;
        }
        insert_meta(&mut tx, "wrapped_data_key", &wrapped).await?;
        let policy = countersign_core::policy::Policy::default().to_json();
        let sealed_policy = store.sealer.seal(records::POLICY, policy.as_bytes())?;
        sqlx::query("INSERT INTO policy (id, updated_at, sealed_body) VALUES (1, ?, ?)")
            .bind(now())
            .bind(sealed_policy)
            .execute(&mut *tx)
            .await?;
        tripwire::init_ledgers(&store.sealer, &mut tx).await?;
        let policy_value: serde_json::Value = serde_json::from_str(&policy).unwrap_or_default();
        let body = serde_json::json!({
            "protection": kind.name(), "storeId": store_id, "policy": policy_value,
        });
        store.audit_in(&mut tx, "store_created", &body).await?;
        tx.commit().await?;
        let Self { pool, sealer, store_id, protection, path } = store;
        // Fold the write-ahead log into the file before it is renamed: a WAL belongs to the
        // name it was made under.
        sqlx::query("PRAGMA journal_mode = DELETE").execute(&pool).await?;
        pool.close().await;
        std::fs::rename(&building, dir.join(DB_FILE))
            .map_err(|e| StoreError::Database(format!("{}: {e}", building.display())))?;
        let pool = connect(dir, false).await?;
        tracing::info!(protection = kind.name(), "store created");
        Ok(Self { pool, sealer, store_id, protection, path })
    }

    /// How the store in `dir` is protected, read without unlocking it.
    pub async fn protection_of(dir: &Path) -> Result<ProtectionKind, StoreError> {
        if !Self::exists(dir) {
            return Err(StoreError::NotInitialized { path: dir.to_owned() });
        }
        let pool = connect(dir, false).await?;
        let kind = read_protection(&pool).await;
        pool.close().await;
        kind
    }

    /// Opens and unlocks the store in `dir`; `passphrase` is asked only for a passphrase store.
    pub async fn open(
        dir: &Path,
        passphrase: impl FnOnce() -> Result<SecretString, StoreError>,
    ) -> Result<Self, StoreError> {
        if !Self::exists(dir) {
            return Err(StoreError::NotInitialized { path: dir.to_owned() });
        }
        let header = read_header(&dir.join(DB_FILE));
        if header.as_ref().map(|h| h.as_slice()) != Some(b"SQLite format 3\0".as_slice()) {
            let detail = format!("{} is not a Countersign store", dir.join(DB_FILE).display());
            return Err(StoreError::Corrupt { detail });
        }
        let pool = connect(dir, false).await?;
        let complete =
            sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
                .fetch_optional(&pool)
                .await?;
        if complete.is_none() {
            let detail =
                format!("{} is not a complete Countersign store", dir.join(DB_FILE).display());
            return Err(StoreError::Corrupt { detail });
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        let format = read_meta(&pool, "format").await?;
        if format != FORMAT.as_bytes() {
            return Err(StoreError::Corrupt { detail: "unknown store format".into() });
        }
        let store_id = String::from_utf8(read_meta(&pool, "store_id").await?)
            .map_err(|_| StoreError::Corrupt { detail: "store id".into() })?;
        let protection = read_protection(&pool).await?;
        let wrapped = read_meta(&pool, "wrapped_data_key").await?;

        let kek = match protection {
            ProtectionKind::Keyring => keywrap::keyring_fetch(&store_id).await?,
            ProtectionKind::Passphrase => {
                let params: KdfParams = serde_json::from_slice(&read_meta(&pool, "kdf").await?)
                    .map_err(|_| StoreError::Corrupt { detail: "Argon2id parameters".into() })?;
                keywrap::derive(&passphrase()?, &params)?
            }
        };
        let data_key = keywrap::unwrap(&kek, &store_id, &wrapped).ok_or(match protection {
            ProtectionKind::Passphrase => StoreError::WrongPassphrase,
            ProtectionKind::Keyring => StoreError::Keyring {
                detail: "the keyring's key does not open this store's data key".into(),
            },
        })?;
        let sealer = Sealer::new(&data_key)?;
        let store = Self { pool, sealer, store_id, protection, path: dir.to_owned() };
        store.fill_row_parts().await?;
        Ok(store)
    }

    pub fn protection(&self) -> ProtectionKind {
        self.protection
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// Deletes the store's keyring entry, if any, and the store's files: local data erased.
    pub async fn erase(self) -> Result<(), StoreError> {
        let dir = self.path.clone();
        if self.protection == ProtectionKind::Keyring {
            keywrap::keyring_delete(&self.store_id).await?;
        }
        self.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("{DB_FILE}{suffix}"));
            if file.exists() {
                std::fs::remove_file(&file).map_err(|e| StoreError::Database(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        match self.pool.begin_with("BEGIN IMMEDIATE").await {
            // A caller dropped while its BEGIN was on its way to SQLite's thread (a sync cut
            // short by a timeout, say) leaves the connection inside a transaction that nothing
            // holds, and sqlx refuses every BEGIN on it after that. Closing the connection ends
            // that transaction (SQLite rolls it back); the pool opens a fresh one.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                // Given back to the pool before beginning again (it holds one connection).
                let stuck = self.pool.acquire().await?;
                let depth = <<Sqlite as sqlx::Database>::TransactionManager as sqlx::TransactionManager>::get_transaction_depth(&stuck);
                if depth > 0 {
                    stuck.close().await?;
                } else {
                    drop(stuck);
                }
                Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
            }
            begun => Ok(begun?),
        }
    }

    /// Appends an audit entry in its own transaction.
    pub async fn audit(&self, kind: &str, body: &serde_json::Value) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let seq = self.audit_in(&mut tx, kind, body).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Appends an audit entry inside `tx` and moves the sealed head forward.
    async fn audit_in(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        kind: &str,
        body: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
        let (prev_seq, prev_hash) = match last {
            Some(row) => {
                let hash: String = row.get("hash");
                let prev = audit::decode(&hash)
                    .ok_or_else(|| StoreError::Corrupt { detail: "audit hash".into() })?;
                (row.get::<i64, _>("seq") as u64, prev)
            }
            None => (0, [0u8; 32]),
        };
        // The log must end where the sealed head says before it grows: otherwise the next
        // entry would cover up entries removed or rewritten by hand.
        let head = sqlx::query("SELECT value FROM meta WHERE name = 'audit_head'")
            .fetch_optional(&mut **tx)
            .await?;
        match head {
            Some(row) => {
                let sealed = self.sealer.open(HEAD, &row.get::<Vec<u8>, _>("value"))?;
                if sealed.expose() != format!("{prev_seq}:{}", hex::encode(prev_hash)).as_bytes() {
                    let detail =
                        "the audit log does not end at its sealed head: entries were removed or \
                                  rewritten outside Countersign; nothing more is written";
                    return Err(StoreError::Corrupt { detail: detail.into() });
                }
            }
            None if prev_seq == 0 => {}
            None => {
                return Err(StoreError::Corrupt {
                    detail: "the sealed audit head is missing".into(),
                })
            }
        }
        let seq = prev_seq + 1;
        let at = now();
        let body = canonical_json(body);
        let hash = entry_hash(LOCAL, &prev_hash, seq, at, kind, &body);
        sqlx::query(
            "INSERT INTO audit (seq, at, kind, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(seq as i64)
        .bind(at)
        .bind(kind)
        .bind(&body)
        .bind(hex::encode(prev_hash))
        .bind(hex::encode(hash))
        .execute(&mut **tx)
        .await?;
        let head = format!("{seq}:{}", hex::encode(hash));
        let sealed = self.sealer.seal(HEAD, head.as_bytes())?;
        upsert_meta(tx, "audit_head", &sealed).await?;
        Ok(seq)
    }

    /// Every audit entry, oldest first.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, at, kind, body, prev_hash, hash FROM audit ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|row| AuditEntry {
                seq: row.get::<i64, _>("seq") as u64,
                at: row.get("at"),
                kind: row.get("kind"),
                body: row.get("body"),
                prev_hash: row.get("prev_hash"),
                hash: row.get("hash"),
            })
            .collect())
    }

    /// Verifies the chain and that it ends at the sealed head.
    pub async fn verify_audit(&self) -> Result<Result<ChainReport, ChainBreak>, StoreError> {
        let entries = self.audit_entries().await?;
        let report = match verify_chain(LOCAL, &entries) {
            Ok(report) => report,
            Err(chain_break) => return Ok(Err(chain_break)),
        };
        let sealed = read_meta(&self.pool, "audit_head").await?;
        let head = self.sealer.open(HEAD, &sealed)?;
        let head = String::from_utf8_lossy(head.expose()).into_owned();
        let (seq, hash) = head.split_once(':').unwrap_or(("0", ""));
        let seq: u64 = seq.parse().unwrap_or(0);
        if seq != report.entries || hash != report.head {
            let problem = format!(
                "the log ends at entry {} but the sealed head names entry {seq}: entries were \
                 removed from the end or the head was replaced",
                report.entries
            );
            return Ok(Err(ChainBreak { seq: report.entries.min(seq) + 1, problem }));
        }
        Ok(Ok(report))
    }
}

const HEAD: Place<'static> = Place { table: "meta", column: "value", row: "audit_head" };

/// Compact JSON with object keys sorted (serde_json's default map is ordered by key).
fn canonical_json(value: &serde_json::Value) -> String {
    let sorted: serde_json::Value =
        serde_json::from_str(&value.to_string()).unwrap_or(serde_json::Value::Null);
    sorted.to_string()
}

/// Unix time in seconds, as the store writes it.
/// The store's folder when none is given: `$XDG_DATA_HOME/countersign`, else
/// `~/.local/share/countersign`; `None` without either variable. The CLI and the desktop app
/// share it.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("countersign"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share/countersign"))
}

pub fn unix_now() -> i64 {
    now()
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read_header(path: &Path) -> Option<[u8; 16]> {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    Some(header)
}

async fn connect(dir: &Path, create: bool) -> Result<SqlitePool, StoreError> {
    connect_file(&dir.join(DB_FILE), create).await
}

async fn connect_file(path: &Path, create: bool) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
    Ok(pool)
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(dir, private).map_err(|e| StoreError::Database(e.to_string()))?;
    }
    Ok(())
}

fn restrict_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(path, private).map_err(|e| StoreError::Database(e.to_string()))?;
    }
    Ok(())
}

async fn read_protection(pool: &SqlitePool) -> Result<ProtectionKind, StoreError> {
    match read_meta(pool, "protection").await?.as_slice() {
        b"keyring" => Ok(ProtectionKind::Keyring),
        b"passphrase" => Ok(ProtectionKind::Passphrase),
        _ => Err(StoreError::Corrupt { detail: "unknown protection".into() }),
    }
}

async fn read_meta(pool: &SqlitePool, name: &str) -> Result<Vec<u8>, StoreError> {
    let row = sqlx::query("SELECT value FROM meta WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| r.get::<Vec<u8>, _>("value"))
        .ok_or_else(|| StoreError::Corrupt { detail: format!("meta entry {name} is missing") })
}

async fn insert_meta(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO meta (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_meta(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
        .bind(name)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
