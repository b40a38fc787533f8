use std::fmt;
use std::iter::Sum;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

use super::Quantity;

/// An exact, non-negative amount with at most two fractional digits.
///
/// Prices are bounded by [`Money::MAX_PRICE`]; totals are sums of bounded prices and
/// may exceed it, which the `numeric(20,2)` columns hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Money(Decimal);

impl Money {
    pub const MAX_PRICE: Decimal = Decimal::from_parts(1_215_752_191, 23, 0, false, 2); // 999999999.99

    /// Parses a price from the exact text the client sent (a JSON number's literal or a
    /// string), never through a float.
    pub fn parse_price(text: &str) -> Result<Self, &'static str> {
        const RULE: &str =
            "must be a decimal between 0 and 999999999.99 with at most 2 fractional digits";
        let text = text.trim();
        let parsed = if text.contains(['e', 'E']) {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        };
        let value = parsed.map_err(|_| RULE)?.normalize();
        if value.is_sign_negative() && !value.is_zero()
            || value.scale() > 2
            || value > Self::MAX_PRICE
        {
            return Err(RULE);
        }
        Ok(Self::from_decimal_unchecked(value))
    }

    /// Wraps a value read back from a `numeric(_, 2)` column, which the schema keeps
    /// non-negative.
    pub fn from_db(value: Decimal) -> Self {
        Self::from_decimal_unchecked(value)
    }

    fn from_decimal_unchecked(mut value: Decimal) -> Self {
        value.rescale(2);
        Self(value)
    }

    pub fn times(self, quantity: Quantity) -> Money {
        Self::from_decimal_unchecked(self.0 * Decimal::from(quantity.get()))
    }

    pub fn as_decimal(self) -> Decimal {
        self.0
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Self::from_decimal_unchecked(iter.map(|m| m.0).sum())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Money {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_price(s)
    }
}

/// Money goes out as a decimal string (`"19.90"`) so no client parses it as a float.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_parsed_exactly_and_rendered_with_two_decimals() {
        assert_eq!(Money::parse_price("19.99").unwrap().to_string(), "19.99");
        assert_eq!(Money::parse_price("5").unwrap().to_string(), "5.00");
        assert_eq!(Money::parse_price("0.10").unwrap().to_string(), "0.10");
        assert_eq!(Money::parse_price("1.5e1").unwrap().to_string(), "15.00");
        assert_eq!(
            Money::parse_price("999999999.99").unwrap().to_string(),
            "999999999.99"
        );
    }

    #[test]
    fn prices_out_of_rule_are_refused() {
        for bad in ["-1", "1.234", "1000000000", "abc", "", "NaN", "1e400"] {
            assert!(Money::parse_price(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn line_totals_are_exact() {
        let price = Money::parse_price("0.10").unwrap();
        let q = Quantity::parse_number("3").unwrap();
        assert_eq!(price.times(q).to_string(), "0.30");
    }
}
