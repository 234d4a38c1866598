//! The data key and what wraps it: a key in the OS keyring, or a passphrase through Argon2id.
//!
//! The data key (32 random bytes) seals every value in the store. It is itself sealed ("wrapped")
//! under a key-encryption key, with associated data naming the store, and kept in `meta`:
//!
//! - **keyring**: the key-encryption key is 32 random bytes kept in the OS keyring (Secret
//!   Service on Linux) under service `countersign`, user `store:<store id>`;
//! - **passphrase**: the key-encryption key is Argon2id(passphrase, salt) with the parameters
//!   stored beside it (OWASP's recommended m = 19 MiB, t = 2, p = 1 by default).
//!
//! A wrong passphrase and a tampered wrapped key look the same to AES-GCM: both fail to open.

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use argon2::{Algorithm, Argon2, Params, Version};
use countersign_core::secret::{SecretBytes, SecretString};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::seal::{open_with, seal_with};
use crate::StoreError;

const KEYRING_SERVICE: &str = "countersign";

/// How a new store protects its data key.
#[derive(Debug, Clone)]
pub enum Protection {
    Keyring,
    Passphrase(SecretString),
}

/// Argon2id parameters, stored with the wrapped key so they can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    #[serde(with = "hex::serde")]
    pub salt: [u8; 16],
}

impl KdfParams {
    pub fn fresh() -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1, salt }
    }

    /// Refuses parameters a tampered `meta` row could use to exhaust memory or time.
    fn check(&self) -> Result<(), StoreError> {
        let sane = (8..=1024 * 1024).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=16).contains(&self.parallelism);
        if sane {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                detail: "the stored Argon2id parameters are out of range".into(),
            })
        }
    }
}

/// A fresh random data key.
pub fn new_data_key() -> SecretBytes {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    SecretBytes::new(key.to_vec())
}

/// Derives the key-encryption key from a passphrase.
pub fn derive(passphrase: &SecretString, params: &KdfParams) -> Result<SecretBytes, StoreError> {
    params.check()?;
    let argon_params =
        Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
            .map_err(|e| StoreError::Corrupt { detail: format!("Argon2id parameters: {e}") })?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.expose().as_bytes(), &params.salt, out.as_mut())
        .map_err(|e| StoreError::Corrupt { detail: format!("Argon2id: {e}") })?;
    Ok(SecretBytes::new(out.to_vec()))
}

fn wrap_aad(store_id: &str) -> Vec<u8> {
    format!("countersign/data-key/v1\0{store_id}").into_bytes()
}

/// Wraps the data key under a key-encryption key.
pub fn wrap(
    kek: &SecretBytes,
    store_id: &str,
    data_key: &SecretBytes,
) -> Result<Vec<u8>, StoreError> {
    let cipher = Aes256Gcm::new_from_slice(kek.expose())
        .map_err(|_| StoreError::Corrupt { detail: "the wrapping key is not 32 bytes".into() })?;
    seal_with(&cipher, &wrap_aad(store_id), data_key.expose())
}

/// Unwraps the data key; `None` when the key-encryption key is wrong or the blob was altered.
pub fn unwrap(kek: &SecretBytes, store_id: &str, wrapped: &[u8]) -> Option<SecretBytes> {
    let cipher = Aes256Gcm::new_from_slice(kek.expose()).ok()?;
    open_with(&cipher, &wrap_aad(store_id), wrapped).filter(|key| key.len() == 32)
}

fn keyring_user(store_id: &str) -> String {
    format!("store:{store_id}")
}

/// Creates a key-encryption key and stores it in the OS keyring.
pub async fn keyring_create(store_id: &str) -> Result<SecretBytes, StoreError> {
    let kek = new_data_key();
    let user = keyring_user(store_id);
    let text = Zeroizing::new(hex::encode(kek.expose()));
    blocking(move || {
        let entry = keyring::Entry::new(KEYRING_SERVICE, &user)?;
        entry.set_password(&text)
    })
    .await?;
    Ok(kek)
}

/// Reads the key-encryption key back from the OS keyring.
pub async fn keyring_fetch(store_id: &str) -> Result<SecretBytes, StoreError> {
    let user = keyring_user(store_id);
    let text =
        blocking(move || keyring::Entry::new(KEYRING_SERVICE, &user)?.get_password()).await?;
    let text = Zeroizing::new(text);
    let bytes = hex::decode(text.as_str()).map_err(|_| StoreError::Keyring {
        detail: "the keyring entry is not a Countersign key".into(),
    })?;
    Ok(SecretBytes::new(bytes))
}

/// Removes the store's entry from the OS keyring (for `erase`).
pub async fn keyring_delete(store_id: &str) -> Result<(), StoreError> {
    let user = keyring_user(store_id);
    blocking(move || keyring::Entry::new(KEYRING_SERVICE, &user)?.delete_credential()).await
}

/// The Secret Service client blocks and must not run on the async runtime's own threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
) -> Result<T, StoreError> {
    let outcome = tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::Keyring { detail: "the keyring call did not finish".into() })?;
    outcome.map_err(|e| StoreError::Keyring { detail: keyring_problem(&e) })
}

fn keyring_problem(error: &keyring::Error) -> String {
    match error {
        keyring::Error::NoEntry => "the OS keyring has no key for this store".into(),
        keyring::Error::NoStorageAccess(e) => format!("the OS keyring is not reachable: {e}"),
        keyring::Error::PlatformFailure(e) => format!("the OS keyring failed: {e}"),
        other => format!("the OS keyring failed: {other}"),
    }
}
