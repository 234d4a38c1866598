//! Safe owner signatures: 65 bytes r ‖ s ‖ v, low-s, v 27 or 28, as `execTransaction` takes them.

use std::fmt;

use alloy_primitives::{Address, B256};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

use crate::request::parse_hex_bytes;
use crate::InputError;

/// An ECDSA owner signature over a safeTxHash, in the form Safe's `checkSignatures` reads.
///
/// Construction checks the shape: s in the lower half of the curve order (EIP-2), v 27 or 28.
/// Other v values mean other things to Safe (0 contract signature, 1 approved hash, above 30
/// eth_sign) and are never produced or accepted here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OwnerSignature([u8; 65]);

/// Why 65 bytes are not a usable owner signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureProblem {
    Length(usize),
    RecoveryByte(u8),
    NotOnCurve,
    HighS,
}

impl OwnerSignature {
    /// From r, s and the recovery id (0 or 1); a high s is refused, not silently flipped.
    pub fn from_parts(r: [u8; 32], s: [u8; 32], recovery_id: u8) -> Result<Self, SignatureProblem> {
        let mut bytes = [0u8; 65];
        bytes[..32].copy_from_slice(&r);
        bytes[32..64].copy_from_slice(&s);
        bytes[64] =
            recovery_id.checked_add(27).ok_or(SignatureProblem::RecoveryByte(recovery_id))?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureProblem> {
        let array: [u8; 65] =
            bytes.try_into().map_err(|_| SignatureProblem::Length(bytes.len()))?;
        if array[64] != 27 && array[64] != 28 {
            return Err(SignatureProblem::RecoveryByte(array[64]));
        }
        let signature =
            Signature::from_slice(&array[..64]).map_err(|_| SignatureProblem::NotOnCurve)?;
        if signature.normalize_s().is_some() {
            return Err(SignatureProblem::HighS);
        }
        Ok(Self(array))
    }

    /// Parses `0x` and 130 hex digits.
    pub fn parse_hex(field: &str, text: &str) -> Result<Self, InputError> {
        let bytes = parse_hex_bytes(field, text)?;
        Self::from_bytes(&bytes).map_err(|problem| InputError::new(field, problem.to_string()))
    }

    pub fn as_bytes(&self) -> &[u8; 65] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(132);
        out.push_str("0x");
        for byte in self.0 {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// The address whose key made this signature over `digest`.
    pub fn recover(&self, digest: &B256) -> Result<Address, SignatureProblem> {
        let signature =
            Signature::from_slice(&self.0[..64]).map_err(|_| SignatureProblem::NotOnCurve)?;
        let recovery_id = RecoveryId::from_byte(self.0[64] - 27)
            .ok_or(SignatureProblem::RecoveryByte(self.0[64]))?;
        let key = VerifyingKey::recover_from_prehash(digest.as_slice(), &signature, recovery_id)
            .map_err(|_| SignatureProblem::NotOnCurve)?;
        Ok(Address::from_public_key(&key))
    }
}

impl fmt::Debug for OwnerSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerSignature({})", self.to_hex())
    }
}

impl fmt::Display for SignatureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(n) => write!(f, "an owner signature has 65 bytes, this has {n}"),
            Self::RecoveryByte(v) => write!(f, "v must be 27 or 28, not {v}"),
            Self::NotOnCurve => write!(f, "r and s do not form a valid secp256k1 signature"),
            Self::HighS => write!(f, "s is in the upper half of the curve order (not low-s)"),
        }
    }
}

impl std::error::Error for SignatureProblem {}
