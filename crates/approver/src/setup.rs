//! Setting an approver up: a signing key in the store, and a pinned queue connection.

use alloy_primitives::Address;
use countersign_core::address::checksummed;
use countersign_core::secret::SecretString;
use countersign_core::signer::Signer;
use countersign_signers::software::SoftwareSigner;
use countersign_store::Store;
use countersign_sync::sync::Connection;
use serde_json::Value;

use crate::Problem;

/// Makes a new software key, or imports one from its hex secret, and keeps it sealed in the
/// store. Returns its address.
pub async fn add_software_key(
    store: &Store,
    secret_hex: Option<&SecretString>,
    label: Option<&str>,
) -> Result<Address, Problem> {
    let signer = match secret_hex {
        None => SoftwareSigner::generate(),
        Some(hex) => SoftwareSigner::from_hex(hex)
            .map_err(|e| Problem::input("invalid_key", format!("secret: {e}")))?,
    };
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    store.add_key(signer.address(), "software", label, &signer.expose_secret()).await?;
    Ok(signer.address())
}

/// The store's software key at `address`, or its only key when no address is given.
pub async fn software_signer(
    store: &Store,
    address: Option<Address>,
) -> Result<SoftwareSigner, Problem> {
    let keys = store.keys().await?;
    let address = match (address, keys.as_slice()) {
        (Some(address), _) => address,
        (None, [only]) => only.address,
        (None, []) => return Err(Problem::input("no_key", "key: this store has no signing key")),
        (None, _) => {
            return Err(Problem::input("key_choice", "key: the store has several keys; choose one"))
        }
    };
    let secret = store.key_secret(&address).await?;
    SoftwareSigner::from_secret(&secret).map_err(|e| {
        Problem::other("key_unreadable", format!("key {}: {e}", checksummed(&address)))
    })
}

/// Opens a session with the queue through the pins, which proves the pin and the API key,
/// and only then keeps the connection in the store. Returns the member the queue names.
///
/// Once connected, only the same queue's credentials may change (new pins, a new API key,
/// other initiators), and the synced copy with its marks is kept: connecting elsewhere would
/// drop the marks that block signing, so it is refused.
pub async fn connect(store: &Store, connection: &Connection) -> Result<Value, Problem> {
    let current = match store.queue_config().await? {
        Some((config, _)) => Some(Connection::from_secret(&config)?),
        None => None,
    };
    if let Some(current) = &current {
        if current.url != connection.url {
            return Err(Problem::refused(
                "already_connected",
                format!(
                    "url: this store is connected to {}; another queue needs a store of its own",
                    current.url
                ),
            ));
        }
    }
    let member = test_connection(connection).await?;
    if current.is_some() {
        store.update_queue_config(&connection.to_secret()).await?;
    } else {
        store.set_queue_config(&connection.to_secret()).await?;
    }
    Ok(member)
}

/// Opens a session with the queue through the pins and returns the member it names; stores
/// nothing.
pub async fn test_connection(connection: &Connection) -> Result<Value, Problem> {
    let pins: Vec<&str> = connection.pins.iter().map(String::as_str).collect();
    countersign_sync::pin::Pins::parse(&pins)
        .map_err(|e| Problem::input("invalid_pin", e.to_string()))?;
    if connection.api_key.expose().trim().is_empty() {
        return Err(Problem::input("api_key_missing", "apiKey: the queue's API key is missing"));
    }
    let session = connection.session().await?;
    Ok(session.member.clone())
}
