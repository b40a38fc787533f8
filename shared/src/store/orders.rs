use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use super::outbox::mark_sent;
use super::sql::{execute, param, params, query, query_opt, ClientLike, Param, SqlType};
use super::{
    corrupt, Listing, Page, PageRequest, Position, SentMessages, Shortage, StoreError, Written,
};
use crate::domain::{
    Actor, Caller, Currency, CustomerId, IdempotencyKey, Money, Order, OrderEvent, OrderId,
    OrderLine, OrderLines, OrderStatus, ProductId, Quantity, StatusChange,
};

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

/// The `Idempotency-Key` of a creation, bound to the request it was first used with. It
/// belongs to the caller who sent it: [`create_order`] looks it up under its creator.
#[derive(Debug, Clone)]
pub struct OrderIdempotency {
    pub key: IdempotencyKey,
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub enum CreateOrderOutcome {
    /// A new order; `body` is its 201 response, stored with the key.
    Created { order: Box<Order>, body: String },
    /// The key was used before for the same request: the first response, verbatim.
    Replayed { order_id: OrderId, body: String },
}

/// Places an order: reserves stock for every line or for none, snapshots unit prices,
/// writes the order, its history, ledger and outbox rows (and, with a key, the idempotency
/// record), all atomically. `sent` is marked by the same statement. `creator` is named on the
/// order's first history entry and on its reservations, and owns the idempotency key.
///
/// Without an idempotency key the whole order is one statement in its own implicit
/// transaction ([`PLACE_ONE_LINE_ORDER`] or, for several lines, [`PLACE_ORDER`]): one round
/// trip, and a hot product's row lock is held only for that statement and its commit. With
/// a key, the key is claimed first and the response stored after the statement, in one
/// transaction.
pub async fn create_order(
    pool: &Pool,
    new: &NewOrder,
    creator: &Caller,
    idempotency: Option<&OrderIdempotency>,
    correlation_id: &str,
    sent: &SentMessages,
) -> Result<Written<CreateOrderOutcome>, StoreError> {
    let mut client = pool.get().await?;
    let placement = Placement::new(new, creator.subject(), correlation_id);
    for _ in 0..PLACE_ATTEMPTS {
        let attempt = match idempotency {
            None => place_order(&client, &placement, sent)
                .await?
                .map(|order| placement.created(order))
                .transpose()?,
            Some(idem) => create_with_key(&mut client, &placement, idem, sent).await?,
        };
        match attempt {
            Some(created @ CreateOrderOutcome::Created { .. }) => {
                return Ok(Written::committed(created, vec![placement.event.clone()]))
            }
            // Nothing was written, nor were the marks.
            Some(replayed @ CreateOrderOutcome::Replayed { .. }) => {
                return Ok(Written {
                    value: replayed,
                    events: Vec::new(),
                    marked: false,
                })
            }
            None => {}
        }
    }
    Err(StoreError::Unavailable(Box::new(StockKeptMoving)))
}

/// Each retry follows a stock change committed between a statement's snapshot and its
/// row lock, or between a refusal and the read that explains it; that happening this often
/// means the product is being changed in a loop.
const PLACE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
#[error("the products' stock kept changing while the order waited for them")]
struct StockKeptMoving;

/// [`create_order`] with an idempotency key, in one transaction; `None` when the placement
/// must be tried again.
async fn create_with_key(
    client: &mut deadpool_postgres::Client,
    placement: &Placement<'_>,
    idem: &OrderIdempotency,
    sent: &SentMessages,
) -> Result<Option<CreateOrderOutcome>, StoreError> {
    let tx = client.transaction().await?;
    let caller = placement.by;
    // One key at a time, without session state (no advisory lock: the session may be
    // multiplexed): the key's row is claimed first, so a concurrent duplicate waits on it
    // (bounded by the role's `lock_timeout`, then 409 request-in-progress) and then
    // replays the committed response; if this transaction rolls back, the waiter claims it.
    // The order it names is written later in this transaction (the foreign key is
    // deferred, V10), and the response replaces the empty body before commit.
    let claimed = query_opt(
        &tx,
        "INSERT INTO idempotency_keys (caller, key, fingerprint, order_id, response_body, created_at)
         VALUES ($1, $2, $3, $4, '', $5)
         ON CONFLICT (caller, key) DO NOTHING
         RETURNING true",
        params![
            caller,
            idem.key.as_str(),
            idem.fingerprint,
            placement.id.as_uuid(),
            placement.now,
        ],
    )
    .await;
    let claimed = match claimed {
        Ok(claimed) => claimed.is_some(),
        // The role's `lock_timeout` ran out while another request held the key.
        Err(StoreError::Unavailable(e))
            if e.downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                == Some(&SqlState::LOCK_NOT_AVAILABLE) =>
        {
            return Err(StoreError::RequestInProgress)
        }
        Err(e) => return Err(e),
    };
    if !claimed {
        let row = query_opt(
            &tx,
            "SELECT fingerprint, order_id, response_body FROM idempotency_keys
             WHERE caller = $1 AND key = $2",
            params![caller, idem.key.as_str()],
        )
        .await?
        // Claimed and then rolled back between the two statements: try again.
        .ok_or(StoreError::RequestInProgress)?;
        let fingerprint: String = row.try_get("fingerprint")?;
        if fingerprint != idem.fingerprint {
            return Err(StoreError::IdempotencyKeyReuse);
        }
        return Ok(Some(CreateOrderOutcome::Replayed {
            order_id: OrderId::from_uuid(row.try_get("order_id")?),
            body: row.try_get("response_body")?,
        }));
    }
    let Some(order) = place_order(&tx, placement, sent).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let outcome = placement.created(order)?;
    if let CreateOrderOutcome::Created { order, body, .. } = &outcome {
        execute(
            &tx,
            "UPDATE idempotency_keys SET response_body = $3, created_at = $4
             WHERE caller = $1 AND key = $2",
            params![caller, idem.key.as_str(), body, order.created_at],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(outcome))
}

/// What an order is decided from, fixed before the statement runs.
struct Placement<'a> {
    new: &'a NewOrder,
    /// Who places it: named on its history and reservations.
    by: &'a str,
    id: OrderId,
    /// When the event says the order was placed. What lists and the response show is the
    /// database's transaction time (`now()` in the statement), the key listings page on
    /// below their horizon (migration V8).
    now: DateTime<Utc>,
    event: OrderEvent,
}

impl<'a> Placement<'a> {
    fn new(new: &'a NewOrder, by: &'a str, correlation_id: &str) -> Self {
        let id = OrderId::generate();
        let now = Utc::now().trunc_subsecs(6);
        Self {
            new,
            by,
            id,
            now,
            event: OrderEvent::created(id, now, correlation_id),
        }
    }

