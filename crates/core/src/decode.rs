//! What a Safe transaction does, decoded from its calldata.
//!
//! Decoding never trusts a label the request carries: it reads the selector and arguments from
//! the raw `data`, insists that the arguments are in canonical ABI form (re-encoding gives back
//! the same bytes), and otherwise shows the call as raw calldata with a note saying why.

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{sol, SolCall};

use crate::request::{Operation, SafeTx};

/// MultiSend batches nested deeper than this are not decoded (and so are refused).
pub const MAX_BATCH_DEPTH: usize = 4;

sol! {
    function transfer(address to, uint256 amount);
    function approve(address spender, uint256 amount);
    function transferFrom(address from, address to, uint256 amount);
    function multiSend(bytes transactions);
    function addOwnerWithThreshold(address owner, uint256 threshold);
    function removeOwner(address prevOwner, address owner, uint256 threshold);
    function swapOwner(address prevOwner, address oldOwner, address newOwner);
    function changeThreshold(uint256 threshold);
    function enableModule(address module);
    function disableModule(address prevModule, address module);
    function setGuard(address guard);
    function setFallbackHandler(address handler);
    function changeMasterCopy(address masterCopy);
    function setModuleGuard(address moduleGuard);
}

/// One call the Safe makes: the outer transaction, or one step of a MultiSend batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Where the call sits: empty for the transaction itself, `batch[2]` for the third step,
    /// `batch[2].batch[0]` inside a nested batch.
    pub path: String,
    pub operation: Operation,
    /// The address as written in the transaction or batch step.
    pub to: Address,
    /// The address the call reaches. The same as `to`, except for a step addressed to the zero
    /// address in a batch run by an official MultiSend or MultiSendCallOnly of Safe 1.5.0 or
    /// later, which sends such steps to `address(this)`: under delegatecall, the Safe itself
    /// (safe-smart-account PR #695). Older and unknown MultiSends call the zero address.
    pub target: Address,
    pub value: U256,
    pub data: Bytes,
    pub action: Action,
}

/// What the calldata of a call means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No calldata: a native transfer when `value` is non-zero.
    NoData,
    Erc20Transfer {
        to: Address,
        amount: U256,
    },
    Erc20Approve {
        spender: Address,
        amount: U256,
    },
    Erc20TransferFrom {
        from: Address,
        to: Address,
        amount: U256,
    },
    /// A MultiSend batch; every step decoded in turn.
    MultiSend {
        calls: Vec<Call>,
    },
    /// The Safe changing its own configuration.
    SafeAdmin(AdminOp),
    /// Calldata Countersign does not decode, shown raw.
    Raw {
        selector: Option<[u8; 4]>,
        note: RawNote,
    },
}

/// Why calldata is shown raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawNote {
    /// No known function has this selector.
    UnknownSelector,
    /// Fewer than four bytes: not even a selector.
    NoSelector,
    /// A known function whose arguments are not in canonical ABI form.
    NonCanonical { function: &'static str },
    /// `multiSend` reached by a plain call: its steps would run as the MultiSend contract,
    /// not as the Safe.
    MultiSendByCall,
    /// The batch bytes do not follow MultiSend's packed encoding.
    MalformedBatch { problem: String },
    /// Batches nested more than [`MAX_BATCH_DEPTH`] deep.
    BatchTooDeep,
    /// A Safe administration function called on another contract than this Safe.
    AdminOnOtherContract { function: &'static str },
}

/// Safe self-administration, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    AddOwner { owner: Address, threshold: U256 },
    RemoveOwner { prev_owner: Address, owner: Address, threshold: U256 },
    SwapOwner { prev_owner: Address, old_owner: Address, new_owner: Address },
    ChangeThreshold { threshold: U256 },
    EnableModule { module: Address },
    DisableModule { prev_module: Address, module: Address },
    SetGuard { guard: Address },
    SetFallbackHandler { handler: Address },
    ChangeMasterCopy { master_copy: Address },
    SetModuleGuard { guard: Address },
}

