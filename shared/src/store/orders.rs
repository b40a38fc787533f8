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
    corrupt, LimitExceeded, Listing, Page, PageRequest, Position, SentMessages, Shortage,
    StoreError, Written,
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
/// transaction ([`PLACE_ONE_LINE`], and [`PLACE_LINES`] for several lines or when no single
/// bucket has enough): one round trip mostly, and a bucket's row lock is held only for that
/// statement and its commit. With
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
const PLACE_ATTEMPTS: usize = 10;

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

/// The one-line placement statement around `$pick`, the query that picks and locks the
/// bucket the line is taken from.
macro_rules! place_one_line {
    ($pick:literal) => {
        concat!(
            "WITH product AS (
         SELECT p.price, p.currency, p.max_per_customer,
                $5::text IS NOT NULL AND p.max_per_customer IS NOT NULL AS capped,
                coalesce((SELECT h.held FROM customer_holdings h
                          WHERE h.product_id = p.id AND h.customer_id = $5::text), 0) AS held
         FROM products p WHERE p.id = $2::uuid
         FOR KEY SHARE
     ), allowed AS (
         SELECT 1 FROM product WHERE NOT capped OR held + $3::int <= max_per_customer
     ), skipped AS (",
            $pick,
            "), reserve AS (
         UPDATE stock_buckets b SET reserved = b.reserved + $3::int
         FROM skipped c
         WHERE b.product_id = $2::uuid AND b.bucket = c.bucket AND b.inventory - b.reserved >= $3::int
         RETURNING b.bucket
     ), hold AS (
         INSERT INTO customer_holdings AS h (product_id, customer_id, held)
         SELECT $2::uuid, $5::text, $3::int FROM reserve, product WHERE product.capped
         ON CONFLICT (product_id, customer_id) DO UPDATE SET held = h.held + excluded.held
             WHERE h.held + excluded.held <= (SELECT max_per_customer FROM product)
         RETURNING true
     ), new_order AS (
         INSERT INTO orders (id, status, currency, customer_id, created_at, updated_at)
         SELECT $1::uuid, 'pending', currency, $5::text, now(), now() FROM reserve, product
     ), items AS (
         INSERT INTO order_items (order_id, product_id, quantity, unit_price, held)
         SELECT $1::uuid, $2::uuid, $3::int, price, capped FROM reserve, product
     ), ledger AS (
         INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
         SELECT $2::uuid, 0, $3::int, 'reserve', $1::uuid, now(), $10::text FROM reserve
     ), history AS (
         INSERT INTO order_status_history (order_id, status, at, changed_by)
         SELECT $1::uuid, 'pending', now(), $10::text FROM reserve
     ), outbox AS (
         INSERT INTO outbox (message_id, routing_key, payload, created_at)
         SELECT $6::uuid, $7::text, $8::jsonb, $4::timestamptz FROM reserve
     ), marked AS (
         UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id IN (SELECT unnest((SELECT $9::uuid[])))
     )
     SELECT $2::uuid AS id, price, currency, now() AS at,
            CASE WHEN capped AND NOT EXISTS (SELECT 1 FROM hold) THEN stock_moved_under_lock() END AS moved
     FROM reserve, product"
        )
    };
}

