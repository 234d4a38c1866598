//! Safe owner signatures: 65 bytes r ‖ s ‖ v, low-s, v 27 or 28, as `execTransaction` takes them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use alloy_primitives::{Address, B256};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use k256::elliptic_curve::ops::{Invert, LinearCombination, Reduce};
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::PrimeField;
use k256::{FieldBytes, ProjectivePoint, Scalar, U256};

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
        Ok(Address::from_public_key(&self.recover_key(digest)?))
    }

    /// The key that made this signature over `digest`, as `ecrecover` finds it.
    pub fn recover_key(&self, digest: &B256) -> Result<VerifyingKey, SignatureProblem> {
        let recovery_id = RecoveryId::from_byte(self.0[64] - 27)
            .ok_or(SignatureProblem::RecoveryByte(self.0[64]))?;
        VerifyingKey::recover_from_prehash(digest.as_slice(), &self.scalars()?, recovery_id)
            .map_err(|_| SignatureProblem::NotOnCurve)
    }

    /// Whether [`recover_key`](Self::recover_key) over `digest` would give `key`, worked out
    /// at less than half its cost for a signer whose key is known.
    ///
    /// Recovery decompresses R, the point whose x is r and whose y has v's parity, computes
    /// the key from it, and then verifies the signature with that key. Verifying with `key`
    /// computes R' = (z/s)·G + (r/s)·key. R' is R exactly when recovery gives `key`: from R,
    /// recovery computes (s·R − z·G)/r, which is `key` when R = R', and from any other R it
    /// computes another key. So R' must have x equal to r itself (an ECDSA verification
    /// compares x modulo the curve order, but v 27 or 28 tells recovery that x is r, not
    /// r + n) and y of v's parity (a plain verification looks at x only).
    pub fn is_by(&self, digest: &B256, key: &VerifyingKey) -> bool {
        let Ok(signature) = self.scalars() else { return false };
        let (r, s) = signature.split_scalars();
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest.0));
        let s_inv = *s.invert_vartime();
        let point = ProjectivePoint::lincomb(
            &ProjectivePoint::GENERATOR,
            &(z * s_inv),
            &ProjectivePoint::from(*key.as_affine()),
            &(*r * s_inv),
        )
        .to_affine();
        let odd = self.0[64] == 28;
        point.x() == r.to_repr() && bool::from(point.y_is_odd()) == odd
    }

    /// r and s, which construction checked: both in 1..n, s low.
    fn scalars(&self) -> Result<Signature, SignatureProblem> {
        Signature::from_slice(&self.0[..64]).map_err(|_| SignatureProblem::NotOnCurve)
    }
}

/// The public keys of signers seen before, by address, so that their next signatures are
/// checked against the key ([`OwnerSignature::is_by`]) instead of recovered.
///
/// Only the address a caller expects is remembered, so the map holds no more keys than
/// there are expected signers; a signature by anyone else is recovered in full.
#[derive(Debug, Default)]
pub struct KnownKeys(RwLock<HashMap<Address, VerifyingKey>>);

impl KnownKeys {
    /// The address whose key made `signature` over `digest`, as [`OwnerSignature::recover`]
    /// answers: `expected` at the cost of a verification when its key is known, and otherwise
    /// by recovery, remembering the key when it is `expected`'s.
    pub fn signer(
        &self,
        signature: &OwnerSignature,
        digest: &B256,
        expected: Option<Address>,
    ) -> Result<Address, SignatureProblem> {
        let known = expected.and_then(|address| {
            let keys = self.0.read().unwrap_or_else(PoisonError::into_inner);
            keys.get(&address).copied()
        });
        if let (Some(address), Some(key)) = (expected, known) {
            if signature.is_by(digest, &key) {
                return Ok(address);
            }
        }
        let key = signature.recover_key(digest)?;
        let address = Address::from_public_key(&key);
        if expected == Some(address) && known.is_none() {
            self.0.write().unwrap_or_else(PoisonError::into_inner).insert(address, key);
        }
        Ok(address)
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

#[cfg(test)]
mod tests {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    use k256::ecdsa::SigningKey;
    use k256::elliptic_curve::bigint::ArrayEncoding;
    use k256::elliptic_curve::sec1::FromEncodedPoint;
    use k256::{AffinePoint, EncodedPoint};

    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&FieldBytes::from([n; 32])).unwrap()
    }

    fn digest(n: u8) -> B256 {
        alloy_primitives::keccak256([n])
    }

    fn sign(key: &SigningKey, digest: &B256) -> OwnerSignature {
        let (signature, id) = key.sign_prehash_recoverable(digest.as_slice()).unwrap();
        let (signature, id) = match signature.normalize_s() {
            Some(low) => (low, RecoveryId::from_byte(id.to_byte() ^ 1).unwrap()),
            None => (signature, id),
        };
        let bytes = signature.to_bytes();
        OwnerSignature::from_parts(
            bytes[..32].try_into().unwrap(),
            bytes[32..].try_into().unwrap(),
            id.to_byte(),
        )
        .unwrap()
    }

