//! Addresses as people type them, and as Countersign prints them (EIP-55).
//!
//! EIP-55 (ERC-55 §Specification): hash the lower-case hex digits without `0x` with
//! Keccak-256; a letter is upper case exactly when the hash nibble at its position is 8 or more.

use alloy_primitives::Address;

use crate::InputError;

/// Whether the case of an address as written proved its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The letters' case matched the EIP-55 form.
    Verified,
    /// All lower or all upper case that does not match EIP-55: the case carried no checksum.
    Unverified,
}

/// An address and what its written form proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedAddress {
    pub address: Address,
    pub checksum: Checksum,
}

/// Parses `0x` and 40 hex digits.
///
/// Mixed case must match EIP-55 exactly, or it is an error. All-lower and all-upper input that
/// does not match is accepted as [`Checksum::Unverified`].
pub fn parse_address(field: &str, text: &str) -> Result<ParsedAddress, InputError> {
    let Some(digits) = text.strip_prefix("0x") else {
        return Err(InputError::new(field, "an address must start with 0x"));
    };
    if digits.len() != 40 {
        let problem = format!("an address has 40 hex digits after 0x, this has {}", digits.len());
        return Err(InputError::new(field, problem));
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InputError::new(field, "an address may only contain hex digits after 0x"));
    }

    let mut raw = [0u8; 20];
    hex_decode_into(digits, &mut raw);
    let address = Address::from(raw);

    if address.to_checksum(None) == text {
        return Ok(ParsedAddress { address, checksum: Checksum::Verified });
    }
    let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        return Err(InputError::new(field, "mixed-case address fails its EIP-55 checksum"));
    }
    Ok(ParsedAddress { address, checksum: Checksum::Unverified })
}

/// The EIP-55 form of an address.
pub fn checksummed(address: &Address) -> String {
    address.to_checksum(None)
}

fn hex_decode_into(digits: &str, out: &mut [u8; 20]) {
    for (slot, pair) in out.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
        *slot = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
}

fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lower_that_matches_is_verified() {
        let parsed = parse_address("to", "0xde709f2102306220921060314715629080e2fb77");
        assert_eq!(parsed.map(|p| p.checksum), Ok(Checksum::Verified));
    }

    #[test]
    fn all_lower_that_does_not_match_is_unverified() {
        let parsed = parse_address("to", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed");
        assert_eq!(parsed.map(|p| p.checksum), Ok(Checksum::Unverified));
    }

    #[test]
    fn fail_mixed_case_mismatch() {
        let error = parse_address("to", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD");
        assert_eq!(error.map_err(|e| e.field), Err("to".to_owned()));
    }

    #[test]
    fn fail_shape() {
        assert!(parse_address("to", "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
        assert!(parse_address("to", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA").is_err());
        assert!(parse_address("to", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg").is_err());
        assert!(parse_address("to", "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
    }
}
