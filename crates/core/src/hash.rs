//! The Safe transaction hash, computed from raw fields and the pinned vault record.
//!
//! Safe's `getTransactionHash` (GnosisSafe.sol / Safe.sol, `encodeTransactionData`):
//!
//! 1. `domainHash = keccak256(abi.encode(DOMAIN_SEPARATOR_TYPEHASH, [chainId,] safe))`, with
//!    the chain id only from 1.3.0 on;
//! 2. `messageHash = keccak256(abi.encode(SAFE_TX_TYPEHASH, to, value, keccak256(data),
//!    operation, safeTxGas, baseGas, gasPrice, gasToken, refundReceiver, nonce))`, where before
//!    1.0.0 the type names `baseGas` as `dataGas` and so has another type hash;
//! 3. `safeTxHash = keccak256(0x19 ‖ 0x01 ‖ domainHash ‖ messageHash)` (EIP-712 §Specification).
//!
//! The encoding is alloy's EIP-712 implementation (`sol!` structs and [`Eip712Domain`]); the
//! type hashes are constants checked against alloy's own derivation in the tests, so a
//! safeTxHash costs no extra Keccak permutations for hashing type strings.

use alloy_primitives::{b256, keccak256, Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};

use crate::request::SafeTx;
use crate::version::SafeVersion;

mod since_1_0 {
    alloy_sol_types::sol! {
    /// `SafeTx` as Safe 1.0.0 and later define it.
    struct SafeTx {
        address to;
        uint256 value;
        bytes data;
        uint8 operation;
        uint256 safeTxGas;
        uint256 baseGas;
        uint256 gasPrice;
        address gasToken;
        address refundReceiver;
        uint256 nonce;
    }
    }
}

mod before_1_0 {
    alloy_sol_types::sol! {
        /// `SafeTx` as Safe 0.1.0 defines it: `dataGas` where later versions say `baseGas`.
        struct SafeTx {
            address to;
            uint256 value;
            bytes data;
            uint8 operation;
            uint256 safeTxGas;
            uint256 dataGas;
            uint256 gasPrice;
            address gasToken;
            address refundReceiver;
            uint256 nonce;
        }
    }
}

/// keccak256 of `SafeTx(address to,…,uint256 baseGas,…,uint256 nonce)`.
pub const SAFE_TX_TYPEHASH: B256 =
    b256!("bb8310d486368db6bd6f849402fdd73ad53d316b5a4b2644ad6efe0f941286d8");

/// keccak256 of `SafeTx(address to,…,uint256 dataGas,…,uint256 nonce)` (before 1.0.0).
pub const SAFE_TX_TYPEHASH_DATA_GAS: B256 =
    b256!("14d461bc7412367e924637b363c7bf29b8f47e2f84869f4426e5633d8af47b20");

/// The EIP-712 domain of one Safe, with its separator computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeDomain {
    chain_id: u64,
    safe: Address,
    version: SafeVersion,
    separator: B256,
}

impl SafeDomain {
    pub fn new(chain_id: u64, safe: Address, version: SafeVersion) -> Self {
        let domain = eip712_domain(chain_id, safe, version);
        Self { chain_id, safe, version, separator: domain.separator() }
    }

    pub fn separator(&self) -> B256 {
        self.separator
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn safe(&self) -> Address {
        self.safe
    }

    pub fn version(&self) -> SafeVersion {
        self.version
    }

    /// The three hashes of `tx` in this domain.
    pub fn hashes(&self, tx: &SafeTx) -> SafeTxHashes {
        let message = message_hash(tx, self.version);
        let safe_tx = signing_hash(self.separator, message);
        SafeTxHashes { domain: self.separator, message, safe_tx }
    }
}

/// The domain hash, the message hash and the safeTxHash they combine into.
///
/// A Ledger shows the domain hash and then the message hash when it signs a Safe transaction
/// with EIP-712; the owner signature is over `safe_tx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafeTxHashes {
    pub domain: B256,
    pub message: B256,
    pub safe_tx: B256,
}

