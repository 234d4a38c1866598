//! The app's background work: the idle lock, and live updates from the queue's event stream
//! (each event syncs, then tells the window the queue changed).

use std::time::Duration;

use countersign_approver::actions;
use tauri::{AppHandle, Emitter, Manager, Runtime};

use crate::commands::sync_and_notify;
use crate::state::AppState;

/// How often the idle lock looks at the clock.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long opening the event stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Events closer together than this are synced once.
const COALESCE: Duration = Duration::from_millis(300);
/// Waits between attempts to reach the event stream: doubling up to the last.
const RECONNECT: [u64; 6] = [1, 2, 4, 8, 16, 30];

pub fn start<R: Runtime>(app: AppHandle<R>) {
    let idle_app = app.clone();
    tauri::async_runtime::spawn(async move { idle_lock(idle_app).await });
    tauri::async_runtime::spawn(async move { live_updates(app).await });
}

async fn idle_lock<R: Runtime>(app: AppHandle<R>) {
    loop {
        tokio::time::sleep(IDLE_TICK).await;
        let state = app.state::<AppState>();
        if state.is_unlocked().await && state.idle_expired() && state.lock().await {
            tracing::info!("locked after the idle time");
            let _ = app.emit("locked", ());
        }
    }
}

/// Follows the queue's events while the app is unlocked and connected. A failed stream is
/// opened again after a growing wait; a locked app waits to be unlocked.
async fn live_updates<R: Runtime>(app: AppHandle<R>) {
    let mut failures = 0usize;
    loop {
        let wait = match follow(&app).await {
            Ok(()) => {
                failures = 0;
                Duration::from_secs(2)
            }
            Err(error) => {
                tracing::warn!(%error, "the queue's event stream stopped");
                let _ = app.emit("live", serde_json::json!({ "connected": false, "error": error }));
                failures += 1;
                Duration::from_secs(RECONNECT[failures.min(RECONNECT.len()) - 1])
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One life of the event stream: returns when the app is locked or has no queue, or the
/// stream ends.
async fn follow<R: Runtime>(app: &AppHandle<R>) -> Result<(), String> {
    let state = app.state::<AppState>();
    let Some(store) = state.store_quietly().await else { return Ok(()) };
    let Ok(connection) = actions::stored_connection(&store).await else { return Ok(()) };
    drop(store);
    // Opening the stream is bounded in time, so that a queue that never answers cannot hold
    // this task (and the session token) past a lock.
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        let session = connection.session().await.map_err(|e| e.to_string())?;
        session.events().await.map_err(|e| e.to_string())
    })
    .await;
    drop(connection);
    let mut events = match opened {
        Ok(events) => events?,
        Err(_) => return Err("the queue did not open its event stream in time".to_owned()),
    };
    if !state.is_unlocked().await {
        return Ok(());
    }
    let _ = app.emit("live", serde_json::json!({ "connected": true }));
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            () = tokio::time::sleep(IDLE_TICK) => {
                if state.is_unlocked().await {
                    continue;
                }
                return Ok(()); // locked: the session goes with the stream
            }
        };
        if next.map_err(|e| e.to_string())?.is_none() {
            return Ok(());
        }
        // A burst of events is one sync: take whatever else arrives within a moment, for at
        // most a few moments (a queue that never pauses is still synced).
        let mut ended = false;
        let burst = tokio::time::Instant::now() + COALESCE * 6;
        while tokio::time::Instant::now() < burst {
            match tokio::time::timeout(COALESCE, events.next()).await {
                Err(_) => break,
                Ok(more) => {
                    if more.map_err(|e| e.to_string())?.is_none() {
                        ended = true;
                        break;
                    }
                }
            }
        }
        // The event only says that something changed; what changed is read by a sync, which
        // checks it like any other.
        let Some(store) = state.store_quietly().await else { return Ok(()) };
        match sync_and_notify(&state, &store).await {
            Ok(summary) => {
                let _ = app.emit("queue-changed", &summary);
            }
            Err(problem) => {
                let _ =
                    app.emit("live", serde_json::json!({ "connected": true, "error": problem }));
            }
        }
        if ended {
            return Ok(());
        }
    }
}
