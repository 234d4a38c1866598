//! The rows of the queue screen: one per synced request, read from the local copy.
//!
//! A row says what the request does as Countersign decoded it (never what the queue claims),
//! the approvals Countersign verified, and whether the request is marked. The full review
//! with the guards is for the request screen.

use std::collections::HashMap;

use alloy_primitives::{Address, U256};
use countersign_core::address::checksummed;
use countersign_core::decode::{decode_call, Action, Call};
use countersign_core::describe::Amount;
use countersign_core::policy::Policy;
use countersign_core::request::Operation;
use countersign_core::request::SafeTxRequest;
use countersign_core::tokens::{chain_name, TokenList};
use countersign_core::vault::VaultRecord;
use countersign_store::{CachedRequest, Store};
use serde::Serialize;

use crate::actions::{approvals_of, marks_now};
use crate::Problem;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub id: String,
    pub state: String,
    pub chain_id: u64,
    pub chain: String,
    pub safe: String,
    /// The pinned vault's label, when it has one.
    pub vault: Option<String>,
    pub nonce: String,
    /// `transfer`, `native transfer`, `MultiSend (4 steps)`, `delegatecall`, `contract call`, …
    pub operation: String,
    pub asset: String,
    /// In human units with the symbol when the decimals are known, else base units.
    pub amount: String,
    pub destination: Option<String>,
    /// The label of the destination when it is a pinned vault.
    pub destination_label: Option<String>,
    pub created_at: i64,
    /// Approvals whose signature Countersign verified.
    pub approvals: usize,
    /// The owners who gave them, checksummed.
    pub approved_by: Vec<String>,
    pub threshold: Option<u32>,
    pub marked: bool,
}

/// What a row is read with: the pinned vaults, the local policy, the token list.
#[derive(Debug)]
struct RowContext<'a> {
    tokens: &'a TokenList,
    policy: Policy,
    vaults: HashMap<(u64, Address), VaultRecord>,
    labels: HashMap<Address, String>,
    now: i64,
}

impl<'a> RowContext<'a> {
    async fn load(store: &Store, tokens: &'a TokenList) -> Result<Self, Problem> {
        let vaults = store.vaults(None).await?;
        let labels =
            vaults.iter().filter_map(|v| v.label.clone().map(|l| (v.address, l))).collect();
        Ok(Self {
            tokens,
            policy: store.policy().await?,
            vaults: vaults.into_iter().map(|v| ((v.chain_id, v.address), v)).collect(),
            labels,
            now: countersign_store::unix_now(),
        })
    }

    /// The pinned vault a request is for, if pinned.
    fn vault(&self, chain_id: u64, safe: &Address) -> Option<&VaultRecord> {
        self.vaults.get(&(chain_id, *safe))
    }

    fn row(&self, cached: &CachedRequest) -> Row {
        row(cached, self)
    }
}

