//! The guards: every reason to refuse a request, decided from the vault record and the local
//! policy only.
//!
//! [`review`] never stops at the first problem: a person deciding what to do about a request
//! should see every reason at once. A review with any refusal cannot become a
//! [`CheckedRequest`], and nothing else can make one, so a signer cannot be handed a request
//! whose checks were skipped.

use std::fmt;

use alloy_primitives::{Address, B256, U256};

use crate::address::checksummed;
use crate::decode::{decode_call, Action, AdminKind, AdminOp, Call, RawNote};
use crate::hash::SafeTxHashes;
use crate::policy::Policy;
use crate::request::{Operation, SafeTxRequest};
use crate::tokens::TokenList;
use crate::vault::VaultRecord;

/// What this approver did before on the request's vault, supplied by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The safeTxHashes this approver already signed for the request's vault and nonce.
    pub signed_for_nonce: Vec<B256>,
    /// Open incidents on the vault; any blocks signing.
    pub open_incidents: usize,
}

/// Something a person should look at; not a reason to refuse on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    UnverifiedChecksum { field: &'static str },
    UnknownCalldata { place: String, selector: Option<[u8; 4]>, note: RawNote },
    UnknownToken { place: String, token: Address },
    UnlimitedApproval { place: String, token: Address, spender: Address },
    NativeValueWithCall { place: String, value: U256 },
    RefundFieldsIgnored,
    SafeTxGasSet { safe_tx_gas: U256 },
    NextNonceUnknown,
    QueuedAhead { nonce: U256, next: U256 },
    OwnersUnknown,
    GasRefundAllowed { gas_price: U256, base_gas: U256, gas_token: Address, receiver: Address },
}

/// A reason the request must not be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    HashMismatch { claimed: B256, computed: B256 },
    SafeMismatch { request: Address, vault: Address },
    UnknownOperation { place: String, value: u8 },
    UntrustedDelegatecall { place: String, target: Address },
    UndecodedDelegatecall { place: String, target: Address },
    AdminNotAllowed { place: String, op: AdminOp },
    NotInVersion { place: String, function: &'static str },
    UnrecognizedSelfCall { place: String, selector: Option<[u8; 4]> },
    MalformedBatch { place: String, problem: String },
    GasRefund { gas_price: U256, receiver: Address },
    NonceUsed { nonce: U256, next: U256 },
    NonceTooFarAhead { nonce: U256, next: U256, max_ahead: u64 },
    Tripwire { nonce: U256, signed: B256, this: B256 },
    OpenIncidents { count: usize },
    NotAnOwner { signer: Address },
    NonCanonicalCall { place: String, function: &'static str },
    ZeroAddressCall { place: String },
}

/// `ok` when nothing refuses, `refused` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Refused,
}

/// Everything Countersign concluded about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub vault: VaultRecord,
    pub request: SafeTxRequest,
    pub hashes: SafeTxHashes,
    pub call: Call,
    pub warnings: Vec<Warning>,
    pub refusals: Vec<Refusal>,
}

/// A request every guard passed. Only [`Review::into_checked`] constructs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRequest {
    vault: VaultRecord,
    request: SafeTxRequest,
    hashes: SafeTxHashes,
    call: Call,
}

/// A review that refused, returned by [`Review::into_checked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Box<Review>);

/// Runs every guard on `request` for `vault`.
pub fn review(
    request: SafeTxRequest,
    vault: &VaultRecord,
    policy: &Policy,
    tokens: &TokenList,
    history: &History,
) -> Review {
    let hashes = vault.domain().hashes(&request.tx);
    review_hashed(request, hashes, vault, policy, tokens, history)
}

/// [`review`] for a caller that already computed the hashes with the vault's cached
/// [`crate::hash::SafeDomain`] (a queue sync, a benchmark). `hashes` must be
/// `vault.domain().hashes(&request.tx)`; the tests hold both paths to the same result.
pub fn review_hashed(
    request: SafeTxRequest,
    hashes: SafeTxHashes,
    vault: &VaultRecord,
    policy: &Policy,
    tokens: &TokenList,
    history: &History,
) -> Review {
    let call = decode_call(vault.address, vault.chain_id, &request.tx);
    let mut review = Review {
        vault: vault.clone(),
        request,
        hashes,
        call,
        warnings: Vec::new(),
        refusals: Vec::new(),
    };

    review.check_identity();
    review.check_calls(policy, tokens);
    review.check_gas(policy);
    review.check_nonce(policy);
    review.check_history(history);
    review
}

