//! Exact integers shown in human units, without rounding.

use alloy_primitives::U256;

/// `amount / 10^decimals`, written out exactly: trailing fractional zeros dropped, no rounding.
///
/// `decimals` above 77 cannot occur for a U256 amount with a meaningful unit and is treated as
/// the raw integer; the token list refuses such entries before they get here.
pub fn format_units(amount: U256, decimals: u8) -> String {
    let digits = amount.to_string();
    let decimals = usize::from(decimals);
    if decimals == 0 || decimals > 77 {
        return digits;
    }
    let padded = if digits.len() <= decimals {
        format!("{}{}", "0".repeat(decimals + 1 - digits.len()), digits)
    } else {
        digits
    };
    let (whole, fraction) = padded.split_at(padded.len() - decimals);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_units() {
        assert_eq!(format_units(U256::from(100_000_000_000_000_000u64), 18), "0.1");
        assert_eq!(format_units(U256::from(1_500_000u64), 6), "1.5");
        assert_eq!(format_units(U256::from(1u64), 6), "0.000001");
        assert_eq!(format_units(U256::ZERO, 18), "0");
        assert_eq!(format_units(U256::from(12u64), 0), "12");
        assert_eq!(format_units(U256::from(10u64).pow(U256::from(24u64)), 24), "1");
        assert_eq!(
            format_units(U256::MAX, 18),
            "115792089237316195423570985008687907853269984665640564039457.584007913129639935"
        );
    }
}