    fn created(&self, order: Order) -> Result<CreateOrderOutcome, StoreError> {
        let body = serde_json::to_string(&order).map_err(|e| corrupt("order", e))?;
        Ok(CreateOrderOutcome::Created {
            order: Box::new(order),
            body,
        })
    }
}

/// The statement that decides and writes an order of several lines, returning the product
/// rows it locked (as they were before its reservation) and whether it placed the order.
///
/// `locked` takes the product rows in id order, so crossing orders wait instead of
/// deadlocking; under read committed a row locked after waiting is returned in its latest
/// committed version, so `verdict` judges stock, prices and currency on what is there now,
/// and every write is conditional on it: the order is placed whole or not at all, and the
/// row locks are never held across a round trip. Foreign keys are checked at the
/// statement's end, when the order row exists.
///
/// `reserve` repeats the stock condition because PostgreSQL checks the `products` CHECKs on
/// the row version the statement's snapshot shows before it moves to the latest one: a
/// snapshot older than a stock increase would make a reservable line look like an
/// oversell. The condition skips such a line instead, and the final select then raises
/// (`stock_moved_under_lock`, SQLSTATE `OM001`), undoing the statement, to be run again.
/// The CHECKs stay the backstop against overselling.
const PLACE_ORDER: &str = "WITH lines AS (
         SELECT * FROM unnest((SELECT $2::uuid[]), (SELECT $3::int[])) AS l(product_id, quantity)
     ), locked AS (
         SELECT id, price, currency, inventory - reserved AS available
         FROM products WHERE id IN (SELECT product_id FROM lines) ORDER BY id FOR UPDATE
     ), verdict AS (
         SELECT coalesce(count(*) = cardinality($2::uuid[])
                         AND count(DISTINCT k.currency) = 1
                         AND bool_and(k.available >= l.quantity), false) AS placed,
                min(k.currency) AS currency
         FROM lines l JOIN locked k ON k.id = l.product_id
     ), reserve AS (
         UPDATE products p SET reserved = p.reserved + l.quantity, updated_at = now()
         FROM lines l
         WHERE p.id = l.product_id AND (SELECT placed FROM verdict)
           AND p.inventory - p.reserved >= l.quantity
         RETURNING p.id
     ), new_order AS (
         INSERT INTO orders (id, status, currency, customer_id, created_at, updated_at)
         SELECT $1, 'pending', currency, $5, now(), now() FROM verdict WHERE placed
     ), items AS (
         INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT $1, l.product_id, l.quantity, k.price
         FROM lines l JOIN locked k ON k.id = l.product_id
         WHERE (SELECT placed FROM verdict)
     ), ledger AS (
         INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
         SELECT product_id, 0, quantity, 'reserve', $1, now(), $10 FROM lines
         WHERE (SELECT placed FROM verdict)
     ), history AS (
         INSERT INTO order_status_history (order_id, status, at, changed_by)
         SELECT $1, 'pending', now(), $10 WHERE (SELECT placed FROM verdict)
     ), outbox AS (
         INSERT INTO outbox (message_id, routing_key, payload, created_at)
         SELECT $6, $7, $8, $4 WHERE (SELECT placed FROM verdict)
     ), marked AS (
         UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id IN (SELECT unnest((SELECT $9::uuid[])))
     )
     SELECT k.id, k.price, k.currency, k.available, v.placed, now() AS at,
            CASE WHEN v.placed AND (SELECT count(*) FROM reserve) <> cardinality($2::uuid[])
                 THEN stock_moved_under_lock() END AS stock_moved
     FROM locked k CROSS JOIN verdict v";

