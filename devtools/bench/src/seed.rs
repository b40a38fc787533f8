//! Data the benchmarks start from, written in bulk with plain SQL (the API is what is being
//! measured, not what sets the stage).

use deadpool_postgres::Pool;
use shared::config::DatabaseConfig;
use shared::db::build_pool;
use uuid::Uuid;

/// Products `1..=SPREAD_PRODUCTS` take the spread load; product 0 is the hot one.
pub const SPREAD_PRODUCTS: i64 = 1_000;
pub const HOT_PRODUCT: i64 = 0;
/// Enough stock that no benchmark ever runs out, hot product included.
pub const STOCK: i64 = 1_000_000_000;

/// Product `k`'s id: fixed, so pgbench (integers only) can name the same rows.
pub fn product_id(k: i64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{k:012}")).expect("a valid product uuid")
}

/// The same id in SQL, from an integer expression (pgbench's `:k`).
pub fn product_id_sql(k: &str) -> String {
    format!("('00000000-0000-4000-8000-' || lpad(({k})::text, 12, '0'))::uuid")
}

/// A pool of `size` connections to `url`, as the functions build it.
pub fn pool(url: &str, size: usize) -> Pool {
    let mut config = DatabaseConfig::from_url(url).expect("bench database url");
    config.pool_size = size;
    config.timeout = std::time::Duration::from_secs(30);
    build_pool(&config).expect("pool")
}

/// The hot product and `SPREAD_PRODUCTS` others, each with `STOCK` units and its ledger row.
pub async fn products(pool: &Pool) {
    let client = pool.get().await.expect("seed connection");
    client
        .batch_execute(&format!(
            "INSERT INTO products (id, name, price, currency, inventory, reserved)
             SELECT {id}, 'bench product ' || k, 9.99, 'USD', {STOCK}, 0
             FROM generate_series(0, {SPREAD_PRODUCTS}) k;
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
             SELECT id, inventory, 0, 'initial', 'bench-staff' FROM products;
             ANALYZE;",
            id = product_id_sql("k"),
        ))
        .await
        .expect("seed products");
}

/// Orders a shop in use already has: `count` delivered orders of one unit each over the
/// spread products, with their lines, history, ledger and published events, then `VACUUM
/// ANALYZE`. Measuring on empty tables would measure the plans PostgreSQL caches for an
/// empty table (sequential scans in foreign-key checks and generic plans) as the tables
/// grow under the load, a state a live system is in only for its first minute.
pub async fn history(pool: &Pool, count: i64) {
    let client = pool.get().await.expect("seed connection");
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE seeded AS
               SELECT gen_random_uuid() AS id, {product} AS product_id,
                      now() - interval '30 days' + n * interval '10 ms' AS at
               FROM generate_series(1, {count}) n;
             INSERT INTO orders (id, status, stock, currency, created_at, updated_at)
               SELECT id, 'delivered', 'committed', 'USD', at, at FROM seeded;
             INSERT INTO order_items (order_id, product_id, quantity, unit_price)
               SELECT id, product_id, 1, 9.99 FROM seeded;
             INSERT INTO order_status_history (order_id, status, at, changed_by)
               SELECT id, s, at, 'bench-staff' FROM seeded, unnest(ARRAY['pending', 'processed', 'shipped', 'delivered']) s;
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, at, actor)
               SELECT product_id, d.inventory, d.reserved, d.reason, id, at, 'bench-staff'
               FROM seeded, (VALUES (0, 1, 'reserve'), (-1, -1, 'commit')) d(inventory, reserved, reason);
             UPDATE products p SET inventory = p.inventory - s.n
               FROM (SELECT product_id, count(*) AS n FROM seeded GROUP BY product_id) s
               WHERE p.id = s.product_id;
             INSERT INTO outbox (message_id, routing_key, payload, created_at, published_at)
               SELECT gen_random_uuid(), 'order.status_changed.' || s,
                      jsonb_build_object('orderId', id, 'status', s), at, at
               FROM seeded, unnest(ARRAY['pending', 'processed', 'shipped', 'delivered']) s;
             DROP TABLE seeded;",
            product = product_id_sql(&format!("1 + n % {SPREAD_PRODUCTS}")),
        ))
        .await
        .expect("seed history");
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .expect("vacuum analyze");
}

/// `count` pending orders of one unit each, spread over the spread products, with their
/// reservations, history and ledger rows, as `POST /orders` would have left them.
pub async fn pending_orders(pool: &Pool, count: usize) -> Vec<Uuid> {
    let orders: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let products: Vec<Uuid> = (0..count)
        .map(|i| product_id(i as i64 % SPREAD_PRODUCTS + 1))
        .collect();
    let mut client = pool.get().await.expect("seed connection");
    let tx = client.transaction().await.expect("seed transaction");
    let statements = [
        "INSERT INTO orders (id, currency) SELECT o, 'USD' FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT o, p, 1, 9.99 FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
        "INSERT INTO order_status_history (order_id, status, changed_by)
         SELECT o, 'pending', 'bench-staff' FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
        "INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id, actor)
         SELECT p, 0, 1, 'reserve', o, 'bench-staff' FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
        "UPDATE products pr SET reserved = pr.reserved + s.n
         FROM (SELECT p, count(*) AS n FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p) GROUP BY p) s
         WHERE pr.id = s.p",
    ];
    for sql in statements {
        tx.execute(sql, &[&orders, &products])
            .await
            .expect("seed orders");
    }
    tx.commit().await.expect("seed commit");
    client.batch_execute("ANALYZE").await.expect("analyze");
    orders
}