/// How an order takes stock from bucketed products (migration V12), and why it cannot
/// deadlock or oversell.
///
/// A one-line order (the common case, and all of a flash sale's load) runs [`PLACE_ONE_LINE`]:
/// it reserves the whole line from one bucket that has enough, taking the first such bucket
/// that no one holds, in random order (`FOR UPDATE SKIP LOCKED`: it never waits). When every
/// such bucket is held, [`WAIT_FOR_ONE_BUCKET`] waits for one of them, picked at random, and
/// takes the line from it if it still has enough. When none has enough (or the one waited
/// for was emptied meanwhile), or for several lines, the order runs
/// [`PLACE_LINES`], which locks every bucket of its products in
/// `(product_id, bucket)` order, judges each line on the product's total available, and takes
/// a line from as many buckets as it needs, in bucket order.
///
/// No deadlock: [`PLACE_ONE_LINE`] never waits for a bucket (`SKIP LOCKED`; a bucket it
/// locked whose recheck failed stays locked, so it must not wait for another: an earlier
/// version that waited for a random bucket when all were held deadlocked under 400
/// concurrent orders). [`WAIT_FOR_ONE_BUCKET`] is a statement of its own that names its one
/// bucket before locking it, so it waits holding no bucket. [`PLACE_LINES`] takes every
/// bucket lock in the one global order `(product_id, bucket)`, the order every statement
/// that locks several buckets uses (adjustments, rebucketing, the processor). On a
/// single-bucket product under contention the one-line statement finds its bucket held and
/// the order waits in [`WAIT_FOR_ONE_BUCKET`]: one more round trip than when the row lock
/// was waited for in place. Customer holdings are locked only after all of a statement's
/// buckets, in product order, and the processor locks them last too.
///
/// No oversell, no stale refusal: under read committed a bucket locked after waiting is read
/// in its latest committed version, so each line is judged on what is there now, and the
/// CHECKs on every bucket stay the backstop. A statement's older snapshot can still hide
/// stock added since it began (the `UPDATE`'s condition is first checked on the snapshot's
/// version) or a holding raised since (the upsert's guard): the statement then raises
/// `OM001` (`stock_moved_under_lock`, migration V2), undoing itself, and runs again. A
/// refusal is explained by a fresh read of the totals ([`STOCK_SQL`]); when that read shows
/// the order placeable (a rebucketing inserted buckets the statement could not see), it runs
/// again instead of refusing.
///
/// `maxPerCustomer` is atomic with the reservation: the holding is raised in the same
/// statement, under its row lock, with the guard `held + q <= limit`; a customer's concurrent
/// orders queue on that one row. The product is read `FOR KEY SHARE` (the lock the foreign
/// keys of the new rows take anyway), which conflicts with no update of its price or cap:
/// an order takes the price and cap of its statement's snapshot, even when it then waits
/// for a bucket while the product is repriced (before buckets, a waiting order took the
/// new price, because it waited on the product row itself).
///
/// Both statements read their arrays through sub-selects, so that no estimate depends on
/// the values: a custom plan then never looks cheaper than the generic one and PostgreSQL
/// stops planning the many-CTE statement after five calls. With `= ANY($9)` an empty list of
/// events to mark made every custom plan look cheaper, and each call spent more CPU planning
/// than running (17 % of a backend's time in `perf`).
const PLACE_ONE_LINE: &str = place_one_line!(
    "SELECT b.bucket FROM stock_buckets b
     WHERE b.product_id = $2::uuid AND b.inventory - b.reserved >= $3::int
       AND EXISTS (SELECT 1 FROM allowed)
     ORDER BY random() LIMIT 1
     FOR UPDATE SKIP LOCKED"
);

/// [`PLACE_ONE_LINE`] for when every bucket with enough was held: it waits for one of them,
/// picked at random on the statement's snapshot, and takes the line from it if it still has
/// enough once its holder is gone. The bucket is named before the lock (an init plan), so
/// the statement locks that one row or none and never waits holding another bucket.
const WAIT_FOR_ONE_BUCKET: &str = place_one_line!(
    "SELECT b.bucket FROM stock_buckets b
     WHERE b.product_id = $2::uuid
       AND b.bucket = (SELECT c.bucket FROM stock_buckets c
                       WHERE c.product_id = $2::uuid AND c.inventory - c.reserved >= $3::int
                       ORDER BY random() LIMIT 1)
       AND b.inventory - b.reserved >= $3::int
       AND EXISTS (SELECT 1 FROM allowed)
     FOR UPDATE"
);