/// The SQLSTATE of `stock_moved_under_lock()` (migration V2).
const STOCK_MOVED_UNDER_LOCK: &str = "OM001";

/// A one-line order, the common case and all of a hot product's load: the reservation's
/// `UPDATE` takes the row lock itself and every write follows from the row it returns, so
/// the product row is visited once and locked for the statement and its commit only. The
/// stock condition is judged on the latest row version (read committed re-checks an
/// `UPDATE`'s condition on a row changed since the snapshot); a row the snapshot already
/// shows short is refused without waiting, as of the stock committed when it began.
///
/// Both placement statements read their arrays through sub-selects, so that no estimate
/// depends on the values: a custom plan then never looks cheaper than the generic one and
/// PostgreSQL stops planning the many-CTE statement after five calls. With `= ANY($9)` an
/// empty list of events to mark made every custom plan look cheaper, and each call spent
/// more CPU planning than running (17 % of a backend's time in `perf`).
const PLACE_ONE_LINE_ORDER: &str = "WITH reserve AS (
         UPDATE products SET reserved = reserved + $3::int, updated_at = now()
         WHERE id = $2 AND inventory - reserved >= $3::int
         RETURNING price, currency
     ), new_order AS (
         INSERT INTO orders (id, status, currency, customer_id, created_at, updated_at)
         SELECT $1, 'pending', currency, $5, now(), now() FROM reserve
     ), items AS (
         INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT $1, $2, $3::int, price FROM reserve
     ), ledger AS (
         INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
         SELECT $2, 0, $3::int, 'reserve', $1, now(), $10 FROM reserve
     ), history AS (
         INSERT INTO order_status_history (order_id, status, at, changed_by)
         SELECT $1, 'pending', now(), $10 FROM reserve
     ), outbox AS (
         INSERT INTO outbox (message_id, routing_key, payload, created_at)
         SELECT $6, $7, $8, $4 FROM reserve
     ), marked AS (
         UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id IN (SELECT unnest((SELECT $9::uuid[])))
     )
     SELECT $2 AS id, price, currency, now() AS at FROM reserve";

