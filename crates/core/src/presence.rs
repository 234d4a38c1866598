//! When a vault's approvals need a FIDO2 security key next to the owner signature.
//!
//! A vault's presence policy asks for a security key on every approval, or on approvals that
//! move at least a threshold of an asset, in base units. What a request moves is summed per
//! asset over every call it makes (a MultiSend's steps included): native value, and the
//! amounts of ERC-20 `transfer`, `transferFrom` and `approve` (an allowance can be spent).
//! Where the amount cannot be judged, the key is asked for: a token without known decimals, a
//! call Countersign does not decode, a delegatecall (other than a MultiSend batch, whose steps
//! are judged), a gas refund (paid in any token, bounded by nothing the policy can read), or
//! the Safe changing its own configuration. An asset without a threshold is not gated.

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};

use crate::address::{checksummed, parse_address};
use crate::decode::{Action, Call};
use crate::request::{Operation, SafeTx};
use crate::tokens::TokenList;
use crate::InputError;

/// The key for the chain's native asset in [`PresencePolicy::thresholds`].
pub const NATIVE: &str = "native";

/// A vault's presence policy, as the queue's admin sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresencePolicy {
    /// A security key on every approval.
    #[serde(default)]
    pub all: bool,
    /// `native` or a token address, to a threshold in base units (decimal text).
    #[serde(default)]
    pub thresholds: BTreeMap<String, String>,
    /// The key must also verify the person (its PIN or biometrics), not only their touch.
    #[serde(default)]
    pub user_verification: bool,
}

/// Where a request's amount is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Asset {
    Native,
    Token(Address),
}

impl PresencePolicy {
    /// Parses and checks a policy: each threshold's key is `native` or an address, and its
    /// value a decimal number of base units.
    pub fn parse(value: &serde_json::Value) -> Result<Self, InputError> {
        let mut policy: Self = serde_json::from_value(value.clone())
            .map_err(|e| InputError::new("fidoPolicy", e.to_string()))?;
        // Each asset once, addresses in their checksummed form: two spellings of one token
        // would leave one of them unused.
        let mut thresholds = BTreeMap::new();
        for (asset, amount) in &policy.thresholds {
            let field = format!("fidoPolicy.thresholds.{asset}");
            let key = if asset == NATIVE {
                NATIVE.to_owned()
            } else {
                checksummed(&parse_address(&field, asset)?.address)
            };
            if amount.is_empty()
                || !amount.bytes().all(|b| b.is_ascii_digit())
                || U256::from_str_radix(amount, 10).is_err()
            {
                return Err(InputError::new(field, "is not a whole number of base units"));
            }
            if thresholds.insert(key, amount.clone()).is_some() {
                return Err(InputError::new(field, "names an asset given already"));
            }
        }
        policy.thresholds = thresholds;
        Ok(policy)
    }

    /// Whether this policy asks for anything at all.
    pub fn is_active(&self) -> bool {
        self.all || !self.thresholds.is_empty()
    }

    fn threshold(&self, asset: Asset) -> Option<U256> {
        self.thresholds.iter().find_map(|(key, amount)| {
            let matches = match asset {
                Asset::Native => key == NATIVE,
                Asset::Token(token) => key != NATIVE && key.parse::<Address>().ok() == Some(token),
            };
            matches.then(|| U256::from_str_radix(amount, 10).unwrap_or(U256::ZERO))
        })
    }

    /// Why an approval of `tx` (decoded as `call`) on `chain_id` needs a security key, or None.
    pub fn required(
        &self,
        tx: &SafeTx,
        call: &Call,
        chain_id: u64,
        tokens: &TokenList,
    ) -> Option<String> {
        if self.all {
            return Some("the vault asks for a security key on every approval".to_owned());
        }
        if self.thresholds.is_empty() {
            return None;
        }
        if !tx.gas_price.is_zero() {
            return Some(
                "the transaction pays a gas refund, whose amount nothing bounds".to_owned(),
            );
        }
        let mut totals: BTreeMap<Asset, U256> = BTreeMap::new();
        let mut add = |asset: Asset, amount: U256| {
            let total = totals.entry(asset).or_insert(U256::ZERO);
            *total = total.saturating_add(amount);
        };
        for step in call.walk() {
            let batch = matches!(step.action, Action::MultiSend { .. });
            if step.operation == Operation::DELEGATECALL && !batch {
                let place = step.place();
                return Some(format!(
                    "{place}: a delegatecall runs another contract's code as the Safe"
                ));
            }
            if !step.value.is_zero() {
                add(Asset::Native, step.value);
            }
            let amount = match &step.action {
                Action::NoData | Action::MultiSend { .. } => None,
                Action::Erc20Transfer { amount, .. }
                | Action::Erc20Approve { amount, .. }
                | Action::Erc20TransferFrom { amount, .. } => Some(*amount),
                Action::SafeAdmin(_) => {
                    return Some("the Safe changes its own configuration".to_owned())
                }
                Action::Raw { .. } => {
                    let place = step.place();
                    return Some(format!("{place}: a call whose amounts Countersign cannot read"));
                }
            };
            if let Some(amount) = amount {
                if tokens.get(chain_id, &step.target).is_none() {
                    return Some(format!(
                        "token {} has no known decimals",
                        checksummed(&step.target)
                    ));
                }
                add(Asset::Token(step.target), amount);
            }
        }
        for (asset, total) in totals {
            if let Some(threshold) = self.threshold(asset) {
                if total >= threshold {
                    let name = match asset {
                        Asset::Native => NATIVE.to_owned(),
                        Asset::Token(token) => checksummed(&token),
                    };
                    // The threshold itself is not named: a reason can reach initiators too.
                    return Some(format!("{name}: at or above the vault's threshold"));
                }
            }
        }
        None
    }
}
