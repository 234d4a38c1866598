//! The Countersign desktop app: the Tauri shell. It wires the main window, the commands in
//! [`commands`] and the state in [`state`]; every decision is made in the approver, core,
//! store and sync crates.

// The crate's lint table denies unsafe code for the binary's one FFI edge; the library has none.
#![forbid(unsafe_code)]

pub mod commands;
pub mod live;
pub mod state;

use std::path::PathBuf;

use countersign_core::tokens::TokenList;
use tauri::{AppHandle, Manager, Runtime};

use crate::state::{AppState, Notifier};

/// Where the app keeps its store: `COUNTERSIGN_DATA_DIR`, else the same folder as the CLI.
pub fn data_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    countersign_store::default_dir()
        .ok_or_else(|| "no data folder: set COUNTERSIGN_DATA_DIR or HOME".to_owned())
}

/// Desktop notifications through Tauri's notification plugin.
struct PluginNotifier<R: Runtime>(AppHandle<R>);

impl<R: Runtime> Notifier for PluginNotifier<R> {
    fn notify(&self, title: &str, body: &str) {
        use tauri_plugin_notification::NotificationExt;
        tracing::info!("asking for a desktop notification");
        if let Err(error) = self.0.notification().builder().title(title).body(body).show() {
            tracing::warn!(%error, "the desktop did not take the notification");
        }
    }
}

/// The commands, for the invoke handler; the same list as [`commands::NAMES`].
macro_rules! handler {
    () => {
        tauri::generate_handler![
            commands::app_status,
            commands::create_store,
            commands::unlock,
            commands::lock,
            commands::add_key,
            commands::test_queue,
            commands::connect_queue,
            commands::sync_queue,
            commands::queue_rows,
            commands::request_detail,
            commands::approve_request,
            commands::reject_request,
            commands::incidents,
            commands::clear_incident,
            commands::settings,
            commands::set_idle_lock,
            commands::queue_vaults,
            commands::pin_queue_vault,
            commands::user_active,
            commands::register_security_key,
        ]
    };
}

/// The app on any runtime (the mock runtime in tests), with its state and its commands.
/// `notifier` is `None` for the notification plugin.
pub fn builder<R: Runtime>(
    builder: tauri::Builder<R>,
    data_dir: PathBuf,
    notifier: Option<Box<dyn Notifier>>,
) -> tauri::Builder<R> {
    builder.plugin(tauri_plugin_notification::init()).invoke_handler(handler!()).setup(move |app| {
        let tokens = TokenList::shipped()?;
        let notifier = notifier.unwrap_or_else(|| Box::new(PluginNotifier(app.handle().clone())));
        app.manage(AppState::new(data_dir, tokens, notifier));
        live::start(app.handle().clone());
        Ok(())
    })
}

/// Runs the desktop app.
pub fn run() -> Result<(), String> {
    let data_dir = data_dir()?;
    builder(tauri::Builder::default(), data_dir, None)
        .run(tauri::generate_context!("../tauri.conf.json"))
        .map_err(|e| format!("the app failed: {e}"))
}
