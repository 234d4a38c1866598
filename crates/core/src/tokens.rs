//! Token metadata shipped with the app: which contract on which chain is which asset.
//!
//! An amount is only ever shown in human units when its token is in this list; otherwise it is
//! shown in raw units and flagged, because a guessed number of decimals can make 1,000,000 look
//! like 1.

use std::collections::HashMap;

use alloy_primitives::Address;
use serde::Deserialize;
use serde_json::Value;

use crate::address::{parse_address, Checksum};
use crate::InputError;

const SHIPPED: &str = include_str!("../data/tokens.json");

/// One token: its symbol and decimals on one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub chain_id: u64,
    pub address: Address,
    pub symbol: String,
    pub decimals: u8,
}

/// Tokens by chain and contract address.
#[derive(Debug, Clone, Default)]
pub struct TokenList {
    by_key: HashMap<(u64, Address), Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenListFile {
    #[serde(default)]
    #[expect(dead_code, reason = "the source note is for readers of the file")]
    source: Option<String>,
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenEntry {
    chain_id: u64,
    address: String,
    symbol: String,
    decimals: Value,
}

impl TokenList {
    /// The list that ships with Countersign.
    pub fn shipped() -> Result<Self, InputError> {
        Self::from_json(SHIPPED.as_bytes())
    }

    /// Parses a token list file; every address must carry a verified EIP-55 checksum.
    pub fn from_json(input: &[u8]) -> Result<Self, InputError> {
        let file: TokenListFile = serde_json::from_slice(input)
            .map_err(|e| InputError::new("tokens", format!("not a valid token list: {e}")))?;
        let mut list = Self::default();
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let token = entry.into_token(index)?;
            if list.get(token.chain_id, &token.address).is_some() {
                let problem = "this contract is listed twice";
                return Err(InputError::new(format!("tokens[{index}].address"), problem));
            }
            list.insert(token);
        }
        Ok(list)
    }

    /// Adds a token, replacing any earlier entry for the same chain and contract.
    pub fn insert(&mut self, token: Token) {
        self.by_key.insert((token.chain_id, token.address), token);
    }

    /// Adds the tokens of a user's list on top of this one. An entry may add a contract, but
    /// may not change a listed contract's symbol or decimals, nor give another contract a
    /// symbol already listed on that chain: either would let a file make one asset look like
    /// another.
    pub fn merge(&mut self, extra: &TokenList) -> Result<(), InputError> {
        for token in extra.by_key.values() {
            let field = format!("tokens[{}]", crate::address::checksummed(&token.address));
            if let Some(listed) = self.get(token.chain_id, &token.address) {
                if listed != token {
                    let problem = format!(
                        "contradicts the listed {} on chain {}",
                        listed.symbol, token.chain_id
                    );
                    return Err(InputError::new(field, problem));
                }
                continue;
            }
            let looks = skeleton(&token.symbol);
            let native = native_symbol(token.chain_id).is_some_and(|n| skeleton(n) == looks);
            let taken = native
                || self
                    .by_key
                    .values()
                    .any(|t| t.chain_id == token.chain_id && skeleton(&t.symbol) == looks);
            if taken {
                let problem = format!(
                    "symbol {} is already listed for another contract on chain {}",
                    token.symbol, token.chain_id
                );
                return Err(InputError::new(field, problem));
            }
            self.insert(token.clone());
        }
        Ok(())
    }

    pub fn get(&self, chain_id: u64, address: &Address) -> Option<&Token> {
        self.by_key.get(&(chain_id, *address))
    }

    /// Every token in the list, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Token> {
        self.by_key.values()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl TokenEntry {
    fn into_token(self, index: usize) -> Result<Token, InputError> {
        let field = |name: &str| format!("tokens[{index}].{name}");
        let parsed = parse_address(&field("address"), &self.address)?;
        if parsed.checksum != Checksum::Verified {
            return Err(InputError::new(field("address"), "must be written in EIP-55 form"));
        }
        let decimals = self
            .decimals
            .as_u64()
            .and_then(|d| u8::try_from(d).ok())
            .filter(|d| *d <= 77)
            .ok_or_else(|| InputError::new(field("decimals"), "must be an integer 0 to 77"))?;
        let visible = self.symbol.bytes().all(|b| b.is_ascii_graphic());
        if self.symbol.is_empty() || self.symbol.len() > 16 || !visible {
            let problem = "must be 1 to 16 visible ASCII characters, no spaces";
            return Err(InputError::new(field("symbol"), problem));
        }
        Ok(Token {
            chain_id: self.chain_id,
            address: parsed.address,
            symbol: self.symbol,
            decimals,
        })
    }
}

/// A symbol reduced to what a reader tells apart at a glance: lower case, letters and digits
/// only, with look-alikes folded (`I`, `l`, `1` → `l`; `O`, `0` → `o`; `S`, `5` → `s`; `B`, `8`
/// → `b`), so `DAl`, `U5DC` or `USDC.` cannot pose as `DAI` or `USDC`.
fn skeleton(symbol: &str) -> String {
    symbol
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| match c.to_ascii_lowercase() {
            'i' | '1' | '|' => 'l',
            '0' => 'o',
            '5' => 's',
            '8' => 'b',
            other => other,
        })
        .collect()
}

/// The native asset of a chain, for the chains Countersign names.
pub fn native_symbol(chain_id: u64) -> Option<&'static str> {
    match chain_id {
        1 | 10 | 8453 | 42161 | 11155111 | 17000 => Some("ETH"),
        137 => Some("POL"),
        100 => Some("xDAI"),
        56 => Some("BNB"),
        43114 => Some("AVAX"),
        _ => None,
    }
}

/// A chain's common name, for the chains Countersign names.
pub fn chain_name(chain_id: u64) -> Option<&'static str> {
    match chain_id {
        1 => Some("Ethereum"),
        10 => Some("OP Mainnet"),
        56 => Some("BNB Smart Chain"),
        100 => Some("Gnosis"),
        137 => Some("Polygon"),
        8453 => Some("Base"),
        17000 => Some("Holesky"),
        42161 => Some("Arbitrum One"),
        43114 => Some("Avalanche C-Chain"),
        11155111 => Some("Sepolia"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_list_loads_with_verified_checksums() {
        let list = TokenList::shipped().map_err(|e| e.to_string());
        assert_eq!(list.map(|l| l.len()), Ok(16));
    }

    #[test]
    fn fail_bad_entry() {
        let bad = br#"{"tokens":[{"chainId":1,"address":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","symbol":"USDC","decimals":6}]}"#;
        assert_eq!(
            TokenList::from_json(bad).err().map(|e| e.field),
            Some("tokens[0].address".into())
        );
        let bad = br#"{"tokens":[{"chainId":1,"address":"0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48","symbol":"USDC","decimals":78}]}"#;
        assert_eq!(
            TokenList::from_json(bad).err().map(|e| e.field),
            Some("tokens[0].decimals".into())
        );
    }
}
