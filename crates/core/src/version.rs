//! Safe contract versions and the hashing rules that depend on them.

use std::fmt;

use crate::InputError;

/// The released Safe versions Countersign knows how to hash for.
///
/// Source: the version folders of `@safe-global/safe-deployments` and the Safe contracts'
/// release tags. An unknown version is refused rather than guessed, because the domain and the
/// struct type both changed between versions.
const KNOWN: [(u16, u16, u16); 9] = [
    (0, 1, 0),
    (1, 0, 0),
    (1, 1, 0),
    (1, 1, 1),
    (1, 2, 0),
    (1, 3, 0),
    (1, 4, 0),
    (1, 4, 1),
    (1, 5, 0),
];

/// A Safe contract version, as pinned in a vault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeVersion {
    major: u16,
    minor: u16,
    patch: u16,
}

impl SafeVersion {
    pub const V1_0_0: Self = Self { major: 1, minor: 0, patch: 0 };
    pub const V1_3_0: Self = Self { major: 1, minor: 3, patch: 0 };
    pub const V1_5_0: Self = Self { major: 1, minor: 5, patch: 0 };

    /// Parses `X.Y.Z` and accepts only a released version.
    pub fn parse(field: &str, text: &str) -> Result<Self, InputError> {
        let parts: Vec<&str> = text.split('.').collect();
        let numbers: Option<Vec<u16>> = parts.iter().map(|p| parse_component(p)).collect();
        let version = match numbers.as_deref() {
            Some([major, minor, patch]) => Self { major: *major, minor: *minor, patch: *patch },
            _ => return Err(InputError::new(field, "a Safe version is written X.Y.Z, like 1.3.0")),
        };
        if !KNOWN.contains(&(version.major, version.minor, version.patch)) {
            let known: Vec<String> = KNOWN.iter().map(|(a, b, c)| format!("{a}.{b}.{c}")).collect();
            let problem = format!("unknown Safe version {text}; known: {}", known.join(", "));
            return Err(InputError::new(field, problem));
        }
        Ok(version)
    }

    /// From 1.3.0 the EIP-712 domain includes the chain id.
    pub fn domain_has_chain_id(self) -> bool {
        self >= Self::V1_3_0
    }

    /// Before 1.0.0 the `SafeTx` struct named its `baseGas` field `dataGas`.
    pub fn names_data_gas(self) -> bool {
        self < Self::V1_0_0
    }

    /// Up to 1.2.0 the Safe could change its own master copy with `changeMasterCopy`.
    pub fn has_change_master_copy(self) -> bool {
        self < Self::V1_3_0
    }

    /// From 1.5.0 the Safe has a separate guard for module transactions.
    pub fn has_module_guard(self) -> bool {
        self >= Self::V1_5_0
    }
}

impl fmt::Display for SafeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn parse_component(text: &str) -> Option<u16> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.is_empty());
    if !canonical || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_by_version() {
        let v = |s| SafeVersion::parse("v", s).map_err(|e| e.to_string());
        assert_eq!(
            v("0.1.0").map(|v| (v.names_data_gas(), v.domain_has_chain_id())),
            Ok((true, false))
        );
        assert_eq!(
            v("1.2.0").map(|v| (v.names_data_gas(), v.domain_has_chain_id())),
            Ok((false, false))
        );
        assert_eq!(
            v("1.3.0").map(|v| (v.names_data_gas(), v.domain_has_chain_id())),
            Ok((false, true))
        );
        assert_eq!(v("1.4.1").map(|v| v.domain_has_chain_id()), Ok(true));
    }

    #[test]
    fn fail_unknown_or_malformed() {
        for text in ["1.3", "1.3.0.1", "2.0.0", "01.3.0", "1.3.x", "", "v1.3.0"] {
            assert!(SafeVersion::parse("safeVersion", text).is_err(), "{text}");
        }
    }
}
