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

/// The pool a function gets: the application role, through the pooler when the bench runs
/// with `TEST_POOLER_URL` (PgBouncer in transaction mode, the stand-in for RDS Proxy).
pub fn function_pool(db: &system_tests::TestDb, size: usize) -> Pool {
    let mut config = DatabaseConfig::from_url(&db.app_url).expect("bench database url");
    config.pool_size = size;
    config.timeout = std::time::Duration::from_secs(30);
    config.multiplexed = db.multiplexed;
    build_pool(&config).expect("pool")
}

/// The hot product and `SPREAD_PRODUCTS` others, each with `STOCK` units and its ledger row.
pub async fn products(pool: &Pool) {
    let client = pool.get().await.expect("seed connection");
    client
        .batch_execute(&format!(
            "INSERT INTO products (id, name, price, currency)
             SELECT {id}, 'bench product ' || k, 9.99, 'USD'
             FROM generate_series(0, {SPREAD_PRODUCTS}) k;
             INSERT INTO stock_buckets (product_id, bucket, inventory, reserved)
             SELECT id, 0, {STOCK}, 0 FROM products;
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
             SELECT product_id, inventory, 0, 'initial', 'bench-staff' FROM stock_buckets;
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
             UPDATE stock_buckets b SET inventory = b.inventory - s.n
               FROM (SELECT product_id, count(*) AS n FROM seeded GROUP BY product_id) s
               WHERE b.product_id = s.product_id AND b.bucket = 0;
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
        "UPDATE stock_buckets b SET reserved = b.reserved + s.n
         FROM (SELECT p, count(*) AS n FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p) GROUP BY p) s
         WHERE b.product_id = s.p AND b.bucket = 0",
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

/// How far after its creation an order reached `step` (SQL over `age`, the order's age at
/// seeding time): history times are spread as a shop's would be, never in the future.
fn step_offset(step: &str) -> String {
    format!(
        "CASE {step}
           WHEN 'pending' THEN interval '0'
           WHEN 'processed' THEN interval '2 seconds'
           WHEN 'rejected' THEN interval '2 seconds'
           WHEN 'shipped' THEN least(interval '1 day', age * 0.3)
           WHEN 'delivered' THEN least(interval '3 days', age * 0.6)
           ELSE least(interval '1 hour', age * 0.5)
         END"
    )
}

/// The shop the order search runs on: `orders` orders over the last 365 days (one every
/// 365 days / `orders`, the last one now), of `customers` customers, then `VACUUM ANALYZE`.
///
/// Every attribute is drawn from an md5 of the order's number, so every run seeds the same
/// shop. Customers are skewed as a shop's are: customer `floor(customers * u²)` for a
/// uniform `u`, so the biggest account holds about 1 % of all orders and the smallest a
/// few dozen (median ≈ 70 at the default sizes). Statuses follow age: older than 14 days
/// 95 % delivered, 3.5 % cancelled, 1.5 % rejected; 7–14 days 40 % shipped, 52 % delivered,
/// 5 % cancelled, 3 % rejected; the last 7 days 25 % pending, 25 % processed, 35 % shipped,
/// 10 % cancelled, 5 % rejected. Each order has 1 (70 %), 2 (20 %) or 3 lines over the
/// spread products, its history rows from `pending` to its status (`changed_by`: the
/// customer for placing and cancelling, `system` for processing and rejecting, staff for
/// shipping and delivering), a stock state that fits its status, and a UUID v7 id of its
/// creation time. No ledger or outbox rows: the search reads neither.
pub async fn search_shop(pool: &Pool, orders: i64, customers: i64) {
    let client = pool.get().await.expect("seed connection");
    let spacing_micros = 365 * 86_400 * 1_000_000 / orders;
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE seeded AS
               WITH base AS (
                 SELECT n, md5(n::text) AS h, md5('id' || n) AS hid,
                        date_trunc('second', now()) - interval '365 days'
                          + n * interval '{spacing_micros} microseconds' AS at
                 FROM generate_series(1, {orders}) n
               ), drawn AS (
                 SELECT at, hid, date_trunc('second', now()) - at AS age,
                        ('x' || substr(h, 1, 8))::bit(32)::bigint / 4294967296.0 AS u_customer,
                        ('x' || substr(h, 9, 8))::bit(32)::bigint / 4294967296.0 AS u_status,
                        ('x' || substr(h, 17, 8))::bit(32)::bigint / 4294967296.0 AS u_lines,
                        ('x' || substr(h, 25, 8))::bit(32)::bigint % {SPREAD_PRODUCTS} AS product
                 FROM base
               )
               SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7'
                       || substr(hid, 1, 3) || '8' || substr(hid, 4, 15))::uuid AS id,
                      {customer} AS customer_id,
                      at, age, product,
                      CASE WHEN u_lines < 0.7 THEN 1 WHEN u_lines < 0.9 THEN 2 ELSE 3 END AS lines,
                      u_lines < 0.5 AS cancelled_after_processing,
                      CASE
                        WHEN age <= interval '7 days' THEN
                          CASE WHEN u_status < 0.25 THEN 'pending' WHEN u_status < 0.50 THEN 'processed'
                               WHEN u_status < 0.85 THEN 'shipped' WHEN u_status < 0.95 THEN 'cancelled'
                               ELSE 'rejected' END
                        WHEN age <= interval '14 days' THEN
                          CASE WHEN u_status < 0.40 THEN 'shipped' WHEN u_status < 0.92 THEN 'delivered'
                               WHEN u_status < 0.97 THEN 'cancelled' ELSE 'rejected' END
                        ELSE
                          CASE WHEN u_status < 0.95 THEN 'delivered' WHEN u_status < 0.985 THEN 'cancelled'
                               ELSE 'rejected' END
                      END AS status
               FROM drawn;
             INSERT INTO orders (id, status, stock, currency, customer_id, created_at, updated_at)
               SELECT id, status,
                      CASE WHEN status IN ('pending', 'processed') THEN 'reserved'
                           WHEN status IN ('shipped', 'delivered') THEN 'committed'
                           ELSE 'released' END,
                      'USD', customer_id, at, at + {status_offset}
               FROM seeded ORDER BY at;
             INSERT INTO order_items (order_id, product_id, quantity, unit_price)
               SELECT id, {line_product}, 1 + (product + j) % 3, 9.99
               FROM seeded, generate_series(0, lines - 1) j ORDER BY id, j;
             INSERT INTO order_status_history (order_id, status, at, changed_by)
               SELECT id, step, at + {step_offset},
                      CASE WHEN step IN ('pending', 'cancelled') THEN customer_id
                           WHEN step IN ('processed', 'rejected') THEN 'system'
                           ELSE 'staff-warehouse' END
               FROM seeded,
                    unnest(CASE status
                             WHEN 'pending' THEN ARRAY['pending']
                             WHEN 'processed' THEN ARRAY['pending', 'processed']
                             WHEN 'shipped' THEN ARRAY['pending', 'processed', 'shipped']
                             WHEN 'delivered' THEN ARRAY['pending', 'processed', 'shipped', 'delivered']
                             WHEN 'rejected' THEN ARRAY['pending', 'rejected']
                             WHEN 'cancelled' THEN CASE WHEN cancelled_after_processing
                               THEN ARRAY['pending', 'processed', 'cancelled']
                               ELSE ARRAY['pending', 'cancelled'] END
                           END) WITH ORDINALITY AS path(step, ord)
               ORDER BY id, ord;
             DROP TABLE seeded;",
            customer = customer_sql(customers, "u_customer"),
            status_offset = step_offset("status"),
            step_offset = step_offset("step"),
            line_product = product_id_sql(&format!("1 + (product + j * 337) % {SPREAD_PRODUCTS}")),
        ))
        .await
        .expect("seed the search shop");
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .expect("vacuum analyze");
}

/// A customer's id in SQL, `customer-00042` (the `sub` of its token and its orders'
/// `customerId`), for customer `floor(customers * u²)` of a uniform `u`.
fn customer_sql(customers: i64, u: &str) -> String {
    format!("'customer-' || lpad(floor({customers} * {u} * {u})::int::text, 5, '0')")
}
