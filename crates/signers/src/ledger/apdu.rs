//! The Ledger Ethereum app's APDUs that Countersign uses, built and parsed without a device.
//!
//! Layouts from the app's own specification (`LedgerHQ/app-ethereum`, `doc/ethapp.adoc`):
//! GET ETH PUBLIC ADDRESS (`E0 02`), SIGN ETH EIP 712 in its hashed form (`E0 0C`, P2 = 0: the
//! host supplies the domain hash and the message hash) and GET APP CONFIGURATION (`E0 06`).
//! Commands are short APDUs: their data is at most 255 bytes, and a command that would need more
//! is refused before anything is sent (none of these three needs chunking: a path of at most
//! ten components and two hashes fit in 105 bytes).

use std::fmt;

use alloy_primitives::{Address, B256};
use countersign_core::signature::OwnerSignature;
use countersign_core::InputError;
use ledger_transport::APDUCommand;

use super::LedgerError;

pub const CLA: u8 = 0xE0;
pub const INS_GET_ADDRESS: u8 = 0x02;
pub const INS_GET_CONFIGURATION: u8 = 0x06;
pub const INS_SIGN_EIP712: u8 = 0x0C;

/// The most data a short APDU carries (its length is one byte).
pub const MAX_DATA: usize = 255;
/// BIP-32 paths the Ethereum app accepts have at most ten components.
pub const MAX_PATH_COMPONENTS: usize = 10;
const HARDENED: u32 = 0x8000_0000;

/// A BIP-32 derivation path, as the device derives it.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivationPath(Vec<u32>);

impl DerivationPath {
    /// Ledger Live's Ethereum account `index`: `44'/60'/index'/0/0`. Account 0 is the default
    /// path `44'/60'/0'/0/0`.
    pub fn account(index: u32) -> Result<Self, InputError> {
        if index >= HARDENED {
            return Err(InputError::new("account", "an account index is below 2^31"));
        }
        Ok(Self(vec![44 | HARDENED, 60 | HARDENED, index | HARDENED, 0, 0]))
    }

    /// Parses `m/44'/60'/0'/0/0` (the `m/` is optional; `'` or `h` marks a hardened index).
    pub fn parse(field: &str, text: &str) -> Result<Self, InputError> {
        let body = text.trim();
        let body = body.strip_prefix("m/").unwrap_or(body);
        if body.is_empty() {
            return Err(InputError::new(field, "a derivation path has at least one component"));
        }
        let mut components = Vec::new();
        for part in body.split('/') {
            let (digits, hardened) = match part.strip_suffix(['\'', 'h', 'H']) {
                Some(digits) => (digits, true),
                None => (part, false),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InputError::new(
                    field,
                    "each component is a decimal index, with ' after it when hardened",
                ));
            }
            let index: u32 = digits
                .parse()
                .ok()
                .filter(|i| *i < HARDENED)
                .ok_or_else(|| InputError::new(field, "each index is below 2^31"))?;
            components.push(if hardened { index | HARDENED } else { index });
        }
        if components.len() > MAX_PATH_COMPONENTS {
            return Err(InputError::new(field, "the Ethereum app takes at most 10 components"));
        }
        Ok(Self(components))
    }

    pub fn components(&self) -> &[u32] {
        &self.0
    }

    /// The path's encoding in every command: its length, then each index as a big-endian u32.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 * self.0.len());
        // At most MAX_PATH_COMPONENTS, checked when the path was made.
        out.push(self.0.len() as u8);
        for index in &self.0 {
            out.extend_from_slice(&index.to_be_bytes());
        }
        out
    }

    /// Reads a path back from the front of a command's data; returns it and the rest.
    pub fn decode(data: &[u8]) -> Option<(Self, &[u8])> {
        let (&count, rest) = data.split_first()?;
        let count = usize::from(count);
        if count == 0 || count > MAX_PATH_COMPONENTS || rest.len() < 4 * count {
            return None;
        }
        let (path, rest) = rest.split_at(4 * count);
        let components =
            path.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some((Self(components), rest))
    }
}

impl fmt::Display for DerivationPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m")?;
        for index in &self.0 {
            if index & HARDENED != 0 {
                write!(f, "/{}'", index & !HARDENED)?;
            } else {
                write!(f, "/{index}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for DerivationPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DerivationPath({self})")
    }
}

/// Builds a command; data longer than one short APDU carries is refused, never truncated.
pub fn command(
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
) -> Result<APDUCommand<Vec<u8>>, LedgerError> {
    if data.len() > MAX_DATA {
        return Err(LedgerError::Answer {
            detail: format!("a command of {} data bytes does not fit one APDU", data.len()),
        });
    }
    Ok(APDUCommand { cla: CLA, ins, p1, p2, data })
}

/// GET ETH PUBLIC ADDRESS for `path`; with `display` the device shows the address and asks the
/// person to confirm it.
pub fn get_address(
    path: &DerivationPath,
    display: bool,
) -> Result<APDUCommand<Vec<u8>>, LedgerError> {
    command(INS_GET_ADDRESS, u8::from(display), 0x00, path.encode())
}