/// An order judged on the total of every bucket of its products, locked in
/// `(product_id, bucket)` order (see [`PLACE_ONE_LINE`]); returns the products' price and
/// currency and whether it placed the order. `takes` gives each bucket
/// `least(available, what the line still needs after the buckets before it)`.
const PLACE_LINES: &str = "WITH lines AS (
         SELECT * FROM unnest((SELECT $2::uuid[]), (SELECT $3::int[])) AS l(product_id, quantity)
     ), locked AS (
         SELECT b.product_id, b.bucket, b.inventory - b.reserved AS available
         FROM stock_buckets b WHERE b.product_id IN (SELECT product_id FROM lines)
         ORDER BY b.product_id, b.bucket FOR UPDATE
     ), product AS (
         SELECT p.id, p.price, p.currency, p.max_per_customer,
                $5::text IS NOT NULL AND p.max_per_customer IS NOT NULL AS capped,
                coalesce((SELECT h.held FROM customer_holdings h
                          WHERE h.product_id = p.id AND h.customer_id = $5::text), 0) AS held
         FROM products p WHERE p.id IN (SELECT product_id FROM lines)
         ORDER BY p.id FOR KEY SHARE
     ), verdict AS (
         SELECT coalesce(count(*) = cardinality($2::uuid[])
                         AND count(DISTINCT p.currency) = 1
                         AND bool_and(s.available >= l.quantity)
                         AND bool_and(NOT p.capped OR p.held + l.quantity <= p.max_per_customer), false) AS placed,
                min(p.currency) AS currency
         FROM lines l JOIN product p ON p.id = l.product_id
         JOIN (SELECT product_id, sum(available) AS available FROM locked GROUP BY product_id) s
           ON s.product_id = l.product_id
     ), takes AS (
         SELECT k.product_id, k.bucket,
                least(k.available, l.quantity - (sum(k.available) OVER w - k.available)) AS take
         FROM locked k JOIN lines l ON l.product_id = k.product_id
         WHERE (SELECT placed FROM verdict)
         WINDOW w AS (PARTITION BY k.product_id ORDER BY k.bucket)
     ), reserve AS (
         UPDATE stock_buckets b SET reserved = b.reserved + t.take
         FROM takes t
         WHERE t.take > 0 AND b.product_id = t.product_id AND b.bucket = t.bucket
           AND b.inventory - b.reserved >= t.take
         RETURNING 1
     ), hold AS (
         INSERT INTO customer_holdings AS h (product_id, customer_id, held)
         SELECT l.product_id, $5::text, l.quantity FROM lines l JOIN product p ON p.id = l.product_id
         WHERE p.capped AND (SELECT placed FROM verdict)
         ORDER BY l.product_id
         ON CONFLICT (product_id, customer_id) DO UPDATE SET held = h.held + excluded.held
             WHERE h.held + excluded.held <= (SELECT p.max_per_customer FROM product p WHERE p.id = excluded.product_id)
         RETURNING 1
     ), new_order AS (
         INSERT INTO orders (id, status, currency, customer_id, created_at, updated_at)
         SELECT $1::uuid, 'pending', currency, $5::text, now(), now() FROM verdict WHERE placed
     ), items AS (
         INSERT INTO order_items (order_id, product_id, quantity, unit_price, held)
         SELECT $1::uuid, l.product_id, l.quantity, p.price, p.capped
         FROM lines l JOIN product p ON p.id = l.product_id
         WHERE (SELECT placed FROM verdict)
     ), ledger AS (
         INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
         SELECT product_id, 0, quantity, 'reserve', $1::uuid, now(), $10::text FROM lines
         WHERE (SELECT placed FROM verdict)
     ), history AS (
         INSERT INTO order_status_history (order_id, status, at, changed_by)
         SELECT $1::uuid, 'pending', now(), $10::text WHERE (SELECT placed FROM verdict)
     ), outbox AS (
         INSERT INTO outbox (message_id, routing_key, payload, created_at)
         SELECT $6::uuid, $7::text, $8::jsonb, $4::timestamptz WHERE (SELECT placed FROM verdict)
     ), marked AS (
         UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id IN (SELECT unnest((SELECT $9::uuid[])))
     )
     SELECT p.id, p.price, p.currency, v.placed, now() AS at,
            CASE WHEN v.placed
                      AND ((SELECT count(*) FROM reserve) <> (SELECT count(*) FROM takes WHERE take > 0)
                           OR (SELECT count(*) FROM hold) <> (SELECT count(*) FROM product WHERE capped))
                 THEN stock_moved_under_lock() END AS stock_moved
     FROM product p CROSS JOIN verdict v";

/// The SQLSTATE of `stock_moved_under_lock()` (migration V2).
const STOCK_MOVED_UNDER_LOCK: &str = "OM001";

/// What a refusal is explained by, read on a fresh snapshot: each product's total
/// available, cap and the customer's holding.
const STOCK_SQL: &str = "SELECT p.id, p.currency, p.max_per_customer,
        coalesce((SELECT h.held FROM customer_holdings h
                  WHERE h.product_id = p.id AND h.customer_id = $2), 0) AS held,
        (SELECT coalesce(sum(b.inventory - b.reserved), 0)::bigint
         FROM stock_buckets b WHERE b.product_id = p.id) AS available
    FROM products p WHERE p.id = ANY($1)";

