//! The queue's vault records beside the pinned ones. A record from the queue changes nothing
//! until the approver, having checked it out of band, pins it.

use countersign_core::address::{checksummed, parse_address};
use countersign_core::request::parse_uint;
use countersign_core::vault::VaultRecord;
use countersign_core::version::SafeVersion;
use countersign_store::{Store, StoreError};
use serde_json::{json, Value};

use crate::actions::stored_connection;
use crate::Problem;

/// A vault record as the queue lists it (`GET /v1/vaults`), read field by field.
pub fn from_queue(value: &Value) -> Result<VaultRecord, Problem> {
    let chain_id = value["chainId"]
        .as_u64()
        .ok_or_else(|| Problem::input("invalid_vault", "chainId: missing or not a number"))?;
    let address = parse_address("address", value["address"].as_str().unwrap_or_default())?.address;
    let version =
        SafeVersion::parse("safeVersion", value["safeVersion"].as_str().unwrap_or_default())?;
    let mut record = VaultRecord::new(chain_id, address, version);
    for (i, owner) in value["owners"].as_array().into_iter().flatten().enumerate() {
        record.owners.push(
            parse_address(&format!("owners[{i}]"), owner.as_str().unwrap_or_default())?.address,
        );
    }
    record.threshold = value["threshold"].as_u64().and_then(|t| u32::try_from(t).ok());
    record.next_nonce = parse_uint("nextNonce", &value["nextNonce"]).ok();
    Ok(record)
}

async fn queue_records(store: &Store) -> Result<Vec<VaultRecord>, Problem> {
    let session = stored_connection(store).await?.session().await?;
    let listed = session.get("/v1/vaults").await?;
    listed["vaults"].as_array().into_iter().flatten().map(from_queue).collect()
}

/// Every vault the queue lists, each with the pinned record when there is one and whether
/// the two agree.
pub async fn compare(store: &Store) -> Result<Vec<Value>, Problem> {
    let mut out = Vec::new();
    for theirs in queue_records(store).await? {
        let pinned = match store.vault(theirs.chain_id, &theirs.address).await {
            Ok(pinned) => Some(pinned),
            Err(StoreError::NotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        out.push(json!({
            "queue": theirs.to_json(),
            "pinned": pinned.as_ref().map(VaultRecord::to_json),
            "agrees": pinned.as_ref().map(|p| p.same_signers(&theirs)),
        }));
    }
    Ok(out)
}

/// Pins the queue's record of one vault, as the person saw it (`shown`): only if the queue's
/// record is still that one (the same version, owners and threshold), so that what is pinned
/// is what was checked. Added when none is pinned, replaced (and audited) when the pinned one
/// differs.
pub async fn pin(store: &Store, shown: &VaultRecord) -> Result<VaultRecord, Problem> {
    let (chain_id, address) = (shown.chain_id, shown.address);
    let theirs = queue_records(store)
        .await?
        .into_iter()
        .find(|r| r.chain_id == chain_id && r.address == address)
        .ok_or_else(|| {
            Problem::input(
                "unknown_vault",
                format!(
                    "address: the queue has no record of {} on chain {chain_id}",
                    checksummed(&address)
                ),
            )
        })?;
    if !theirs.same_signers(shown) {
        return Err(Problem::refused(
            "record_changed",
            "the queue's record of this vault is not the one shown: nothing was pinned; look at it again",
        ));
    }
    match store.vault(chain_id, &address).await {
        Ok(pinned) if pinned.same_signers(&theirs) => Ok(pinned),
        Ok(_) => {
            store.replace_vault(&theirs, "queue").await?;
            Ok(theirs)
        }
        Err(StoreError::NotFound { .. }) => {
            store.add_vault(&theirs).await?;
            Ok(theirs)
        }
        Err(error) => Err(error.into()),
    }
}
