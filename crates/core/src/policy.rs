//! The approver's local policy: what this approver refuses to sign, whatever the queue says.
//!
//! A policy file is JSON the approver controls:
//!
//! ```json
//! {
//!   "trustedDelegatecallTargets": { "1": ["0x40A2aCCbd92BCA938b02010E17A5b8929b49130D"] },
//!   "includeOfficialMultiSendCallOnly": true,
//!   "allowedAdminOperations": ["changeThreshold"],
//!   "allowGasRefunds": false,
//!   "maxNonceAhead": 20
//! }
//! ```
//!
//! Every field is optional; a missing one takes the strict default shown in [`Policy::default`].

use std::collections::{BTreeMap, BTreeSet};

use alloy_primitives::Address;
use serde::Deserialize;
use serde_json::Value;

use crate::address::{checksummed, parse_address};
use crate::decode::AdminKind;
use crate::version::SafeVersion;
use crate::InputError;

const DEPLOYMENTS: &str = include_str!("../data/multisend_deployments.json");

/// Policy files larger than this are refused.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// The rules the guards enforce on top of the vault record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Delegatecall targets the approver trusts, per chain, besides the official ones.
    pub trusted_delegatecall_targets: BTreeMap<u64, BTreeSet<Address>>,
    /// Whether the official MultiSendCallOnly deployments count as trusted.
    pub include_official_multisend_call_only: bool,
    /// Safe administration this approver may sign.
    pub allowed_admin_operations: BTreeSet<AdminKind>,
    /// Whether a non-zero gasPrice (a gas refund paid by the Safe) may be signed.
    pub allow_gas_refunds: bool,
    /// How far above the vault's next nonce a request may be signed.
    pub max_nonce_ahead: u64,
}

impl Default for Policy {
    /// Strict: only the official MultiSendCallOnly may be delegatecalled, no administration,
    /// no gas refunds, at most 20 nonces ahead.
    fn default() -> Self {
        Self {
            trusted_delegatecall_targets: BTreeMap::new(),
            include_official_multisend_call_only: true,
            allowed_admin_operations: BTreeSet::new(),
            allow_gas_refunds: false,
            max_nonce_ahead: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    trusted_delegatecall_targets: BTreeMap<String, Vec<String>>,
    include_official_multi_send_call_only: Option<bool>,
    #[serde(default)]
    allowed_admin_operations: Vec<String>,
    allow_gas_refunds: Option<bool>,
    max_nonce_ahead: Option<Value>,
}

impl Policy {
    /// Parses a policy file, naming the field in every error.
    pub fn from_json(input: &[u8]) -> Result<Self, InputError> {
        if input.len() > MAX_POLICY_BYTES {
            return Err(InputError::new("policy", "is larger than 256 KiB"));
        }
        let file: PolicyFile = serde_json::from_slice(input)
            .map_err(|e| InputError::new("policy", format!("not a valid policy file: {e}")))?;
        let defaults = Self::default();
        Ok(Self {
            trusted_delegatecall_targets: parse_targets(&file.trusted_delegatecall_targets)?,
            include_official_multisend_call_only: file
                .include_official_multi_send_call_only
                .unwrap_or(defaults.include_official_multisend_call_only),
            allowed_admin_operations: parse_admin(&file.allowed_admin_operations)?,
            allow_gas_refunds: file.allow_gas_refunds.unwrap_or(defaults.allow_gas_refunds),
            max_nonce_ahead: match file.max_nonce_ahead {
                None => defaults.max_nonce_ahead,
                Some(value) => parse_depth(&value)?,
            },
        })
    }

    /// The policy as a policy file, in a stable form (for the store and for `policy show`).
    pub fn to_json(&self) -> String {
        let targets: BTreeMap<String, Vec<String>> = self
            .trusted_delegatecall_targets
            .iter()
            .map(|(chain, set)| (chain.to_string(), set.iter().map(checksummed).collect()))
            .collect();
        let admin: Vec<&str> = self.allowed_admin_operations.iter().map(|k| k.name()).collect();
        let value = serde_json::json!({
            "trustedDelegatecallTargets": targets,
            "includeOfficialMultiSendCallOnly": self.include_official_multisend_call_only,
            "allowedAdminOperations": admin,
            "allowGasRefunds": self.allow_gas_refunds,
            "maxNonceAhead": self.max_nonce_ahead,
        });
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// Whether `target` may be delegatecalled on `chain_id`.
    pub fn trusts_delegatecall(&self, chain_id: u64, target: &Address) -> bool {
        let listed = self
            .trusted_delegatecall_targets
            .get(&chain_id)
            .is_some_and(|set| set.contains(target));
        listed || (self.include_official_multisend_call_only && is_official(chain_id, target))
    }
}

fn parse_targets(
    raw: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<u64, BTreeSet<Address>>, InputError> {
    let mut out = BTreeMap::new();
    for (chain, addresses) in raw {
        let field = format!("trustedDelegatecallTargets.{chain}");
        let chain_id: u64 = chain
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| InputError::new(&field, "the key must be a chain id like \"1\""))?;
        let mut set = BTreeSet::new();
        for (index, text) in addresses.iter().enumerate() {
            set.insert(parse_address(&format!("{field}[{index}]"), text)?.address);
        }
        out.insert(chain_id, set);
    }
    Ok(out)
}

fn parse_admin(raw: &[String]) -> Result<BTreeSet<AdminKind>, InputError> {
    raw.iter()
        .enumerate()
        .map(|(index, name)| {
            AdminKind::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = AdminKind::ALL.iter().map(|k| k.name()).collect();
                let problem = format!("unknown operation {name:?}; known: {}", known.join(", "));
                InputError::new(format!("allowedAdminOperations[{index}]"), problem)
            })
        })
        .collect()
}

fn parse_depth(value: &Value) -> Result<u64, InputError> {
    value
        .as_u64()
        .filter(|d| *d <= 1000)
        .ok_or_else(|| InputError::new("maxNonceAhead", "must be an integer from 0 to 1000"))
}

#[derive(Deserialize)]
struct DeploymentsFile {
    deployments: Vec<Deployment>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Deployment {
    contract: String,
    version: String,
    chain_id: u64,
    addresses: Vec<Address>,
}

/// (is MultiSendCallOnly, chain id) → deployed addresses with their Safe release.
type DeploymentTable = BTreeMap<(bool, u64), Vec<(Address, SafeVersion)>>;

/// The table from the shipped extract of `@safe-global/safe-deployments`.
fn deployments() -> &'static DeploymentTable {
    static TABLE: std::sync::OnceLock<DeploymentTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let file: DeploymentsFile =
            serde_json::from_str(DEPLOYMENTS).unwrap_or(DeploymentsFile { deployments: vec![] });
        let mut table = DeploymentTable::new();
        for entry in file.deployments {
            let Ok(version) = SafeVersion::parse("version", &entry.version) else {
                continue;
            };
            let call_only = entry.contract == "MultiSendCallOnly";
            let slot = table.entry((call_only, entry.chain_id)).or_default();
            slot.extend(entry.addresses.into_iter().map(|a| (a, version)));
        }
        table
    })
}

