//! `process-orders` throughput: the set-based handler against one transaction per message,
//! on batches of 100, 1,000 and 10,000 `order.created` messages, against the local
//! PostgreSQL and RabbitMQ, publishing the `processed` events included.
//!
//! Run: `cargo bench -p system-tests --bench processor` (prints a table and writes
//! `target/bench-processor.json`).

use std::time::{Duration, Instant};

use serde_json::json;
use shared::domain::OrderId;
use shared::messaging::{Processor, Publisher};
use shared::store::{apply_order_commands, OrderCommand};
use system_tests::{rabbitmq_event, EventMessage, TestBroker, TestDb};

const BATCH_SIZES: [usize; 3] = [100, 1_000, 10_000];

/// `count` pending orders over 1,000 products, with their reservations, written in bulk.
async fn seed_orders(db: &TestDb, count: usize) -> Vec<String> {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO products (id, name, price, currency, inventory, reserved)
             SELECT gen_random_uuid(), 'bench ' || n, 9.99, 'USD', 1000000000, 0 FROM generate_series(1, 1000) n;
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason)
             SELECT id, inventory, 0, 'initial' FROM products;
             CREATE TEMP TABLE seeded AS
             SELECT gen_random_uuid() AS order_id, p.id AS product_id
             FROM generate_series(1, {count}) n
             JOIN (SELECT id, row_number() OVER () - 1 AS k FROM products) p ON p.k = n % 1000;
             INSERT INTO orders (id, currency) SELECT order_id, 'USD' FROM seeded;
             INSERT INTO order_items (order_id, product_id, quantity, unit_price) SELECT order_id, product_id, 1, 9.99 FROM seeded;
             INSERT INTO order_status_history (order_id, status) SELECT order_id, 'pending' FROM seeded;
             INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, order_id)
             SELECT product_id, 0, 1, 'reserve', order_id FROM seeded;
             UPDATE products p SET reserved = s.n FROM (SELECT product_id, count(*) AS n FROM seeded GROUP BY product_id) s
             WHERE p.id = s.product_id;
             ANALYZE;"
        ))
        .await
        .expect("seed");
    client
        .query("SELECT order_id::text FROM seeded", &[])
        .await
        .expect("seeded ids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn created_messages(orders: &[String]) -> Vec<EventMessage> {
    orders
        .iter()
        .map(|id| EventMessage::order_event("order.created", id, "pending"))
        .collect()
}

async fn set_based(size: usize) -> Duration {
    let db = TestDb::with_pool_size(2).await;
    let broker = TestBroker::new().await;
    let orders = seed_orders(&db, size).await;
    let processor = Processor::new(db.pool.clone(), Publisher::new(broker.broker()));
    let event = rabbitmq_event(&broker.topology.queue, &created_messages(&orders));
    // Warm the connection and the broker channel as a warm Lambda would have them.
    processor
        .handle(&rabbitmq_event(&broker.topology.queue, &[]))
        .await
        .expect("warm-up");
    let start = Instant::now();
    let summary = processor.handle(&event).await.expect("batch");
    let elapsed = start.elapsed();
    assert_eq!(summary.applied, size, "{summary:?}");
    elapsed
}

/// The approach the set-based handler replaces: one transaction and one confirmed publish
/// per message.
async fn per_message(size: usize) -> Duration {
    let db = TestDb::with_pool_size(2).await;
    let broker = TestBroker::new().await;
    let orders = seed_orders(&db, size).await;
    let publisher = Publisher::new(broker.broker());
    publisher.publish(&[]).await.expect("warm-up");
    let start = Instant::now();
    for id in &orders {
        let order = OrderId::parse(id).expect("uuid");
        let batch =
            apply_order_commands(&db.pool, &[(order, OrderCommand::Process, "bench".into())])
                .await
                .expect("apply");
        publisher.publish_committed(&db.pool, &batch.events).await;
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();
    println!("process-orders, order.created messages, events published included");
    println!(
        "{:>8} | {:>18} | {:>18} | {:>6}",
        "batch", "set-based msg/s", "per-message msg/s", "ratio"
    );
    for size in BATCH_SIZES {
        let set = set_based(size).await;
        let single = per_message(size).await;
        let set_rate = size as f64 / set.as_secs_f64();
        let single_rate = size as f64 / single.as_secs_f64();
        println!(
            "{size:>8} | {set_rate:>18.0} | {single_rate:>18.0} | {:>5.1}x",
            set_rate / single_rate
        );
        rows.push(json!({
            "batch": size,
            "setBased": {"seconds": set.as_secs_f64(), "messagesPerSecond": set_rate},
            "perMessage": {"seconds": single.as_secs_f64(), "messagesPerSecond": single_rate},
            "ratio": set_rate / single_rate,
        }));
    }
    let report = json!({
        "benchmark": "process-orders",
        "unixTime": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "rows": rows,
    });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-processor.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .expect("write report");
    println!("written to {}", path.display());
}
