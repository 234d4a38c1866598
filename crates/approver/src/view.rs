//! How a review is shown: plain text for people, one JSON object for scripts.

use countersign_core::address::checksummed;
use countersign_core::decode::{Action, Call};
use countersign_core::describe::describe;
use countersign_core::guard::{Review, Verdict};
use countersign_core::tokens::{chain_name, TokenList};
use countersign_core::typed_data::TypedDataHashes;
use serde_json::{json, Value};

/// A hash as a Ledger's Ethereum app shows it when it signs EIP-712 by hashes: `0x` and the
/// 64 hex digits in capitals.
pub fn ledger_form(hash: &alloy_primitives::B256) -> String {
    format!("0x{}", hex::encode_upper(hash.as_slice()))
}

/// The intent lines of a review.
pub fn intent(review: &Review, tokens: &TokenList) -> Vec<String> {
    describe(&review.call, review.vault.chain_id, tokens)
}

pub fn verdict_word(review: &Review) -> &'static str {
    match review.verdict() {
        Verdict::Ok => "ok",
        Verdict::Refused => "refused",
    }
}

/// The review as one JSON object: hashes, verdict, reasons, warnings, intent, calls.
pub fn review_json(review: &Review, tokens: &TokenList) -> Value {
    let tx = &review.request.tx;
    let reasons: Vec<Value> = review
        .refusals
        .iter()
        .map(|r| json!({ "code": r.code(), "message": r.to_string() }))
        .collect();
    let warnings: Vec<Value> = review
        .warnings
        .iter()
        .map(|w| json!({ "code": w.code(), "message": w.to_string() }))
        .collect();
    json!({
        "kind": "safeTransaction",
        "chainId": review.vault.chain_id,
        "safe": checksummed(&review.vault.address),
        "safeVersion": review.vault.version.to_string(),
        "nonce": tx.nonce.to_string(),
        "nextNonce": review.vault.next_nonce.map(|n| n.to_string()),
        "domainHash": review.hashes.domain.to_string(),
        "messageHash": review.hashes.message.to_string(),
        "safeTxHash": review.hashes.safe_tx.to_string(),
        "claimedSafeTxHash": review.request.claimed_safe_tx_hash.map(|h| h.to_string()),
        "verdict": verdict_word(review),
        "reasons": reasons,
        "warnings": warnings,
        "rejection": review.is_rejection(),
        "intent": intent(review, tokens),
        "calls": review.call.walk().iter().map(|c| call_json(c)).collect::<Vec<_>>(),
        "fields": {
            "to": checksummed(&tx.to),
            "value": tx.value.to_string(),
            "data": tx.data.to_string(),
            "operation": tx.operation.0,
            "safeTxGas": tx.safe_tx_gas.to_string(),
            "baseGas": tx.base_gas.to_string(),
            "gasPrice": tx.gas_price.to_string(),
            "gasToken": checksummed(&tx.gas_token),
            "refundReceiver": checksummed(&tx.refund_receiver),
        },
    })
}

fn call_json(call: &Call) -> Value {
    let action = match &call.action {
        Action::NoData => "none",
        Action::Erc20Transfer { .. } => "erc20Transfer",
        Action::Erc20Approve { .. } => "erc20Approve",
        Action::Erc20TransferFrom { .. } => "erc20TransferFrom",
        Action::MultiSend { .. } => "multiSend",
        Action::SafeAdmin(op) => op.kind().name(),
        Action::Raw { .. } => "raw",
    };
    json!({
        "path": call.path,
        "operation": call.operation.0,
        "to": checksummed(&call.to),
        "value": call.value.to_string(),
        "action": action,
        "selector": call.selector().map(|s| format!("0x{}", hex::encode(s))),
        "dataLength": call.data.len(),
    })
}

