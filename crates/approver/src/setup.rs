//! Setting an approver up: a signing key in the store, and a pinned queue connection.

use alloy_primitives::Address;
use countersign_core::address::checksummed;
use countersign_core::secret::{SecretBytes, SecretString};
use countersign_core::signer::Signer;
use countersign_signers::hsm::{self, HsmError, HsmSigner, TokenKey};
use countersign_signers::ledger::{self, DerivationPath, LedgerError, LedgerSigner, Link};
use countersign_signers::software::SoftwareSigner;
use countersign_store::{KeyInfo, Store};
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
    store.add_key(signer.address(), SOFTWARE, label, &signer.expose_secret()).await?;
    Ok(signer.address())
}

/// The kinds of signer a store key can be, as the store names them.
pub const SOFTWARE: &str = "software";
pub const LEDGER: &str = "ledger";
pub const HSM: &str = "hsm";

impl From<LedgerError> for Problem {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Rejected => Problem::refused(error.code(), error.to_string()),
            _ => Problem::other(error.code(), error.to_string()),
        }
    }
}

impl From<HsmError> for Problem {
    fn from(error: HsmError) -> Self {
        match error {
            HsmError::Input { .. } => Problem::input(error.code(), error.to_string()),
            _ => Problem::other(error.code(), error.to_string()),
        }
    }
}

/// What the store keeps of a Ledger account: its path (the address is the key's own).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerKey {
    path: String,
    /// Enrolled from the simulator (a test build): its keys come from a public mnemonic, and it
    /// signs only through the simulator again, never as if it were a device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    simulator: bool,
}

/// Reads a Ledger account's address and keeps it as a key of kind `ledger`. With `confirm`,
/// the device shows the address and the person confirms it there first. Returns the address.
pub async fn add_ledger_key(
    store: &Store,
    link: &Link,
    path: &DerivationPath,
    label: Option<&str>,
    confirm: bool,
) -> Result<Address, Problem> {
    let answer = ledger::read_address(link, path, confirm).await?;
    let body =
        serde_json::to_vec(&LedgerKey { path: path.to_string(), simulator: link.is_simulated() })
            .map_err(|e| Problem::other("internal", e.to_string()))?;
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    store.add_key(answer.address, LEDGER, label, &SecretBytes::new(body)).await?;
    Ok(answer.address)
}

/// Finds (or, with `generate`, makes) a key in a PKCS#11 token and keeps where it is as a key
/// of kind `hsm`; the PIN is not kept. Returns the address.
pub async fn add_hsm_key(
    store: &Store,
    token: &TokenKey,
    pin: &SecretString,
    generate: bool,
    label: Option<&str>,
) -> Result<Address, Problem> {
    let address = hsm::find_or_generate(token, pin, generate).await?;
    let body = serde_json::to_vec(token).map_err(|e| Problem::other("internal", e.to_string()))?;
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    store.add_key(address, HSM, label, &SecretBytes::new(body)).await?;
    Ok(address)
}

/// The store key at `address`, or its only key when no address is given.
pub async fn key_info(store: &Store, address: Option<Address>) -> Result<KeyInfo, Problem> {
    let keys = store.keys().await?;
    match (address, keys.as_slice()) {
        (Some(address), _) => {
            keys.iter().find(|k| k.address == address).cloned().ok_or_else(|| {
                Problem::input("no_key", format!("key: no key {}", checksummed(&address)))
            })
        }
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(Problem::input("no_key", "key: this store has no signing key")),
        (None, _) => {
            Err(Problem::input("key_choice", "key: the store has several keys; choose one"))
        }
    }
}

/// The signer for a store key, by its kind: the software key unsealed, the Ledger reached
/// through `link`, the token logged into with `pin` (asked for each use, never kept).
pub async fn signer(
    store: &Store,
    key: &KeyInfo,
    link: &Link,
    pin: Option<&SecretString>,
) -> Result<Box<dyn Signer>, Problem> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Problem::other("key_unreadable", format!("key {}: {e}", checksummed(&key.address)))
    };
    let secret = store.key_secret(&key.address).await?;
    match key.kind.as_str() {
        SOFTWARE => {
            let signer = SoftwareSigner::from_secret(&secret).map_err(|e| unreadable(&e))?;
            Ok(Box::new(signer))
        }
        LEDGER => {
            let stored: LedgerKey =
                serde_json::from_slice(secret.expose()).map_err(|e| unreadable(&e))?;
            let path = DerivationPath::parse("path", &stored.path).map_err(|e| unreadable(&e))?;
            if stored.simulator != link.is_simulated() {
                let (enrolled, now) = if stored.simulator {
                    ("the Ledger simulator", "a Ledger over USB")
                } else {
                    ("a Ledger over USB", "the Ledger simulator")
                };
                return Err(Problem::refused(
                    "ledger_simulator_mismatch",
                    format!(
                        "key {}: enrolled from {enrolled}; this app reaches {now}",
                        checksummed(&key.address)
                    ),
                ));
            }
            Ok(Box::new(LedgerSigner::enrolled(link.clone(), path, key.address)))
        }
        HSM => {
            let token: TokenKey =
                serde_json::from_slice(secret.expose()).map_err(|e| unreadable(&e))?;
            let pin = pin.ok_or_else(|| {
                Problem::input("pin_missing", "pin: the HSM token's PIN is needed to sign")
            })?;
            Ok(Box::new(HsmSigner::enrolled(token, pin.clone(), key.address)))
        }
        other => Err(Problem::other("key_unreadable", format!("key: unknown kind {other:?}"))),
    }
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
