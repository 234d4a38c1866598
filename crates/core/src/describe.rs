//! The decoded intent in plain words, the same for the command line and the desktop app.

use alloy_primitives::{Address, U256};

use crate::address::checksummed;
use crate::amount::format_units;
use crate::decode::{Action, AdminOp, Call};
use crate::tokens::{native_symbol, TokenList};

/// An amount of an asset: always the exact integer, and human units when the decimals are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub raw: U256,
    /// `Some((symbol, decimals))` for the native asset and for listed tokens.
    pub unit: Option<(String, u8)>,
    /// Whether this is the chain's native asset, counted in wei.
    pub native: bool,
}

impl Amount {
    pub fn native(chain_id: u64, raw: U256) -> Self {
        let symbol = native_symbol(chain_id).unwrap_or("native units").to_owned();
        Self { raw, unit: Some((symbol, 18)), native: true }
    }

    pub fn token(chain_id: u64, token: &Address, raw: U256, tokens: &TokenList) -> Self {
        let unit = tokens.get(chain_id, token).map(|t| (t.symbol.clone(), t.decimals));
        Self { raw, unit, native: false }
    }

    /// `1.5 USDC (1500000 base units)`, or `1500000 base units of an unknown token`.
    pub fn describe(&self) -> String {
        match &self.unit {
            Some((symbol, decimals)) => {
                let base = if self.native { "wei" } else { "base units" };
                format!("{} {symbol} ({} {base})", format_units(self.raw, *decimals), self.raw)
            }
            None => format!("{} base units of an unlisted token (decimals unknown)", self.raw),
        }
    }
}

/// One line per call: the transaction first, then each batch step indented under its batch.
pub fn describe(call: &Call, chain_id: u64, tokens: &TokenList) -> Vec<String> {
    let mut lines = Vec::new();
    describe_into(call, chain_id, tokens, 0, &mut lines);
    lines
}

fn describe_into(
    call: &Call,
    chain_id: u64,
    tokens: &TokenList,
    depth: usize,
    out: &mut Vec<String>,
) {
    let indent = "  ".repeat(depth);
    let label = if call.path.is_empty() { String::new() } else { format!("{}: ", call.path) };
    out.push(format!("{indent}{label}{}", sentence(call, chain_id, tokens)));
    if let Action::MultiSend { calls } = &call.action {
        for inner in calls {
            describe_into(inner, chain_id, tokens, depth + 1, out);
        }
    }
}

/// One sentence for one call, without its batch steps.
pub fn sentence(call: &Call, chain_id: u64, tokens: &TokenList) -> String {
    let to = if call.target == call.to && call.to.is_zero() {
        format!("the zero address {} (value sent there is burned)", checksummed(&call.to))
    } else if call.target == call.to {
        checksummed(&call.to)
    } else {
        format!(
            "the Safe itself (step addressed to {}, which MultiSend sends to the Safe)",
            checksummed(&call.to)
        )
    };
    let token_amount = |raw: U256| Amount::token(chain_id, &call.target, raw, tokens);
    let main = match &call.action {
        Action::NoData if call.value.is_zero() => format!("Call {to} with no value and no data"),
        Action::NoData => {
            format!("Transfer {} to {to}", Amount::native(chain_id, call.value).describe())
        }
        Action::Erc20Transfer { to: recipient, amount } => format!(
            "Transfer {} to {} (token contract {to})",
            token_amount(*amount).describe(),
            checksummed(recipient)
        ),
        Action::Erc20Approve { spender, amount } if *amount == U256::MAX => {
            format!("Approve {} to spend an UNLIMITED amount of token {to}", checksummed(spender))
        }
        Action::Erc20Approve { spender, amount } => format!(
            "Approve {} to spend {} (token contract {to})",
            checksummed(spender),
            token_amount(*amount).describe()
        ),
        Action::Erc20TransferFrom { from, to: recipient, amount } => format!(
            "Move {} from {} to {} (token contract {to})",
            token_amount(*amount).describe(),
            checksummed(from),
            checksummed(recipient)
        ),
        Action::MultiSend { calls } => {
            format!("MultiSend batch of {} step(s) through {to}", calls.len())
        }
        Action::SafeAdmin(op) => admin_sentence(op),
        Action::Raw { selector: Some(s), .. } => format!(
            "Call {to} with undecoded calldata, selector 0x{:02x}{:02x}{:02x}{:02x}, {} bytes",
            s[0],
            s[1],
            s[2],
            s[3],
            call.data.len()
        ),
        Action::Raw { selector: None, .. } => {
            format!("Call {to} with {} bytes of calldata (no selector)", call.data.len())
        }
    };
    let with_value = match &call.action {
        Action::NoData => main,
        _ if call.value.is_zero() => main,
        _ => format!("{main}, sending {}", Amount::native(chain_id, call.value).describe()),
    };
    if call.operation.0 == 0 {
        with_value
    } else {
        format!("{} ({}): {with_value}", call.operation.name().to_uppercase(), call.operation.0)
    }
}

fn admin_sentence(op: &AdminOp) -> String {
    let a = checksummed;
    match op {
        AdminOp::AddOwner { owner, threshold } => {
            format!("Safe: add owner {} and set the threshold to {threshold}", a(owner))
        }
        AdminOp::RemoveOwner { owner, threshold, .. } => {
            format!("Safe: remove owner {} and set the threshold to {threshold}", a(owner))
        }
        AdminOp::SwapOwner { old_owner, new_owner, .. } => {
            format!("Safe: replace owner {} with {}", a(old_owner), a(new_owner))
        }
        AdminOp::ChangeThreshold { threshold } => {
            format!("Safe: change the threshold to {threshold}")
        }
        AdminOp::EnableModule { module } => format!("Safe: enable module {}", a(module)),
        AdminOp::DisableModule { module, .. } => format!("Safe: disable module {}", a(module)),
        AdminOp::SetGuard { guard } => format!("Safe: set the transaction guard to {}", a(guard)),
        AdminOp::SetFallbackHandler { handler } => {
            format!("Safe: set the fallback handler to {}", a(handler))
        }
        AdminOp::ChangeMasterCopy { master_copy } => {
            format!("Safe: change the master copy (implementation) to {}", a(master_copy))
        }
        AdminOp::SetModuleGuard { guard } => format!("Safe: set the module guard to {}", a(guard)),
    }
}