/// Whether `target` is an official MultiSendCallOnly deployment on `chain_id`.
pub fn is_official(chain_id: u64, target: &Address) -> bool {
    deployments().get(&(true, chain_id)).is_some_and(|list| list.iter().any(|(a, _)| a == target))
}

/// The official MultiSendCallOnly deployments on `chain_id`.
pub fn official_call_only(chain_id: u64) -> BTreeSet<Address> {
    deployments()
        .get(&(true, chain_id))
        .map(|list| list.iter().map(|(a, _)| *a).collect())
        .unwrap_or_default()
}

/// The Safe release of an official MultiSend or MultiSendCallOnly deployment, if `target` is one.
pub fn multisend_version(chain_id: u64, target: &Address) -> Option<SafeVersion> {
    [true, false].into_iter().find_map(|call_only| {
        deployments()
            .get(&(call_only, chain_id))?
            .iter()
            .find(|(a, _)| a == target)
            .map(|(_, v)| *v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    #[test]
    fn official_deployments_are_known() {
        let v130 = address!("40A2aCCbd92BCA938b02010E17A5b8929b49130D");
        let v141 = address!("9641d764fc13c8B624c04430C7356C1C7C8102e2");
        assert!(is_official(1, &v130) && is_official(1, &v141) && is_official(42161, &v141));
        assert!(!is_official(1, &Address::ZERO));
        assert!(Policy::default().trusts_delegatecall(8453, &v141));
        let multisend_130 = address!("A238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761");
        assert!(
            !is_official(1, &multisend_130),
            "MultiSend (not CallOnly) is not trusted by default"
        );
        assert_eq!(
            multisend_version(1, &multisend_130).map(|v| v.to_string()),
            Some("1.3.0".into())
        );
        let call_only_150 = address!("A83c336B20401Af773B6219BA5027174338D1836");
        assert_eq!(
            multisend_version(1, &call_only_150).map(|v| v.to_string()),
            Some("1.5.0".into())
        );
    }

    #[test]
    fn round_trip() {
        let text = br#"{"trustedDelegatecallTargets":{"1":["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"]},
            "allowedAdminOperations":["changeThreshold"],"allowGasRefunds":true,"maxNonceAhead":5}"#;
        let policy = Policy::from_json(text).map_err(|e| e.to_string());
        let again = policy
            .clone()
            .and_then(|p| Policy::from_json(p.to_json().as_bytes()).map_err(|e| e.to_string()));
        assert_eq!(policy, again);
        assert_eq!(policy.map(|p| p.max_nonce_ahead), Ok(5));
    }

    #[test]
    fn fail_fields_are_named() {
        let field = |text: &str| Policy::from_json(text.as_bytes()).err().map(|e| e.field);
        assert_eq!(
            field(r#"{"allowedAdminOperations":["selfDestruct"]}"#),
            Some("allowedAdminOperations[0]".into())
        );
        assert_eq!(field(r#"{"maxNonceAhead":-1}"#), Some("maxNonceAhead".into()));
        assert_eq!(
            field(r#"{"trustedDelegatecallTargets":{"x":[]}}"#),
            Some("trustedDelegatecallTargets.x".into())
        );
        assert_eq!(field(r#"{"colour":"red"}"#), Some("policy".into()));
    }
}