/// The rows of every synced request, newest first.
pub async fn rows(store: &Store, tokens: &TokenList) -> Result<Vec<Row>, Problem> {
    let started = std::time::Instant::now();
    let context = RowContext::load(store, tokens).await?;
    let loaded = started.elapsed();
    // Only the part of each body that a row shows.
    let cached = store.cached_rows().await?;
    let read = started.elapsed();
    // Decoding 10,000 requests is worth the cores: one chunk a thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = cached.len().div_ceil(threads).max(256);
    let mut out: Vec<Row> = std::thread::scope(|scope| {
        let context = &context;
        let handles: Vec<_> = cached
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(|c| context.row(c)).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    tracing::debug!(
        context_ms = loaded.as_millis() as u64,
        read_ms = (read - loaded).as_millis() as u64,
        rows_ms = (started.elapsed() - read).as_millis() as u64,
        "rows built"
    );
    Ok(out)
}

/// The rows of the `limit` newest synced requests, newest first: a first screenful, read
/// without reading every request (see [`Store::newest_rows`]).
pub async fn newest(store: &Store, tokens: &TokenList, limit: u32) -> Result<Vec<Row>, Problem> {
    let context = RowContext::load(store, tokens).await?;
    let cached = store.newest_rows(limit).await?;
    Ok(cached.iter().map(|c| context.row(c)).collect())
}

fn row(cached: &CachedRequest, context: &RowContext<'_>) -> Row {
    let (tokens, policy, now) = (context.tokens, &context.policy, context.now);
    let body = &cached.body;
    let chain_id = body["chainId"].as_u64().unwrap_or(0);
    let text = |v: &serde_json::Value| countersign_core::printable(v.as_str().unwrap_or("?"));
    let (verified, _) = approvals_of(cached);
    let parsed = body["transaction"].as_object().and_then(|o| SafeTxRequest::from_map(o).ok());
    let mut row = Row {
        id: countersign_core::printable(&cached.id),
        state: text(&body["state"]),
        chain_id,
        chain: chain_name(chain_id).map_or_else(|| format!("chain {chain_id}"), str::to_owned),
        safe: text(&body["countersign"]["safe"]),
        vault: None,
        nonce: text(&body["countersign"]["nonce"]),
        operation: "unreadable".to_owned(),
        asset: String::new(),
        amount: String::new(),
        destination: None,
        destination_label: None,
        created_at: body["createdAt"].as_i64().unwrap_or(0),
        approvals: verified.len(),
        approved_by: verified,
        threshold: None,
        marked: !marks_now(cached, now).is_empty(),
    };
    let Some(request) = parsed else { return row };
    let vault = context.vault(chain_id, &request.safe);
    row.vault = vault.and_then(|v| v.label.clone());
    row.threshold = vault.and_then(|v| v.threshold);
    let call = decode_call(request.safe, chain_id, &request.tx);
    let summary = summarize(&call, chain_id, tokens);
    row.operation = if call.operation == Operation::DELEGATECALL
        && !policy.trusts_delegatecall(chain_id, &call.target)
    {
        format!("untrusted delegatecall: {}", summary.operation)
    } else {
        summary.operation
    };
    row.asset = summary.asset;
    row.amount = summary.amount;
    row.destination_label = summary.destination.and_then(|d| context.labels.get(&d).cloned());
    row.destination = summary.destination.map(|d| checksummed(&d));
    row
}

struct Summary {
    operation: String,
    asset: String,
    amount: String,
    destination: Option<Address>,
}

fn summarize(call: &Call, chain_id: u64, tokens: &TokenList) -> Summary {
    let short = |amount: &Amount| match &amount.unit {
        Some((symbol, decimals)) => {
            (symbol.clone(), countersign_core::amount::format_units(amount.raw, *decimals))
        }
        None => ("unlisted token".to_owned(), format!("{} base units", amount.raw)),
    };
    if call.operation == Operation::DELEGATECALL && !matches!(call.action, Action::MultiSend { .. })
    {
        return Summary {
            operation: "delegatecall".to_owned(),
            asset: String::new(),
            amount: String::new(),
            destination: Some(call.target),
        };
    }
    match &call.action {
        Action::NoData if call.value > U256::ZERO => {
            let (asset, amount) = short(&Amount::native(chain_id, call.value));
            Summary {
                operation: "native transfer".into(),
                asset,
                amount,
                destination: Some(call.target),
            }
        }
        Action::NoData => Summary {
            operation: "empty call".into(),
            asset: String::new(),
            amount: String::new(),
            destination: Some(call.target),
        },
        Action::Erc20Transfer { to, amount } => {
            let (asset, amount) = short(&Amount::token(chain_id, &call.target, *amount, tokens));
            Summary { operation: "transfer".into(), asset, amount, destination: Some(*to) }
        }
        Action::Erc20TransferFrom { to, amount, .. } => {
            let (asset, amount) = short(&Amount::token(chain_id, &call.target, *amount, tokens));
            Summary { operation: "transferFrom".into(), asset, amount, destination: Some(*to) }
        }
        Action::Erc20Approve { spender, amount } => {
            let (asset, amount) = short(&Amount::token(chain_id, &call.target, *amount, tokens));
            Summary { operation: "approve".into(), asset, amount, destination: Some(*spender) }
        }
        Action::MultiSend { calls } => batch_summary(calls, chain_id, tokens),
        Action::SafeAdmin(op) => Summary {
            operation: format!("Safe settings: {}", op.kind().name()),
            asset: String::new(),
            amount: String::new(),
            destination: None,
        },
        Action::Raw { .. } => Summary {
            operation: "contract call".into(),
            asset: String::new(),
            amount: String::new(),
            destination: Some(call.target),
        },
    }
}

/// A batch: one asset and its total when every step is a transfer of the same asset (native
/// or one token), else "several assets".
fn batch_summary(calls: &[Call], chain_id: u64, tokens: &TokenList) -> Summary {
    let operation = format!("MultiSend ({} steps)", calls.len());
    let mut asset: Option<Option<Address>> = None;
    let mut total = U256::ZERO;
    let mut same = !calls.is_empty();
    for call in calls {
        let (this, amount) = match &call.action {
            Action::Erc20Transfer { amount, .. } if call.operation == Operation::CALL => {
                (Some(call.target), *amount)
            }
            Action::NoData if call.operation == Operation::CALL => (None, call.value),
            _ => {
                same = false;
                break;
            }
        };
        if asset.is_some_and(|a| a != this) {
            same = false;
            break;
        }
        asset = Some(this);
        total = total.saturating_add(amount);
    }
    match asset.filter(|_| same) {
        Some(token) => {
            let amount = match token {
                Some(token) => Amount::token(chain_id, &token, total, tokens),
                None => Amount::native(chain_id, total),
            };
            let (asset, amount) = short(&amount);
            Summary { operation, asset, amount, destination: None }
        }
        None => Summary {
            operation,
            asset: "several assets".into(),
            amount: String::new(),
            destination: None,
        },
    }
}

fn short(amount: &Amount) -> (String, String) {
    match &amount.unit {
        Some((symbol, decimals)) => {
            (symbol.clone(), countersign_core::amount::format_units(amount.raw, *decimals))
        }
        None => ("unlisted token".to_owned(), format!("{} base units", amount.raw)),
    }
}
