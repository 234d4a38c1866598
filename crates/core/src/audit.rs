//! Hash-chained audit logs: the approver's local log and the queue's log share this chain.
//!
//! Entry `n` stores `hash_n = SHA-256(tag ‖ hash_{n-1} ‖ n ‖ at ‖ len(kind) ‖ kind ‖ len(body) ‖
//! body)` with integers big-endian (n and at as 8 bytes, lengths as 4) and `hash_0` all zeros;
//! `tag` names the log ([`LOCAL`], [`QUEUE`]) so an entry of one never verifies in the other.
//! Changing, inserting or removing an entry breaks the chain at that entry; cutting entries off
//! the end needs the head kept elsewhere (the local store keeps it sealed).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The tag of the approver's local log.
pub const LOCAL: &[u8] = b"countersign/audit/v1\0";
/// The tag of the queue's log.
pub const QUEUE: &[u8] = b"countersign/queue-audit/v1\0";

/// One entry as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix time in seconds.
    pub at: i64,
    pub kind: String,
    /// Compact JSON with sorted keys.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The first entry that does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: u64,
    pub problem: String,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub entries: u64,
    pub head: String,
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry, from its fields and its predecessor's hash.
pub fn entry_hash(
    tag: &[u8],
    prev_hash: &[u8; 32],
    seq: u64,
    at: i64,
    kind: &str,
    body: &str,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(tag);
    hasher.update(prev_hash);
    hasher.update(seq.to_be_bytes());
    hasher.update(at.to_be_bytes());
    for part in [kind.as_bytes(), body.as_bytes()] {
        hasher.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Walks `entries` in order and names the first that breaks the chain.
pub fn verify_chain(tag: &[u8], entries: &[AuditEntry]) -> Result<ChainReport, ChainBreak> {
    let mut prev = [0u8; 32];
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let fail = |problem: &str| ChainBreak { seq: entry.seq, problem: problem.to_owned() };
        if entry.seq != expected_seq {
            return Err(ChainBreak {
                seq: expected_seq,
                problem: format!(
                    "entry {expected_seq} is missing (found {} in its place)",
                    entry.seq
                ),
            });
        }
        if decode(&entry.prev_hash) != Some(prev) {
            return Err(fail("its previous-hash does not match the entry before it"));
        }
        let computed = entry_hash(tag, &prev, entry.seq, entry.at, &entry.kind, &entry.body);
        if decode(&entry.hash) != Some(computed) {
            return Err(fail("its contents do not match its hash"));
        }
        prev = computed;
    }
    Ok(ChainReport { entries: entries.len() as u64, head: hex::encode(prev) })
}

/// A hash written as 64 hex digits.
pub fn decode(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let body = format!("{{\"n\":{seq}}}");
                let hash = entry_hash(LOCAL, &prev, seq, 1000 + seq as i64, "test", &body);
                let entry = AuditEntry {
                    seq,
                    at: 1000 + seq as i64,
                    kind: "test".into(),
                    body,
                    prev_hash: hex::encode(prev),
                    hash: hex::encode(hash),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(LOCAL, &chain(5)).map(|r| r.entries), Ok(5));
    }

    #[test]
    fn fail_altered_removed_or_reordered() {
        let mut altered = chain(5);
        altered[2].body = "{\"n\":99}".into();
        assert_eq!(verify_chain(LOCAL, &altered).map_err(|b| b.seq), Err(3));

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify_chain(LOCAL, &removed).map_err(|b| b.seq), Err(2));

        let mut swapped = chain(5);
        swapped.swap(3, 4);
        assert_eq!(verify_chain(LOCAL, &swapped).map_err(|b| b.seq), Err(4));
    }
}
