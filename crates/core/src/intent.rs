//! The initiator's intent: what the person who submits a request to the queue signs.
//!
//! It is an EIP-712 message in Countersign's own domain, never a signature over the bare
//! safeTxHash (which would be a usable Safe owner signature, letting an initiator who is also
//! an owner approve outside the queue):
//!
//! ```text
//! EIP712Domain(string name,string version,uint256 chainId)
//!   name = "Countersign Queue", version = "1", chainId = the vault's chain
//! QueueRequest(string requestId,address vault,bytes32 safeTxHash,uint64 createdAt)
//! digest = keccak256(0x19 ‖ 0x01 ‖ domainSeparator ‖ hashStruct(QueueRequest))
//! ```
//!
//! `createdAt` is Unix time in seconds. The digest differs from every safeTxHash because the
//! domain has another type (no verifyingContract) and the struct another type hash.

use alloy_primitives::{keccak256, Address, B256};
use alloy_sol_types::{Eip712Domain, SolStruct};

use crate::InputError;

alloy_sol_types::sol! {
    /// The message an initiator signs when submitting a request.
    struct QueueRequest {
        string requestId;
        address vault;
        bytes32 safeTxHash;
        uint64 createdAt;
    }
}

/// The name in the intent's EIP-712 domain.
pub const DOMAIN_NAME: &str = "Countersign Queue";
/// The version in the intent's EIP-712 domain.
pub const DOMAIN_VERSION: &str = "1";

/// Request ids are 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_request_id(field: &str, id: &str) -> Result<(), InputError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InputError::new(field, "must be 1 to 64 characters of A-Z, a-z, 0-9, - and _"))
    }
}

/// The digest the initiator signs for a request.
pub fn intent_digest(
    chain_id: u64,
    request_id: &str,
    vault: Address,
    safe_tx_hash: B256,
    created_at: u64,
) -> B256 {
    IntentDomain::new(chain_id).digest(request_id, vault, safe_tx_hash, created_at)
}

/// Countersign's intent domain on one chain, with its separator computed once: a sync checks
/// thousands of intents on the same few chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntentDomain {
    separator: B256,
}

impl IntentDomain {
    pub fn new(chain_id: u64) -> Self {
        Self { separator: domain(chain_id).separator() }
    }

    /// [`intent_digest`] in this domain.
    pub fn digest(
        &self,
        request_id: &str,
        vault: Address,
        safe_tx_hash: B256,
        created_at: u64,
    ) -> B256 {
        let message = QueueRequest {
            requestId: request_id.to_owned(),
            vault,
            safeTxHash: safe_tx_hash,
            createdAt: created_at,
        };
        // hashStruct(message) = keccak256(typeHash ‖ encodeData(message)), the type hash
        // computed once.
        static TYPE_HASH: std::sync::LazyLock<B256> =
            std::sync::LazyLock::new(|| keccak256(QueueRequest::eip712_encode_type().as_bytes()));
        let mut hasher = alloy_primitives::Keccak256::new();
        hasher.update(*TYPE_HASH);
        hasher.update(message.eip712_encode_data());
        // EIP-712: keccak256(0x19 ‖ 0x01 ‖ domainSeparator ‖ hashStruct(message)).
        crate::hash::signing_hash(self.separator, hasher.finalize())
    }
}

fn domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some(DOMAIN_NAME.into()),
        Some(DOMAIN_VERSION.into()),
        Some(alloy_primitives::U256::from(chain_id)),
        None,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    #[test]
    fn the_digest_binds_every_field() {
        let vault = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");
        let hash = B256::repeat_byte(7);
        let base = intent_digest(1, "r1", vault, hash, 100);
        assert_ne!(base, hash, "never the bare safeTxHash");
        assert_ne!(base, intent_digest(2, "r1", vault, hash, 100));
        assert_ne!(base, intent_digest(1, "r2", vault, hash, 100));
        assert_ne!(base, intent_digest(1, "r1", Address::ZERO, hash, 100));
        assert_ne!(base, intent_digest(1, "r1", vault, B256::ZERO, 100));
        assert_ne!(base, intent_digest(1, "r1", vault, hash, 101));
    }

    #[test]
    fn the_domain_computed_once_gives_alloys_signing_hash() {
        let vault = address!("111CEEee040739fD91D29C34C33E6B3E112F2177");
        for (chain, id, created) in
            [(1, "r1", 100), (137, "batch-7_a", 1_700_000_000), (10, "x", 0)]
        {
            let hash = B256::repeat_byte(chain as u8);
            let message = QueueRequest {
                requestId: id.to_owned(),
                vault,
                safeTxHash: hash,
                createdAt: created,
            };
            let alloys = message.eip712_signing_hash(&domain(chain));
            assert_eq!(IntentDomain::new(chain).digest(id, vault, hash, created), alloys);
            assert_eq!(intent_digest(chain, id, vault, hash, created), alloys);
        }
    }

    #[test]
    fn fail_bad_request_ids() {
        for id in ["", "a b", "ü", &"x".repeat(65), "a/b"] {
            assert!(check_request_id("id", id).is_err(), "{id:?}");
        }
        assert!(check_request_id("id", "req_01-A").is_ok());
    }
}
