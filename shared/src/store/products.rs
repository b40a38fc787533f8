use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::sql::{params, query, query_one, query_opt};
use super::{corrupt, Listing, Page, PageRequest, Position, Shortage, StoreError};
use crate::domain::{
    AdjustmentReason, Currency, Description, Money, OrderId, Product, ProductId, ProductName, Sku,
    Staff, StockDelta,
};

const COLUMNS: &str =
    "id, sku, name, description, price, currency, inventory, reserved, created_at, updated_at";

/// A product as `POST /products` asks for it.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: Option<Sku>,
    pub name: ProductName,
    pub description: Option<Description>,
    pub price: Money,
    pub currency: Currency,
    pub inventory: i64,
}

/// The fields `PATCH /products/{id}` may change; `None` leaves a field as it is, and
/// `description: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<ProductName>,
    pub description: Option<Option<Description>>,
    pub price: Option<Money>,
}

pub(crate) fn product_from_row(row: &Row) -> Result<Product, StoreError> {
    let currency: String = row.try_get("currency")?;
    let inventory: i64 = row.try_get("inventory")?;
    let reserved: i64 = row.try_get("reserved")?;
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
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Creates the product and, in the same statement, the ledger entry for its initial stock,
/// which names the staff member who created it.
pub async fn create_product(
    pool: &Pool,
    new: &NewProduct,
    by: &Staff,
) -> Result<Product, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "WITH created AS (
             INSERT INTO products (id, sku, name, description, price, currency, inventory)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING {COLUMNS}
         ), ledger AS (
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
             SELECT id, inventory, 0, 'initial', $8 FROM created WHERE inventory > 0
         )
         SELECT {COLUMNS} FROM created"
    );
    let result = query_one(
        &client,
        &sql,
        params![
            ProductId::generate().as_uuid(),
            new.sku.as_ref().map(Sku::as_str),
            new.name.as_str(),
            new.description.as_ref().map(Description::as_str),
            new.price.as_decimal(),
            new.currency.as_str(),
            new.inventory,
            by.subject(),
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
    let client = pool.get().await?;
    let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
    let row = query_opt(&client, &sql, params![id.as_uuid()])
        .await?
        .ok_or(StoreError::NotFound)?;
    product_from_row(&row)
}

pub async fn list_products(pool: &Pool, page: PageRequest) -> Result<Page<Product>, StoreError> {
    let client = pool.get().await?;
    // Two statements, so that each is planned as a range on `(created_at, id)` below the
    // listing horizon (V8).
    let rows = match page.after_created() {
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM products WHERE created_at < listing_horizon()
                 ORDER BY created_at, id LIMIT $1"
            );
            query(&client, &sql, params![page.limit() + 1]).await?
        }
        Some((at, id)) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM products
                 WHERE (created_at, id) > ($1, $2) AND created_at < listing_horizon()
                 ORDER BY created_at, id LIMIT $3"
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

/// Changes name, description or price. Open orders keep the unit prices they snapshotted.
pub async fn update_product(
    pool: &Pool,
    id: ProductId,
    patch: &ProductPatch,
) -> Result<Product, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "UPDATE products SET
             name = coalesce($2, name),
             description = CASE WHEN $3 THEN $4 ELSE description END,
             price = coalesce($5, price),
             updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    );
    let description = patch.description.as_ref();
    let row = query_opt(
        &client,
        &sql,
        params![
            id.as_uuid(),
            patch.name.as_ref().map(ProductName::as_str),
            description.is_some(),
            description.and_then(|d| d.as_ref().map(Description::as_str)),
            patch.price.map(Money::as_decimal),
        ],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    product_from_row(&row)
}

/// Adds or removes stock on hand, never below what open orders hold, with its ledger entry.
///
/// The row is locked first and changed by a second statement: in READ COMMITTED each
/// statement sees what committed before it started, so the check and the change agree on
/// the same `reserved`. (Checking in a CTE of the changing statement does not: its update
/// can meet a newer row than the one checked, which the CHECK constraint then refuses.)
pub async fn adjust_inventory(
    pool: &Pool,
    id: ProductId,
    delta: StockDelta,
    reason: &AdjustmentReason,
    by: &Staff,
) -> Result<Product, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let current = query_opt(
        &tx,
        "SELECT inventory, reserved FROM products WHERE id = $1 FOR UPDATE",
        params![id.as_uuid()],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    let (inventory, reserved): (i64, i64) =
        (current.try_get("inventory")?, current.try_get("reserved")?);
    if inventory + delta.get() < reserved {
        return Err(StoreError::InsufficientStock(vec![Shortage {
            product_id: id,
            requested: -delta.get(),
            available: inventory - reserved,
        }]));
    }
    let sql = format!(
        "WITH adjusted AS (
             UPDATE products SET inventory = inventory + $2, updated_at = now()
             WHERE id = $1
             RETURNING {COLUMNS}
         ), ledger AS (
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, note, actor)
             SELECT id, $2, 0, 'adjustment', $3, $4 FROM adjusted
         )
         SELECT {COLUMNS} FROM adjusted"
    );
    let row = query_one(
        &tx,
        &sql,
        params![id.as_uuid(), delta.get(), reason.as_str(), by.subject()],
    )
    .await?;
    let product = product_from_row(&row)?;
    tx.commit().await?;
    Ok(product)
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
