//! A Ledger device running the Ethereum app, as a Safe owner.
//!
//! The device is met at `ledger_transport::Exchange`, the transport crate's own seam: the app
//! uses `ledger_transport_hid::TransportNativeHID` (USB HID); tests use the simulator of the
//! Ethereum app (feature `simulators`), which answers the same APDUs with the same status words.
//! The device is opened for each exchange and closed after it, so it can be unplugged and
//! plugged back in while the app runs. Its exchanges block (the HID read waits for the person),
//! so they run on tokio's blocking pool, never on the async runtime's threads.
//!
//! Signing uses the hashed form of the EIP-712 command: the device shows the Safe
//! transaction's domain hash and message hash, the same two hashes the app shows beside it,
//! and signs `keccak256(0x1901 ‖ domain ‖ message)`, which is the safeTxHash. The signature is
//! checked to recover to the enrolled address before it is returned.

pub mod apdu;
#[cfg(feature = "simulators")]
pub mod simulator;

use std::fmt;
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use alloy_primitives::Address;
use async_trait::async_trait;
use countersign_core::address::checksummed;
use countersign_core::guard::CheckedRequest;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::{verify_owner_signature, Decision, Prompt, Signer, SignerError};
use ledger_transport::{APDUCommand, Exchange};
use ledger_transport_hid::{hidapi::HidApi, LedgerHIDError, TransportNativeHID};

pub use apdu::DerivationPath;

/// How long a person has to answer on the device (confirm an address, sign).
pub const PERSON_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a command that needs no person may take.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the device gave no usable answer. Each case is its own message, written for the person
/// holding the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    NoDevice,
    Locked,
    AppClosed,
    SettingOff,
    /// The person rejected on the device: a decision, not a failure.
    Rejected,
    Timeout,
    /// The device went away in the middle of an exchange.
    Disconnected,
    /// An earlier exchange is still waiting on the device.
    Busy,
    /// The device is not the enrolled one: its address at the path differs.
    OtherDevice {
        enrolled: Address,
        found: Address,
    },
    /// A status word with no more specific meaning.
    Status {
        status: u16,
    },
    /// An answer that does not parse.
    Answer {
        detail: String,
    },
}

impl LedgerError {
    /// A stable code for the `{code, message}` errors of the CLI and the app.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoDevice => "ledger_not_found",
            Self::Locked => "ledger_locked",
            Self::AppClosed => "ledger_app_closed",
            Self::SettingOff => "ledger_setting_off",
            Self::Rejected => "ledger_rejected",
            Self::Timeout => "ledger_timeout",
            Self::Disconnected => "ledger_disconnected",
            Self::Busy => "ledger_busy",
            Self::OtherDevice { .. } => "ledger_other_device",
            Self::Status { .. } => "ledger_status",
            Self::Answer { .. } => "ledger_bad_answer",
        }
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => write!(
                f,
                "no Ledger found: plug it in over USB, unlock it and open the Ethereum app"
            ),
            Self::Locked => write!(f, "the Ledger is locked: unlock it with its PIN and try again"),
            Self::AppClosed => {
                write!(f, "the Ethereum app is not open on the Ledger: open it and try again")
            }
            Self::SettingOff => write!(
                f,
                "the Ethereum app refuses to sign hashed EIP-712 messages: turn on its \
                 \"Blind signing\" setting (Settings in the Ethereum app) and try again"
            ),
            Self::Rejected => write!(f, "the request was rejected on the Ledger"),
            Self::Timeout => write!(f, "the Ledger did not answer in time; try again"),
            Self::Disconnected => write!(
                f,
                "the Ledger went away during the exchange: plug it back in, open the Ethereum \
                 app and try again"
            ),
            Self::Busy => write!(
                f,
                "the Ledger is still waiting for an answer to an earlier request: answer it on \
                 the device, or unplug it, and try again"
            ),
            Self::OtherDevice { enrolled, found } => write!(
                f,
                "this Ledger is not the enrolled one: it has {} at the path, the enrolled \
                 address is {}",
                checksummed(found),
                checksummed(enrolled)
            ),
            Self::Status { status } => write!(f, "the Ledger answered status 0x{status:04X}"),
            Self::Answer { detail } => write!(f, "the Ledger's answer is unusable: {detail}"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<LedgerError> for SignerError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Rejected => SignerError::Declined,
            LedgerError::Status { .. } | LedgerError::Answer { .. } => {
                SignerError::Failed { detail: error.to_string() }
            }
            other => SignerError::Unavailable { code: other.code(), detail: other.to_string() },
        }
    }
}

/// The real transport's own failures, in the same words.
fn hid_failure(error: LedgerHIDError) -> LedgerError {
    match error {
        LedgerHIDError::DeviceNotFound => LedgerError::NoDevice,
        // A read or write that fails on an open device: it was unplugged or reset.
        LedgerHIDError::Hid(_) | LedgerHIDError::Io(_) => LedgerError::Disconnected,
        LedgerHIDError::Comm(detail) => LedgerError::Answer { detail: detail.to_owned() },
        LedgerHIDError::UTF8(_) => LedgerError::Answer { detail: "not text".to_owned() },
    }
}

/// Where the device is reached.
#[derive(Clone, Debug)]
pub enum Link {
    /// A Ledger over USB HID, through ledger-transport-hid.
    Usb,
    /// The Ethereum app simulator (tests only).
    #[cfg(feature = "simulators")]
    Simulated(simulator::Simulator),
}

/// Whether this build holds the Ethereum app simulator (a test build) that
/// `COUNTERSIGN_LEDGER_SIMULATOR` selects.
pub const SIMULATOR_BUILT: bool = cfg!(feature = "simulators");