    fn flipped(signature: &OwnerSignature) -> OwnerSignature {
        let mut bytes = *signature.as_bytes();
        bytes[64] ^= 27 ^ 28;
        OwnerSignature::from_bytes(&bytes).unwrap()
    }

    #[test]
    fn the_known_key_check_answers_as_recovery_does() {
        for n in 1..=40u8 {
            let (signer, other) = (key(n), key(n + 100));
            let digest = digest(n);
            let signature = sign(&signer, &digest);
            let mine = signer.verifying_key();
            assert_eq!(signature.recover_key(&digest).unwrap(), *mine);
            assert!(signature.is_by(&digest, mine), "key {n}");
            assert!(!signature.is_by(&digest, other.verifying_key()), "another key, {n}");
            assert!(!signature.is_by(&self::digest(n + 1), mine), "another digest, {n}");
            // The other parity recovers another key, so it is not this key's signature,
            // though a plain verification, which looks at x only, passes it.
            let wrong_v = flipped(&signature);
            assert_ne!(wrong_v.recover_key(&digest).ok().as_ref(), Some(mine));
            assert!(mine.verify_prehash(digest.as_slice(), &wrong_v.scalars().unwrap()).is_ok());
            assert!(!wrong_v.is_by(&digest, mine), "the other parity, {n}");
        }
    }

    /// A point whose x lies between the curve order n and the field's prime p, and a key
    /// made up so that a signature with r = x − n verifies under it: a plain verification
    /// (x compared modulo n) accepts it, recovery with v 27 or 28 (which takes x = r) finds
    /// another key, and so must the known-key check.
    #[test]
    fn an_r_that_stands_for_x_above_the_order_is_not_the_key_s() {
        let order =
            U256::from_be_hex("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141");
        let (point, x) = (1u64..)
            .find_map(|i| {
                let x = order.wrapping_add(&U256::from_u64(i));
                let mut encoded = [0u8; 33];
                encoded[0] = 2;
                encoded[1..].copy_from_slice(&x.to_be_byte_array());
                let encoded = EncodedPoint::from_bytes(encoded).ok()?;
                Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded))
                    .map(|p| (p, x))
            })
            .unwrap();
        let r_bytes = x.wrapping_sub(&order).to_be_byte_array();
        let r = Scalar::from_repr(r_bytes).unwrap();
        let s = Scalar::from(7u64);
        let digest = digest(1);
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest.0));
        let key = (ProjectivePoint::from(point) * s - ProjectivePoint::GENERATOR * z)
            * <Scalar as k256::elliptic_curve::Field>::invert(&r).unwrap();
        let key = VerifyingKey::from_affine(key.to_affine()).unwrap();
        let odd = bool::from(point.y_is_odd());
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&s.to_repr());
        let signature = OwnerSignature::from_parts(r_bytes.into(), s_bytes, u8::from(odd)).unwrap();
        assert!(key.verify_prehash(digest.as_slice(), &signature.scalars().unwrap()).is_ok());
        assert_ne!(signature.recover_key(&digest).ok(), Some(key));
        assert!(!signature.is_by(&digest, &key));
    }

    #[test]
    fn known_keys_remember_only_the_expected_signer() {
        let keys = KnownKeys::default();
        let (alice, bob) = (key(1), key(2));
        let (a, b) = (
            Address::from_public_key(alice.verifying_key()),
            Address::from_public_key(bob.verifying_key()),
        );
        let by_bob = sign(&bob, &digest(1));
        assert_eq!(keys.signer(&by_bob, &digest(1), Some(a)).unwrap(), b);
        assert!(keys.0.read().unwrap().is_empty(), "bob was not expected");
        for n in 1..4 {
            let by_alice = sign(&alice, &digest(n));
            assert_eq!(keys.signer(&by_alice, &digest(n), Some(a)).unwrap(), a);
            assert_eq!(keys.0.read().unwrap().len(), 1);
            assert_eq!(
                keys.signer(&flipped(&by_alice), &digest(n), Some(a)).unwrap(),
                flipped(&by_alice).recover(&digest(n)).unwrap()
            );
        }
        // With alice's key known, bob's signature is still bob's, and nobody's expected
        // signature is recovered.
        assert_eq!(keys.signer(&by_bob, &digest(1), Some(a)).unwrap(), b);
        assert_eq!(keys.signer(&by_bob, &digest(1), None).unwrap(), b);
        assert_eq!(keys.0.read().unwrap().len(), 1);
    }
}