impl AdminOp {
    /// The policy name of this kind of operation, as written in a policy file.
    pub fn kind(&self) -> AdminKind {
        match self {
            Self::AddOwner { .. } => AdminKind::AddOwner,
            Self::RemoveOwner { .. } => AdminKind::RemoveOwner,
            Self::SwapOwner { .. } => AdminKind::SwapOwner,
            Self::ChangeThreshold { .. } => AdminKind::ChangeThreshold,
            Self::EnableModule { .. } => AdminKind::EnableModule,
            Self::DisableModule { .. } => AdminKind::DisableModule,
            Self::SetGuard { .. } => AdminKind::SetGuard,
            Self::SetFallbackHandler { .. } => AdminKind::SetFallbackHandler,
            Self::ChangeMasterCopy { .. } => AdminKind::ChangeMasterCopy,
            Self::SetModuleGuard { .. } => AdminKind::SetModuleGuard,
        }
    }
}

/// The kinds of Safe administration a policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminKind {
    AddOwner,
    RemoveOwner,
    SwapOwner,
    ChangeThreshold,
    EnableModule,
    DisableModule,
    SetGuard,
    SetFallbackHandler,
    ChangeMasterCopy,
    SetModuleGuard,
}

impl AdminKind {
    pub const ALL: [Self; 10] = [
        Self::AddOwner,
        Self::RemoveOwner,
        Self::SwapOwner,
        Self::ChangeThreshold,
        Self::EnableModule,
        Self::DisableModule,
        Self::SetGuard,
        Self::SetFallbackHandler,
        Self::ChangeMasterCopy,
        Self::SetModuleGuard,
    ];

    /// The Solidity function that performs it, also its name in a policy file.
    pub fn name(self) -> &'static str {
        match self {
            Self::AddOwner => "addOwnerWithThreshold",
            Self::RemoveOwner => "removeOwner",
            Self::SwapOwner => "swapOwner",
            Self::ChangeThreshold => "changeThreshold",
            Self::EnableModule => "enableModule",
            Self::DisableModule => "disableModule",
            Self::SetGuard => "setGuard",
            Self::SetFallbackHandler => "setFallbackHandler",
            Self::ChangeMasterCopy => "changeMasterCopy",
            Self::SetModuleGuard => "setModuleGuard",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl Call {
    /// This call and every call inside it, depth first, in execution order.
    pub fn walk(&self) -> Vec<&Call> {
        let mut out = Vec::new();
        self.walk_into(&mut out);
        out
    }

    fn walk_into<'a>(&'a self, out: &mut Vec<&'a Call>) {
        out.push(self);
        if let Action::MultiSend { calls } = &self.action {
            for call in calls {
                call.walk_into(out);
            }
        }
    }

    /// The 4-byte selector, when the calldata has one.
    pub fn selector(&self) -> Option<[u8; 4]> {
        self.data.get(..4).and_then(|s| s.try_into().ok())
    }

    /// A path for messages: `the transaction` or `batch[2]`.
    pub fn place(&self) -> String {
        if self.path.is_empty() {
            "the transaction".to_owned()
        } else {
            self.path.clone()
        }
    }
}

/// Decodes the outer call of a Safe transaction made by `safe` on `chain_id`.
pub fn decode_call(safe: Address, chain_id: u64, tx: &SafeTx) -> Call {
    let context = Context { safe, chain_id };
    context.call(String::new(), tx.operation, tx.to, tx.value, tx.data.clone(), 0, false)
}

struct Context {
    safe: Address,
    chain_id: u64,
}

impl Context {
    #[expect(clippy::too_many_arguments, reason = "one batch step's fields and where it sits")]
    fn call(
        &self,
        path: String,
        operation: Operation,
        to: Address,
        value: U256,
        data: Bytes,
        depth: usize,
        zero_is_safe: bool,
    ) -> Call {
        let target = if zero_is_safe && to.is_zero() { self.safe } else { to };
        let action = self.action(&path, operation, target, &data, depth);
        Call { path, operation, to, target, value, data, action }
    }

    fn action(
        &self,
        path: &str,
        operation: Operation,
        to: Address,
        data: &[u8],
        depth: usize,
    ) -> Action {
        if data.is_empty() {
            return Action::NoData;
        }
        let Some(selector) = data.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
            return Action::Raw { selector: None, note: RawNote::NoSelector };
        };
        if selector == multiSendCall::SELECTOR {
            return self.multi_send(path, operation, to, data, depth);
        }
        if let Some(action) = admin_action(selector, data, to == self.safe) {
            return action;
        }
        if to == self.safe {
            return Action::Raw { selector: Some(selector), note: RawNote::UnknownSelector };
        }
        erc20_action(selector, data)
            .unwrap_or(Action::Raw { selector: Some(selector), note: RawNote::UnknownSelector })
    }