/// What a placement statement decided, with the product rows it was decided on.
enum Decision {
    /// Placed at the statement's transaction time.
    Placed(HashMap<Uuid, ProductRow>, DateTime<Utc>),
    Refused,
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
            // A free bucket with enough; else wait for one of those that are held; else
            // (none has enough, or the one waited for was emptied meanwhile) judge the line
            // on the product's total. A refusing statement still committed its marks (or
            // made them in the caller's transaction), so the later ones have none to make.
            let marked = SentMessages::none();
            let mut decided =
                place_one_line(client, PLACE_ONE_LINE, placement, sent, product, quantity).await?;
            if matches!(decided, Decision::Refused) {
                decided = place_one_line(
                    client,
                    WAIT_FOR_ONE_BUCKET,
                    placement,
                    &marked,
                    product,
                    quantity,
                )
                .await?;
            }
            if matches!(decided, Decision::Refused) {
                decided = place_lines(client, placement, &marked).await?;
            }
            decided
        }
        None => place_lines(client, placement, sent).await?,
    };
    let (stock, at) = match decision {
        Decision::Placed(stock, at) => (stock, at),
        Decision::Refused => {
            let stock = read_stock(client, new).await?;
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

/// Whether a placement statement undid itself because stock or a holding moved between its
/// snapshot and its locks.
fn moved_under_lock(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(e)
        if e.code().is_some_and(|code| code.code() == STOCK_MOVED_UNDER_LOCK))
}

/// Runs a one-line statement ([`PLACE_ONE_LINE`] or [`WAIT_FOR_ONE_BUCKET`]); `Refused`
/// means only that the bucket it tried could not take the line.
async fn place_one_line(
    client: &(impl ClientLike + ?Sized),
    statement: &'static str,
    placement: &Placement<'_>,
    sent: &SentMessages,
    product: ProductId,
    quantity: Quantity,
) -> Result<Decision, StoreError> {
    let rows = run_placement(
        client,
        statement,
        placement,
        sent,
        param(&product.as_uuid()),
        param(&i32::from(quantity.get())),
    )
    .await;
    let rows = match rows {
        Err(e) if moved_under_lock(&e) => return Ok(Decision::Again),
        rows => rows?,
    };
    match rows.first() {
        Some(row) => Ok(Decision::Placed(
            HashMap::from([(product.as_uuid(), ProductRow::from_row(row)?)]),
            row.try_get("at")?,
        )),
        None => Ok(Decision::Refused),
    }
}

/// Runs [`PLACE_LINES`] for the order's lines.
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
        PLACE_LINES,
        placement,
        sent,
        param(&product_ids),
        param(&quantities),
    )
    .await;
    let rows = match rows {
        Err(e) if moved_under_lock(&e) => return Ok(Decision::Again),
        rows => rows?,
    };
    let placed = match rows.first() {
        Some(row) if row.try_get::<_, bool>("placed")? => Some(row.try_get("at")?),
        _ => None,
    };
    let Some(at) = placed else {
        return Ok(Decision::Refused);
    };
    let stock = rows
        .iter()
        .map(|row| Ok((row.try_get("id")?, ProductRow::from_row(row)?)))
        .collect::<Result<HashMap<Uuid, ProductRow>, StoreError>>()?;
    Ok(Decision::Placed(stock, at))
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
            param(&Json(&placement.event)),
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
}

impl ProductRow {
    fn from_row(row: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            price: row.try_get("price")?,
            currency: row.try_get("currency")?,
        })
    }
}

/// A product's stock and cap as [`STOCK_SQL`] read them.
struct ProductStock {
    currency: String,
    available: i64,
    limit: Option<i32>,
    held: i32,
}

async fn read_stock(
    client: &(impl ClientLike + ?Sized),
    new: &NewOrder,
) -> Result<HashMap<Uuid, ProductStock>, StoreError> {
    let ids: Vec<Uuid> = new.lines.iter().map(|(id, _)| id.as_uuid()).collect();
    let customer = new.customer_id.as_ref().map(CustomerId::as_str);
    let rows = query(client, STOCK_SQL, params![ids, customer]).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                ProductStock {
                    currency: row.try_get("currency")?,
                    available: row.try_get("available")?,
                    limit: row.try_get("max_per_customer")?,
                    held: row.try_get("held")?,
                },
            ))
        })
        .collect()
}

/// Why an order was refused, judged on a fresh read of its products; `None` when nothing
/// in it refuses the order.
fn refusal(new: &NewOrder, stock: &HashMap<Uuid, ProductStock>) -> Option<StoreError> {
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
    // Staff orders without a customer are not capped.
    if new.customer_id.is_some() {
        let beyond = new.lines.iter().find_map(|(id, quantity)| {
            let product = &stock[&id.as_uuid()];
            let limit = product.limit?;
            (product.held + i32::from(quantity.get()) > limit).then_some(LimitExceeded {
                product_id: id,
                limit,
                held: product.held,
            })
        });
        if let Some(beyond) = beyond {
            return Some(StoreError::LimitExceeded(beyond));
        }
    }
    let shortages: Vec<Shortage> = new
        .lines
        .iter()
        .filter_map(|(id, quantity)| {
            let available = stock[&id.as_uuid()].available;
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
        Json(&event),
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