/// What a placement statement decided, with the product rows it was decided on.
enum Decision {
    /// Placed at the statement's transaction time.
    Placed(HashMap<Uuid, ProductRow>, DateTime<Utc>),
    Refused(HashMap<Uuid, ProductRow>),
    /// Undone: run it again on a fresh snapshot.
    Again,
}

/// Runs the placement statement for the order's shape; the placed order, why it was
/// refused, or `None` when it must run again.
async fn place_order(
    client: &(impl ClientLike + ?Sized),
    placement: &Placement<'_>,
    sent: &SentMessages,
) -> Result<Option<Order>, StoreError> {
    let new = placement.new;
    let decision = match new.lines.single() {
        Some((product, quantity)) => {
            place_one_line(client, placement, sent, product, quantity).await?
        }
        None => place_lines(client, placement, sent).await?,
    };
    let (stock, at) = match decision {
        Decision::Placed(stock, at) => (stock, at),
        Decision::Refused(stock) => {
            return match refusal(new, &stock) {
                Some(refused) => Err(refused),
                // Placeable now: what refused it changed since.
                None => Ok(None),
            };
        }
        Decision::Again => return Ok(None),
    };

    let currency = stock
        .values()
        .map(|p| p.currency.as_str())
        .next()
        .unwrap_or_default();
    let items = new
        .lines
        .iter()
        .map(|(product, quantity)| {
            OrderLine::new(
                product,
                quantity,
                Money::from_db(stock[&product.as_uuid()].price),
            )
        })
        .collect();
    Ok(Some(Order::new(
        placement.id,
        OrderStatus::Pending,
        items,
        Currency::parse(currency).map_err(|_| corrupt("currency", currency))?,
        new.customer_id.clone(),
        at,
        at,
        vec![StatusChange {
            status: OrderStatus::Pending,
            at,
            by: placement.by.to_owned(),
        }],
    )))
}

async fn place_one_line(
    client: &(impl ClientLike + ?Sized),
    placement: &Placement<'_>,
    sent: &SentMessages,
    product: ProductId,
    quantity: Quantity,
) -> Result<Decision, StoreError> {
    let rows = run_placement(
        client,
        PLACE_ONE_LINE_ORDER,
        placement,
        sent,
        param(&product.as_uuid()),
        param(&i32::from(quantity.get())),
    )
    .await?;
    match rows.first() {
        Some(row) => Ok(Decision::Placed(
            HashMap::from([(product.as_uuid(), ProductRow::from_row(row, None)?)]),
            row.try_get("at")?,
        )),
        None => {
            // Nothing was written; read why, to answer with it.
            let rows = query(
                client,
                "SELECT id, price, currency, inventory - reserved AS available
                 FROM products WHERE id = $1",
                params![product.as_uuid()],
            )
            .await?;
            Ok(Decision::Refused(products_by_id(&rows)?))
        }
    }
}

