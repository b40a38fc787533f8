//! The processor's use case: apply a batch of order events in one transaction with a fixed
//! number of set-based statements, whatever the batch size.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use chrono::{SubsecRound, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::outbox::mark_sent;
use super::sql::{changed_rows, execute, params, query, query_one};
use super::{corrupt, SentMessages, StoreError, Written};
use crate::domain::{Actor, OrderEvent, OrderId, OrderStatus, StockEffect};

/// What a message asks the processor to do with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderCommand {
    /// `order.created`: validate, then `processed` or `rejected`.
    Process,
    /// `order.status_changed.shipped`: commit the order's stock.
    CommitStock,
    /// `order.status_changed.cancelled`: release the order's stock.
    ReleaseStock,
}

/// How a command ended for its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// It changed the order or its stock.
    Applied,
    /// The order's stored state shows it was applied already (a duplicate or a copy) or
    /// overtaken (a cancel before processing): nothing to do.
    AlreadyApplied,
    /// No such order.
    UnknownOrder,
}

/// The stock path stored in `orders.stock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stock {
    Reserved,
    Committed,
    Released,
}

impl Stock {
    fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "reserved" => Ok(Stock::Reserved),
            "committed" => Ok(Stock::Committed),
            "released" => Ok(Stock::Released),
            other => Err(corrupt("stock", other)),
        }
    }

    fn after(effect: StockEffect) -> Self {
        match effect {
            StockEffect::Commit => Stock::Committed,
            StockEffect::Release => Stock::Released,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stock::Reserved => "reserved",
            Stock::Committed => "committed",
            Stock::Released => "released",
        }
    }
}

struct LockedOrder {
    status: OrderStatus,
    stock: Stock,
    customer: Option<String>,
    lines: Vec<LockedLine>,
}

struct LockedLine {
    product: Uuid,
    quantity: i64,
    /// Its reservation is in the ledger.
    reserved: bool,
    /// It counts in the customer's holding of a capped product (`order_items.held`).
    held: bool,
}

/// An outcome per (order, command) of a batch.
pub type BatchOutcomes = HashMap<(OrderId, OrderCommand), CommandOutcome>;

/// What a batch decided, before it is written.
#[derive(Debug, Default)]
struct AppliedBatch {
    outcomes: BatchOutcomes,
    events: Vec<OrderEvent>,
}

