//! Sealing values with AES-256-GCM, bound to where they are stored.
//!
//! A sealed value is `version (1 byte) ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`. Its
//! associated data is `countersign/seal/v1 ‖ 0 ‖ table ‖ 0 ‖ column ‖ 0 ‖ row`, so a value copied
//! to another row, column or table fails to open, as does any altered byte.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use countersign_core::secret::SecretBytes;
use rand::RngCore;

use crate::StoreError;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const AAD_TAG: &[u8] = b"countersign/seal/v1";

/// Where a sealed value lives; the associated data of its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'a str,
}

/// AES-256-GCM under the store's data key. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(data_key: &SecretBytes) -> Result<Self, StoreError> {
        let cipher = Aes256Gcm::new_from_slice(data_key.expose())
            .map_err(|_| StoreError::Corrupt { detail: "the data key is not 32 bytes".into() })?;
        Ok(Self { cipher })
    }

    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        seal_with(&self.cipher, &aad(place), plaintext)
    }

    pub fn open(&self, place: Place<'_>, sealed: &[u8]) -> Result<SecretBytes, StoreError> {
        open_with(&self.cipher, &aad(place), sealed).ok_or_else(|| StoreError::Tampered {
            table: place.table,
            column: place.column,
            row: place.row.to_owned(),
        })
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<data key redacted>)")
    }
}

fn aad(place: Place<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for part in [AAD_TAG, place.table.as_bytes(), place.column.as_bytes(), place.row.as_bytes()] {
        out.extend_from_slice(part);
        out.push(0);
    }
    out
}

/// Seals with an explicit cipher and associated data; also used to wrap the data key.
pub(crate) fn seal_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, StoreError> {
    // A random 96-bit nonce from the thread's CSPRNG (ChaCha, seeded and reseeded from the
    // operating system): a sync seals two values a request, and one system call for each
    // nonce cost more than the encryption.
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| StoreError::Corrupt { detail: "encryption failed".into() })?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

pub(crate) fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<SecretBytes> {
    let (&version, rest) = sealed.split_first()?;
    if version != VERSION || rest.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let plaintext =
        cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).ok()?;
    Some(SecretBytes::new(plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&SecretBytes::new(vec![9u8; 32])).unwrap()
    }

    const HERE: Place<'static> = Place { table: "keys", column: "sealed_secret", row: "a" };

    #[test]
    fn round_trip() {
        let sealed = sealer().seal(HERE, b"value").unwrap();
        assert_eq!(sealer().open(HERE, &sealed).unwrap().expose(), b"value");
    }

    #[test]
    fn fail_moved_or_altered() {
        let sealed = sealer().seal(HERE, b"value").unwrap();
        let other_row = Place { row: "b", ..HERE };
        let other_column = Place { column: "sealed_record", ..HERE };
        assert!(sealer().open(other_row, &sealed).is_err());
        assert!(sealer().open(other_column, &sealed).is_err());
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 1;
            assert!(sealer().open(HERE, &altered).is_err(), "byte {index}");
        }
        assert!(sealer().open(HERE, &sealed[..10]).is_err());
    }
}
