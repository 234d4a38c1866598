//! The known-key check against recovery, on random and edge-case inputs: for every parsed
//! signature, digest and key, `is_by(digest, key)` must be `recover_key(digest) == Ok(key)`;
//! and `KnownKeys::signer` must answer `recover` whatever address it is told to expect.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use alloy_primitives::{keccak256, Address, B256};
use countersign_core::signature::{KnownKeys, OwnerSignature};
use k256::ecdsa::VerifyingKey;
use k256::elliptic_curve::bigint::ArrayEncoding;
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::point::{AffineCoordinates, DecompressPoint};
use k256::elliptic_curve::scalar::IsHigh;
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

/// A deterministic stream of bytes: keccak of a counter.
struct Rng(u64);

impl Rng {
    fn bytes32(&mut self) -> [u8; 32] {
        self.0 += 1;
        keccak256(self.0.to_be_bytes()).0
    }
    fn below(&mut self, n: u64) -> u64 {
        u64::from_be_bytes(self.bytes32()[..8].try_into().unwrap()) % n
    }
    fn scalar(&mut self) -> Scalar {
        <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(self.bytes32()))
    }
}

const ORDER: &str = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141";
const PRIME: &str = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F";

fn order() -> U256 {
    U256::from_be_hex(ORDER)
}

fn u256_bytes(x: U256) -> [u8; 32] {
    x.to_be_byte_array().into()
}

/// Interesting 32-byte values for r, s and digests.
fn edges() -> Vec<[u8; 32]> {
    let n = order();
    let p = U256::from_be_hex(PRIME);
    let half = n.shr_vartime(1);
    let mut out = vec![[0u8; 32], [0xff; 32]];
    for small in 1..=3u64 {
        out.push(u256_bytes(U256::from_u64(small)));
        out.push(u256_bytes(n.wrapping_sub(&U256::from_u64(small))));
        out.push(u256_bytes(n.wrapping_add(&U256::from_u64(small - 1))));
        out.push(u256_bytes(
            half.wrapping_add(&U256::from_u64(small)).wrapping_sub(&U256::from_u64(4)),
        ));
        out.push(u256_bytes(p.wrapping_sub(&n).wrapping_sub(&U256::from_u64(small - 1))));
        out.push(u256_bytes(p.wrapping_sub(&n).wrapping_add(&U256::from_u64(small))));
        out.push(u256_bytes(p.wrapping_sub(&U256::from_u64(small))));
    }
    out
}

fn point_key(point: ProjectivePoint) -> Option<VerifyingKey> {
    VerifyingKey::from_affine(point.to_affine()).ok()
}

fn scalar_key(d: Scalar) -> Option<VerifyingKey> {
    point_key(ProjectivePoint::GENERATOR * d)
}

fn with_v(signature: &OwnerSignature, odd: bool) -> OwnerSignature {
    let mut bytes = *signature.as_bytes();
    bytes[64] = if odd { 28 } else { 27 };
    OwnerSignature::from_bytes(&bytes).unwrap()
}

/// is_by must be exactly "recovery gives this key".
fn agree(signature: &OwnerSignature, digest: &B256, key: &VerifyingKey, what: &str) -> bool {
    let recovered = signature.recover_key(digest).ok();
    let expected = recovered.as_ref() == Some(key);
    let got = signature.is_by(digest, key);
    assert_eq!(
        got,
        expected,
        "{what}: is_by says {got}, recovery says {expected}\n  signature {}\n  digest {digest}\n  key {:?}",
        signature.to_hex(),
        hex_key(key)
    );
    got
}

fn hex_key(key: &VerifyingKey) -> String {
    alloy_primitives::hex::encode(key.to_encoded_point(false).as_bytes())
}

/// The keys worth trying against a signature: what it and its other parity recover,
/// a few fixed small multiples of G, and random ones.
fn candidates(signature: &OwnerSignature, digest: &B256, rng: &mut Rng) -> Vec<VerifyingKey> {
    let mut keys = Vec::new();
    for odd in [false, true] {
        if let Ok(key) = with_v(signature, odd).recover_key(digest) {
            keys.push(key);
            // The negated key, which gives the mirrored point for the other scalar sign.
            if let Some(k) = point_key(-ProjectivePoint::from(*key.as_affine())) {
                keys.push(k);
            }
        }
    }
    for d in [1u64, 2, 3, 7] {
        keys.extend(scalar_key(Scalar::from(d)));
        keys.extend(scalar_key(-Scalar::from(d)));
    }
    keys.extend(scalar_key(rng.scalar()));
    keys
}