/// Applies `commands` (one per order and kind; duplicates are merged by the caller or here)
/// in one transaction. Each effect is guarded by the order's stored status and stock path,
/// read under a row lock, so however often a command arrives its effect happens once.
///
/// Round trips: begin, lock orders with their lines, lock products, one write statement,
/// commit — five, for one message or ten thousand.
///
/// `sent` is marked in the same transaction unless it fails.
pub async fn apply_order_commands(
    pool: &Pool,
    commands: &[(OrderId, OrderCommand, String)],
    sent: &SentMessages,
) -> Result<Written<BatchOutcomes>, StoreError> {
    let mut by_order: BTreeMap<OrderId, Vec<(OrderCommand, &str)>> = BTreeMap::new();
    for (order, command, correlation) in commands {
        by_order
            .entry(*order)
            .or_default()
            .push((*command, correlation.as_str()));
    }
    let order_ids: Vec<Uuid> = by_order.keys().map(OrderId::as_uuid).collect();

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Orders are locked in id order; products below in id order too. The API locks products
    // (order creation) or one order (status change), never an order then a product, so no
    // lock cycle can form.
    let lock_params = params![order_ids];
    let lock_orders = query(
        &tx,
        "SELECT o.id, o.status, o.stock, o.customer_id, i.product_id,
                    i.quantity::bigint AS quantity, i.held,
                    EXISTS (SELECT 1 FROM inventory_ledger l
                            WHERE l.order_id = o.id AND l.product_id = i.product_id
                              AND l.reason = 'reserve') AS reserved
             FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
             WHERE o.id = ANY($1)
             ORDER BY o.id
             FOR UPDATE OF o",
        lock_params,
    );
    // Polled together, the two statements go out in one round trip.
    let (rows, ()) = tokio::try_join!(lock_orders, mark_sent(&tx, sent))?;
    let mut locked: HashMap<Uuid, LockedOrder> = HashMap::new();
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let order = match locked.entry(id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let status: String = row.try_get("status")?;
                entry.insert(LockedOrder {
                    status: OrderStatus::parse(&status)
                        .ok_or_else(|| corrupt("status", &status))?,
                    stock: Stock::parse(&row.try_get::<_, String>("stock")?)?,
                    customer: row.try_get("customer_id")?,
                    lines: Vec::new(),
                })
            }
        };
        if let Some(product) = row.try_get::<_, Option<Uuid>>("product_id")? {
            order.lines.push(LockedLine {
                product,
                quantity: row.try_get("quantity")?,
                reserved: row.try_get("reserved")?,
                held: row.try_get::<_, Option<bool>>("held")?.unwrap_or(false),
            });
        }
    }

    let now = Utc::now().trunc_subsecs(6);
    let mut batch = AppliedBatch::default();
    let mut change_ids = Vec::new();
    let mut change_status: Vec<Option<&'static str>> = Vec::new();
    let mut change_stock: Vec<Option<&'static str>> = Vec::new();
    let mut product_deltas: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    // Units given back to customers' holdings, per (product, customer).
    let mut returned: BTreeMap<(Uuid, &str), i32> = BTreeMap::new();
    let (mut ledger_products, mut ledger_inventory, mut ledger_reserved) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut ledger_reasons, mut ledger_orders) = (Vec::new(), Vec::new());

    for (order_id, order_commands) in &by_order {
        let Some(order) = locked.get(&order_id.as_uuid()) else {
            for (command, _) in order_commands {
                batch
                    .outcomes
                    .insert((*order_id, *command), CommandOutcome::UnknownOrder);
            }
            continue;
        };
        let mut status = order.status;
        let mut new_status = None;
        let mut effect_applied = None;
        for (command, correlation) in order_commands {
            let applied = match command {
                OrderCommand::Process if status == OrderStatus::Pending => {
                    // The reservation made at creation is what makes an order fulfillable;
                    // an order without lines or with a line that was never reserved is
                    // rejected rather than shipped from stock it does not hold.
                    let fulfillable =
                        !order.lines.is_empty() && order.lines.iter().all(|l| l.reserved);
                    let to = if fulfillable {
                        OrderStatus::Processed
                    } else {
                        OrderStatus::Rejected
                    };
                    debug_assert!(status.can_become(to, Actor::Processor));
                    status = to;
                    new_status = Some(to);
                    batch
                        .events
                        .push(OrderEvent::status_changed(*order_id, to, now, correlation));
                    true
                }
                OrderCommand::Process => false,
                OrderCommand::CommitStock | OrderCommand::ReleaseStock => false,
            };
            // A copy of a command in the same batch meets the state its first made: it
            // must not turn that first one's "applied" into "applied before".
            let outcome = batch
                .outcomes
                .entry((*order_id, *command))
                .or_insert(CommandOutcome::AlreadyApplied);
            if applied {
                *outcome = CommandOutcome::Applied;
            }
        }
        // The stock path follows the (possibly just changed) status, only from `reserved`,
        // and only when a message asked for it or the processor itself rejected the order.
        let wanted = status.stock_effect().filter(|effect| {
            order_commands.iter().any(|(command, _)| {
                matches!(
                    (effect, command),
                    (StockEffect::Commit, OrderCommand::CommitStock)
                        | (StockEffect::Release, OrderCommand::ReleaseStock)
                )
            }) || new_status == Some(OrderStatus::Rejected)
        });
        if let (Some(effect), Stock::Reserved) = (wanted, order.stock) {
            effect_applied = Some(effect);
            for line in &order.lines {
                let (product, quantity) = (&line.product, line.quantity);
                let inventory = match effect {
                    StockEffect::Commit => -quantity,
                    StockEffect::Release => 0,
                };
                if let (StockEffect::Release, true, Some(customer)) =
                    (effect, line.held, order.customer.as_deref())
                {
                    *returned.entry((*product, customer)).or_default() +=
                        i32::try_from(quantity).map_err(|_| corrupt("quantity", quantity))?;
                }
                let delta = product_deltas.entry(*product).or_default();
                delta.0 += inventory;
                delta.1 -= quantity;
                ledger_products.push(*product);
                ledger_inventory.push(inventory);
                ledger_reserved.push(-quantity);
                ledger_reasons.push(match effect {
                    StockEffect::Commit => "commit",
                    StockEffect::Release => "release",
                });
                ledger_orders.push(order_id.as_uuid());
            }
            for (command, _) in order_commands {
                if matches!(
                    command,
                    OrderCommand::CommitStock | OrderCommand::ReleaseStock
                ) {
                    batch
                        .outcomes
                        .insert((*order_id, *command), CommandOutcome::Applied);
                }
            }
        }
        if new_status.is_some() || effect_applied.is_some() {
            change_ids.push(order_id.as_uuid());
            change_status.push(new_status.map(OrderStatus::as_str));
            change_stock.push(effect_applied.map(|e| Stock::after(e).as_str()));
        }
    }

    if !change_ids.is_empty() {
        let product_ids: Vec<Uuid> = product_deltas.keys().copied().collect();
        let mut moves = BucketMoves::default();
        if !product_ids.is_empty() {
            // The product rows first (`FOR NO KEY UPDATE`, as rebucketing takes it, so the
            // bucket set cannot change under us; orders' `FOR KEY SHARE` goes on), then their
            // buckets in `(product_id, bucket)` order, the global order of bucket locks.
            let rows = query(
                &tx,
                "WITH p AS (
                     SELECT id FROM products WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE
                 )
                 SELECT b.product_id, b.bucket, b.inventory, b.reserved
                 FROM stock_buckets b WHERE b.product_id IN (SELECT id FROM p)
                 ORDER BY b.product_id, b.bucket FOR UPDATE OF b",
                params![product_ids],
            )
            .await?;
            let mut buckets: BTreeMap<Uuid, Vec<(i16, i64, i64)>> = BTreeMap::new();
            for row in &rows {
                buckets.entry(row.try_get(0)?).or_default().push((
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ));
            }
            for (product, (inventory, reserved)) in &product_deltas {
                let held = buckets.get(product).map(Vec::as_slice).unwrap_or_default();
                moves.add(*product, held, -inventory, -reserved)?;
            }
        }
        // Holdings last, in (product, customer) order: after every bucket, as placements
        // take them.
        let (held_products, held_customers, held_units): (Vec<Uuid>, Vec<&str>, Vec<i32>) =
            returned.iter().map(|((p, c), q)| (*p, *c, *q)).fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |(mut ps, mut cs, mut qs), (p, c, q)| {
                    ps.push(p);
                    cs.push(c);
                    qs.push(q);
                    (ps, cs, qs)
                },
            );
        if !held_products.is_empty() {
            execute(
                &tx,
                "SELECT 1 FROM customer_holdings h
                 JOIN unnest($1::uuid[], $2::text[]) AS r(product_id, customer_id)
                   ON h.product_id = r.product_id AND h.customer_id = r.customer_id
                 ORDER BY h.product_id, h.customer_id FOR UPDATE OF h",
                params![held_products, held_customers],
            )
            .await?;
        }
        let message_ids: Vec<Uuid> = batch.events.iter().map(|e| e.message_id).collect();
        let routing_keys: Vec<String> = batch.events.iter().map(OrderEvent::routing_key).collect();
        let payloads: Vec<Json<&OrderEvent>> = batch.events.iter().map(Json).collect();
        execute(
            &tx,
            "WITH changes AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS c(id, status, stock)
             ), moved AS (
                 UPDATE orders o SET status = coalesce(c.status, o.status),
                                     stock = coalesce(c.stock, o.stock),
                                     updated_at = $4
                 FROM changes c WHERE o.id = c.id
             ), history AS (
                 INSERT INTO order_status_history (order_id, status, at, changed_by)
                 SELECT id, status, $4, 'system' FROM changes WHERE status IS NOT NULL
             ), stock AS (
                 UPDATE stock_buckets b SET inventory = b.inventory + d.inventory,
                                            reserved = b.reserved + d.reserved
                 FROM unnest($5::uuid[], $16::smallint[], $6::bigint[], $7::bigint[])
                      AS d(product_id, bucket, inventory, reserved)
                 WHERE b.product_id = d.product_id AND b.bucket = d.bucket
             ), holdings AS (
                 UPDATE customer_holdings h SET held = h.held - r.units
                 FROM unnest($17::uuid[], $18::text[], $19::int[]) AS r(product_id, customer_id, units)
                 WHERE h.product_id = r.product_id AND h.customer_id = r.customer_id
             ), ledger AS (
                 -- A commit or release names whoever asked for `shipped` or `cancelled`;
                 -- a rejection's release is the processor's own (no such request).
                 INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
                 SELECT product_id, inventory_delta, reserved_delta, reason, order_id, now(),
                        coalesce((SELECT h.changed_by FROM order_status_history h
                                  WHERE h.order_id = l.order_id
                                    AND h.status = CASE l.reason WHEN 'commit' THEN 'shipped' ELSE 'cancelled' END),
                                 'system')
                 FROM unnest($8::uuid[], $9::bigint[], $10::bigint[], $11::text[], $12::uuid[])
                      AS l(product_id, inventory_delta, reserved_delta, reason, order_id)
             )
             INSERT INTO outbox (message_id, routing_key, payload, created_at)
             SELECT message_id, routing_key, payload, $4
             FROM unnest($13::uuid[], $14::text[], $15::jsonb[]) AS x(message_id, routing_key, payload)",
            params![
                change_ids,
                change_status,
                change_stock,
                now,
                moves.products,
                moves.inventory,
                moves.reserved,
                ledger_products,
                ledger_inventory,
                ledger_reserved,
                ledger_reasons,
                ledger_orders,
                message_ids,
                routing_keys,
                payloads,
                moves.buckets,
                held_products,
                held_customers,
                held_units,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Written::committed(batch.outcomes, batch.events))
}