impl Review {
    pub fn verdict(&self) -> Verdict {
        if self.refusals.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Refused
        }
    }

    /// The standard on-chain rejection: a zero-value call of the Safe to itself with no data.
    ///
    /// Every gas and refund field must be zero too: a "rejection" that pays a refund can drain
    /// the Safe through `gasToken` and `refundReceiver`, and gets no tripwire exemption.
    pub fn is_rejection(&self) -> bool {
        let tx = &self.request.tx;
        tx.to == self.vault.address
            && tx.value.is_zero()
            && tx.data.is_empty()
            && tx.operation == Operation::CALL
            && tx.safe_tx_gas.is_zero()
            && tx.base_gas.is_zero()
            && tx.gas_price.is_zero()
            && tx.gas_token.is_zero()
            && tx.refund_receiver.is_zero()
    }

    /// The tripwire refusal, when this review tripped it; the store opens an incident for it.
    pub fn tripwire(&self) -> Option<&Refusal> {
        self.refusals.iter().find(|r| matches!(r, Refusal::Tripwire { .. }))
    }

    /// Checks the key about to sign against the pinned owners: refused when the owners are
    /// known and the key is not one of them, a warning when the owners are not pinned.
    pub fn check_signer(&mut self, signer: Address) {
        if self.vault.owners.is_empty() {
            self.warnings.push(Warning::OwnersUnknown);
        } else if !self.vault.owners.contains(&signer) {
            self.refusals.push(Refusal::NotAnOwner { signer });
        }
    }

    /// The request, if no guard refused it.
    pub fn into_checked(self) -> Result<CheckedRequest, Refused> {
        if !self.refusals.is_empty() {
            return Err(Refused(Box::new(self)));
        }
        Ok(CheckedRequest {
            vault: self.vault,
            request: self.request,
            hashes: self.hashes,
            call: self.call,
        })
    }

    fn check_identity(&mut self) {
        if self.request.safe != self.vault.address {
            let refusal =
                Refusal::SafeMismatch { request: self.request.safe, vault: self.vault.address };
            self.refusals.push(refusal);
        }
        if let Some(claimed) = self.request.claimed_safe_tx_hash {
            if claimed != self.hashes.safe_tx {
                let computed = self.hashes.safe_tx;
                self.refusals.push(Refusal::HashMismatch { claimed, computed });
            }
        }
        for field in self.request.unverified_addresses.clone() {
            self.warnings.push(Warning::UnverifiedChecksum { field });
        }
    }

    fn check_calls(&mut self, policy: &Policy, tokens: &TokenList) {
        let chain_id = self.vault.chain_id;
        let safe = self.vault.address;
        let version = self.vault.version;
        let mut refusals = Vec::new();
        let mut warnings = Vec::new();

        for call in self.call.walk() {
            let place = call.place();
            check_operation(call, policy, chain_id, &mut refusals);
            check_action(call, policy, safe, &mut refusals, &mut warnings);
            check_version(call, version, &mut refusals);
            note_tokens(call, tokens, chain_id, &mut warnings);
            if call.target.is_zero() && (!call.value.is_zero() || !call.data.is_empty()) {
                refusals.push(Refusal::ZeroAddressCall { place: place.clone() });
            }
            if !call.value.is_zero() && !call.data.is_empty() && call.target != safe {
                warnings.push(Warning::NativeValueWithCall { place, value: call.value });
            }
        }
        self.refusals.extend(refusals);
        self.warnings.extend(warnings);
    }

    fn check_gas(&mut self, policy: &Policy) {
        let tx = &self.request.tx;
        if !tx.gas_price.is_zero() && !policy.allow_gas_refunds {
            let receiver = tx.refund_receiver;
            self.refusals.push(Refusal::GasRefund { gas_price: tx.gas_price, receiver });
        } else if !tx.gas_price.is_zero() {
            self.warnings.push(Warning::GasRefundAllowed {
                gas_price: tx.gas_price,
                base_gas: tx.base_gas,
                gas_token: tx.gas_token,
                receiver: tx.refund_receiver,
            });
        }
        let refund_fields_set =
            tx.gas_token != Address::ZERO || tx.refund_receiver != Address::ZERO;
        if tx.gas_price.is_zero() && refund_fields_set {
            self.warnings.push(Warning::RefundFieldsIgnored);
        }
        if !tx.safe_tx_gas.is_zero() {
            self.warnings.push(Warning::SafeTxGasSet { safe_tx_gas: tx.safe_tx_gas });
        }
    }

    fn check_nonce(&mut self, policy: &Policy) {
        let nonce = self.request.tx.nonce;
        let Some(next) = self.vault.next_nonce else {
            self.warnings.push(Warning::NextNonceUnknown);
            return;
        };
        if nonce < next {
            self.refusals.push(Refusal::NonceUsed { nonce, next });
        } else if nonce - next > U256::from(policy.max_nonce_ahead) {
            let max_ahead = policy.max_nonce_ahead;
            self.refusals.push(Refusal::NonceTooFarAhead { nonce, next, max_ahead });
        } else if nonce > next {
            self.warnings.push(Warning::QueuedAhead { nonce, next });
        }
    }

    fn check_history(&mut self, history: &History) {
        let found = history_refusals(
            history,
            self.hashes.safe_tx,
            self.request.tx.nonce,
            self.is_rejection(),
        );
        self.refusals.extend(found);
    }
}

