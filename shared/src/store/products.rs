use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::sql::{execute, params, query, query_one, query_opt};
use super::{corrupt, Listing, Page, PageRequest, Position, Shortage, StoreError};
use crate::domain::{
    AdjustmentReason, Currency, Description, Money, OrderId, PerCustomerLimit, Product, ProductId,
    ProductName, Sku, Staff, StockBuckets, StockDelta,
};

/// A product with its stock totals: the sums over its buckets (migration V12), read in the
/// statement's snapshot, so exact as of one moment.
const SELECT_PRODUCT: &str = "SELECT p.id, p.sku, p.name, p.description, p.price, p.currency,
        p.stock_buckets, p.max_per_customer, p.created_at, p.updated_at, s.inventory, s.reserved
    FROM products p
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(b.inventory), 0)::bigint AS inventory,
               coalesce(sum(b.reserved), 0)::bigint AS reserved
        FROM stock_buckets b WHERE b.product_id = p.id
    ) s";

/// A product as `POST /products` asks for it.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: Option<Sku>,
    pub name: ProductName,
    pub description: Option<Description>,
    pub price: Money,
    pub currency: Currency,
    pub inventory: i64,
    pub stock_buckets: StockBuckets,
    pub max_per_customer: Option<PerCustomerLimit>,
}

/// The fields `PATCH /products/{id}` may change; `None` leaves a field as it is, and
/// `description: Some(None)` clears it (`max_per_customer: Some(None)` lifts the cap).
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<ProductName>,
    pub description: Option<Option<Description>>,
    pub price: Option<Money>,
    pub stock_buckets: Option<StockBuckets>,
    pub max_per_customer: Option<Option<PerCustomerLimit>>,
}