/// Per bucket, what a batch's commits and releases change: each product's units come out of
/// the buckets that hold reservations, in bucket order. An order does not remember which
/// bucket it took from (rebucketing moves reservations), and need not: any reserved unit of
/// the product is as good as another.
#[derive(Debug, Default, PartialEq)]
struct BucketMoves {
    products: Vec<Uuid>,
    buckets: Vec<i16>,
    inventory: Vec<i64>,
    reserved: Vec<i64>,
}

impl BucketMoves {
    /// Takes `released` reserved units of `product`, of which `committed` also leave the
    /// inventory, from `buckets` (`(bucket, inventory, reserved)`, locked, in bucket order).
    /// A bucket gives up inventory only along with its reserved units, so
    /// `reserved <= inventory` holds for it after the change.
    fn add(
        &mut self,
        product: Uuid,
        buckets: &[(i16, i64, i64)],
        committed: i64,
        released: i64,
    ) -> Result<(), StoreError> {
        let (mut committed, mut released) = (committed, released);
        for &(bucket, _, reserved) in buckets {
            if released == 0 {
                break;
            }
            let take = released.min(reserved);
            if take == 0 {
                continue;
            }
            let commit = committed.min(take);
            released -= take;
            committed -= commit;
            self.products.push(product);
            self.buckets.push(bucket);
            self.inventory.push(-commit);
            self.reserved.push(-take);
        }
        if released > 0 {
            return Err(corrupt(
                "stock_buckets",
                format!("product {product} holds fewer reserved units than its orders"),
            ));
        }
        Ok(())
    }
}

