use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use deadpool_postgres::{GenericClient, Pool};
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::outbox::mark_sent;
use super::{corrupt, prepared, Listing, Page, PageRequest, SentMessages, Shortage, StoreError};
use crate::domain::{
    Actor, Currency, CustomerId, IdempotencyKey, Money, Order, OrderId, OrderLine, OrderLines,
    OrderStatus, ProductId, Quantity, StatusChange,
};
use crate::messaging::OrderEvent;

/// An order as `POST /orders` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub lines: OrderLines,
    pub customer_id: Option<CustomerId>,
}

impl NewOrder {
    /// The canonical form of the request: two requests that mean the same order (lines in
    /// another order, split lines of one product) have the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for (product, quantity) in self.lines.iter() {
            text.push_str(&format!("{product}x{};", quantity.get()));
        }
        if let Some(customer) = &self.customer_id {
            text.push_str("customer=");
            text.push_str(customer.as_str());
        }
        text
    }
}

/// The `Idempotency-Key` of a creation, bound to the request it was first used with.
#[derive(Debug, Clone)]
pub struct OrderIdempotency {
    pub key: IdempotencyKey,
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub enum CreateOrderOutcome {
    /// A new order; `body` is its 201 response, stored with the key; `event` is in the outbox.
    Created {
        order: Box<Order>,
        body: String,
        event: OrderEvent,
    },
    /// The key was used before for the same request: the first response, verbatim.
    Replayed { order_id: OrderId, body: String },
}

/// Wait this long for another request with the same idempotency key before answering 409
/// request-in-progress; a creation takes milliseconds, so a longer wait means it is stuck.
const IDEMPOTENCY_WAIT: &str = "SET LOCAL lock_timeout = '3s'";

/// Places an order: reserves stock for every line or for none, snapshots unit prices,
/// writes the order, its history, ledger and outbox rows, and the idempotency record, all
/// in one transaction. `sent` is marked in the same transaction when it creates the order
/// (not on a replay or an error).
///
/// The products are read without a lock, then locked (in id order, so crossing orders wait
/// instead of deadlocking) by the one statement that writes everything, and the commit
/// follows at once: a hot product's row lock is held for one statement and the commit,
/// never across a round trip to this function. That statement reserves a line only if the
/// stock is still there and the price is still the one read; if any line is not reserved it
/// is rolled back and the order tried again on fresh figures.
pub async fn create_order(
    pool: &Pool,
    new: &NewOrder,
    idempotency: Option<&OrderIdempotency>,
    correlation_id: &str,
    sent: &SentMessages,
) -> Result<CreateOrderOutcome, StoreError> {
    let mut client = pool.get().await?;
    // A retry follows a change that committed in between (stock taken, price changed). The
    // last attempt reads under the lock, as the whole order must be decided by then.
    for attempt in 1..=CREATE_ATTEMPTS {
        let read = if attempt == CREATE_ATTEMPTS {
            Read::Locked
        } else {
            Read::Unlocked
        };
        if let Some(outcome) =
            try_create_order(&mut client, new, idempotency, correlation_id, sent, read).await?
        {
            return Ok(outcome);
        }
    }
    Err(corrupt(
        "order",
        "lines read under lock could not be reserved",
    ))
}

const CREATE_ATTEMPTS: usize = 4;

/// How an attempt reads the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// No lock until the write statement.
    Unlocked,
    /// Locked in id order while read: nothing can change before the write.
    Locked,
}