/// One exchange at a time per device: a second one would lock the device (hidapi).
static USB_EXCHANGE: Mutex<()> = Mutex::new(());

impl Link {
    /// The USB link, unless this is a test build asked (by `COUNTERSIGN_LEDGER_SIMULATOR`, a
    /// mode file) to use the simulator.
    pub fn from_env() -> Self {
        #[cfg(feature = "simulators")]
        if let Some(path) = std::env::var_os("COUNTERSIGN_LEDGER_SIMULATOR") {
            return Link::Simulated(simulator::Simulator::with_mode_file(path.into()));
        }
        Link::Usb
    }

    /// Whether this is the simulator, a test double whose keys come from a public mnemonic.
    pub fn is_simulated(&self) -> bool {
        match self {
            Link::Usb => false,
            #[cfg(feature = "simulators")]
            Link::Simulated(_) => true,
        }
    }

    /// A short name for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Link::Usb => "Ledger",
            #[cfg(feature = "simulators")]
            Link::Simulated(_) => "Ledger (simulator)",
        }
    }

    /// Sends one command and returns its answer's data, or what its status word means. Runs on
    /// the blocking pool and gives up after `timeout`.
    pub async fn exchange(
        &self,
        command: APDUCommand<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, LedgerError> {
        let link = self.clone();
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || link.exchange_blocking(&handle, &command));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(LedgerError::Disconnected),
            // Limitation: the blocking read goes on until the device answers or goes away;
            // until then the next exchange answers Busy.
            Err(_) => Err(LedgerError::Timeout),
        }
    }

    fn exchange_blocking(
        &self,
        handle: &tokio::runtime::Handle,
        command: &APDUCommand<Vec<u8>>,
    ) -> Result<Vec<u8>, LedgerError> {
        match self {
            Link::Usb => {
                let _turn = match USB_EXCHANGE.try_lock() {
                    Ok(turn) => turn,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return Err(LedgerError::Busy),
                };
                let api = HidApi::new().map_err(|_| LedgerError::NoDevice)?;
                let transport = TransportNativeHID::new(&api).map_err(hid_failure)?;
                run(handle, &transport, command, hid_failure)
            }
            #[cfg(feature = "simulators")]
            Link::Simulated(simulator) => {
                let transport = simulator.connect()?;
                run(handle, &transport, command, |_| LedgerError::Disconnected)
            }
        }
    }
}

/// One exchange through any transport behind the crate's trait; the status word is checked
/// here, for every transport alike.
fn run<T: Exchange>(
    handle: &tokio::runtime::Handle,
    transport: &T,
    command: &APDUCommand<Vec<u8>>,
    failure: impl Fn(T::Error) -> LedgerError,
) -> Result<Vec<u8>, LedgerError> {
    let answer = handle.block_on(transport.exchange(command)).map_err(failure)?;
    let status = answer.retcode();
    if status != 0x9000 {
        return Err(apdu::status_error(status, command.ins));
    }
    Ok(answer.data().to_vec())
}

/// Reads the address at `path`; with `display`, the device shows it and the person confirms
/// it there (a rejection is [`LedgerError::Rejected`]).
pub async fn read_address(
    link: &Link,
    path: &DerivationPath,
    display: bool,
) -> Result<apdu::AddressAnswer, LedgerError> {
    let timeout = if display { PERSON_TIMEOUT } else { DEVICE_TIMEOUT };
    read_address_within(link, path, display, timeout).await
}

/// [`read_address`] with its own time limit.
pub async fn read_address_within(
    link: &Link,
    path: &DerivationPath,
    display: bool,
    timeout: Duration,
) -> Result<apdu::AddressAnswer, LedgerError> {
    let answer = link.exchange(apdu::get_address(path, display)?, timeout).await?;
    apdu::parse_address(&answer)
}

/// A Ledger account enrolled as a Safe owner.
#[derive(Clone)]
pub struct LedgerSigner {
    link: Link,
    path: DerivationPath,
    address: Address,
}

impl fmt::Debug for LedgerSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerSigner")
            .field("link", &self.link.describe())
            .field("path", &self.path)
            .field("address", &self.address)
            .finish()
    }
}

impl LedgerSigner {
    /// The signer for an enrolled account; the device is only reached when signing.
    pub fn enrolled(link: Link, path: DerivationPath, address: Address) -> Self {
        Self { link, path, address }
    }

    pub fn path(&self) -> &DerivationPath {
        &self.path
    }

    /// Signs the request's two EIP-712 hashes on the device and checks the result.
    async fn sign_on_device(
        &self,
        request: &CheckedRequest,
    ) -> Result<OwnerSignature, LedgerError> {
        // The device must be the enrolled one before the person is asked anything on it.
        let found = read_address(&self.link, &self.path, false).await?.address;
        if found != self.address {
            return Err(LedgerError::OtherDevice { enrolled: self.address, found });
        }
        let hashes = request.hashes();
        let command = apdu::sign_eip712_hashed(&self.path, &hashes.domain, &hashes.message)?;
        let answer = self.link.exchange(command, PERSON_TIMEOUT).await?;
        apdu::parse_signature(&answer)
    }
}

#[async_trait]
impl Signer for LedgerSigner {
    fn address(&self) -> Address {
        self.address
    }

    fn describe(&self) -> String {
        format!("{} {} at {}", self.link.describe(), checksummed(&self.address), self.path)
    }

    async fn sign(
        &self,
        request: &CheckedRequest,
        prompt: &dyn Prompt,
    ) -> Result<OwnerSignature, SignerError> {
        if prompt.confirm(request, self.address).await == Decision::Decline {
            return Err(SignerError::Declined);
        }
        let signature = self.sign_on_device(request).await?;
        verify_owner_signature(request, &signature, self.address)?;
        Ok(signature)
    }
}