    fn multi_send(
        &self,
        path: &str,
        operation: Operation,
        executor: Address,
        data: &[u8],
        depth: usize,
    ) -> Action {
        let selector = Some(multiSendCall::SELECTOR);
        if operation != Operation::DELEGATECALL {
            return Action::Raw { selector, note: RawNote::MultiSendByCall };
        }
        if depth >= MAX_BATCH_DEPTH {
            return Action::Raw { selector, note: RawNote::BatchTooDeep };
        }
        let Some(call) = canonical::<multiSendCall>(data) else {
            let note = RawNote::NonCanonical { function: "multiSend" };
            return Action::Raw { selector, note };
        };
        // The batch runs in the MultiSend at `executor`; from 1.5.0 it sends steps addressed
        // to zero to the Safe.
        let zero_is_safe = crate::policy::multisend_version(self.chain_id, &executor)
            .is_some_and(|version| version >= crate::version::SafeVersion::V1_5_0);
        match self.batch(path, &call.transactions, depth + 1, zero_is_safe) {
            Ok(calls) => Action::MultiSend { calls },
            Err(problem) => Action::Raw { selector, note: RawNote::MalformedBatch { problem } },
        }
    }

    /// MultiSend's packed encoding (MultiSend.sol, `multiSend`): for each step, operation
    /// (1 byte), to (20 bytes), value (32 bytes), data length (32 bytes), data.
    fn batch(
        &self,
        path: &str,
        packed: &[u8],
        depth: usize,
        zero_is_safe: bool,
    ) -> Result<Vec<Call>, String> {
        let mut calls = Vec::new();
        let mut rest = packed;
        while !rest.is_empty() {
            let index = calls.len();
            let (step, after) = split_step(rest).map_err(|e| format!("step {index}: {e}"))?;
            let prefix = if path.is_empty() { String::new() } else { format!("{path}.") };
            let step_path = format!("{prefix}batch[{index}]");
            calls.push(self.call(step_path, step.0, step.1, step.2, step.3, depth, zero_is_safe));
            rest = after;
        }
        if calls.is_empty() {
            return Err("the batch has no steps".to_owned());
        }
        Ok(calls)
    }
}

type Step = (Operation, Address, U256, Bytes);

fn split_step(input: &[u8]) -> Result<(Step, &[u8]), String> {
    const HEADER: usize = 1 + 20 + 32 + 32;
    if input.len() < HEADER {
        return Err(format!("{} bytes left, a step header needs {HEADER}", input.len()));
    }
    let operation = Operation(input[0]);
    let to = Address::from_slice(&input[1..21]);
    let value = U256::from_be_slice(&input[21..53]);
    let length = U256::from_be_slice(&input[53..85]);
    let available = input.len() - HEADER;
    let length = usize::try_from(length)
        .ok()
        .filter(|l| *l <= available)
        .ok_or_else(|| format!("declares {length} data bytes, only {available} remain"))?;
    let data = Bytes::copy_from_slice(&input[HEADER..HEADER + length]);
    Ok(((operation, to, value, data), &input[HEADER + length..]))
}

/// Decodes `data` as `C` only when re-encoding gives back exactly the same bytes.
fn canonical<C: SolCall>(data: &[u8]) -> Option<C> {
    let call = C::abi_decode(data).ok()?;
    (call.abi_encode() == data).then_some(call)
}

fn erc20_action(selector: [u8; 4], data: &[u8]) -> Option<Action> {
    let non_canonical = |function| Action::Raw {
        selector: Some(selector),
        note: RawNote::NonCanonical { function },
    };
    let action = match selector {
        transferCall::SELECTOR => canonical::<transferCall>(data)
            .map(|c| Action::Erc20Transfer { to: c.to, amount: c.amount })
            .unwrap_or_else(|| non_canonical("transfer")),
        approveCall::SELECTOR => canonical::<approveCall>(data)
            .map(|c| Action::Erc20Approve { spender: c.spender, amount: c.amount })
            .unwrap_or_else(|| non_canonical("approve")),
        transferFromCall::SELECTOR => canonical::<transferFromCall>(data)
            .map(|c| Action::Erc20TransferFrom { from: c.from, to: c.to, amount: c.amount })
            .unwrap_or_else(|| non_canonical("transferFrom")),
        _ => return None,
    };
    Some(action)
}