fn eip712_domain(chain_id: u64, safe: Address, version: SafeVersion) -> Eip712Domain {
    // Step 1: `EIP712Domain(uint256 chainId,address verifyingContract)` from 1.3.0,
    // `EIP712Domain(address verifyingContract)` before.
    let chain_id = version.domain_has_chain_id().then(|| U256::from(chain_id));
    Eip712Domain::new(None, None, chain_id, Some(safe), None)
}

fn message_hash(tx: &SafeTx, version: SafeVersion) -> B256 {
    // Step 2: the type hash, then the fields as EIP-712 `encodeData` writes them.
    let (type_hash, encoded) = if version.names_data_gas() {
        (SAFE_TX_TYPEHASH_DATA_GAS, to_sol_data_gas(tx).eip712_encode_data())
    } else {
        (SAFE_TX_TYPEHASH, to_sol(tx).eip712_encode_data())
    };
    let mut buffer = Vec::with_capacity(32 + encoded.len());
    buffer.extend_from_slice(type_hash.as_slice());
    buffer.extend_from_slice(&encoded);
    keccak256(&buffer)
}

pub(crate) fn signing_hash(domain: B256, message: B256) -> B256 {
    // Step 3: EIP-712's 0x19 0x01 prefix, the domain separator, the struct hash.
    let mut buffer = [0u8; 66];
    buffer[0] = 0x19;
    buffer[1] = 0x01;
    buffer[2..34].copy_from_slice(domain.as_slice());
    buffer[34..].copy_from_slice(message.as_slice());
    keccak256(buffer)
}

fn to_sol(tx: &SafeTx) -> since_1_0::SafeTx {
    since_1_0::SafeTx {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation.0,
        safeTxGas: tx.safe_tx_gas,
        baseGas: tx.base_gas,
        gasPrice: tx.gas_price,
        gasToken: tx.gas_token,
        refundReceiver: tx.refund_receiver,
        nonce: tx.nonce,
    }
}

fn to_sol_data_gas(tx: &SafeTx) -> before_1_0::SafeTx {
    before_1_0::SafeTx {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation.0,
        safeTxGas: tx.safe_tx_gas,
        dataGas: tx.base_gas,
        gasPrice: tx.gas_price,
        gasToken: tx.gas_token,
        refundReceiver: tx.refund_receiver,
        nonce: tx.nonce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_hash_constants_match_alloy() {
        let tx = to_sol(&crate::request::SafeTx {
            to: Address::ZERO,
            value: U256::ZERO,
            data: Default::default(),
            operation: crate::request::Operation::CALL,
            safe_tx_gas: U256::ZERO,
            base_gas: U256::ZERO,
            gas_price: U256::ZERO,
            gas_token: Address::ZERO,
            refund_receiver: Address::ZERO,
            nonce: U256::ZERO,
        });
        assert_eq!(tx.eip712_type_hash(), SAFE_TX_TYPEHASH);
        assert_eq!(
            since_1_0::SafeTx::eip712_encode_type(),
            "SafeTx(address to,uint256 value,bytes data,uint8 operation,uint256 safeTxGas,\
             uint256 baseGas,uint256 gasPrice,address gasToken,address refundReceiver,\
             uint256 nonce)"
        );
        let old = before_1_0::SafeTx {
            to: tx.to,
            value: tx.value,
            data: tx.data.clone(),
            operation: 0,
            safeTxGas: U256::ZERO,
            dataGas: U256::ZERO,
            gasPrice: U256::ZERO,
            gasToken: Address::ZERO,
            refundReceiver: Address::ZERO,
            nonce: U256::ZERO,
        };
        assert_eq!(old.eip712_type_hash(), SAFE_TX_TYPEHASH_DATA_GAS);
        // And the whole struct hash agrees with alloy's own, type hash included.
        assert_eq!(
            keccak256([SAFE_TX_TYPEHASH.as_slice(), &tx.eip712_encode_data()].concat()),
            tx.eip712_hash_struct()
        );
    }
}
