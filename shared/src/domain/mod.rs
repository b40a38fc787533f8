//! Domain values. Each type can only be built by parsing, so a value in hand is valid.

/// A whole number in `1..=MAX` that a JSON field gives: parsed from the number's literal
/// or an `i64`, refused with the rule API.md states for the field.
macro_rules! bounded_count {
    ($(#[$doc:meta])* $name:ident($repr:ty), max = $max:expr, rule = $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        pub struct $name($repr);

        impl $name {
            pub const MAX: $repr = $max;
            const RULE: &'static str = $rule;

            /// Parses the literal of a JSON number.
            pub fn parse_number(literal: &str) -> Result<Self, &'static str> {
                let value: i64 = literal.parse().map_err(|_| Self::RULE)?;
                Self::try_from(value)
            }

            pub fn get(self) -> $repr {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = &'static str;
            fn try_from(value: i64) -> Result<Self, Self::Error> {
                if (1..=i64::from(Self::MAX)).contains(&value) {
                    Ok(Self(value as $repr))
                } else {
                    Err(Self::RULE)
                }
            }
        }
    };
}

mod caller;
mod currency;
mod event;
mod ids;
mod money;
mod order;
mod product;
mod quantity;
mod status;
mod text;

pub use caller::{scopes_in_claim, Caller, CallerError, Staff, STAFF_SCOPE, SYSTEM};
pub use currency::Currency;
pub use event::{EventType, OrderEvent};
pub use ids::{OrderId, ProductId};
pub use money::Money;
pub use order::{Order, OrderLine, OrderLines, StatusChange, MAX_ORDER_LINES};
pub use product::{PerCustomerLimit, Product, StockBuckets, StockDelta};
pub use quantity::Quantity;
pub use status::{Actor, OrderStatus, StockEffect};
pub use text::{AdjustmentReason, CustomerId, Description, IdempotencyKey, ProductName, Sku};

/// A rule broken by one field of a request; `field` is the JSON path the client sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