fn check_all(signature: &OwnerSignature, digest: &B256, rng: &mut Rng) -> usize {
    let mut hits = 0;
    for (i, key) in candidates(signature, digest, rng).iter().enumerate() {
        hits += usize::from(agree(signature, digest, key, &format!("candidate {i}")));
    }
    hits
}

/// Random bytes (and edge values) parsed as signatures, under random and edge digests.
#[test]
fn garbage_signatures_agree_with_recovery() {
    let mut rng = Rng(1);
    let edges = edges();
    let digests: Vec<B256> = edges
        .iter()
        .map(|e| B256::from(*e))
        .chain((0..4).map(|_| B256::from(rng.bytes32())))
        .collect();
    let mut parsed = 0;
    let mut hits = 0;
    let pick = |rng: &mut Rng| -> [u8; 32] {
        match rng.below(3) {
            0 => edges[rng.below(edges.len() as u64) as usize],
            _ => {
                let mut b = rng.bytes32();
                if rng.below(2) == 0 {
                    b[0] &= 0x7f; // more often a low s
                }
                b
            }
        }
    };
    for round in 0..800 {
        let mut bytes = [0u8; 65];
        bytes[..32].copy_from_slice(&pick(&mut rng));
        bytes[32..64].copy_from_slice(&pick(&mut rng));
        bytes[64] = if rng.below(2) == 0 { 27 } else { 28 };
        let Ok(signature) = OwnerSignature::from_bytes(&bytes) else { continue };
        parsed += 1;
        let digest = digests[round % digests.len()];
        hits += check_all(&signature, &digest, &mut rng);
    }
    assert!(parsed > 250, "{parsed}");
    assert!(hits > 200, "{hits}");
}

/// Signatures built from a chosen R (x = r, both parities) and s: the key they recover to is
/// (s·R − z·G)/r by construction, including for r and s at the edges of their ranges.
#[test]
fn signatures_built_from_edge_r_and_s_agree() {
    let mut rng = Rng(2);
    let edges = edges();
    let mut built = 0;
    for r_bytes in &edges {
        let Some(r) = Option::<Scalar>::from(Scalar::from_repr((*r_bytes).into())) else {
            continue;
        };
        if bool::from(r.is_zero()) {
            continue;
        }
        let extra: Vec<[u8; 32]> = (0..3).map(|_| rng.bytes32()).collect();
        for s_bytes in edges.iter().copied().chain(extra) {
            for odd in [false, true] {
                let mut bytes = [0u8; 65];
                bytes[..32].copy_from_slice(r_bytes);
                bytes[32..64].copy_from_slice(&s_bytes);
                bytes[64] = 27 + u8::from(odd);
                let Ok(signature) = OwnerSignature::from_bytes(&bytes) else { continue };
                let s = Scalar::from_repr(s_bytes.into()).unwrap();
                for digest in [B256::ZERO, B256::from(edges[3]), B256::from(rng.bytes32())] {
                    let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest.0));
                    let point: Option<AffinePoint> =
                        AffinePoint::decompress(&(*r_bytes).into(), u8::from(odd).into()).into();
                    match point {
                        Some(point) => {
                            // The key this signature is by.
                            let q = (ProjectivePoint::from(point) * s
                                - ProjectivePoint::GENERATOR * z)
                                * r.invert().unwrap();
                            if let Some(key) = point_key(q) {
                                built += 1;
                                assert!(agree(&signature, &digest, &key, "built key"));
                                // Its mirror (the other parity's R) is another key's.
                                let mirror = (-ProjectivePoint::from(point) * s
                                    - ProjectivePoint::GENERATOR * z)
                                    * r.invert().unwrap();
                                if let Some(mirror) = point_key(mirror) {
                                    assert!(!agree(&signature, &digest, &mirror, "mirror"));
                                    assert!(agree(
                                        &with_v(&signature, !odd),
                                        &digest,
                                        &mirror,
                                        "mirror, flipped"
                                    ));
                                }
                            }
                            // A key that puts R' at infinity: -(z/r)·G.
                            if let Some(key) =
                                point_key(ProjectivePoint::GENERATOR * (-(z * r.invert().unwrap())))
                            {
                                assert!(!agree(&signature, &digest, &key, "R' at infinity"));
                            }
                        }
                        None => {
                            // No point has x = r: recovery fails, and is_by must for any key.
                            assert!(signature.recover_key(&digest).is_err());
                        }
                    }
                    if digest != B256::ZERO && digest != B256::from(edges[3]) {
                        check_all(&signature, &digest, &mut rng);
                    }
                }
            }
        }
    }
    assert!(built > 100, "{built}");
}