fn admin_action(selector: [u8; 4], data: &[u8], on_self: bool) -> Option<Action> {
    let (function, op) = decode_admin(selector, data)?;
    let action = match op {
        _ if !on_self => Action::Raw {
            selector: Some(selector),
            note: RawNote::AdminOnOtherContract { function },
        },
        Some(op) => Action::SafeAdmin(op),
        None => Action::Raw { selector: Some(selector), note: RawNote::NonCanonical { function } },
    };
    Some(action)
}

/// The function name for a Safe administration selector, and its decoded arguments when they
/// are canonical.
fn decode_admin(selector: [u8; 4], data: &[u8]) -> Option<(&'static str, Option<AdminOp>)> {
    let decoded = match selector {
        addOwnerWithThresholdCall::SELECTOR => ("addOwnerWithThreshold", {
            canonical::<addOwnerWithThresholdCall>(data)
                .map(|c| AdminOp::AddOwner { owner: c.owner, threshold: c.threshold })
        }),
        removeOwnerCall::SELECTOR => ("removeOwner", {
            canonical::<removeOwnerCall>(data).map(|c| AdminOp::RemoveOwner {
                prev_owner: c.prevOwner,
                owner: c.owner,
                threshold: c.threshold,
            })
        }),
        swapOwnerCall::SELECTOR => ("swapOwner", {
            canonical::<swapOwnerCall>(data).map(|c| AdminOp::SwapOwner {
                prev_owner: c.prevOwner,
                old_owner: c.oldOwner,
                new_owner: c.newOwner,
            })
        }),
        changeThresholdCall::SELECTOR => ("changeThreshold", {
            canonical::<changeThresholdCall>(data)
                .map(|c| AdminOp::ChangeThreshold { threshold: c.threshold })
        }),
        enableModuleCall::SELECTOR => ("enableModule", {
            canonical::<enableModuleCall>(data).map(|c| AdminOp::EnableModule { module: c.module })
        }),
        disableModuleCall::SELECTOR => ("disableModule", {
            canonical::<disableModuleCall>(data)
                .map(|c| AdminOp::DisableModule { prev_module: c.prevModule, module: c.module })
        }),
        setGuardCall::SELECTOR => ("setGuard", {
            canonical::<setGuardCall>(data).map(|c| AdminOp::SetGuard { guard: c.guard })
        }),
        setFallbackHandlerCall::SELECTOR => ("setFallbackHandler", {
            canonical::<setFallbackHandlerCall>(data)
                .map(|c| AdminOp::SetFallbackHandler { handler: c.handler })
        }),
        changeMasterCopyCall::SELECTOR => ("changeMasterCopy", {
            canonical::<changeMasterCopyCall>(data)
                .map(|c| AdminOp::ChangeMasterCopy { master_copy: c.masterCopy })
        }),
        setModuleGuardCall::SELECTOR => ("setModuleGuard", {
            canonical::<setModuleGuardCall>(data)
                .map(|c| AdminOp::SetModuleGuard { guard: c.moduleGuard })
        }),
        _ => return None,
    };
    Some(decoded)
}

/// Packs steps the way MultiSend expects them; for tests, benchmarks and tools that build
/// batches. The result is the argument of `multiSend(bytes)`.
pub fn encode_batch(steps: &[(Operation, Address, U256, Bytes)]) -> Bytes {
    let mut packed = Vec::new();
    for (operation, to, value, data) in steps {
        packed.push(operation.0);
        packed.extend_from_slice(to.as_slice());
        packed.extend_from_slice(&value.to_be_bytes::<32>());
        packed.extend_from_slice(&U256::from(data.len()).to_be_bytes::<32>());
        packed.extend_from_slice(data);
    }
    let call = multiSendCall { transactions: Bytes::from(packed) };
    Bytes::from(call.abi_encode())
}

/// Calldata of an ERC-20 `transfer(to, amount)`.
pub fn encode_transfer(to: Address, amount: U256) -> Bytes {
    Bytes::from(transferCall { to, amount }.abi_encode())
}

/// Calldata of an ERC-20 `approve(spender, amount)`.
pub fn encode_approve(spender: Address, amount: U256) -> Bytes {
    Bytes::from(approveCall { spender, amount }.abi_encode())
}