/// Runs [`PLACE_ORDER`] for an order of several lines.
async fn place_lines(
    client: &(impl ClientLike + ?Sized),
    placement: &Placement<'_>,
    sent: &SentMessages,
) -> Result<Decision, StoreError> {
    let new = placement.new;
    let product_ids: Vec<Uuid> = new.lines.iter().map(|(id, _)| id.as_uuid()).collect();
    let quantities: Vec<i32> = new
        .lines
        .iter()
        .map(|(_, quantity)| i32::from(quantity.get()))
        .collect();
    let rows = run_placement(
        client,
        PLACE_ORDER,
        placement,
        sent,
        param(&product_ids),
        param(&quantities),
    )
    .await;
    let rows = match rows {
        Err(StoreError::Database(e))
            if e.code()
                .is_some_and(|code| code.code() == STOCK_MOVED_UNDER_LOCK) =>
        {
            return Ok(Decision::Again)
        }
        rows => rows?,
    };
    let placed = match rows.first() {
        Some(row) if row.try_get::<_, bool>("placed")? => Some(row.try_get("at")?),
        _ => None,
    };
    let stock = products_by_id(&rows)?;
    Ok(match placed {
        Some(at) => Decision::Placed(stock, at),
        None => Decision::Refused(stock),
    })
}

/// Runs a placement statement: both take the same parameters, the lines as `$2` (product)
/// and `$3` (quantity), one value each or arrays.
async fn run_placement(
    client: &(impl ClientLike + ?Sized),
    sql: &str,
    placement: &Placement<'_>,
    sent: &SentMessages,
    products: Param<'_>,
    quantities: Param<'_>,
) -> Result<Vec<Row>, StoreError> {
    query(
        client,
        sql,
        &[
            param(&placement.id.as_uuid()),
            products,
            quantities,
            param(&placement.now),
            param(&placement.new.customer_id.as_ref().map(CustomerId::as_str)),
            param(&placement.event.message_id),
            param(&placement.event.routing_key()),
            param(&Json(placement.event.to_json())),
            param(&sent.ids()),
            param(&placement.by),
        ],
    )
    .await
}

/// A product row as a placement statement found it.
struct ProductRow {
    price: Decimal,
    currency: String,
    /// Stock available before the order; only known for the products of a refused or
    /// several-line order.
    available: Option<i64>,
}

impl ProductRow {
    fn from_row(row: &Row, available: Option<i64>) -> Result<Self, StoreError> {
        Ok(Self {
            price: row.try_get("price")?,
            currency: row.try_get("currency")?,
            available,
        })
    }
}

fn products_by_id(rows: &[Row]) -> Result<HashMap<Uuid, ProductRow>, StoreError> {
    rows.iter()
        .map(|row| {
            let available = row.try_get("available")?;
            Ok((
                row.try_get("id")?,
                ProductRow::from_row(row, Some(available))?,
            ))
        })
        .collect()
}

/// Why an order was refused, judged on the product rows read or locked; `None` when
/// nothing in them refuses it.
fn refusal(new: &NewOrder, stock: &HashMap<Uuid, ProductRow>) -> Option<StoreError> {
    let unknown: Vec<ProductId> = new
        .lines
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !stock.contains_key(&id.as_uuid()))
        .collect();
    if !unknown.is_empty() {
        return Some(StoreError::UnknownProducts(unknown));
    }
    let mut currencies = stock.values().map(|p| p.currency.as_str());
    let first = currencies.next();
    if currencies.any(|c| Some(c) != first) {
        return Some(StoreError::MixedCurrencies);
    }
    let shortages: Vec<Shortage> = new
        .lines
        .iter()
        .filter_map(|(id, quantity)| {
            let available = stock[&id.as_uuid()].available.unwrap_or(0);
            (available < i64::from(quantity.get())).then_some(Shortage {
                product_id: id,
                requested: i64::from(quantity.get()),
                available,
            })
        })
        .collect();
    (!shortages.is_empty()).then_some(StoreError::InsufficientStock(shortages))
}

