use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Currency, Description, Money, ProductId, ProductName, Sku};

/// A product with its stock. The database keeps `0 <= reserved <= inventory`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: ProductId,
    pub sku: Option<Sku>,
    pub name: ProductName,
    pub description: Option<Description>,
    pub price: Money,
    pub currency: Currency,
    /// Stock on hand.
    pub inventory: i64,
    /// Held by open orders.
    pub reserved: i64,
    pub available: i64,
    pub stock_buckets: StockBuckets,
    pub max_per_customer: Option<PerCustomerLimit>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

bounded_count! {
    /// How many independently locked parts a product's stock is spread over (API.md, "Flash
    /// sales"): 1–64.
    StockBuckets(u8), max = 64, rule = "must be an integer between 1 and 64"
}

impl StockBuckets {
    pub const ONE: StockBuckets = StockBuckets(1);
}

bounded_count! {
    /// The most units of one product a customer may hold in orders that are not cancelled
    /// or rejected (`maxPerCustomer`): 1–10,000.
    PerCustomerLimit(u16), max = 10_000, rule = "must be null or an integer between 1 and 10000"
}

/// A non-zero change of stock on hand, as an inventory adjustment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockDelta(i64);

impl StockDelta {
    /// Bounded so that `inventory + delta` can never overflow the column.
    pub const LIMIT: i64 = 1_000_000_000;

    pub fn parse_number(literal: &str) -> Result<Self, &'static str> {
        const RULE: &str = "must be a non-zero integer between -1000000000 and 1000000000";
        let value: i64 = literal.parse().map_err(|_| RULE)?;
        // A range, not `abs()`: the most negative i64 has no absolute value.
        if value == 0 || !(-Self::LIMIT..=Self::LIMIT).contains(&value) {
            return Err(RULE);
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_and_limits_are_bounded() {
        for bad in ["0", "65", "-1", "1.5", "99999999999999999999"] {
            assert!(StockBuckets::parse_number(bad).is_err(), "{bad}");
        }
        assert_eq!(StockBuckets::parse_number("64").unwrap().get(), 64);
        for bad in ["0", "10001", "-3", "2e3"] {
            assert!(PerCustomerLimit::parse_number(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PerCustomerLimit::parse_number("10000").unwrap().get(),
            10_000
        );
    }

    #[test]
    fn deltas_are_bounded_at_both_ends_of_i64() {
        for bad in [
            "0",
            "-9223372036854775808",
            "9223372036854775807",
            "1000000001",
        ] {
            assert!(StockDelta::parse_number(bad).is_err(), "{bad}");
        }
        assert_eq!(
            StockDelta::parse_number("-1000000000").unwrap().get(),
            -1_000_000_000
        );
    }
}