/// The tripwire and the incident block, on their own: the store runs this again inside the
/// transaction that records a signature, so two signers racing on one nonce cannot both pass.
pub fn history_refusals(
    history: &History,
    this: B256,
    nonce: U256,
    is_rejection: bool,
) -> Vec<Refusal> {
    let mut out = Vec::new();
    if history.open_incidents > 0 {
        out.push(Refusal::OpenIncidents { count: history.open_incidents });
    }
    let other = history.signed_for_nonce.iter().find(|signed| **signed != this);
    if let Some(&signed) = other {
        if !is_rejection {
            out.push(Refusal::Tripwire { nonce, signed, this });
        }
    }
    out
}

fn check_operation(call: &Call, policy: &Policy, chain_id: u64, refusals: &mut Vec<Refusal>) {
    let place = call.place();
    match call.operation {
        Operation::CALL => {}
        Operation::DELEGATECALL => {
            if !policy.trusts_delegatecall(chain_id, &call.target) {
                refusals.push(Refusal::UntrustedDelegatecall { place, target: call.target });
            } else if matches!(call.action, Action::Raw { .. }) {
                refusals.push(Refusal::UndecodedDelegatecall { place, target: call.target });
            }
        }
        Operation(value) => refusals.push(Refusal::UnknownOperation { place, value }),
    }
}

fn check_action(
    call: &Call,
    policy: &Policy,
    safe: Address,
    refusals: &mut Vec<Refusal>,
    warnings: &mut Vec<Warning>,
) {
    let place = call.place();
    match &call.action {
        Action::SafeAdmin(op) if !policy.allowed_admin_operations.contains(&op.kind()) => {
            refusals.push(Refusal::AdminNotAllowed { place, op: *op });
        }
        Action::Raw { note: RawNote::MalformedBatch { problem }, .. } => {
            refusals.push(Refusal::MalformedBatch { place, problem: problem.clone() });
        }
        Action::Raw { note: RawNote::BatchTooDeep, .. } => {
            let problem = "batches are nested too deep to review".to_owned();
            refusals.push(Refusal::MalformedBatch { place, problem });
        }
        Action::Raw { note: RawNote::NonCanonical { function }, .. } => {
            refusals.push(Refusal::NonCanonicalCall { place, function });
        }
        Action::Raw { selector, .. } if call.target == safe => {
            refusals.push(Refusal::UnrecognizedSelfCall { place, selector: *selector });
        }
        Action::Raw { selector, note } => {
            let warning =
                Warning::UnknownCalldata { place, selector: *selector, note: note.clone() };
            warnings.push(warning);
        }
        _ => {}
    }
}

fn check_version(call: &Call, version: crate::version::SafeVersion, refusals: &mut Vec<Refusal>) {
    let Action::SafeAdmin(op) = &call.action else {
        return;
    };
    let missing = match op.kind() {
        AdminKind::ChangeMasterCopy => !version.has_change_master_copy(),
        AdminKind::SetModuleGuard => !version.has_module_guard(),
        _ => false,
    };
    if missing {
        refusals.push(Refusal::NotInVersion { place: call.place(), function: op.kind().name() });
    }
}