pub(crate) fn product_from_row(row: &Row) -> Result<Product, StoreError> {
    let currency: String = row.try_get("currency")?;
    let inventory: i64 = row.try_get("inventory")?;
    let reserved: i64 = row.try_get("reserved")?;
    let buckets: i16 = row.try_get("stock_buckets")?;
    let limit: Option<i32> = row.try_get("max_per_customer")?;
    Ok(Product {
        id: ProductId::from_uuid(row.try_get("id")?),
        sku: row.try_get::<_, Option<String>>("sku")?.map(Sku::from_db),
        name: ProductName::from_db(row.try_get("name")?),
        description: row
            .try_get::<_, Option<String>>("description")?
            .map(Description::from_db),
        price: Money::from_db(row.try_get("price")?),
        currency: Currency::parse(&currency).map_err(|_| corrupt("currency", &currency))?,
        inventory,
        reserved,
        available: inventory - reserved,
        stock_buckets: StockBuckets::try_from(i64::from(buckets))
            .map_err(|_| corrupt("stock_buckets", buckets))?,
        max_per_customer: limit
            .map(|l| {
                PerCustomerLimit::try_from(i64::from(l)).map_err(|_| corrupt("max_per_customer", l))
            })
            .transpose()?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// `total` units over `parts` buckets as evenly as integers allow, the remainder on the first
/// buckets: what a new product, a restock and a rebucketing put in each bucket.
pub(crate) fn spread(total: i64, parts: usize) -> Vec<i64> {
    let parts_i = parts.max(1) as i64;
    (0..parts_i)
        .map(|i| total / parts_i + i64::from(i < total % parts_i))
        .collect()
}

async fn read_product(
    client: &(impl super::ClientLike + ?Sized),
    id: ProductId,
) -> Result<Product, StoreError> {
    let sql = format!("{SELECT_PRODUCT} WHERE p.id = $1");
    let row = query_opt(client, &sql, params![id.as_uuid()])
        .await?
        .ok_or(StoreError::NotFound)?;
    product_from_row(&row)
}

/// Creates the product, its stock buckets (the inventory spread over them) and the ledger
/// entry for its initial stock, which names the staff member who created it: one statement.
pub async fn create_product(
    pool: &Pool,
    new: &NewProduct,
    by: &Staff,
) -> Result<Product, StoreError> {
    let client = pool.get().await?;
    let buckets = usize::from(new.stock_buckets.get());
    let bucket_numbers: Vec<i16> = (0..buckets as i16).collect();
    let result = query_one(
        &client,
        "WITH created AS (
             INSERT INTO products (id, sku, name, description, price, currency, stock_buckets, max_per_customer)
             VALUES ($1, $2, $3, $4, $5, $6, $9, $10)
             RETURNING *
         ), buckets AS (
             INSERT INTO stock_buckets (product_id, bucket, inventory, reserved)
             SELECT id, b.bucket, b.inventory, 0 FROM created,
                    unnest($11::smallint[], $12::bigint[]) AS b(bucket, inventory)
         ), ledger AS (
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
             SELECT id, $7, 0, 'initial', $8 FROM created WHERE $7 > 0
         )
         SELECT id, sku, name, description, price, currency, stock_buckets, max_per_customer,
                created_at, updated_at, $7 AS inventory, 0::bigint AS reserved
         FROM created",
        params![
            ProductId::generate().as_uuid(),
            new.sku.as_ref().map(Sku::as_str),
            new.name.as_str(),
            new.description.as_ref().map(Description::as_str),
            new.price.as_decimal(),
            new.currency.as_str(),
            new.inventory,
            by.subject(),
            i16::from(new.stock_buckets.get()),
            new.max_per_customer.map(|l| i32::from(l.get())),
            bucket_numbers,
            spread(new.inventory, buckets),
        ],
    )
    .await;
    match result {
        Ok(row) => product_from_row(&row),
        Err(StoreError::Database(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(StoreError::DuplicateSku)
        }
        Err(e) => Err(e),
    }
}

pub async fn get_product(pool: &Pool, id: ProductId) -> Result<Product, StoreError> {
    read_product(&pool.get().await?, id).await
}

pub async fn list_products(pool: &Pool, page: PageRequest) -> Result<Page<Product>, StoreError> {
    let client = pool.get().await?;
    // Two statements, so that each is planned as a range on `(created_at, id)` below the
    // listing horizon (V8).
    let rows = match page.after_created() {
        None => {
            let sql = format!(
                "{SELECT_PRODUCT} WHERE p.created_at < listing_horizon()
                 ORDER BY p.created_at, p.id LIMIT $1"
            );
            query(&client, &sql, params![page.limit() + 1]).await?
        }
        Some((at, id)) => {
            let sql = format!(
                "{SELECT_PRODUCT}
                 WHERE (p.created_at, p.id) > ($1, $2) AND p.created_at < listing_horizon()
                 ORDER BY p.created_at, p.id LIMIT $3"
            );
            query(&client, &sql, params![at, id, page.limit() + 1]).await?
        }
    };
    let products = rows
        .iter()
        .map(product_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(products, page, Listing::Products, |p| {
        Position::Created(p.created_at, p.id.as_uuid())
    }))
}

/// A product's buckets, locked in bucket order, as `(bucket, inventory, reserved)`.
///
/// The caller holds the product row's `FOR NO KEY UPDATE` lock, which every change of the
/// bucket set (rebucketing) takes too, so the rows read here are all of them. Orders do not
/// take that lock (they take `FOR KEY SHARE`, which it does not conflict with), so they go
/// on meanwhile, except on the buckets locked here.
async fn lock_buckets(
    tx: &deadpool_postgres::Transaction<'_>,
    id: ProductId,
) -> Result<Vec<(i16, i64, i64)>, StoreError> {
    let rows = query(
        tx,
        "SELECT bucket, inventory, reserved FROM stock_buckets
         WHERE product_id = $1 ORDER BY bucket FOR UPDATE",
        params![id.as_uuid()],
    )
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Locks the product row against other changes of its bucket set; `NotFound` without one.
async fn lock_product(
    tx: &deadpool_postgres::Transaction<'_>,
    id: ProductId,
) -> Result<i16, StoreError> {
    let row = query_opt(
        tx,
        "SELECT stock_buckets FROM products WHERE id = $1 FOR NO KEY UPDATE",
        params![id.as_uuid()],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(row.try_get(0)?)
}

/// Changes name, description, price, cap or bucket count. Open orders keep the unit prices
/// they snapshotted.
///
/// A new bucket count redistributes the product's stock while orders are being placed: the
/// product row and then every bucket are locked (in bucket order, as every statement that
/// locks several buckets does), the totals read under those locks are spread over the new
/// buckets, buckets beyond the count are deleted, and all of it commits at once. Totals do
/// not change, so no ledger entry is written. An order waiting on a deleted bucket finds
/// none and looks again (see `orders.rs`); one that counted fewer buckets than there are
/// re-reads the totals before it refuses.
///
/// A cap counts the units of orders placed while it is set (`order_items.held`); setting it
/// on a product with open orders does not count theirs.
pub async fn update_product(
    pool: &Pool,
    id: ProductId,
    patch: &ProductPatch,
) -> Result<Product, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let current = lock_product(&tx, id).await?;
    if let Some(buckets) = patch.stock_buckets {
        let wanted = buckets.get();
        if i16::from(wanted) != current {
            let locked = lock_buckets(&tx, id).await?;
            let inventory: i64 = locked.iter().map(|b| b.1).sum();
            let reserved: i64 = locked.iter().map(|b| b.2).sum();
            let parts = usize::from(wanted);
            let held = spread(reserved, parts);
            let free = spread(inventory - reserved, parts);
            // The most reserved with the least free would be the first bucket twice:
            // the free units go the other way round, so buckets stay near one size.
            let inventories: Vec<i64> = held
                .iter()
                .zip(free.iter().rev())
                .map(|(r, a)| r + a)
                .collect();
            let numbers: Vec<i16> = (0..i16::from(wanted)).collect();
            execute(
                &tx,
                "WITH gone AS (
                     DELETE FROM stock_buckets WHERE product_id = $1 AND bucket >= $2
                 )
                 INSERT INTO stock_buckets (product_id, bucket, inventory, reserved)
                 SELECT $1, b.bucket, b.inventory, b.reserved
                 FROM unnest($3::smallint[], $4::bigint[], $5::bigint[]) AS b(bucket, inventory, reserved)
                 ON CONFLICT (product_id, bucket) DO UPDATE
                     SET inventory = excluded.inventory, reserved = excluded.reserved",
                params![id.as_uuid(), i16::from(wanted), numbers, inventories, held],
            )
            .await?;
        }
    }
    let description = patch.description.as_ref();
    let limit = patch.max_per_customer;
    execute(
        &tx,
        "UPDATE products SET
             name = coalesce($2, name),
             description = CASE WHEN $3 THEN $4 ELSE description END,
             price = coalesce($5, price),
             stock_buckets = coalesce($6, stock_buckets),
             max_per_customer = CASE WHEN $7 THEN $8 ELSE max_per_customer END,
             updated_at = now()
         WHERE id = $1",
        params![
            id.as_uuid(),
            patch.name.as_ref().map(ProductName::as_str),
            description.is_some(),
            description.and_then(|d| d.as_ref().map(Description::as_str)),
            patch.price.map(Money::as_decimal),
            patch.stock_buckets.map(|b| i16::from(b.get())),
            limit.is_some(),
            limit.flatten().map(|l| i32::from(l.get())),
        ],
    )
    .await?;
    let product = read_product(&tx, id).await?;
    tx.commit().await?;
    Ok(product)
}

/// Adds or removes stock on hand, never below what open orders hold, with its ledger entry.
///
/// The buckets are locked (in bucket order) and changed by a second statement, so the check
/// and the change agree on the same rows. A restock is spread over the buckets; a decrease
/// takes from each bucket's available units in turn, so it fails only when the product's
/// total available is short, never because of how the units are spread.
pub async fn adjust_inventory(
    pool: &Pool,
    id: ProductId,
    delta: StockDelta,
    reason: &AdjustmentReason,
    by: &Staff,
) -> Result<Product, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_product(&tx, id).await?;
    let buckets = lock_buckets(&tx, id).await?;
    let inventory: i64 = buckets.iter().map(|b| b.1).sum();
    let reserved: i64 = buckets.iter().map(|b| b.2).sum();
    if inventory + delta.get() < reserved || buckets.is_empty() {
        return Err(StoreError::InsufficientStock(vec![Shortage {
            product_id: id,
            requested: -delta.get(),
            available: inventory - reserved,
        }]));
    }
    let deltas = bucket_adjustments(&buckets, delta.get());
    let numbers: Vec<i16> = buckets.iter().map(|b| b.0).collect();
    execute(
        &tx,
        "WITH adjusted AS (
             UPDATE stock_buckets b SET inventory = b.inventory + d.delta
             FROM unnest($5::smallint[], $6::bigint[]) AS d(bucket, delta)
             WHERE b.product_id = $1 AND b.bucket = d.bucket AND d.delta <> 0
         ), touched AS (
             UPDATE products SET updated_at = now() WHERE id = $1
         )
         INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, note, actor)
         VALUES ($1, $2, 0, 'adjustment', $3, $4)",
        params![
            id.as_uuid(),
            delta.get(),
            reason.as_str(),
            by.subject(),
            numbers,
            deltas,
        ],
    )
    .await?;
    let product = read_product(&tx, id).await?;
    tx.commit().await?;
    Ok(product)
}