/// Real ECDSA signatures by small and edge private keys (1, 2, n−1, …) with chosen nonces,
/// including nonces whose R has x above the order (r = x − n, which v 27/28 does not mean).
#[test]
fn signatures_by_edge_keys_and_nonces_agree() {
    let mut rng = Rng(3);
    let n = order();
    let mut privates: Vec<Scalar> = (1..=5u64).map(Scalar::from).collect();
    privates.extend((1..=5u64).map(|d| -Scalar::from(d)));
    privates.extend((0..5).map(|_| rng.scalar()));
    let mut nonces: Vec<Scalar> = (1..=5u64).map(Scalar::from).collect();
    nonces.extend((1..=3u64).map(|d| -Scalar::from(d)));
    nonces.extend((0..6).map(|_| rng.scalar()));
    let mut signed = 0;
    for d in &privates {
        let key = scalar_key(*d).unwrap();
        for k in &nonces {
            for digest in [B256::ZERO, B256::from(u256_bytes(n)), B256::from(rng.bytes32())] {
                let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest.0));
                let big_r = (ProjectivePoint::GENERATOR * k).to_affine();
                let x = U256::from_be_byte_array(big_r.x());
                let r = <Scalar as Reduce<U256>>::reduce(x);
                let mut s = k.invert().unwrap() * (z + r * d);
                if bool::from(s.is_zero()) {
                    continue;
                }
                let mut odd = bool::from(big_r.y_is_odd());
                if bool::from(s.is_high()) {
                    s = -s;
                    odd = !odd;
                }
                let signature = OwnerSignature::from_parts(
                    r.to_repr().into(),
                    s.to_repr().into(),
                    u8::from(odd),
                )
                .unwrap();
                let by_key = agree(&signature, &digest, &key, "signer");
                // Only an x above the order can make the signer's own signature not its own.
                assert_eq!(by_key, x < n, "x = {x}");
                signed += 1;
                assert!(!agree(&with_v(&signature, !odd), &digest, &key, "the other parity"));
                check_all(&signature, &digest, &mut rng);
            }
        }
    }
    assert!(signed > 150, "{signed}");
}

/// The cache answers as recovery whatever it is told to expect, in any order of calls, and
/// a wrong expectation (another member, a relayed signature, the other parity, another
/// digest) never changes whose signature it is.
#[test]
fn known_keys_answer_as_recovery_whatever_is_expected() {
    let mut rng = Rng(4);
    let privates: Vec<Scalar> = (0..6).map(|_| rng.scalar()).collect();
    let keys: Vec<VerifyingKey> = privates.iter().map(|d| scalar_key(*d).unwrap()).collect();
    let addresses: Vec<Address> = keys.iter().map(Address::from_public_key).collect();
    let known = KnownKeys::default();
    for _ in 0..1000 {
        let signer = rng.below(6) as usize;
        let digest = B256::from(rng.bytes32());
        let signing = k256::ecdsa::SigningKey::from_bytes(&privates[signer].to_repr()).unwrap();
        let (sig, id) = signing.sign_prehash_recoverable(digest.as_slice()).unwrap();
        let (sig, id) = match sig.normalize_s() {
            Some(low) => (low, id.to_byte() ^ 1),
            None => (sig, id.to_byte()),
        };
        let bytes = sig.to_bytes();
        let mut signature = OwnerSignature::from_parts(
            bytes[..32].try_into().unwrap(),
            bytes[32..].try_into().unwrap(),
            id,
        )
        .unwrap();
        if rng.below(4) == 0 {
            let odd = signature.as_bytes()[64] == 27;
            signature = with_v(&signature, odd);
        }
        let over = if rng.below(4) == 0 { B256::from(rng.bytes32()) } else { digest };
        let expected = match rng.below(8) {
            0 => None,
            1 => Some(Address::from_slice(&rng.bytes32()[..20])),
            _ => Some(addresses[rng.below(6) as usize]),
        };
        assert_eq!(
            known.signer(&signature, &over, expected),
            signature.recover(&over),
            "expected {expected:?}"
        );
    }
}