/// One attempt; `None` when the stock or a price changed between the read and the lock.
async fn try_create_order(
    client: &mut deadpool_postgres::Client,
    new: &NewOrder,
    idempotency: Option<&OrderIdempotency>,
    correlation_id: &str,
    sent: &SentMessages,
    read: Read,
) -> Result<Option<CreateOrderOutcome>, StoreError> {
    let tx = client.transaction().await?;

    if let Some(idem) = idempotency {
        // One key at a time: a concurrent duplicate waits here and then replays the
        // committed response, so it can never reserve a second time.
        tx.batch_execute(IDEMPOTENCY_WAIT).await?;
        let lock = prepared(
            &tx,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7001))",
        )
        .await?;
        if let Err(e) = tx.execute(&lock, &[&idem.key.as_str()]).await {
            return Err(match e.code() {
                Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => {
                    StoreError::RequestInProgress
                }
                _ => e.into(),
            });
        }
        let lookup = prepared(
            &tx,
            "SELECT fingerprint, order_id, response_body FROM idempotency_keys WHERE key = $1",
        )
        .await?;
        let stored = tx.query_opt(&lookup, &[&idem.key.as_str()]).await?;
        if let Some(row) = stored {
            let fingerprint: String = row.try_get("fingerprint")?;
            if fingerprint != idem.fingerprint {
                return Err(StoreError::IdempotencyKeyReuse);
            }
            return Ok(Some(CreateOrderOutcome::Replayed {
                order_id: OrderId::from_uuid(row.try_get("order_id")?),
                body: row.try_get("response_body")?,
            }));
        }
    }

    let product_ids: Vec<Uuid> = new.lines.iter().map(|(id, _)| id.as_uuid()).collect();
    let read_products = prepared(
        &tx,
        match read {
            Read::Unlocked => {
                "SELECT id, price, currency, inventory - reserved AS available
                 FROM products WHERE id = ANY($1)"
            }
            Read::Locked => {
                "SELECT id, price, currency, inventory - reserved AS available
                 FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            }
        },
    )
    .await?;
    let rows = tx.query(&read_products, &[&product_ids]).await?;
    let mut stock: HashMap<Uuid, (Decimal, String, i64)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        stock.insert(
            row.try_get("id")?,
            (
                row.try_get("price")?,
                row.try_get("currency")?,
                row.try_get("available")?,
            ),
        );
    }
    let unknown: Vec<ProductId> = new
        .lines
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !stock.contains_key(&id.as_uuid()))
        .collect();
    if !unknown.is_empty() {
        return Err(StoreError::UnknownProducts(unknown));
    }
    let mut currencies = stock.values().map(|(_, currency, _)| currency.as_str());
    let currency = currencies.next().unwrap_or("USD").to_owned();
    if currencies.any(|c| c != currency) {
        return Err(StoreError::MixedCurrencies);
    }
    let shortages: Vec<Shortage> = new
        .lines
        .iter()
        .filter_map(|(id, quantity)| {
            let available = stock[&id.as_uuid()].2;
            (available < i64::from(quantity.get())).then_some(Shortage {
                product_id: id,
                requested: i64::from(quantity.get()),
                available,
            })
        })
        .collect();
    if !shortages.is_empty() {
        return Err(StoreError::InsufficientStock(shortages));
    }

    // PostgreSQL keeps microseconds: truncate so the stored response equals a later read.
    let now = Utc::now().trunc_subsecs(6);
    let id = OrderId::generate();
    let items: Vec<OrderLine> = new
        .lines
        .iter()
        .map(|(product, quantity)| {
            OrderLine::new(
                product,
                quantity,
                Money::from_db(stock[&product.as_uuid()].0),
            )
        })
        .collect();
    let order = Order::new(
        id,
        OrderStatus::Pending,
        items,
        Currency::parse(&currency).map_err(|_| corrupt("currency", &currency))?,
        new.customer_id.clone(),
        now,
        now,
        vec![StatusChange {
            status: OrderStatus::Pending,
            at: now,
        }],
    );
    let body = serde_json::to_string(&order).map_err(|e| corrupt("order", e))?;
    let event = OrderEvent::created(id, now, correlation_id);
    let quantities: Vec<i32> = order
        .items
        .iter()
        .map(|l| i32::from(l.quantity.get()))
        .collect();
    let prices: Vec<Decimal> = order
        .items
        .iter()
        .map(|l| l.unit_price.as_decimal())
        .collect();
    let (key, fingerprint) = match idempotency {
        Some(idem) => (Some(idem.key.as_str()), Some(idem.fingerprint.as_str())),
        None => (None, None),
    };

    // Everything in one statement: foreign keys are checked at its end, when the order row
    // exists. `locked` takes the product rows in id order; a row is reserved only after
    // `locked` produced it, so every order locks its products in ascending id order. The
    // reservation's conditions are checked on the latest row version (read committed
    // re-checks an UPDATE's WHERE on a row changed since the snapshot).
    let write_order = prepared(
        &tx,
        "WITH lines AS (
             SELECT * FROM unnest($2::uuid[], $3::int[], $4::numeric[]) AS l(product_id, quantity, unit_price)
         ), locked AS (
             SELECT id FROM products WHERE id = ANY($2) ORDER BY id FOR UPDATE
         ), reserve AS (
             UPDATE products p SET reserved = p.reserved + l.quantity, updated_at = $7
             FROM lines l
             WHERE p.id = l.product_id AND p.id IN (SELECT id FROM locked)
               AND p.inventory - p.reserved >= l.quantity AND p.price = l.unit_price
             RETURNING p.id
         ), new_order AS (
             INSERT INTO orders (id, status, currency, customer_id, created_at, updated_at)
             VALUES ($1, 'pending', $5, $6, $7, $7)
         ), items AS (
             INSERT INTO order_items (order_id, product_id, quantity, unit_price)
             SELECT $1, product_id, quantity, unit_price FROM lines
         ), ledger AS (
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at)
             SELECT product_id, 0, quantity, 'reserve', $1, $7 FROM lines
         ), history AS (
             INSERT INTO order_status_history (order_id, status, at) VALUES ($1, 'pending', $7)
         ), outbox AS (
             INSERT INTO outbox (message_id, routing_key, payload, created_at) VALUES ($8, $9, $10, $7)
         ), idempotency AS (
             INSERT INTO idempotency_keys (key, fingerprint, order_id, response_body, created_at)
             SELECT $11, $12, $1, $13, $7 WHERE $11::text IS NOT NULL
         )
         SELECT count(*) AS reserved FROM reserve",
    )
    .await?;
    let write = async {
        tx.query_one(
            &write_order,
            &[
                &id.as_uuid(),
                &product_ids,
                &quantities,
                &prices,
                &currency,
                &new.customer_id.as_ref().map(CustomerId::as_str),
                &now,
                &event.message_id,
                &event.routing_key(),
                &Json(event.to_json()),
                &key,
                &fingerprint,
                &body,
            ],
        )
        .await
        .map_err(StoreError::from)
    };
    // Polled together, the two statements go out in one round trip.
    let (reserved, ()) = tokio::try_join!(write, mark_sent(&tx, sent))?;
    if reserved.try_get::<_, i64>("reserved")? != product_ids.len() as i64 {
        // Stock taken or a price changed since the read: nothing of this attempt stays.
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(CreateOrderOutcome::Created {
        order: Box::new(order),
        body,
        event,
    }))
}

