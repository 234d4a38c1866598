//! What the app holds between commands: where its store lives, the store itself while
//! unlocked, the idle-lock clock, and which requests it has already notified about.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use countersign_approver::Problem;
use countersign_core::tokens::TokenList;
use countersign_store::Store;
use tokio::sync::RwLock;

/// The idle lock's default: 5 minutes without a command.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// The idle times the settings accept.
pub const IDLE_RANGE: std::ops::RangeInclusive<u64> = 30..=86_400;

/// Asks the desktop for a notification. The app's notifier goes through Tauri's
/// notification plugin; tests record what was asked.
pub trait Notifier: Send + Sync {
    fn notify(&self, title: &str, body: &str);
}

pub struct AppState {
    pub data_dir: PathBuf,
    pub tokens: TokenList,
    /// `Some` while unlocked. Locking drops this reference; the data key is gone from memory
    /// once the commands still running with it finish.
    store: RwLock<Option<Arc<Store>>>,
    idle: Mutex<Idle>,
    /// Requests a notification was already asked for, so each is announced once.
    notified: Mutex<HashSet<String>>,
    pub notifier: Box<dyn Notifier>,
    /// Whether a store is open, readable without waiting (for the approval's last checks).
    unlocked: std::sync::atomic::AtomicBool,
    /// The queue's rows as JSON, kept until something changes them: a listing of 10,000
    /// requests unseals and decodes each, which is too slow to do at every redraw.
    rows: tokio::sync::Mutex<Option<Arc<KeptRows>>>,
    /// Set until the window first asks for the status: a store whose key the keyring keeps is
    /// then opened without asking, since the keyring would hand the key back anyway.
    first_status: std::sync::atomic::AtomicBool,
    /// Where a Ledger is reached: USB HID (a test build may be pointed at the simulator).
    pub ledger: countersign_signers::ledger::Link,
    /// Held while a key is being added: the app signs with one key, and a Ledger's
    /// confirmation takes long enough for a second request to arrive meanwhile.
    pub adding_key: tokio::sync::Mutex<()>,
    /// The approver's FIDO2 security key: USB HID (a test build may use a software key).
    pub security_key: countersign_approver::presence::SecurityKey,
}

/// The queue's rows, and the JSON the window is sent.
#[derive(Debug)]
pub struct KeptRows {
    pub rows: Vec<countersign_approver::rows::Row>,
    pub json: Vec<u8>,
}

struct Idle {
    after: Duration,
    last: Instant,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(data_dir: PathBuf, tokens: TokenList, notifier: Box<dyn Notifier>) -> Self {
        Self {
            data_dir,
            tokens,
            store: RwLock::new(None),
            idle: Mutex::new(Idle { after: DEFAULT_IDLE, last: Instant::now() }),
            notified: Mutex::new(HashSet::new()),
            notifier,
            first_status: std::sync::atomic::AtomicBool::new(true),
            unlocked: std::sync::atomic::AtomicBool::new(false),
            rows: tokio::sync::Mutex::new(None),
            ledger: ledger_link(),
            adding_key: tokio::sync::Mutex::new(()),
            security_key: countersign_approver::presence::SecurityKey::from_env(),
        }
    }

    /// The unlocked store, or `locked`. Not activity for the idle lock: what the person does
    /// is (see [`AppState::touch`]), not the redraws that live updates cause.
    pub async fn store(&self) -> Result<Arc<Store>, Problem> {
        self.store.read().await.clone().ok_or_else(locked)
    }

    /// The store if unlocked, without counting as activity (for background work).
    pub async fn store_quietly(&self) -> Option<Arc<Store>> {
        self.store.read().await.clone()
    }

    pub async fn is_unlocked(&self) -> bool {
        self.store.read().await.is_some()
    }

    pub async fn set_store(&self, store: Store) {
        self.touch();
        *self.store.write().await = Some(Arc::new(store));
        self.forget_rows().await;
        self.unlocked.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops the store and with it the data key. Returns whether it was unlocked.
    pub async fn lock(&self) -> bool {
        self.unlocked.store(false, std::sync::atomic::Ordering::SeqCst);
        let taken = self.store.write().await.take();
        self.forget_rows().await;
        self.lock_notified().clear();
        taken.is_some()
    }

    /// Whether the app is unlocked right now.
    pub fn unlocked_now(&self) -> bool {
        self.unlocked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The rows of the queue screen, read once and kept until [`Self::forget_rows`].
    pub async fn rows(&self, store: &Store) -> Result<Arc<KeptRows>, Problem> {
        let mut kept = self.rows.lock().await;
        if let Some(rows) = kept.as_ref() {
            return Ok(rows.clone());
        }
        // A call that took the store just before a lock reads nothing from it after.
        if !self.is_open(store).await {
            return Err(locked());
        }
        let started = Instant::now();
        let rows = countersign_approver::rows::rows(store, &self.tokens).await?;
        let json =
            serde_json::to_vec(&rows).map_err(|e| Problem::other("internal", e.to_string()))?;
        tracing::info!(
            rows = rows.len(),
            ms = started.elapsed().as_millis() as u64,
            "queue rows read"
        );
        let rows = Arc::new(KeptRows { rows, json });
        // Kept only from the store that is open now: a read that began before a lock (or an
        // unlock of another) must not leave its rows behind it.
        if self.is_open(store).await {
            *kept = Some(rows.clone());
        }
        Ok(rows)
    }

    /// Whether `store` is the one open now.
    async fn is_open(&self, store: &Store) -> bool {
        self.store.read().await.as_deref().is_some_and(|open| std::ptr::eq(open, store))
    }

    /// The rows if they are read already; `None` while they are being read, without waiting.
    pub fn kept_rows(&self) -> Option<Arc<KeptRows>> {
        self.rows.try_lock().ok().and_then(|kept| kept.clone())
    }

    /// Something changed the local copy (a sync, an approval, a rejection, a pinned vault).
    pub async fn forget_rows(&self) {
        *self.rows.lock().await = None;
    }

    /// True once: the first time the window asks for the status.
    pub fn first_status(&self) -> bool {
        self.first_status.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn touch(&self) {
        self.lock_idle().last = Instant::now();
    }

    pub fn idle_after(&self) -> Duration {
        self.lock_idle().after
    }

    pub fn set_idle_after(&self, after: Duration) {
        let mut idle = self.lock_idle();
        idle.after = after;
        idle.last = Instant::now();
    }

    /// Whether the idle time has passed since the last command.
    pub fn idle_expired(&self) -> bool {
        let idle = self.lock_idle();
        idle.last.elapsed() >= idle.after
    }

    /// Marks `id` notified; true the first time.
    pub fn first_notice(&self, id: &str) -> bool {
        self.lock_notified().insert(id.to_owned())
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_notified(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.notified.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Ledger over USB, or the simulator where a test build is asked for it (said in the log).
fn ledger_link() -> countersign_signers::ledger::Link {
    let link = countersign_signers::ledger::Link::from_env();
    if link.is_simulated() {
        tracing::warn!(
            "the Ledger is the SIMULATOR (a test double with public keys), not a device"
        );
    }
    link
}

/// What a command that needs the store answers while the app is locked.
fn locked() -> Problem {
    Problem::input("locked", "Countersign is locked: unlock it to go on")
}
