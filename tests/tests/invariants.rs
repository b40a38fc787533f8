//! INVARIANTS.md after a random concurrent workload: orders, cancels, shipments, deliveries
//! and stock adjustments racing each other and the processor, through the real handlers,
//! PostgreSQL and RabbitMQ, by customers and staff at once — customers also trying to read,
//! list and change each other's orders.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use system_tests::Harness;

/// A small deterministic generator, so a failing run can be replayed from its printed seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariants_hold_after_a_random_concurrent_workload() {
    random_workload(false).await;
}

/// The same workload on products whose stock is spread over buckets (one of them capped per
/// customer), while staff change the bucket counts in the middle of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariants_hold_on_bucketed_products_rebucketed_during_the_workload() {
    random_workload(true).await;
}

async fn random_workload(bucketed: bool) {
    const BUCKETS: [u32; 5] = [1, 3, 8, 16, 64];
    let seed = std::env::var("WORKLOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("WORKLOAD_SEED={seed}");
    let h = Arc::new(Harness::new().await);
    let mut products = Vec::new();
    for (i, buckets) in BUCKETS.into_iter().enumerate() {
        if bucketed {
            let cap = if i == 0 { json!(6) } else { json!(null) };
            let created = h
                .api
                .post(
                    "/products",
                    json!({"name": "Drop", "price": format!("{}.25", i + 1), "inventory": 30,
                           "stockBuckets": buckets, "maxPerCustomer": cap}),
                )
                .await;
            assert_eq!(created.status, 201, "{}", created.body);
            products.push(created.body["id"].as_str().unwrap().to_owned());
        } else {
            products.push(h.api.product(&format!("{}.25", i + 1), 30).await);
        }
    }
    let rebucketed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let initial: i64 = 5 * 30;

    // The processor consumes as the event source mapping would, while clients act.
    let running = Arc::new(AtomicBool::new(true));
    let processor = {
        let h = h.clone();
        let running = running.clone();
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                h.settle().await;
            }
        })
    };

    // Every placed order and its customer, for others to try their hands on.
    let placed: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    // Clients 0–5 are customers, 6 and 7 staff.
    let clients = (0..8u64).map(|client| {
        let h = h.clone();
        let products = products.clone();
        let placed = placed.clone();
        tokio::spawn(async move {
            let mut rng =
                XorShift(seed.wrapping_add(client.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
            let me = format!("cust-{client}");
            let is_staff = client >= 6;
            let api = if is_staff {
                h.api.as_staff(&format!("staff-{client}"))
            } else {
                h.api.as_customer(&me)
            };
            let mut mine: Vec<String> = Vec::new();
            for _ in 0..40 {
                if !is_staff && rng.next(4) == 0 {
                    // Someone else's order: invisible and untouchable, whatever is asked.
                    let other = {
                        let placed = placed.lock().unwrap();
                        let others: Vec<_> = placed.iter().filter(|(_, c)| *c != me).collect();
                        (!others.is_empty())
                            .then(|| others[rng.next(others.len() as u64) as usize].0.clone())
                    };
                    if let Some(other) = other {
                        let read = api.get(&format!("/orders/{other}")).await;
                        assert_eq!(read.status, 404, "{me} read {other}: {}", read.body);
                        let cancel = api
                            .patch(
                                &format!("/orders/{other}/status"),
                                json!({"status": "cancelled"}),
                            )
                            .await;
                        assert_eq!(
                            cancel.status, 404,
                            "{me} cancelled {other}: {}",
                            cancel.body
                        );
                    }
                    let list = api.get("/orders?limit=200").await;
                    assert_eq!(list.status, 200, "{}", list.body);
                    for order in list.body["items"].as_array().unwrap() {
                        assert_eq!(order["customerId"], me.as_str(), "{me} listed {order}");
                    }
                    continue;
                }
                match rng.next(10) {
                    0..=4 => {
                        let lines: Vec<(&str, u32)> = (0..=rng.next(3))
                            .map(|_| {
                                (
                                    products[rng.next(5) as usize].as_str(),
                                    1 + rng.next(4) as u32,
                                )
                            })
                            .collect();
                        let response = api.order(&lines).await;
                        assert!(
                            response.status == 201 || response.status == 409,
                            "{}",
                            response.body
                        );
                        if response.status == 201 {
                            let id = response.body["id"].as_str().unwrap().to_owned();
                            let customer = response.body["customerId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                            assert_eq!(customer, if is_staff { "" } else { me.as_str() });
                            placed.lock().unwrap().push((id.clone(), customer));
                            mine.push(id);
                        }
                    }
                    5..=8 if !mine.is_empty() || is_staff => {
                        // Staff move anyone's orders; a customer only cancels its own.
                        let order = if is_staff {
                            let placed = placed.lock().unwrap();
                            if placed.is_empty() {
                                continue;
                            }
                            placed[rng.next(placed.len() as u64) as usize].0.clone()
                        } else {
                            mine[rng.next(mine.len() as u64) as usize].clone()
                        };
                        let status = if is_staff {
                            ["cancelled", "shipped", "delivered"][rng.next(3) as usize]
                        } else {
                            "cancelled"
                        };
                        let response = api
                            .patch(
                                &format!("/orders/{order}/status"),
                                json!({"status": status}),
                            )
                            .await;
                        assert!(
                            response.status == 200 || response.status == 409,
                            "{}",
                            response.body
                        );
                    }
                    _ => {
                        let product = &products[rng.next(5) as usize];
                        let delta = rng.next(11) as i64 - 5;
                        if delta != 0 {
                            let response = api
                                .post(
                                    &format!("/products/{product}/inventory-adjustments"),
                                    json!({"delta": delta, "reason": "count"}),
                                )
                                .await;
                            let expected: &[u16] = if is_staff { &[200, 409] } else { &[403] };
                            assert!(expected.contains(&response.status), "{}", response.body);
                        }
                    }
                }
            }
        })
    });
    // Staff rebucket for as long as the clients act: at least once, whatever the seed.
    let clients_running = Arc::new(AtomicBool::new(true));
    let rebucketer = bucketed.then(|| {
        let api = h.api.as_staff("staff-rebucketer");
        let products = products.clone();
        let clients_running = clients_running.clone();
        let rebucketed = rebucketed.clone();
        tokio::spawn(async move {
            let mut rng = XorShift(seed.rotate_left(17) | 1);
            loop {
                let product = &products[rng.next(5) as usize];
                api.rebucket(product, 1 + rng.next(12)).await;
                rebucketed.fetch_add(1, Ordering::Relaxed);
                if !clients_running.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    for client in join_all(clients).await {
        client.unwrap();
    }
    clients_running.store(false, Ordering::Relaxed);
    if let Some(rebucketer) = rebucketer {
        rebucketer.await.unwrap();
    }
    h.db.assert_always_invariants().await;

    // Settle: stop the background consumer, then drain until nothing is left.
    running.store(false, Ordering::Relaxed);
    processor.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.settle().await;

    let db = &h.db;
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;
    // 8: inventory = initial + adjustments − shipped quantities.
    let shipped: i64 = db
        .scalar("SELECT coalesce(sum(i.quantity), 0)::bigint FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.status IN ('shipped', 'delivered')")
        .await;
    let adjustments: i64 = db
        .scalar("SELECT coalesce(sum(inventory_delta), 0)::bigint FROM inventory_ledger WHERE reason = 'adjustment'")
        .await;
    let inventory: i64 = db
        .scalar("SELECT sum(inventory)::bigint FROM product_stock")
        .await;
    assert_eq!(inventory, initial + adjustments - shipped);
    if bucketed {
        assert!(
            rebucketed.load(Ordering::Relaxed) > 0,
            "nothing was rebucketed while the clients acted"
        );
        // A product has exactly as many buckets as it says.
        assert_eq!(
            db.scalar(
                "SELECT count(*) FROM products p
                 WHERE p.stock_buckets <> (SELECT count(*) FROM stock_buckets b WHERE b.product_id = p.id)"
            )
            .await,
            0
        );
        // 8: the cap (never changed here) holds for every customer.
        assert_eq!(
            db.scalar(
                "SELECT count(*) FROM customer_holdings h JOIN products p ON p.id = h.product_id
                 WHERE h.held > p.max_per_customer"
            )
            .await,
            0
        );
    }
    // 4: stock path agrees with status.
    assert_eq!(
        db.scalar("SELECT count(*) FROM orders WHERE (status IN ('shipped','delivered')) <> (stock = 'committed') OR (status IN ('cancelled','rejected')) <> (stock = 'released')").await,
        0,
        "every order's stock took the one path its status implies"
    );
    // 9: nothing left pending.
    assert_eq!(
        db.scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .await,
        0
    );
    // 3: histories start with pending and follow the transition table.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM (
               SELECT order_id, array_agg(status ORDER BY seq) AS h FROM order_status_history GROUP BY order_id
             ) x WHERE NOT (h[1] = 'pending' AND h <@ ARRAY['pending','processed','shipped','delivered','cancelled','rejected'])"
        )
        .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM orders o WHERE status <> (SELECT status FROM order_status_history h WHERE h.order_id = o.id ORDER BY seq DESC LIMIT 1)").await,
        0,
        "the last history entry is the current status"
    );
    // 2: totals are computed from lines; quantities stay in bounds.
    assert_eq!(
        db.scalar("SELECT count(*) FROM order_items WHERE quantity NOT BETWEEN 1 AND 10000")
            .await,
        0
    );
    // 7: no customer changed another's order; every change and stock movement names who
    // asked for it: the placer reserves, the one who shipped or cancelled commits or
    // releases, the processor processes, rejects and releases a rejection.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM order_status_history h JOIN orders o ON o.id = h.order_id
             WHERE h.changed_by LIKE 'cust-%' AND h.changed_by IS DISTINCT FROM o.customer_id"
        )
        .await,
        0,
        "a customer changed someone else's order"
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM order_status_history h JOIN orders o ON o.id = h.order_id
             WHERE (h.status IN ('processed', 'rejected')) <> (h.changed_by = 'system')
                OR (h.status = 'pending' AND h.changed_by <> coalesce(o.customer_id, h.changed_by))
                OR (h.status IN ('shipped', 'delivered') AND h.changed_by NOT LIKE 'staff-%')"
        )
        .await,
        0,
        "a status change names the wrong actor"
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM inventory_ledger l JOIN orders o ON o.id = l.order_id
             WHERE l.actor IS DISTINCT FROM CASE l.reason
                 WHEN 'reserve' THEN (SELECT changed_by FROM order_status_history h WHERE h.order_id = o.id AND h.status = 'pending')
                 WHEN 'commit' THEN (SELECT changed_by FROM order_status_history h WHERE h.order_id = o.id AND h.status = 'shipped')
                 ELSE coalesce((SELECT changed_by FROM order_status_history h WHERE h.order_id = o.id AND h.status = 'cancelled'), 'system')
               END"
        )
        .await,
        0,
        "a ledger entry names the wrong actor"
    );

    // 5 and 10: one outbox message per status change, all published, none parked. A
    // function that could not hand its events to the broker within its send budget (a
    // loaded machine) leaves them to the outbox relay, as in production: its run, without
    // the minimum age, publishes them.
    h.mark_confirmed().await;
    // A broker that timed out counts as down for a few seconds (so requests do not wait
    // for it): the relay waits that out as its next scheduled run would.
    let mut attempts = 0;
    while let Err(e) = shared::messaging::relay_outbox(
        &db.pool,
        h.processor.publisher(),
        std::time::Duration::ZERO,
    )
    .await
    {
        attempts += 1;
        assert!(attempts < 4, "the relay's run: {e}");
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM outbox").await,
        db.scalar("SELECT count(*) FROM order_status_history").await
    );
    let unpublished = db
        .client()
        .await
        .query(
            "SELECT routing_key || ' ' || count(*) || ' ' || min(created_at)::text FROM outbox
             WHERE published_at IS NULL GROUP BY routing_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>();
    assert!(unpublished.is_empty(), "unpublished: {unpublished:?}");
    assert!(h
        .broker
        .drain(&h.broker.topology.dead_letter_queue)
        .await
        .is_empty());
}