fn note_tokens(call: &Call, tokens: &TokenList, chain_id: u64, warnings: &mut Vec<Warning>) {
    let place = call.place();
    match &call.action {
        Action::Erc20Transfer { .. } | Action::Erc20TransferFrom { .. } => {}
        Action::Erc20Approve { spender, amount } => {
            if *amount == U256::MAX {
                let warning = Warning::UnlimitedApproval {
                    place: place.clone(),
                    token: call.target,
                    spender: *spender,
                };
                warnings.push(warning);
            }
        }
        _ => return,
    }
    if tokens.get(chain_id, &call.target).is_none() {
        warnings.push(Warning::UnknownToken { place, token: call.target });
    }
}

impl CheckedRequest {
    pub fn vault(&self) -> &VaultRecord {
        &self.vault
    }

    pub fn request(&self) -> &SafeTxRequest {
        &self.request
    }

    pub fn hashes(&self) -> &SafeTxHashes {
        &self.hashes
    }

    pub fn call(&self) -> &Call {
        &self.call
    }
}

impl Refusal {
    /// A stable code for scripts and the UI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::SafeMismatch { .. } => "safe_mismatch",
            Self::UnknownOperation { .. } => "unknown_operation",
            Self::UntrustedDelegatecall { .. } => "untrusted_delegatecall",
            Self::UndecodedDelegatecall { .. } => "undecoded_delegatecall",
            Self::AdminNotAllowed { .. } => "admin_operation",
            Self::NotInVersion { .. } => "not_in_version",
            Self::UnrecognizedSelfCall { .. } => "unrecognized_self_call",
            Self::MalformedBatch { .. } => "malformed_batch",
            Self::GasRefund { .. } => "gas_refund",
            Self::NonceUsed { .. } => "nonce_used",
            Self::NonceTooFarAhead { .. } => "nonce_too_far_ahead",
            Self::Tripwire { .. } => "tripwire",
            Self::OpenIncidents { .. } => "open_incident",
            Self::NotAnOwner { .. } => "not_an_owner",
            Self::NonCanonicalCall { .. } => "non_canonical_call",
            Self::ZeroAddressCall { .. } => "zero_address_call",
        }
    }
}

impl Warning {
    /// A stable code for scripts and the UI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnverifiedChecksum { .. } => "unverified_checksum",
            Self::UnknownCalldata { .. } => "unknown_calldata",
            Self::UnknownToken { .. } => "unknown_token",
            Self::UnlimitedApproval { .. } => "unlimited_approval",
            Self::NativeValueWithCall { .. } => "native_value_with_call",
            Self::RefundFieldsIgnored => "refund_fields_ignored",
            Self::SafeTxGasSet { .. } => "safe_tx_gas_set",
            Self::NextNonceUnknown => "next_nonce_unknown",
            Self::QueuedAhead { .. } => "queued_ahead",
            Self::OwnersUnknown => "owners_unknown",
            Self::GasRefundAllowed { .. } => "gas_refund_allowed",
        }
    }
}

