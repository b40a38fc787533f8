use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Currency, CustomerId, FieldError, Money, OrderId, OrderStatus, ProductId, Quantity};

/// Most lines one order request may send, counted before lines of one product are merged.
pub const MAX_ORDER_LINES: usize = 50;

/// The lines of a new order: 1–50 as sent, merged per product, each merged quantity still
/// within [`Quantity::MAX`], held in product-id order — the order in which stock rows are
/// locked, so crossing orders never deadlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLines(Vec<(ProductId, Quantity)>);

impl OrderLines {
    /// `field` names the request field the lines came from, for errors.
    pub fn merge(sent: Vec<(ProductId, Quantity)>, field: &str) -> Result<Self, FieldError> {
        if sent.is_empty() || sent.len() > MAX_ORDER_LINES {
            return Err(FieldError::new(field, "must have 1 to 50 lines"));
        }
        let mut merged: BTreeMap<ProductId, Quantity> = BTreeMap::new();
        for (product_id, quantity) in sent {
            match merged.get(&product_id) {
                None => {
                    merged.insert(product_id, quantity);
                }
                Some(held) => {
                    let sum = held.checked_add(quantity).ok_or_else(|| {
                        FieldError::new(
                            field,
                            format!("lines for product {product_id} add up to more than 10000"),
                        )
                    })?;
                    merged.insert(product_id, sum);
                }
            }
        }
        Ok(Self(merged.into_iter().collect()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (ProductId, Quantity)> + '_ {
        self.0.iter().copied()
    }

    /// The line of a one-line order.
    pub fn single(&self) -> Option<(ProductId, Quantity)> {
        match self.0.as_slice() {
            [line] => Some(*line),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One line of a placed order, with the unit price snapshotted when it was placed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub unit_price: Money,
    pub line_total: Money,
}

impl OrderLine {
    pub fn new(product_id: ProductId, quantity: Quantity, unit_price: Money) -> Self {
        Self {
            product_id,
            quantity,
            unit_price,
            line_total: unit_price.times(quantity),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusChange {
    pub status: OrderStatus,
    pub at: DateTime<Utc>,
    /// The `sub` of whoever asked for the change, or [`super::SYSTEM`] for the processor.
    pub by: String,
}

/// A placed order as clients see it. `total` is always the sum of the line totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: OrderId,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub total: Money,
    pub currency: Currency,
    pub customer_id: Option<CustomerId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status_history: Vec<StatusChange>,
}

impl Order {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: OrderId,
        status: OrderStatus,
        items: Vec<OrderLine>,
        currency: Currency,
        customer_id: Option<CustomerId>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        status_history: Vec<StatusChange>,
    ) -> Self {
        let total = items.iter().map(|line| line.line_total).sum();
        Self {
            id,
            status,
            items,
            total,
            currency,
            customer_id,
            created_at,
            updated_at,
            status_history,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: i64) -> Quantity {
        Quantity::try_from(n).unwrap()
    }

    #[test]
    fn lines_for_one_product_are_merged_and_sorted_by_product() {
        let (a, b) = (ProductId::generate(), ProductId::generate());
        let lines = OrderLines::merge(vec![(b, q(1)), (a, q(2)), (b, q(3))], "items").unwrap();
        assert_eq!(lines.iter().collect::<Vec<_>>(), vec![(a, q(2)), (b, q(4))]);
    }

    #[test]
    fn merged_quantities_keep_the_bound() {
        let a = ProductId::generate();
        assert!(OrderLines::merge(vec![(a, q(6000)), (a, q(5000))], "items").is_err());
    }

    #[test]
    fn line_count_is_checked_before_merging() {
        let a = ProductId::generate();
        assert!(OrderLines::merge(vec![(a, q(1)); 51], "items").is_err());
        assert!(OrderLines::merge(vec![], "items").is_err());
    }
}
