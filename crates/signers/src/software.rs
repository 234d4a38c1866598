//! A secp256k1 key in memory: RFC 6979 deterministic ECDSA, low-s, v 27 or 28.

use std::fmt;
use std::path::Path;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use countersign_core::guard::CheckedRequest;
use countersign_core::secret::{SecretBytes, SecretString};
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::{verify_owner_signature, Decision, Prompt, Signer, SignerError};
use k256::ecdsa::SigningKey;
use zeroize::Zeroizing;

/// Why key material could not be used. Never carries the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a private key is 32 bytes (64 hex digits, optionally after 0x)")]
    Shape,
    #[error("the private key is zero or not below the curve order")]
    OutOfRange,
    #[error("the keystore file could not be opened: {0}")]
    Keystore(String),
}

/// A software key. `Debug` shows only the address; the key is zeroized on drop.
pub struct SoftwareSigner {
    key: SigningKey,
    address: Address,
}

impl SoftwareSigner {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// From the 32 secret bytes, as sealed in the store.
    pub fn from_secret(secret: &SecretBytes) -> Result<Self, KeyError> {
        if secret.len() != 32 {
            return Err(KeyError::Shape);
        }
        let key = SigningKey::from_slice(secret.expose()).map_err(|_| KeyError::OutOfRange)?;
        Ok(Self::from_key(key))
    }

    /// From 64 hex digits, with or without `0x`.
    pub fn from_hex(text: &SecretString) -> Result<Self, KeyError> {
        let trimmed = text.expose().trim();
        let digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
        if digits.len() != 64 {
            return Err(KeyError::Shape);
        }
        let bytes = Zeroizing::new(hex::decode(digits).map_err(|_| KeyError::Shape)?);
        Self::from_secret(&SecretBytes::new(bytes.to_vec()))
    }

    /// From an Ethereum keystore v3 file (scrypt or PBKDF2), decrypted with `password`.
    pub fn from_keystore(path: &Path, password: &SecretString) -> Result<Self, KeyError> {
        let text = read_at_most(path, 64 * 1024 + 1)?;
        check_keystore_cost(&text)?;
        // Decrypt the very bytes that were checked, from a private copy, so a file swapped in
        // between the check and the decryption is never read.
        let copy = tempfile::tempdir().map_err(|e| KeyError::Keystore(e.to_string()))?;
        let checked = copy.path().join("keystore.json");
        std::fs::write(&checked, &text).map_err(|e| KeyError::Keystore(e.to_string()))?;
        let bytes = eth_keystore::decrypt_key(&checked, password.expose().as_bytes())
            .map_err(|e| KeyError::Keystore(keystore_problem(&e)))?;
        Self::from_secret(&SecretBytes::new(bytes))
    }

    fn from_key(key: SigningKey) -> Self {
        let address = Address::from_public_key(key.verifying_key());
        Self { key, address }
    }

    /// The 32 secret bytes, for sealing in the store. The only way the key leaves this type.
    pub fn expose_secret(&self) -> SecretBytes {
        SecretBytes::new(self.key.to_bytes().to_vec())
    }

    /// Signs a 32-byte digest: RFC 6979 nonce, s normalised to the lower half, v = 27 + recid.
    pub fn sign_digest(&self, digest: &B256) -> Result<OwnerSignature, SignerError> {
        let (signature, recovery_id) = self
            .key
            .sign_prehash_recoverable(digest.as_slice())
            .map_err(|_| SignerError::Failed { detail: "ECDSA signing failed".to_owned() })?;
        let (signature, recovery_id) = match signature.normalize_s() {
            Some(low) => (low, flip(recovery_id)),
            None => (signature, recovery_id),
        };
        let (r, s) = signature.split_bytes();
        OwnerSignature::from_parts(r.into(), s.into(), recovery_id.to_byte())
            .map_err(|problem| SignerError::Failed { detail: problem.to_string() })
    }
}

/// Keystore files carry their own KDF cost. Before handing the file to the decryptor, refuse
/// parameters far beyond what wallets write (geth's standard scrypt is n = 2^18, r = 8, p = 1),
/// so a crafted file cannot make the app allocate gigabytes or spin for hours.
pub fn check_keystore_cost(text: &[u8]) -> Result<(), KeyError> {
    const MAX_BYTES: usize = 64 * 1024;
    let bad = |problem: &str| Err(KeyError::Keystore(problem.to_owned()));
    if text.len() > MAX_BYTES {
        return bad("the file is larger than 64 KiB");
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(text) else {
        return bad("not a keystore v3 file: not JSON");
    };
    let crypto = value.get("crypto").or_else(|| value.get("Crypto"));
    let Some(crypto) = crypto else {
        return bad("not a keystore v3 file: no crypto section");
    };
    let params = &crypto["kdfparams"];
    let number = |name: &str| params.get(name).and_then(serde_json::Value::as_u64);
    if !matches!(crypto["kdf"].as_str(), Some("scrypt" | "pbkdf2")) {
        return bad("kdf must be scrypt or pbkdf2");
    }
    // The decryptor picks the KDF from which parameters are present, not from "kdf", so every
    // parameter present is bounded, whatever "kdf" says.
    if params.get("dklen").is_some_and(|d| d.as_u64() != Some(32)) {
        return bad("kdfparams.dklen must be 32");
    }
    if params.get("c").is_some() && !number("c").is_some_and(|c| (1..=10_000_000).contains(&c)) {
        return bad("pbkdf2 iteration count must be 1 to 10,000,000");
    }
    for (name, max) in [("n", 1u64 << 20), ("r", 16), ("p", 16)] {
        if params.get(name).is_some() && !number(name).is_some_and(|v| (1..=max).contains(&v)) {
            return bad("scrypt parameters must be at most n 2^20, r 16, p 16");
        }
    }
    if params.get("c").is_none() && params.get("n").is_none() {
        return bad("kdfparams has neither scrypt (n, r, p) nor pbkdf2 (c) parameters");
    }
    Ok(())
}

fn read_at_most(path: &Path, limit: u64) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| KeyError::Keystore(e.to_string()))?;
    let mut buffer = Vec::new();
    file.take(limit).read_to_end(&mut buffer).map_err(|e| KeyError::Keystore(e.to_string()))?;
    Ok(buffer)
}

fn flip(id: k256::ecdsa::RecoveryId) -> k256::ecdsa::RecoveryId {
    k256::ecdsa::RecoveryId::new(!id.is_y_odd(), id.is_x_reduced())
}

fn keystore_problem(error: &eth_keystore::KeystoreError) -> String {
    match error {
        eth_keystore::KeystoreError::MacMismatch => {
            "wrong password (the MAC does not match)".into()
        }
        eth_keystore::KeystoreError::StdIo(e) => e.clone(),
        eth_keystore::KeystoreError::SerdeJson(e) => format!("not a keystore v3 file: {e}"),
        other => other.to_string(),
    }
}

impl fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareSigner").field("address", &self.address).finish_non_exhaustive()
    }
}

#[async_trait]
impl Signer for SoftwareSigner {
    fn address(&self) -> Address {
        self.address
    }

    fn describe(&self) -> String {
        format!("software key {}", self.address.to_checksum(None))
    }

    async fn sign(
        &self,
        request: &CheckedRequest,
        prompt: &dyn Prompt,
    ) -> Result<OwnerSignature, SignerError> {
        if prompt.confirm(request, self.address).await == Decision::Decline {
            return Err(SignerError::Declined);
        }
        let signature = self.sign_digest(&request.hashes().safe_tx)?;
        verify_owner_signature(request, &signature, self.address)?;
        Ok(signature)
    }
}