const ORDER_SELECT: &str = "SELECT o.id, o.status, o.currency, o.customer_id, o.created_at, o.updated_at,
    ARRAY(SELECT product_id FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS product_ids,
    ARRAY(SELECT quantity FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS quantities,
    ARRAY(SELECT unit_price FROM order_items i WHERE i.order_id = o.id ORDER BY product_id) AS unit_prices,
    ARRAY(SELECT status FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq) AS history_statuses,
    ARRAY(SELECT at FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq) AS history_ats,
    ARRAY(SELECT changed_by FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq) AS history_bys
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
    let bys: Vec<String> = row.try_get("history_bys")?;
    let history = statuses
        .iter()
        .zip(ats)
        .zip(bys)
        .map(|((status, at), by)| {
            Ok(StatusChange {
                status: parse_status(status)?,
                at,
                by,
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

/// The order, if `viewer` may see it: a customer sees only its own, and anyone else's is
/// `NotFound`, decided by the statement that reads it.
async fn load_order(
    client: &(impl ClientLike + ?Sized),
    viewer: &Caller,
    id: OrderId,
) -> Result<Order, StoreError> {
    let sql =
        format!("{ORDER_SELECT} WHERE o.id = $1 AND ($2::text IS NULL OR o.customer_id = $2)");
    let owner = viewer.own_orders_only().map(CustomerId::as_str);
    let row = query_opt(client, &sql, params![id.as_uuid(), owner])
        .await?
        .ok_or(StoreError::NotFound)?;
    order_from_row(&row)
}

pub async fn get_order(pool: &Pool, viewer: &Caller, id: OrderId) -> Result<Order, StoreError> {
    load_order(&pool.get().await?, viewer, id).await
}

/// What `GET /orders` filters on; every part optional, all combinable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer: Option<CustomerId>,
    /// Inclusive.
    pub created_from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub created_to: Option<DateTime<Utc>>,
}

/// A page of the orders `viewer` may see that match `filter`, oldest first on
/// `(created_at, id)`.
///
/// The statement is written for the filters present rather than with `$n IS NULL OR …`
/// arms, so that each combination is planned on its own index (V3 migration): the
/// `(created_at, id)` keyset is a range on that index, and a deep page costs what the
/// first does. A customer's own-orders condition is always part of it.
pub async fn list_orders(
    pool: &Pool,
    viewer: &Caller,
    filter: &OrderFilter,
    page: PageRequest,
) -> Result<Page<Order>, StoreError> {
    let key = |o: &Order| Position::Created(o.created_at, o.id.as_uuid());
    let Some(search) = OrderSearch::new(viewer, filter, page) else {
        return Ok(Page::from_rows(Vec::new(), page, Listing::Orders, key));
    };
    let client = pool.get().await?;
    let rows = query(&client, &search.sql, &search.params()).await?;
    let orders = rows
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(orders, page, Listing::Orders, key))
}

/// The plan PostgreSQL runs [`list_orders`] with for these arguments (`EXPLAIN ANALYZE`,
/// without timings), one line per plan line: for the plan tests and the benchmark.
pub async fn explain_list_orders(
    pool: &Pool,
    viewer: &Caller,
    filter: &OrderFilter,
    page: PageRequest,
) -> Result<Vec<String>, StoreError> {
    let Some(search) = OrderSearch::new(viewer, filter, page) else {
        return Ok(Vec::new());
    };
    let client = pool.get().await?;
    let sql = format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
        search.sql
    );
    let rows = query(&client, &sql, &search.params()).await?;
    rows.iter()
        .map(|row| row.try_get::<_, String>(0).map_err(StoreError::from))
        .collect()
}

/// The statement of one order search and its parameters.
struct OrderSearch {
    sql: String,
    params: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
}

impl OrderSearch {
    /// `None` when `viewer` may see none of what `filter` asks for (a customer naming
    /// another customer; the HTTP layer refuses that with 403 before it gets here).
    fn new(viewer: &Caller, filter: &OrderFilter, page: PageRequest) -> Option<Self> {
        let customer = match (viewer.own_orders_only(), &filter.customer) {
            (Some(own), Some(asked)) if own != asked => return None,
            (own, asked) => own.or(asked.as_ref()),
        };
        let mut search = Self {
            sql: String::new(),
            params: Vec::new(),
        };
        let mut conditions: Vec<String> = Vec::new();
        if let Some(status) = filter.status {
            conditions.push(format!("o.status = {}", search.bind(status.as_str())));
        }
        if let Some(customer) = customer {
            let customer = customer.as_str().to_owned();
            conditions.push(format!("o.customer_id = {}", search.bind(customer)));
        }
        if let Some(from) = filter.created_from {
            conditions.push(format!("o.created_at >= {}", search.bind(from)));
        }
        if let Some(to) = filter.created_to {
            conditions.push(format!("o.created_at < {}", search.bind(to)));
        }
        if let Some((at, id)) = page.after_created() {
            let (at, id) = (search.bind(at), search.bind(id));
            conditions.push(format!("(o.created_at, o.id) > ({at}, {id})"));
        }
        // Only what can no longer be joined by an earlier key (V8): a client polling from
        // its cursor sees every order once, even one whose transaction commits late.
        conditions.push("o.created_at < listing_horizon()".to_owned());
        let limit = search.bind(page.limit() + 1);
        let filter = format!("WHERE {}", conditions.join(" AND "));
        search.sql = format!("{ORDER_SELECT} {filter} ORDER BY o.created_at, o.id LIMIT {limit}");
        Some(search)
    }

    /// Adds a parameter, returning its placeholder.
    fn bind<T: SqlType + Send + 'static>(&mut self, value: T) -> String {
        self.params.push((Box::new(value), T::TYPE));
        format!("${}", self.params.len())
    }

    fn params(&self) -> Vec<Param<'_>> {
        self.params
            .iter()
            .map(|(value, ty)| (value.as_ref() as &(dyn ToSql + Sync), ty.clone()))
            .collect()
    }
}

/// Moves an order to `to` if the transition table lets a client do so. Asking for the
/// current status is a no-op. The order row is locked first, so of two conflicting requests
/// one wins and the other sees the new status and is refused. The status change, its
/// history row (naming `caller`) and its outbox message commit together; stock effects are
/// the processor's. A customer reaches only its own orders: the locking statement itself
/// finds no other. `sent` is marked in the same transaction unless it fails.
pub async fn update_order_status(
    pool: &Pool,
    caller: &Caller,
    id: OrderId,
    to: OrderStatus,
    correlation_id: &str,
    sent: &SentMessages,
) -> Result<Written<Order>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let owner = caller.own_orders_only().map(CustomerId::as_str);
    let row = query_opt(
        &tx,
        "SELECT status FROM orders
         WHERE id = $1 AND ($2::text IS NULL OR customer_id = $2)
         FOR UPDATE",
        params![id.as_uuid(), owner],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    let from = parse_status(&row.try_get::<_, String>("status")?)?;
    if from == to {
        let (order, ()) = tokio::try_join!(load_order(&tx, caller, id), mark_sent(&tx, sent))?;
        tx.commit().await?;
        return Ok(Written::committed(order, Vec::new()));
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
    let change_status = "WITH changed AS (
             UPDATE orders SET status = $2, updated_at = $3 WHERE id = $1
         ), history AS (
             INSERT INTO order_status_history (order_id, status, at, changed_by) VALUES ($1, $2, $3, $7)
         )
         INSERT INTO outbox (message_id, routing_key, payload, created_at) VALUES ($4, $5, $6, $3)";
    let (order_id, status, routing_key, payload, by) = (
        id.as_uuid(),
        to.as_str(),
        event.routing_key(),
        Json(event.to_json()),
        caller.subject(),
    );
    let change_params = params![
        order_id,
        status,
        now,
        event.message_id,
        routing_key,
        payload,
        by
    ];
    let change = execute(&tx, change_status, change_params);
    tokio::try_join!(change, mark_sent(&tx, sent))?;
    let order = load_order(&tx, caller, id).await?;
    tx.commit().await?;
    Ok(Written::committed(order, vec![event]))
}