/// The review as text for a person, hashes last, in the order a Ledger shows them.
pub fn review_text(review: &Review, tokens: &TokenList) -> String {
    let vault = &review.vault;
    let tx = &review.request.tx;
    let chain = chain_name(vault.chain_id).map(|n| format!("{n}, ")).unwrap_or_default();
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };

    line(format!(
        "Vault {} on {chain}chain {}, Safe version {}",
        vault.display_name(),
        vault.chain_id,
        vault.version
    ));
    let next = match vault.next_nonce {
        Some(next) => format!(" (the vault's next nonce is {next})"),
        None => " (the vault's next nonce is unknown)".to_owned(),
    };
    line(format!("Nonce {}{next}", tx.nonce));
    if review.is_rejection() {
        line(
            "This is the standard rejection: it cancels whatever else uses this nonce.".to_owned(),
        );
    }
    line(String::new());
    line("Intent:".to_owned());
    for text in intent(review, tokens) {
        line(format!("  {text}"));
    }
    if !review.warnings.is_empty() {
        line(String::new());
        line("Warnings:".to_owned());
        for warning in &review.warnings {
            line(format!("  - {warning}"));
        }
    }
    line(String::new());
    match review.verdict() {
        Verdict::Ok => line("Verdict: ok (no guard refuses this request)".to_owned()),
        Verdict::Refused => {
            line("Verdict: REFUSED".to_owned());
            for refusal in &review.refusals {
                line(format!("  - [{}] {refusal}", refusal.code()));
            }
        }
    }
    line(String::new());
    line("Raw fields:".to_owned());
    line(format!(
        "  to {}  value {}  operation {} ({})",
        checksummed(&tx.to),
        tx.value,
        tx.operation.0,
        tx.operation.name()
    ));
    line(format!("  data {} bytes{}", tx.data.len(), selector_suffix(&review.call)));
    line(format!(
        "  safeTxGas {}  baseGas {}  gasPrice {}",
        tx.safe_tx_gas, tx.base_gas, tx.gas_price
    ));
    line(format!(
        "  gasToken {}  refundReceiver {}",
        checksummed(&tx.gas_token),
        checksummed(&tx.refund_receiver)
    ));
    line(String::new());
    line(format!("Domain hash:  {}", review.hashes.domain));
    line(format!("Message hash: {}", review.hashes.message));
    line(format!("safeTxHash:   {}", review.hashes.safe_tx));
    if let Some(claimed) = review.request.claimed_safe_tx_hash {
        let agrees = if claimed == review.hashes.safe_tx { "matches" } else { "DIFFERS" };
        line(format!("Claimed:      {claimed} ({agrees})"));
    }
    out
}

fn selector_suffix(call: &Call) -> String {
    match call.selector() {
        Some(s) => format!(", selector 0x{}", hex::encode(s)),
        None => String::new(),
    }
}

/// What gets written to the audit log for an inspection: what the approver was shown.
pub fn audit_body(review: &Review, tokens: &TokenList) -> Value {
    json!({
        "vault": format!("{}:{}", review.vault.chain_id, checksummed(&review.vault.address)),
        "nonce": review.request.tx.nonce.to_string(),
        "safeTxHash": review.hashes.safe_tx.to_string(),
        "verdict": verdict_word(review),
        "reasons": review.refusals.iter().map(|r| r.code()).collect::<Vec<_>>(),
        "warnings": review.warnings.iter().map(|w| w.code()).collect::<Vec<_>>(),
        "intent": intent(review, tokens),
    })
}

pub fn typed_data_json(hashes: &TypedDataHashes) -> Value {
    json!({
        "kind": "typedData",
        "primaryType": hashes.primary_type,
        "encodedType": hashes.encoded_type,
        "domainSeparator": hashes.domain_separator.to_string(),
        "structHash": hashes.struct_hash.to_string(),
        "digest": hashes.digest.to_string(),
        "verdict": "refused",
        "reasons": [{ "code": "not_signable", "message": NOT_SIGNABLE }],
    })
}

pub const NOT_SIGNABLE: &str =
    "generic EIP-712 typed data can be inspected but not signed: Countersign signs Safe transactions only";

pub fn typed_data_text(hashes: &TypedDataHashes) -> String {
    format!(
        "EIP-712 typed data, primary type {}\n  {}\n\nVerdict: REFUSED\n  - [not_signable] {NOT_SIGNABLE}\n\n\
         Domain separator: {}\nStruct hash:      {}\nDigest:           {}\n",
        countersign_core::printable(&hashes.primary_type), countersign_core::printable(&hashes.encoded_type), hashes.domain_separator, hashes.struct_hash, hashes.digest
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_form_is_0x_and_capitals() {
        let hash: alloy_primitives::B256 =
            "0x1cf7f9b1efe3bc47fe02fd27c649fea19e79d66040683a1c86c7490c80bf7291".parse().unwrap();
        assert_eq!(
            ledger_form(&hash),
            "0x1CF7F9B1EFE3BC47FE02FD27C649FEA19E79D66040683A1C86C7490C80BF7291"
        );
    }
}