/// GET APP CONFIGURATION: the app's flags and version.
pub fn get_configuration() -> APDUCommand<Vec<u8>> {
    APDUCommand { cla: CLA, ins: INS_GET_CONFIGURATION, p1: 0, p2: 0, data: Vec::new() }
}

/// SIGN ETH EIP 712 with the two hashes supplied (the device shows them as they are given).
pub fn sign_eip712_hashed(
    path: &DerivationPath,
    domain: &B256,
    message: &B256,
) -> Result<APDUCommand<Vec<u8>>, LedgerError> {
    let mut data = path.encode();
    data.extend_from_slice(domain.as_slice());
    data.extend_from_slice(message.as_slice());
    command(INS_SIGN_EIP712, 0x00, 0x00, data)
}

/// What GET ETH PUBLIC ADDRESS answers: the uncompressed public key and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressAnswer {
    pub public_key: [u8; 65],
    pub address: Address,
}

fn malformed(detail: impl Into<String>) -> LedgerError {
    LedgerError::Answer { detail: detail.into() }
}

/// Parses GET ETH PUBLIC ADDRESS's data (status word removed): key length (65), the key,
/// address length (40), the address as ASCII hex without `0x`, and a chain code only if one was
/// asked for (never, here). The address must be the key's own address.
pub fn parse_address(data: &[u8]) -> Result<AddressAnswer, LedgerError> {
    let (&key_len, rest) = data.split_first().ok_or_else(|| malformed("an empty answer"))?;
    if key_len != 65 || rest.len() < 65 {
        return Err(malformed("the public key is not 65 bytes"));
    }
    let (key, rest) = rest.split_at(65);
    let public_key: [u8; 65] = key.try_into().map_err(|_| malformed("the public key"))?;
    let verifying = k256::ecdsa::VerifyingKey::from_sec1_bytes(&public_key)
        .ok()
        .filter(|_| public_key[0] == 0x04)
        .ok_or_else(|| malformed("the public key is not an uncompressed secp256k1 point"))?;
    let (&address_len, rest) = rest.split_first().ok_or_else(|| malformed("no address"))?;
    if address_len != 40 || rest.len() != 40 {
        return Err(malformed("the address is not 40 hex digits"));
    }
    let text = std::str::from_utf8(rest).map_err(|_| malformed("the address is not text"))?;
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| malformed("the address is not hex"))?;
    let address = Address::from(bytes);
    if Address::from_public_key(&verifying) != address {
        return Err(malformed("the address is not the public key's address"));
    }
    Ok(AddressAnswer { public_key, address })
}

/// Parses a signature answer (v, r, s): v is 27 or 28 (0 or 1 is taken as 27 or 28); a high s
/// is refused, never flipped here.
pub fn parse_signature(data: &[u8]) -> Result<OwnerSignature, LedgerError> {
    if data.len() != 65 {
        return Err(malformed(format!("a signature is 65 bytes, not {}", data.len())));
    }
    let v = match data[0] {
        0 | 1 => data[0],
        27 | 28 => data[0] - 27,
        other => return Err(malformed(format!("the recovery byte v is {other}, not 27 or 28"))),
    };
    let r: [u8; 32] = data[1..33].try_into().map_err(|_| malformed("r"))?;
    let s: [u8; 32] = data[33..65].try_into().map_err(|_| malformed("s"))?;
    OwnerSignature::from_parts(r, s, v).map_err(|problem| malformed(problem.to_string()))
}

/// The app's configuration: whether blind signing ("arbitrary data") is on, and its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppConfiguration {
    pub flags: u8,
    pub version: (u8, u8, u8),
}

pub fn parse_configuration(data: &[u8]) -> Result<AppConfiguration, LedgerError> {
    match data {
        [flags, major, minor, patch, ..] => {
            Ok(AppConfiguration { flags: *flags, version: (*major, *minor, *patch) })
        }
        _ => Err(malformed("the app configuration is shorter than 4 bytes")),
    }
}

/// What a status word means, for the command it answers.
pub fn status_error(status: u16, ins: u8) -> LedgerError {
    match status {
        // The dashboard and other apps do not know the Ethereum app's class or instructions.
        0x6E00 | 0x6E01 | 0x6D00 | 0x6D02 | 0x6511 => LedgerError::AppClosed,
        0x5515 | 0x6982 => LedgerError::Locked,
        0x6985 => LedgerError::Rejected,
        // The Ethereum app answers 0x6A80 to a hashed EIP-712 request when its setting for it
        // (blind signing) is off.
        0x6A80 if ins == INS_SIGN_EIP712 => LedgerError::SettingOff,
        other => LedgerError::Status { status: other },
    }
}

/// The fuzz target's entry point: every parser of what a device answers, on the same bytes.
/// None may panic, whatever the bytes.
pub fn fuzz_answer(data: &[u8]) {
    let _ = parse_address(data);
    let _ = parse_signature(data);
    let _ = parse_configuration(data);
    let _ = DerivationPath::decode(data);
}