/// Per bucket (in the order given), what an adjustment of `delta` changes its inventory by:
/// a restock spread evenly, a decrease taken from each bucket's available units in turn.
/// The caller has checked that the total available covers a decrease.
fn bucket_adjustments(buckets: &[(i16, i64, i64)], delta: i64) -> Vec<i64> {
    if delta >= 0 {
        return spread(delta, buckets.len());
    }
    let mut wanted = -delta;
    buckets
        .iter()
        .map(|&(_, inventory, reserved)| {
            let take = wanted.min(inventory - reserved);
            wanted -= take;
            -take
        })
        .collect()
}

/// One entry of a product's inventory ledger (`GET /products/{id}/stock-movements`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockMovement {
    #[serde(skip)]
    seq: i64,
    pub delta: StockMovementDelta,
    /// `initial`, `adjustment`, `reserve`, `commit` or `release`.
    pub reason: String,
    pub order_id: Option<OrderId>,
    pub adjustment_reason: Option<String>,
    pub by: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StockMovementDelta {
    pub inventory: i64,
    pub reserved: i64,
}

/// A product's ledger, oldest first, a page at a time; `NotFound` when there is no such
/// product (a product without stock has an empty ledger). One statement: the product row
/// tells the two apart, the ledger's `(product_id, seq)` index serves the page.
pub async fn list_stock_movements(
    pool: &Pool,
    id: ProductId,
    page: PageRequest,
) -> Result<Page<StockMovement>, StoreError> {
    let client = pool.get().await?;
    // The product row tells "no such product" from "no movements"; the page is a range on
    // `(product_id, at, seq)` below the listing horizon (V8), one statement per shape so
    // that a deep page of a busy product is a range too.
    let page_of = |after: &str| {
        format!(
            "SELECT l.seq, l.inventory_delta, l.reserved_delta, l.reason, l.order_id, l.note, l.actor, l.at
             FROM products p
             LEFT JOIN LATERAL (
                 SELECT * FROM inventory_ledger l
                 WHERE l.product_id = p.id {after} AND l.at < listing_horizon()
                 ORDER BY l.at, l.seq LIMIT $2
             ) l ON true
             WHERE p.id = $1
             ORDER BY l.at, l.seq"
        )
    };
    let limit = page.limit() + 1;
    let rows = match page.after_entry() {
        None => query(&client, &page_of(""), params![id.as_uuid(), limit]).await?,
        Some((at, seq)) => {
            let sql = page_of("AND (l.at, l.seq) > ($3, $4)");
            query(&client, &sql, params![id.as_uuid(), limit, at, seq]).await?
        }
    };
    if rows.is_empty() {
        return Err(StoreError::NotFound);
    }
    let mut movements = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(seq) = row.try_get::<_, Option<i64>>("seq")? else {
            continue;
        };
        movements.push(StockMovement {
            seq,
            delta: StockMovementDelta {
                inventory: row.try_get("inventory_delta")?,
                reserved: row.try_get("reserved_delta")?,
            },
            reason: row.try_get("reason")?,
            order_id: row
                .try_get::<_, Option<uuid::Uuid>>("order_id")?
                .map(OrderId::from_uuid),
            adjustment_reason: row.try_get("note")?,
            by: row.try_get("actor")?,
            at: row.try_get("at")?,
        });
    }
    Ok(Page::from_rows(
        movements,
        page,
        Listing::StockMovements,
        |m| Position::Entry(m.at, m.seq),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreading_loses_no_unit() {
        for (total, parts) in [(0, 1), (7, 8), (100, 8), (5, 64), (1_000_000_000, 3)] {
            let parts_of = spread(total, parts);
            assert_eq!(parts_of.len(), parts);
            assert_eq!(parts_of.iter().sum::<i64>(), total);
            let (min, max) = (parts_of.iter().min(), parts_of.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{parts_of:?}");
        }
    }

    #[test]
    fn a_decrease_takes_from_every_bucket_in_turn() {
        // Available 1, 0, 4: a decrease of 5 needs all three.
        let buckets = [(0, 3, 2), (1, 2, 2), (2, 4, 0)];
        assert_eq!(bucket_adjustments(&buckets, -5), vec![-1, 0, -4]);
        assert_eq!(bucket_adjustments(&buckets, 4), vec![2, 1, 1]);
    }
}
