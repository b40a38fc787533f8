//! Domain values. Each type can only be built by parsing, so a value in hand is valid.

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
