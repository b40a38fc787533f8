//! PostgreSQL access: one function per use case, each one transaction (or one atomic
//! statement). Functions take a pool or a client so tests and handlers call them alike.

mod health;
mod orders;
mod outbox;
mod page;
mod processing;
mod products;
mod sql;

pub use health::{backlog, check_stock, Backlog, StockCheck, StockDrift};
pub use orders::{
    create_order, explain_list_orders, get_order, list_orders, update_order_status,
    CreateOrderOutcome, NewOrder, OrderFilter, OrderIdempotency,
};
pub use outbox::{
    lock_unpublished, mark_published, prune_published, purge_idempotency_keys,
    reannounce_unsettled, record_publish_failures, unpublished_count,
};
pub use outbox::{mark_published_with, SentMessages, Written};
pub use page::{Listing, Page, PageRequest, Position};
pub use processing::{
    apply_order_commands, count_delivery, forget_delivery, prune_delivery_counts, BatchOutcomes,
    CommandOutcome, OrderCommand,
};
pub use products::{
    adjust_inventory, create_product, get_product, list_products, list_stock_movements,
    update_product, NewProduct, ProductPatch, StockMovement, StockMovementDelta,
};
pub(crate) use sql::sessions_are_multiplexed;
pub use sql::ClientLike;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::domain::{OrderStatus, ProductId};

/// Stock an order or adjustment asked for that is not there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shortage {
    pub product_id: ProductId,
    pub requested: i64,
    pub available: i64,
}

/// An order line beyond its product's `maxPerCustomer`: `held` units of it are in the
/// customer's orders that are not cancelled or rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub product_id: ProductId,
    pub limit: i32,
    pub held: i32,
}

/// Everything a store function can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("not found")]
    NotFound,
    #[error("unknown products")]
    UnknownProducts(Vec<ProductId>),
    #[error("products priced in different currencies")]
    MixedCurrencies,
    #[error("insufficient stock")]
    InsufficientStock(Vec<Shortage>),
    #[error("the customer's limit for a product would be exceeded")]
    LimitExceeded(LimitExceeded),
    #[error("a product with this sku exists")]
    DuplicateSku,
    #[error("an order cannot go from {from} to {to}")]
    InvalidTransition {
        from: OrderStatus,
        to: OrderStatus,
        allowed: Vec<OrderStatus>,
    },
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReuse,
    #[error("a request with this idempotency key is still being handled")]
    RequestInProgress,
    #[error("unexpected database error")]
    Database(#[source] tokio_postgres::Error),
    #[error("stored data does not parse: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A lost or refused connection is the database being away (503, retry); anything else
/// from PostgreSQL is a bug of ours (500).
impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Refused credentials mean a rotation in progress (the pool reads them again):
        // like a database that is away, it passes.
        if is_connection_failure(&error) || is_timeout(&error) || is_refused_credentials(&error) {
            StoreError::Unavailable(Box::new(error))
        } else {
            StoreError::Database(error)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}

/// The database refused the credentials (`28P01`, `28000`): during a rotation, until the
/// new ones are read.
pub(crate) fn is_refused_credentials(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

/// A statement or lock wait that ran out of its bound (the session's `statement_timeout`
/// or `lock_timeout`): PostgreSQL undid the transaction, and a retry may well succeed.
fn is_timeout(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE
    })
}

fn is_connection_failure(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("57P")
            || code == SqlState::TOO_MANY_CONNECTIONS.code()
            || code == SqlState::READ_ONLY_SQL_TRANSACTION.code();
    }
    // tokio-postgres has no public error kind: connect, I/O and TLS failures carry an I/O
    // or TLS source, a connect timeout only its message.
    use std::error::Error as _;
    error.source().is_some_and(|s| s.is::<std::io::Error>())
        || matches!(
            error.to_string().as_str(),
            "timeout waiting for server"
                | "error performing TLS handshake"
                | "error connecting to server"
        )
}

fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {value}"))
}