/// Counts one more guarded try of `message_id` (committed before the try, so a crash in
/// the try leaves it counted) and returns how many there have been.
pub async fn count_delivery(pool: &Pool, message_id: &str) -> Result<i32, StoreError> {
    let client = pool.get().await?;
    let row = query_one(
        &client,
        "INSERT INTO processor_deliveries (message_id, deliveries) VALUES ($1, 1)
         ON CONFLICT (message_id) DO UPDATE
             SET deliveries = processor_deliveries.deliveries + 1, last_seen = now()
         RETURNING deliveries",
        params![message_id],
    )
    .await?;
    Ok(row.try_get(0)?)
}

/// Forgets the count of a message that went through (or was parked).
pub async fn forget_delivery(pool: &Pool, message_id: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    execute(
        &client,
        "DELETE FROM processor_deliveries WHERE message_id = $1",
        params![message_id],
    )
    .await
}

/// Forgets counts of messages not seen for a day: their batch went through some other way.
pub async fn prune_delivery_counts(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    changed_rows(
        &client,
        "DELETE FROM processor_deliveries WHERE last_seen < now() - interval '1 day'",
        params![],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_and_releases_come_out_of_the_buckets_that_hold_reservations() {
        let product = Uuid::nil();
        let mut moves = BucketMoves::default();
        // Reserved 0, 2, 3: 4 units back, 3 of them shipped.
        let buckets = [(0, 5, 0), (1, 2, 2), (2, 3, 3)];
        moves.add(product, &buckets, 3, 4).unwrap();
        assert_eq!(moves.buckets, vec![1, 2]);
        assert_eq!(moves.reserved, vec![-2, -2]);
        assert_eq!(moves.inventory, vec![-2, -1]);
        assert!(BucketMoves::default().add(product, &buckets, 0, 6).is_err());
    }
}
