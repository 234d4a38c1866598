//! A simulator of the Ledger Ethereum app behind `ledger_transport::Exchange`, for tests.
//!
//! It derives BIP-32 keys from a mnemonic (by default the well-known Hardhat test mnemonic,
//! `test test … junk`, whose account `m/44'/60'/0'/0/0` is
//! 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266), answers GET ETH PUBLIC ADDRESS, GET APP
//! CONFIGURATION and the hashed SIGN ETH EIP 712 command as the app's specification lays them
//! out, and answers with the status words a real device gives in its other states: locked,
//! another app (or the dashboard) open, the blind-signing setting off, a person who rejects on
//! the device, unplugged, and a device that goes away in the middle of an exchange.
//!
//! Its mode is set in memory, or read before every exchange from a mode file (one word:
//! `ready`, `locked`, `app-closed`, `setting-off`, `rejects`, `unplugged`, `goes-away`,
//! `hangs`) so that a test can change the state of a simulator that runs inside another
//! process (the desktop app under WebDriver).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use alloy_primitives::{keccak256, Address, B256};
use async_trait::async_trait;
use countersign_core::address::checksummed;
use ledger_transport::{APDUAnswer, APDUCommand, Exchange};
use std::ops::Deref;

use super::apdu::{self, DerivationPath};
use super::LedgerError;

/// The Hardhat development mnemonic (public, from Hardhat's documentation).
pub const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ready,
    Locked,
    AppClosed,
    SettingOff,
    Rejects,
    Unplugged,
    /// Answers nothing to the next exchange and is unplugged from then on.
    GoesAway,
    /// Waits for a person who never answers: each exchange takes [`HANG`] before it answers
    /// as `Ready` would.
    Hangs,
}

/// How long an exchange takes in [`Mode::Hangs`].
pub const HANG: std::time::Duration = std::time::Duration::from_secs(2);

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text.trim() {
            "ready" => Mode::Ready,
            "locked" => Mode::Locked,
            "app-closed" => Mode::AppClosed,
            "setting-off" => Mode::SettingOff,
            "rejects" => Mode::Rejects,
            "unplugged" => Mode::Unplugged,
            "goes-away" => Mode::GoesAway,
            "hangs" => Mode::Hangs,
            other => return Err(format!("unknown simulator mode {other:?}")),
        })
    }
}

/// What the simulated device showed the person for a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub domain: B256,
    pub message: B256,
}

struct State {
    seed: [u8; 64],
    mode: Mode,
    shown: Vec<Shown>,
    commands: Vec<Vec<u8>>,
}

/// A simulated device. Clones share one device.
#[derive(Clone)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
    mode_file: Option<PathBuf>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").field("mode_file", &self.mode_file).finish_non_exhaustive()
    }
}

