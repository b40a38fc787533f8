//! What the relay's scheduled run measures in the database: the outbox backlog, the orders
//! that did not settle, and whether the stock of the products that changed adds up to their
//! ledger (INVARIANTS.md 6).

use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::sql::{execute, params, query, query_opt};
use super::StoreError;
use crate::domain::ProductId;

/// The outbox and order figures of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Seconds since the oldest outbox row still unpublished was written; 0 when none is.
    pub oldest_unpublished_age: f64,
    /// Orders that have not settled for longer than the relay's period: still `pending`, or
    /// shipped or cancelled with their stock still reserved (the relay's notion, migration
    /// V5), announced again or not.
    pub unsettled_orders: i64,
}

/// One round trip, on the partial indexes of unpublished rows and unsettled orders.
pub async fn backlog(pool: &Pool, unsettled_after: Duration) -> Result<Backlog, StoreError> {
    let client = pool.get().await?;
    let row = super::sql::query_one(
        &client,
        "SELECT coalesce(extract(epoch FROM now() - (
                    SELECT min(created_at) FROM outbox WHERE published_at IS NULL)), 0)::float8,
                (SELECT count(*) FROM orders
                 WHERE (status = 'pending'
                        OR (stock = 'reserved' AND status IN ('shipped', 'delivered', 'cancelled')))
                   AND updated_at < now() - make_interval(secs => $1))",
        params![unsettled_after.as_secs_f64()],
    )
    .await?;
    Ok(Backlog {
        // A row written by a transaction that started after ours reads as slightly negative.
        oldest_unpublished_age: row.try_get::<_, f64>(0)?.max(0.0),
        unsettled_orders: row.try_get(1)?,
    })
}

/// A product whose stored stock is not what its ledger sums to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockDrift {
    pub product_id: ProductId,
    pub ledger_inventory: i64,
    pub ledger_reserved: i64,
    pub stored_inventory: i64,
    pub stored_reserved: i64,
}

/// What one check looked at and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockCheck {
    /// Products checked.
    pub checked: usize,
    pub drifting: Vec<StockDrift>,
    /// Ledger rows at or below this sequence number are checked for good.
    pub watermark: i64,
}

/// Ledger sequence numbers one check scans at most, so a run after a long pause stays short.
const LEDGER_SPAN: i64 = 100_000;

/// Checks that every product whose ledger changed since the last check (at most
/// `max_products` of them, the earliest changed first; the next runs carry on) has the
/// stored `inventory` and `reserved` its ledger sums to. `None` when another run is checking.
///
/// The stored figures are read through the view `product_stock` (migration V11), which a
/// change of how stock is stored redefines, and in the same statement as the ledger sums:
/// one snapshot, in which every stock change is visible together with its ledger row or not
/// at all, so a consistent product never reads as drifting.
///
/// The watermark is safe although sequence numbers are handed out in one order and
/// committed in another: a row below the highest visible number may belong to a
/// transaction still running, and would commit after the check. So the watermark moves in
/// two steps. A check records a candidate: the highest number it sees, with the first
/// transaction id not yet given out (`pg_snapshot_xmax`) and the time. Any row at or below
/// the candidate that the check could not see belongs to a transaction running at that
/// moment — it drew its number before the candidate's row committed. A later check moves the
/// watermark up to the candidate only once every such transaction has ended: none with an
/// older id is still running (`pg_snapshot_xmin` has passed the candidate's), and none that
/// started before it (`listing_horizon()`, migration V8: it also covers a transaction that
/// drew a number but has no id yet). Until then the rows above the watermark are checked
/// again on every run, so a late row is checked once it is visible, and a drift is found in
/// the first run that can see it.
pub async fn check_stock(pool: &Pool, max_products: i64) -> Result<Option<StockCheck>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(state) = query_opt(
        &tx,
        "SELECT checked_seq, candidate_seq,
                coalesce(pg_snapshot_xmin(pg_current_snapshot()) >= candidate_xid
                         AND listing_horizon() > candidate_at, false) AS candidate_settled
         FROM stock_check FOR UPDATE SKIP LOCKED",
        params![],
    )
    .await?
    else {
        return Ok(None);
    };
    let watermark: i64 = state.try_get("checked_seq")?;
    let settled_up_to = match state.try_get::<_, Option<i64>>("candidate_seq")? {
        Some(candidate) if state.try_get("candidate_settled")? => candidate.max(watermark),
        _ => watermark,
    };

    let changed = query(
        &tx,
        "SELECT product_id, min(seq) AS first_seq FROM inventory_ledger
         WHERE seq > $1 AND seq <= $1 + $2
         GROUP BY product_id
         ORDER BY first_seq
         LIMIT $3",
        params![watermark, LEDGER_SPAN, max_products.saturating_add(1)],
    )
    .await?;
    let cap = usize::try_from(max_products).unwrap_or(0);
    // Every row below the first product left for later belongs to a product checked now.
    let covered_up_to = match changed.get(cap) {
        Some(next) => next.try_get::<_, i64>("first_seq")? - 1,
        None => watermark.saturating_add(LEDGER_SPAN),
    };
    let products: Vec<Uuid> = changed
        .iter()
        .take(cap)
        .map(|row| row.try_get("product_id"))
        .collect::<Result<_, _>>()?;

    let mut drifting = Vec::new();
    if !products.is_empty() {
        let rows = query(
            &tx,
            "SELECT s.product_id, s.inventory::int8 AS stored_inventory,
                    s.reserved::int8 AS stored_reserved,
                    l.inventory AS ledger_inventory, l.reserved AS ledger_reserved
             FROM product_stock s
             CROSS JOIN LATERAL (
                 SELECT coalesce(sum(inventory_delta), 0)::int8 AS inventory,
                        coalesce(sum(reserved_delta), 0)::int8 AS reserved
                 FROM inventory_ledger WHERE product_id = s.product_id) l
             WHERE s.product_id = ANY($1)
               AND (l.inventory <> s.inventory OR l.reserved <> s.reserved)
             ORDER BY s.product_id",
            params![products],
        )
        .await?;
        for row in &rows {
            drifting.push(StockDrift {
                product_id: ProductId::from_uuid(row.try_get("product_id")?),
                ledger_inventory: row.try_get("ledger_inventory")?,
                ledger_reserved: row.try_get("ledger_reserved")?,
                stored_inventory: row.try_get("stored_inventory")?,
                stored_reserved: row.try_get("stored_reserved")?,
            });
        }
    }

    let new_watermark = watermark.max(settled_up_to.min(covered_up_to));
    // The candidate's number and transaction id come from this statement's one snapshot;
    // the time is taken after it, so every transaction it could not see started before.
    execute(
        &tx,
        "UPDATE stock_check SET checked_seq = $1,
                candidate_seq = (SELECT max(seq) FROM inventory_ledger),
                candidate_xid = pg_snapshot_xmax(pg_current_snapshot()),
                candidate_at = clock_timestamp(),
                checked_at = now()",
        params![new_watermark],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(StockCheck {
        checked: products.len(),
        drifting,
        watermark: new_watermark,
    }))
}