const ORDER_SELECT: &str = "SELECT o.id, o.status, o.currency, o.customer_id, o.created_at, o.updated_at,
    ARRAY(SELECT product_id FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS product_ids,
    ARRAY(SELECT quantity FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS quantities,
    ARRAY(SELECT unit_price FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS unit_prices,
    ARRAY(SELECT status FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq) AS history_statuses,
    ARRAY(SELECT at FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq) AS history_ats
  FROM orders o";

fn order_from_row(row: &Row) -> Result<Order, StoreError> {
    let status = parse_status(&row.try_get::<_, String>("status")?)?;
    let currency: String = row.try_get("currency")?;
    let product_ids: Vec<Uuid> = row.try_get("product_ids")?;
    let quantities: Vec<i32> = row.try_get("quantities")?;
    let prices: Vec<Decimal> = row.try_get("unit_prices")?;
    let items = product_ids
        .into_iter()
        .zip(quantities)
        .zip(prices)
        .map(|((product, quantity), price)| {
            let quantity = Quantity::try_from(i64::from(quantity))
                .map_err(|_| corrupt("quantity", quantity))?;
            Ok(OrderLine::new(
                ProductId::from_uuid(product),
                quantity,
                Money::from_db(price),
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let statuses: Vec<String> = row.try_get("history_statuses")?;
    let ats: Vec<DateTime<Utc>> = row.try_get("history_ats")?;
    let history = statuses
        .iter()
        .zip(ats)
        .map(|(status, at)| {
            Ok(StatusChange {
                status: parse_status(status)?,
                at,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Order::new(
        OrderId::from_uuid(row.try_get("id")?),
        status,
        items,
        Currency::parse(&currency).map_err(|_| corrupt("currency", &currency))?,
        row.try_get::<_, Option<String>>("customer_id")?
            .map(CustomerId::from_db),
        row.try_get("created_at")?,
        row.try_get("updated_at")?,
        history,
    ))
}

fn parse_status(raw: &str) -> Result<OrderStatus, StoreError> {
    OrderStatus::parse(raw).ok_or_else(|| corrupt("status", raw))
}

async fn load_order(client: &impl GenericClient, id: OrderId) -> Result<Order, StoreError> {
    let sql = format!("{ORDER_SELECT} WHERE o.id = $1");
    let statement = prepared(client, &sql).await?;
    let row = client
        .query_opt(&statement, &[&id.as_uuid()])
        .await?
        .ok_or(StoreError::NotFound)?;
    order_from_row(&row)
}

pub async fn get_order(pool: &Pool, id: OrderId) -> Result<Order, StoreError> {
    load_order(&pool.get().await?, id).await
}

pub async fn list_orders(
    pool: &Pool,
    status: Option<OrderStatus>,
    page: PageRequest,
) -> Result<Page<Order>, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "{ORDER_SELECT}
         WHERE ($1::text IS NULL OR o.status = $1) AND ($2::uuid IS NULL OR o.id > $2)
         ORDER BY o.id LIMIT $3"
    );
    let rows = client
        .query(
            &sql,
            &[
                &status.map(OrderStatus::as_str),
                &page.after(),
                &(page.limit() + 1),
            ],
        )
        .await?;
    let orders = rows
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(orders, page, Listing::Orders, |o| {
        o.id.as_uuid()
    }))
}

/// Moves an order to `to` if the transition table lets a client do so. Asking for the
/// current status is a no-op. The order row is locked first, so of two conflicting requests
/// one wins and the other sees the new status and is refused. The status change, its
/// history row and its outbox message commit together; stock effects are the processor's.
/// `sent` is marked in the same transaction unless it fails.
pub async fn update_order_status(
    pool: &Pool,
    id: OrderId,
    to: OrderStatus,
    correlation_id: &str,
    sent: &SentMessages,
) -> Result<(Order, Option<OrderEvent>), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let lock_order = prepared(&tx, "SELECT status FROM orders WHERE id = $1 FOR UPDATE").await?;
    let row = tx
        .query_opt(&lock_order, &[&id.as_uuid()])
        .await?
        .ok_or(StoreError::NotFound)?;
    let from = parse_status(&row.try_get::<_, String>("status")?)?;
    if from == to {
        let (order, ()) = tokio::try_join!(load_order(&tx, id), mark_sent(&tx, sent))?;
        tx.commit().await?;
        return Ok((order, None));
    }
    if !from.can_become(to, Actor::Client) {
        return Err(StoreError::InvalidTransition {
            from,
            to,
            allowed: from.next_for(Actor::Client),
        });
    }
    let now = Utc::now().trunc_subsecs(6);
    let event = OrderEvent::status_changed(id, to, now, correlation_id);
    let change_status = prepared(
        &tx,
        "WITH changed AS (
             UPDATE orders SET status = $2, updated_at = $3 WHERE id = $1
         ), history AS (
             INSERT INTO order_status_history (order_id, status, at) VALUES ($1, $2, $3)
         )
         INSERT INTO outbox (message_id, routing_key, payload, created_at) VALUES ($4, $5, $6, $3)",
    )
    .await?;
    let change = async {
        tx.execute(
            &change_status,
            &[
                &id.as_uuid(),
                &to.as_str(),
                &now,
                &event.message_id,
                &event.routing_key(),
                &Json(event.to_json()),
            ],
        )
        .await
        .map_err(StoreError::from)
    };
    tokio::try_join!(change, mark_sent(&tx, sent))?;
    let order = load_order(&tx, id).await?;
    tx.commit().await?;
    Ok((order, Some(event)))
}
