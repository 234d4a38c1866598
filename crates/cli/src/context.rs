//! What every command needs: the data folder, the store, input files, the vault to use.

use std::io::Read;
use std::path::{Path, PathBuf};

use alloy_primitives::U256;
use countersign_core::request::{parse_uint, MAX_REQUEST_BYTES};
use countersign_core::secret::SecretString;
use countersign_core::tokens::TokenList;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_store::{Store, StoreError};

use crate::args::{Cli, VaultFlags};
use crate::failure::Failure;

/// The resolved global options.
#[derive(Debug)]
pub struct Context {
    pub data_dir: PathBuf,
    passphrase_file: Option<PathBuf>,
    token_list: Option<PathBuf>,
}

impl Context {
    pub fn new(cli: &Cli) -> Result<Self, Failure> {
        let data_dir = match &cli.data_dir {
            Some(dir) => dir.clone(),
            None => default_data_dir()?,
        };
        Ok(Self {
            data_dir,
            passphrase_file: cli.passphrase_file.clone(),
            token_list: cli.token_list.clone(),
        })
    }

    pub fn store_exists(&self) -> bool {
        Store::exists(&self.data_dir)
    }

    /// Opens the store, asking for its passphrase only if it has one.
    pub async fn open_store(&self) -> Result<Store, Failure> {
        let file = self.passphrase_file.clone();
        Ok(Store::open(&self.data_dir, move || read_passphrase(file.as_deref(), false)).await?)
    }

    /// The passphrase for a new store: from the file, or asked twice at the terminal.
    pub fn new_passphrase(&self) -> Result<SecretString, Failure> {
        let passphrase = read_passphrase(self.passphrase_file.as_deref(), true)?;
        if passphrase.expose().chars().count() < 8 {
            return Err(Failure::input("passphrase: use at least 8 characters"));
        }
        Ok(passphrase)
    }

    /// The shipped token list plus `--token-list`, if given.
    pub fn tokens(&self) -> Result<TokenList, Failure> {
        let mut tokens = TokenList::shipped()?;
        if let Some(path) = &self.token_list {
            let extra =
                TokenList::from_json(&read_limited("token-list", path, MAX_REQUEST_BYTES)?)?;
            tokens.merge(&extra)?;
        }
        Ok(tokens)
    }
}

fn default_data_dir() -> Result<PathBuf, Failure> {
    countersign_store::default_dir()
        .ok_or_else(|| Failure::input("no data folder: set --data-dir or HOME"))
}

fn read_passphrase(file: Option<&Path>, confirm: bool) -> Result<SecretString, StoreError> {
    if let Some(path) = file {
        let text = read_small_text(path).map_err(|problem| {
            StoreError::Input(countersign_core::InputError::new("passphrase-file", problem))
        })?;
        let first = text.lines().next().unwrap_or_default().to_owned();
        drop(zeroize::Zeroizing::new(text));
        return Ok(SecretString::new(first));
    }
    let first = rpassword::prompt_password("Store passphrase: ")
        .map_err(|_| StoreError::PassphraseRequired)?;
    let first = SecretString::new(first);
    if confirm {
        let again = rpassword::prompt_password("Repeat the passphrase: ")
            .map_err(|_| StoreError::PassphraseRequired)?;
        let again = SecretString::new(again);
        if again.expose() != first.expose() {
            return Err(StoreError::Input(countersign_core::InputError::new(
                "passphrase",
                "the two entries differ",
            )));
        }
    }
    Ok(first)
}

/// Reads a small text file (a passphrase, a key, a password): at most 4 KiB, UTF-8.
pub fn read_small_text(path: &Path) -> Result<String, String> {
    let bytes = read_limited("file", path, 4096).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Reads a file (or standard input for `-`), refusing more than `limit` bytes.
pub fn read_limited(field: &str, path: &Path, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut buffer = Vec::new();
    let cap = limit as u64 + 1;
    let result = if path == Path::new("-") {
        std::io::stdin().lock().take(cap).read_to_end(&mut buffer)
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::input(format!("{field}: {}: {e}", path.display())))?;
        file.take(cap).read_to_end(&mut buffer)
    };
    result.map_err(|e| Failure::input(format!("{field}: {}: {e}", path.display())))?;
    if buffer.len() > limit {
        return Err(Failure::input(format!(
            "{field}: {} is more than the {limit}-byte limit",
            path.display()
        )));
    }
    Ok(buffer)
}

/// Parses a decimal nonce given on the command line.
pub fn parse_nonce(field: &str, text: &str) -> Result<U256, Failure> {
    Ok(parse_uint(field, &serde_json::Value::String(text.to_owned()))?)
}

/// The vault record to check `safe` against, and whether it is pinned: the pinned one when
/// the store has it, else one built from the flags. Flags that contradict a pinned record are
/// an error, never a change.
pub async fn resolve_vault(
    store: Option<&Store>,
    safe: alloy_primitives::Address,
    flags: &VaultFlags,
) -> Result<(VaultRecord, bool), Failure> {
    let pinned = match store {
        Some(store) => store.vaults(Some(&safe)).await?,
        None => Vec::new(),
    };
    let candidates: Vec<VaultRecord> =
        pinned.into_iter().filter(|v| flags.chain_id.is_none_or(|c| c == v.chain_id)).collect();
    match candidates.as_slice() {
        [record] => check_flags_agree(record, flags).map(|()| (record.clone(), true)),
        [] => vault_from_flags(safe, flags).map(|record| (record, false)),
        _ => Err(Failure::input(
            "chainId: this Safe is pinned on several chains; choose one with --chain-id",
        )),
    }
}

fn vault_from_flags(
    safe: alloy_primitives::Address,
    flags: &VaultFlags,
) -> Result<VaultRecord, Failure> {
    let safe_text = safe.to_checksum(None);
    let Some(chain_id) = flags.chain_id else {
        return Err(Failure::input(format!(
            "chainId: no vault record for {safe_text}; pin one with `countersign vault add` or \
             give --chain-id and --safe-version"
        )));
    };
    let Some(version) = &flags.safe_version else {
        return Err(Failure::input(format!(
            "safeVersion: no vault record for {safe_text}; give --safe-version (the Safe's \
             version decides its hash)"
        )));
    };
    let mut record = VaultRecord::new(chain_id, safe, SafeVersion::parse("safeVersion", version)?);
    if let Some(next) = &flags.next_nonce {
        record.next_nonce = Some(parse_nonce("nextNonce", next)?);
    }
    Ok(record)
}

fn check_flags_agree(record: &VaultRecord, flags: &VaultFlags) -> Result<(), Failure> {
    if let Some(version) = &flags.safe_version {
        if SafeVersion::parse("safeVersion", version)? != record.version {
            return Err(Failure::input(format!(
                "safeVersion: the pinned vault record says {}, the flag says {version}; the \
                 record is not changed by flags",
                record.version
            )));
        }
    }
    if let Some(next) = &flags.next_nonce {
        let next = parse_nonce("nextNonce", next)?;
        if record.next_nonce.is_some_and(|pinned| pinned != next) {
            return Err(Failure::input(
                "nextNonce: the flag disagrees with the pinned vault record; use `countersign \
                 vault set-next-nonce` to change it",
            ));
        }
    }
    Ok(())
}
