//! Generic EIP-712 typed data (`eth_signTypedData_v4` JSON): inspected, never signed.
//!
//! Countersign signs Safe transactions only. Typed data of any other shape can be hashed and
//! shown so a person can compare it with what another tool displays, but no signer accepts it.

use alloy_dyn_abi::TypedData;
use alloy_primitives::B256;

use crate::request::MAX_REQUEST_BYTES;
use crate::InputError;

/// The hashes of a typed-data message (EIP-712 §Specification of `eth_signTypedData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedDataHashes {
    pub primary_type: String,
    pub encoded_type: String,
    pub domain_separator: B256,
    pub struct_hash: B256,
    /// `keccak256(0x19 ‖ 0x01 ‖ domainSeparator ‖ hashStruct(message))`.
    pub digest: B256,
}

/// Whether a JSON object looks like typed data rather than a Safe transaction.
pub fn looks_like_typed_data(object: &crate::request::JsonObject) -> bool {
    object.get("types").is_some() && object.get("primaryType").is_some()
}

/// Hashes typed data with alloy's EIP-712 encoder.
pub fn inspect(input: &[u8]) -> Result<TypedDataHashes, InputError> {
    if input.len() > MAX_REQUEST_BYTES {
        return Err(InputError::new("typedData", "is larger than 256 KiB"));
    }
    crate::request::check_unique_keys(input)
        .map_err(|e| InputError::new("typedData", e.problem))?;
    let typed: TypedData = serde_json::from_slice(input)
        .map_err(|e| InputError::new("typedData", format!("not valid EIP-712 typed data: {e}")))?;
    let problem = |e: alloy_dyn_abi::Error| InputError::new("typedData.message", e.to_string());

    // EIP-712 §Definition of encodeType / hashStruct, then §Specification's 0x1901 prefix.
    let encoded_type = typed.encode_type().map_err(problem)?;
    let struct_hash = typed.hash_struct().map_err(problem)?;
    let digest = typed.eip712_signing_hash().map_err(problem)?;
    Ok(TypedDataHashes {
        primary_type: typed.primary_type.clone(),
        encoded_type,
        domain_separator: typed.domain.separator(),
        struct_hash,
        digest,
    })
}
