//! The vault record: what the approver pinned about a Safe when setting it up.

use alloy_primitives::{Address, U256};

use crate::address::checksummed;
use crate::hash::SafeDomain;
use crate::version::SafeVersion;

/// The facts the guards rely on. The queue's word alone never changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    pub chain_id: u64,
    pub address: Address,
    pub version: SafeVersion,
    /// The Safe's owners, when known.
    pub owners: Vec<Address>,
    /// The Safe's threshold, when known.
    pub threshold: Option<u32>,
    /// The nonce the next executed transaction will use, when known.
    pub next_nonce: Option<U256>,
    pub label: Option<String>,
}

impl VaultRecord {
    /// A record with only what hashing needs.
    pub fn new(chain_id: u64, address: Address, version: SafeVersion) -> Self {
        Self {
            chain_id,
            address,
            version,
            owners: Vec::new(),
            threshold: None,
            next_nonce: None,
            label: None,
        }
    }

    /// The record as JSON, as the store seals it and the CLI prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "chainId": self.chain_id,
            "address": checksummed(&self.address),
            "safeVersion": self.version.to_string(),
            "owners": self.owners.iter().map(checksummed).collect::<Vec<_>>(),
            "threshold": self.threshold,
            "nextNonce": self.next_nonce.map(|n| n.to_string()),
            "label": self.label,
        })
    }

    pub fn domain(&self) -> SafeDomain {
        SafeDomain::new(self.chain_id, self.address, self.version)
    }

    /// `label (0xSafe…)` or the checksummed address.
    /// Whether `other` names the same signers: the same version and threshold, and the same
    /// owners in any order (a Safe's owner list is a set; queues and people list it in
    /// different orders).
    pub fn same_signers(&self, other: &VaultRecord) -> bool {
        let mut mine = self.owners.clone();
        let mut theirs = other.owners.clone();
        mine.sort();
        theirs.sort();
        self.version == other.version && self.threshold == other.threshold && mine == theirs
    }

    pub fn display_name(&self) -> String {
        match &self.label {
            Some(label) => format!("{label} ({})", checksummed(&self.address)),
            None => checksummed(&self.address),
        }
    }
}
