//! Concurrency: no overselling, no deadlock, one order per idempotency key — with real
//! overlapping transactions (a pool of 16 connections, requests all in flight at once).

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::json;
use system_tests::{Api, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_simultaneous_orders_on_fifty_units_sell_exactly_fifty() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("1.00", 50).await;
    let requests = (0..200).map(|_| {
        let api = api.clone();
        let product = product.clone();
        tokio::spawn(async move { api.order(&[(&product, 1)]).await })
    });
    let responses: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let created = responses.iter().filter(|r| r.status == 201).count();
    let refused = responses
        .iter()
        .filter(|r| r.status == 409 && r.problem_type() == "/problems/insufficient-stock")
        .count();
    assert_eq!((created, refused), (50, 150));
    assert_eq!(api.stock(&product).await, (50, 50));
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_two_line_orders_never_deadlock() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let a = api.product("1.00", 1_000).await;
    let b = api.product("2.00", 1_000).await;
    let requests = (0..100).map(|i| {
        let api = api.clone();
        let (first, second) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        tokio::spawn(async move { api.order(&[(&first, 1), (&second, 1)]).await })
    });
    let responses: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for response in &responses {
        assert_eq!(response.status, 201, "{}", response.body);
    }
    assert_eq!(api.stock(&a).await, (1_000, 100));
    assert_eq!(api.stock(&b).await, (1_000, 100));
    db.assert_always_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_simultaneous_requests_with_one_key_create_one_order() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("5.00", 100).await;
    let body = json!({"items": [{"productId": product, "quantity": 3}]}).to_string();
    let requests = (0..20).map(|_| {
        let api = api.clone();
        let body = body.clone();
        tokio::spawn(async move {
            api.request(
                "POST",
                "/orders",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "same-key"),
                ],
                Some(body.as_bytes()),
            )
            .await
        })
    });
    let responses: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ids: std::collections::HashSet<_> = responses
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every success names the same order");
    for response in &responses {
        assert!(
            response.status == 201 || response.problem_type() == "/problems/request-in-progress",
            "{}",
            response.body
        );
    }
    assert_eq!(
        responses
            .iter()
            .filter(|r| r.status == 201 && r.header("idempotency-replayed").is_none())
            .count(),
        1
    );
    assert_eq!(db.scalar("SELECT count(*) FROM orders").await, 1);
    assert_eq!(api.stock(&product).await, (100, 3), "reserved once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conflicting_status_changes_have_one_winner() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("1.00", 100).await;
    for _ in 0..10 {
        let id = api.order(&[(&product, 1)]).await.body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        db.mark_processed(&id).await;
        let requests = ["shipped", "cancelled", "shipped", "cancelled"].map(|status| {
            let api = api.clone();
            let path = format!("/orders/{id}/status");
            tokio::spawn(async move { api.patch(&path, json!({"status": status})).await })
        });
        let responses: Vec<_> = join_all(requests)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let final_status = api.get(&format!("/orders/{id}")).await.body["status"]
            .as_str()
            .unwrap()
            .to_owned();
        // The winner's status; same-status repeats are no-op 200s, the other status is 409.
        for response in &responses {
            match response.status {
                200 => assert_eq!(response.body["status"], final_status.as_str()),
                409 => assert_eq!(response.problem_type(), "/problems/invalid-transition"),
                other => panic!("unexpected {other}: {}", response.body),
            }
        }
        let history = db
            .scalar(&format!(
                "SELECT count(*) FROM order_status_history WHERE order_id = '{id}'"
            ))
            .await;
        assert_eq!(history, 3, "pending, processed and exactly one winner");
        let events = db
            .scalar(&format!(
                "SELECT count(*) FROM outbox WHERE payload->>'orderId' = '{id}'"
            ))
            .await;
        assert_eq!(events, 2, "order.created and the winner's change");
    }
}