fn selector_text(selector: &Option<[u8; 4]>) -> String {
    match selector {
        Some(s) => format!("0x{:02x}{:02x}{:02x}{:02x}", s[0], s[1], s[2], s[3]),
        None => "no selector".to_owned(),
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch { claimed, computed } => write!(
                f,
                "the claimed safeTxHash {claimed} differs from the one computed from the fields, \
                 {computed}"
            ),
            Self::SafeMismatch { request, vault } => write!(
                f,
                "the request is for Safe {} but the vault record is for {}",
                checksummed(request),
                checksummed(vault)
            ),
            Self::UnknownOperation { place, value } => {
                write!(f, "{place} has operation {value}; only 0 (call) and 1 (delegatecall) exist")
            }
            Self::UntrustedDelegatecall { place, target } => write!(
                f,
                "{place} is a delegatecall to {}, which the local policy does not trust on this \
                 chain; a delegatecall runs foreign code with the Safe's full authority",
                checksummed(target)
            ),
            Self::UndecodedDelegatecall { place, target } => write!(
                f,
                "{place} is a delegatecall to {} with calldata Countersign cannot decode",
                checksummed(target)
            ),
            Self::AdminNotAllowed { place, op } => write!(
                f,
                "{place} calls {} on the Safe, which the local policy does not allow",
                op.kind().name()
            ),
            Self::NotInVersion { place, function } => write!(
                f,
                "{place} calls {function}, which this Safe's version does not have; the call \
                 would reach the fallback handler instead"
            ),
            Self::UnrecognizedSelfCall { place, selector } => write!(
                f,
                "{place} calls the Safe itself with calldata Countersign does not recognise \
                 ({})",
                selector_text(selector)
            ),
            Self::MalformedBatch { place, problem } => {
                write!(f, "{place} is a MultiSend batch that cannot be decoded: {problem}")
            }
            Self::GasRefund { gas_price, receiver } => write!(
                f,
                "gasPrice is {gas_price}, so the Safe would pay a gas refund to {}; the local \
                 policy does not allow refunds",
                if receiver.is_zero() {
                    "whoever executes it".to_owned()
                } else {
                    checksummed(receiver)
                }
            ),
            Self::NonceUsed { nonce, next } => {
                write!(f, "nonce {nonce} is already used: the vault's next nonce is {next}")
            }
            Self::NonceTooFarAhead { nonce, next, max_ahead } => write!(
                f,
                "nonce {nonce} is more than {max_ahead} ahead of the vault's next nonce {next}"
            ),
            Self::Tripwire { nonce, signed, this } => write!(
                f,
                "this approver already signed {signed} for nonce {nonce}; a different \
                 payload {this} for the same nonce is refused and an incident is opened"
            ),
            Self::OpenIncidents { count } => write!(
                f,
                "the vault has {count} open incident(s); signing is blocked until a person \
                 clears them (countersign incident list)"
            ),
            Self::NotAnOwner { signer } => write!(
                f,
                "the signing key {} is not an owner of the pinned vault; its signature would not \
                 count",
                checksummed(signer)
            ),
            Self::NonCanonicalCall { place, function } => write!(
                f,
                "{place} calls {function} with arguments that are not in canonical ABI form \
                 (extra bytes or dirty padding): the contract may read them differently from \
                 what is shown"
            ),
            Self::ZeroAddressCall { place } => write!(
                f,
                "{place} sends value or calldata to the zero address, where value is burned; \
                 only MultiSend 1.5.0 and later redirect such steps to the Safe"
            ),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnverifiedChecksum { field } => write!(
                f,
                "{field} was written in one letter case, so it carried no EIP-55 checksum"
            ),
            Self::UnknownCalldata { place, selector, note } => {
                write!(
                    f,
                    "{place} has calldata Countersign does not decode ({}",
                    selector_text(selector)
                )?;
                match note {
                    RawNote::NonCanonical { function } => {
                        write!(f, ", {function} with non-canonical arguments)")
                    }
                    RawNote::MultiSendByCall => {
                        write!(f, ", multiSend by plain call: its steps would not run as the Safe)")
                    }
                    RawNote::AdminOnOtherContract { function } => {
                        write!(f, ", {function} on a contract other than this Safe)")
                    }
                    _ => write!(f, ")"),
                }
            }
            Self::UnknownToken { place, token } => write!(
                f,
                "{place} moves token {}, which is not in the token list: amounts are raw units",
                checksummed(token)
            ),
            Self::UnlimitedApproval { place, token, spender } => write!(
                f,
                "{place} grants {} an unlimited allowance of {}",
                checksummed(spender),
                checksummed(token)
            ),
            Self::NativeValueWithCall { place, value } => {
                write!(f, "{place} also sends {value} wei of native currency with its call")
            }
            Self::RefundFieldsIgnored => write!(
                f,
                "gasToken or refundReceiver is set, but gasPrice is 0 so no refund is paid"
            ),
            Self::SafeTxGasSet { safe_tx_gas } => write!(
                f,
                "safeTxGas is {safe_tx_gas}: the transaction can fail without reverting and \
                 still use up its nonce"
            ),
            Self::NextNonceUnknown => write!(
                f,
                "the vault's next nonce is unknown, so a used or far-future nonce cannot be \
                 detected"
            ),
            Self::QueuedAhead { nonce, next } => write!(
                f,
                "nonce {nonce} waits {} place(s) ahead of the vault's next nonce {next} in the queue",
                *nonce - *next
            ),
            Self::OwnersUnknown => write!(
                f,
                "the vault's owners are not pinned, so the signing key was not checked against them"
            ),
            Self::GasRefundAllowed { gas_price, base_gas, gas_token, receiver } => write!(
                f,
                "the Safe pays a gas refund: (gas used + baseGas {base_gas}) × gasPrice \
                 {gas_price} in {} to {}",
                if gas_token.is_zero() {
                    "the native asset".to_owned()
                } else {
                    checksummed(gas_token)
                },
                if receiver.is_zero() {
                    "whoever executes it".to_owned()
                } else {
                    checksummed(receiver)
                }
            ),
        }
    }
}