/// The simulated device's answer when it goes away mid-exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Simulator {
    /// A device holding `mnemonic`'s seed, with an empty passphrase. The seed is BIP-39's:
    /// PBKDF2-HMAC-SHA512 of the mnemonic's words, salted "mnemonic", 2048 rounds. The words'
    /// checksum is not checked: this is a test double.
    pub fn new(mnemonic: &str) -> Self {
        let words = mnemonic.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut seed = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(words.as_bytes(), b"mnemonic", 2048, &mut seed);
        let state = State { seed, mode: Mode::Ready, shown: vec![], commands: vec![] };
        Self { state: Arc::new(Mutex::new(state)), mode_file: None }
    }

    /// A device with the test mnemonic.
    pub fn test() -> Self {
        Self::new(TEST_MNEMONIC)
    }

    /// A device with the test mnemonic whose mode is read from `path` before each exchange
    /// (a missing file means `ready`).
    pub fn with_mode_file(path: PathBuf) -> Self {
        Self { mode_file: Some(path), ..Self::test() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_mode(&self, mode: Mode) {
        if let Some(path) = &self.mode_file {
            let word = match mode {
                Mode::Ready => "ready",
                Mode::Locked => "locked",
                Mode::AppClosed => "app-closed",
                Mode::SettingOff => "setting-off",
                Mode::Rejects => "rejects",
                Mode::Unplugged => "unplugged",
                Mode::GoesAway => "goes-away",
                Mode::Hangs => "hangs",
            };
            // A test double: a write that fails shows up as the wrong mode in the test.
            let _ = std::fs::write(path, word);
        }
        self.lock().mode = mode;
    }

    pub fn mode(&self) -> Mode {
        match &self.mode_file {
            Some(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(Mode::Ready),
            None => self.lock().mode,
        }
    }

    /// The hashes the device showed for each signature it was asked for, in order.
    pub fn shown(&self) -> Vec<Shown> {
        self.lock().shown.clone()
    }

    /// Every command it received, serialized.
    pub fn commands(&self) -> Vec<Vec<u8>> {
        self.lock().commands.clone()
    }

    /// The address at `path`, derived directly (what the device would answer).
    pub fn address(&self, path: &DerivationPath) -> Address {
        Address::from_private_key(&self.key(path))
    }

    fn key(&self, path: &DerivationPath) -> k256::ecdsa::SigningKey {
        let seed = self.lock().seed;
        let path: bip32::DerivationPath = match path.to_string().parse() {
            Ok(path) => path,
            Err(_) => unreachable!("a DerivationPath always prints as a BIP-32 path"),
        };
        match bip32::XPrv::derive_from_path(seed, &path)
            .ok()
            .and_then(|xprv| k256::ecdsa::SigningKey::from_bytes(&xprv.to_bytes().into()).ok())
        {
            Some(key) => key,
            // Derivation fails with probability about 2^-127 per step.
            None => unreachable!("BIP-32 derivation from the test seed"),
        }
    }

    /// Opens the device, as plugging it in and finding it over USB would.
    pub fn connect(&self) -> Result<SimulatedTransport, LedgerError> {
        if self.mode() == Mode::Unplugged {
            return Err(LedgerError::NoDevice);
        }
        Ok(SimulatedTransport(self.clone()))
    }

    /// The device's answer to one serialized APDU: data followed by the status word.
    fn answer(&self, raw: &[u8]) -> Result<Vec<u8>, Gone> {
        self.lock().commands.push(raw.to_vec());
        let status = |word: u16| Ok(word.to_be_bytes().to_vec());
        match self.mode() {
            Mode::GoesAway => {
                self.set_mode(Mode::Unplugged);
                return Err(Gone);
            }
            Mode::Unplugged => return Err(Gone),
            Mode::Locked => return status(0x5515),
            Mode::AppClosed => return status(0x6E01),
            Mode::Hangs => std::thread::sleep(HANG),
            Mode::Ready | Mode::Rejects | Mode::SettingOff => {}
        }
        let [cla, ins, p1, p2, lc, data @ ..] = raw else { return status(0x6700) };
        if *cla != apdu::CLA {
            return status(0x6E00);
        }
        if usize::from(*lc) != data.len() {
            return status(0x6700);
        }
        let mut out = match (*ins, *p1, *p2) {
            (apdu::INS_GET_CONFIGURATION, 0, 0) => {
                let blind = u8::from(self.mode() != Mode::SettingOff);
                vec![blind, 1, 10, 4]
            }
            (apdu::INS_GET_ADDRESS, display @ (0 | 1), 0) => {
                let Some((path, [])) = DerivationPath::decode(data) else { return status(0x6A80) };
                if display == 1 && self.mode() == Mode::Rejects {
                    return status(0x6985);
                }
                let key = self.key(&path);
                let point = key.verifying_key().to_encoded_point(false);
                let address = checksummed(&Address::from_private_key(&key));
                let mut out = vec![65];
                out.extend_from_slice(point.as_bytes());
                out.push(40);
                out.extend_from_slice(&address.as_bytes()[2..]);
                out
            }
            (apdu::INS_SIGN_EIP712, 0, 0) => {
                let Some((path, hashes)) = DerivationPath::decode(data) else {
                    return status(0x6A80);
                };
                if hashes.len() != 64 || self.mode() == Mode::SettingOff {
                    return status(0x6A80);
                }
                let domain = B256::from_slice(&hashes[..32]);
                let message = B256::from_slice(&hashes[32..]);
                self.lock().shown.push(Shown { domain, message });
                if self.mode() == Mode::Rejects {
                    return status(0x6985);
                }
                let mut preimage = vec![0x19, 0x01];
                preimage.extend_from_slice(hashes);
                let digest = keccak256(&preimage);
                let Ok((signature, recovery)) =
                    self.key(&path).sign_prehash_recoverable(digest.as_slice())
                else {
                    return status(0x6A80);
                };
                let (signature, recovery) = match signature.normalize_s() {
                    Some(low) => (low, recovery.to_byte() ^ 1),
                    None => (signature, recovery.to_byte()),
                };
                let mut out = vec![27 + recovery];
                out.extend_from_slice(&signature.to_bytes());
                out
            }
            (apdu::INS_GET_ADDRESS | apdu::INS_SIGN_EIP712 | apdu::INS_GET_CONFIGURATION, ..) => {
                return status(0x6B00)
            }
            _ => return status(0x6D00),
        };
        out.extend_from_slice(&0x9000u16.to_be_bytes());
        Ok(out)
    }
}

/// An open connection to the simulated device.
#[derive(Debug)]
pub struct SimulatedTransport(Simulator);

#[async_trait]
impl Exchange for SimulatedTransport {
    type Error = Gone;
    type AnswerType = Vec<u8>;

    async fn exchange<I>(&self, command: &APDUCommand<I>) -> Result<APDUAnswer<Vec<u8>>, Gone>
    where
        I: Deref<Target = [u8]> + Send + Sync,
    {
        let answer = self.0.answer(&command.serialize())?;
        APDUAnswer::from_answer(answer).map_err(|_| Gone)
    }
}