/// An order that waits for a product's stock bucket is decided on the bucket as the holder
/// left it: the stock that is left, or stock that was added after the order's statement
/// began, when its snapshot still showed the old figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_waiting_for_stock_while_its_product_is_repriced_keeps_its_snapshot_price() {
    let db = TestDb::with_pool_size(4).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("5.00", 3).await;
    let holder = Holder::change(
        &db,
        &product,
        "price = 7.00",
        "inventory = inventory - 1",
        -1,
    )
    .await;
    let order = holder
        .commit_while_ordering(&api, &[(&product, 2)], None)
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    // The price is not stock: it is read as of the statement's start, not locked.
    assert_eq!(order.body["items"][0]["unitPrice"], json!("5.00"));
    assert_eq!(order.body["total"], json!("10.00"));
    assert_eq!(api.stock(&product).await, (2, 2));
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_waiting_while_stock_is_taken_is_refused_with_what_is_left() {
    let db = TestDb::with_pool_size(4).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("5.00", 3).await;
    let holder = Holder::change(
        &db,
        &product,
        "updated_at = now()",
        "inventory = inventory - 2",
        -2,
    )
    .await;
    let order = holder
        .commit_while_ordering(&api, &[(&product, 2)], None)
        .await;
    assert_eq!(order.status, 409, "{}", order.body);
    assert_eq!(
        order.body["shortages"],
        json!([{"productId": product, "requested": 2, "available": 1}])
    );
    assert_eq!(api.stock(&product).await, (1, 0));
    db.assert_always_invariants().await;
}

/// Several lines lock their products before judging them, so they wait for a restock in
/// progress and get it (the statement runs again when its snapshot predates the restock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_several_line_order_waiting_while_stock_is_added_gets_it() {
    for key in [None, Some("restock-key")] {
        let db = TestDb::with_pool_size(4).await;
        let api = Arc::new(Api::new(db.pool.clone()));
        let product = api.product("5.00", 1).await;
        let other = api.product("1.00", 10).await;
        let holder = Holder::change(
            &db,
            &product,
            "updated_at = now()",
            "inventory = inventory + 5",
            5,
        )
        .await;
        let order = holder
            .commit_while_ordering(&api, &[(&product, 3), (&other, 1)], key)
            .await;
        assert_eq!(order.status, 201, "key {key:?}: {}", order.body);
        assert_eq!(api.stock(&product).await, (6, 3));
        db.assert_always_invariants().await;
        db.assert_reserved_matches_open_orders().await;
    }
}

/// A one-line order finds its product's one bucket held by a restock in progress, so it is
/// judged on the product's locked buckets: it waits for the restock and gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_line_order_waiting_for_a_restock_in_progress_gets_it() {
    let db = TestDb::with_pool_size(4).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = api.product("5.00", 1).await;
    let holder = Holder::change(
        &db,
        &product,
        "updated_at = now()",
        "inventory = inventory + 5",
        5,
    )
    .await;
    let order = holder
        .commit_while_ordering(&api, &[(&product, 3)], None)
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(api.stock(&product).await, (6, 3));
    db.assert_always_invariants().await;
}

/// A transaction holding a product's row while it changes it.
struct Holder {
    client: deadpool_postgres::Client,
}

impl Holder {
    /// Changes `product` with `set` and its one stock bucket with `stock` (and a ledger row
    /// of `inventory_delta`), uncommitted.
    async fn change(
        db: &TestDb,
        product: &str,
        set: &str,
        stock: &str,
        inventory_delta: i64,
    ) -> Self {
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "BEGIN;
                 UPDATE products SET {set} WHERE id = '{product}';
                 UPDATE stock_buckets SET {stock} WHERE product_id = '{product}';
                 INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
                 VALUES ('{product}', {inventory_delta}, 0, 'adjustment', 'test');"
            ))
            .await
            .unwrap();
        Self { client }
    }

    async fn commit(self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }

    /// Sends the order, checks that it waits for the row, then commits the change.
    async fn commit_while_ordering(
        self,
        api: &Arc<Api>,
        lines: &[(&str, u32)],
        key: Option<&'static str>,
    ) -> system_tests::TestResponse {
        let items: Vec<serde_json::Value> = lines
            .iter()
            .map(|(id, q)| json!({"productId": id, "quantity": q}))
            .collect();
        let body = json!({ "items": items }).to_string();
        let order = {
            let api = api.clone();
            tokio::spawn(async move {
                let mut headers = vec![("content-type", "application/json")];
                if let Some(key) = key {
                    headers.push(("idempotency-key", key));
                }
                api.request("POST", "/orders", &headers, Some(body.as_bytes()))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !order.is_finished(),
            "the order waits for the product's row lock"
        );
        self.commit().await;
        order.await.unwrap()
    }
}
