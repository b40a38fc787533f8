//! Flash sales (API.md, Products): stock spread over buckets that orders reserve from at the
//! same time, rebucketing under load, and the per-customer cap, with real overlapping
//! transactions.

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{json, Value};
use system_tests::{Api, Harness, TestDb, TestResponse};

async fn bucketed_product(api: &Api, inventory: i64, buckets: u32, cap: Value) -> String {
    let created = api
        .post(
            "/products",
            json!({"name": "Drop", "price": "10.00", "inventory": inventory,
                   "stockBuckets": buckets, "maxPerCustomer": cap}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["stockBuckets"], buckets);
    assert_eq!(created.body["maxPerCustomer"], cap);
    assert_eq!(created.body["available"], inventory);
    created.body["id"].as_str().unwrap().to_owned()
}

async fn all(
    requests: impl Iterator<Item = tokio::task::JoinHandle<TestResponse>>,
) -> Vec<TestResponse> {
    join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn count(responses: &[TestResponse], status: u16, problem: &str) -> usize {
    responses
        .iter()
        .filter(|r| r.status == status && (status < 400 || r.problem_type() == problem))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_orders_on_a_hundred_units_in_eight_buckets_sell_exactly_a_hundred() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = bucketed_product(&api, 100, 8, json!(null)).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM stock_buckets").await,
        8,
        "one row per bucket"
    );
    let responses = all((0..400).map(|_| {
        let api = api.clone();
        let product = product.clone();
        tokio::spawn(async move { api.order(&[(&product, 1)]).await })
    }))
    .await;
    let created = count(&responses, 201, "");
    let refused = count(&responses, 409, "/problems/insufficient-stock");
    let others: Vec<_> = responses
        .iter()
        .filter(|r| r.status != 201 && r.problem_type() != "/problems/insufficient-stock")
        .map(|r| &r.body)
        .collect();
    assert_eq!((created, refused), (100, 300), "{others:?}");
    let body = api.get(&format!("/products/{product}")).await.body;
    assert_eq!(
        (&body["inventory"], &body["reserved"], &body["available"]),
        (&json!(100), &json!(100), &json!(0))
    );
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;

    // A restock of 7 is spread over the buckets, so no bucket holds the 7 an order asks for;
    // the order is judged on the total and takes from several.
    let restock = api
        .post(
            &format!("/products/{product}/inventory-adjustments"),
            json!({"delta": 7, "reason": "found a box"}),
        )
        .await;
    assert_eq!(restock.status, 200, "{}", restock.body);
    assert_eq!(restock.body["available"], 7);
    assert!(
        db.scalar("SELECT max(inventory - reserved) FROM stock_buckets")
            .await
            < 7
    );
    let seven = api.order(&[(&product, 7)]).await;
    assert_eq!(seven.status, 201, "{}", seven.body);
    assert_eq!(api.stock(&product).await, (107, 107));
    let eighth = api.order(&[(&product, 1)]).await;
    assert_eq!(eighth.problem_type(), "/problems/insufficient-stock");
    assert_eq!(eighth.body["shortages"][0]["available"], 0);
    db.assert_always_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decrease_is_refused_only_when_the_total_available_is_short() {
    let db = TestDb::with_pool_size(8).await;
    let api = Api::new(db.pool.clone());
    let product = bucketed_product(&api, 10, 4, json!(null)).await;
    // Buckets hold 3, 3, 2, 2; reserve 3 wherever they land, then take away all 7 others.
    for _ in 0..3 {
        assert_eq!(api.order(&[(&product, 1)]).await.status, 201);
    }
    let path = format!("/products/{product}/inventory-adjustments");
    let short = api
        .post(&path, json!({"delta": -8, "reason": "count"}))
        .await;
    assert_eq!(short.problem_type(), "/problems/insufficient-stock");
    let all_free = api
        .post(&path, json!({"delta": -7, "reason": "count"}))
        .await;
    assert_eq!(all_free.status, 200, "{}", all_free.body);
    assert_eq!(api.stock(&product).await, (3, 3));
    db.assert_always_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebucketing_while_orders_are_placed_loses_no_unit_and_refuses_no_order() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    // Exactly enough for every order: any refusal would be a false one.
    let product = bucketed_product(&api, 240, 4, json!(null)).await;
    let orders = (0..240).map(|_| {
        let api = api.clone();
        let product = product.clone();
        tokio::spawn(async move { api.order(&[(&product, 1)]).await })
    });
    let rebucketing = {
        let api = api.clone();
        let product = product.clone();
        tokio::spawn(async move {
            for buckets in [16, 2, 64, 1, 8, 3, 32] {
                assert_eq!(api.rebucket(&product, buckets).await["inventory"], 240);
            }
        })
    };
    let responses = all(orders).await;
    rebucketing.await.unwrap();
    for response in &responses {
        assert_eq!(response.status, 201, "{}", response.body);
    }
    assert_eq!(api.stock(&product).await, (240, 240));
    assert_eq!(
        db.scalar("SELECT count(*) FROM stock_buckets").await,
        32,
        "the last count"
    );
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_multi_line_orders_on_bucketed_products_never_deadlock() {
    let db = TestDb::with_pool_size(32).await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let a = bucketed_product(&api, 1_000, 8, json!(null)).await;
    let b = bucketed_product(&api, 1_000, 3, json!(null)).await;
    let responses = all((0..120).map(|i| {
        let api = api.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            match i % 3 {
                0 => api.order(&[(&a, 1), (&b, 2)]).await,
                1 => api.order(&[(&b, 1), (&a, 2)]).await,
                _ => api.order(&[(&a, 1)]).await,
            }
        })
    }))
    .await;
    for response in &responses {
        assert_eq!(response.status, 201, "{}", response.body);
    }
    assert_eq!(api.stock(&a).await, (1_000, 40 + 80 + 40));
    assert_eq!(api.stock(&b).await, (1_000, 80 + 40));
    db.assert_always_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_simultaneous_orders_from_one_customer_with_a_limit_of_two_place_two() {
    let h = Arc::new(Harness::new().await);
    let product = bucketed_product(&h.api, 100, 4, json!(2)).await;
    let alice = h.api.as_customer("alice");
    let responses = all((0..20).map(|_| {
        let alice = alice.clone();
        let product = product.clone();
        tokio::spawn(async move { alice.order(&[(&product, 1)]).await })
    }))
    .await;
    assert_eq!(count(&responses, 201, ""), 2);
    assert_eq!(count(&responses, 409, "/problems/limit-exceeded"), 18);
    let refused = responses.iter().find(|r| r.status == 409).unwrap();
    assert_eq!(refused.body["productId"], product.as_str());
    assert_eq!(refused.body["limit"], 2);
    assert_eq!(refused.body["held"], 2);
    assert_eq!(h.api.stock(&product).await, (100, 2));

    // Others are not capped by alice's units, nor is staff ordering without a customer.
    assert_eq!(
        h.api
            .as_customer("bob")
            .order(&[(&product, 2)])
            .await
            .status,
        201
    );
    assert_eq!(h.api.order(&[(&product, 5)]).await.status, 201);
    let beyond = h.api.as_customer("carol").order(&[(&product, 3)]).await;
    assert_eq!(beyond.problem_type(), "/problems/limit-exceeded");
    assert_eq!(beyond.body["held"], 0);

    // A cancellation gives units back once the processor releases them.
    let mine: Vec<String> = responses
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    h.settle().await;
    let cancel = alice
        .patch(
            &format!("/orders/{}/status", mine[0]),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    h.settle().await;
    h.db.assert_always_invariants().await;
    assert_eq!(alice.order(&[(&product, 1)]).await.status, 201);
    let third = alice.order(&[(&product, 1)]).await;
    assert_eq!(third.problem_type(), "/problems/limit-exceeded");

    // Lowering the cap below what alice holds refuses her next orders, never her open ones.
    let lowered = h
        .api
        .patch(
            &format!("/products/{product}"),
            json!({"maxPerCustomer": 1}),
        )
        .await;
    assert_eq!(lowered.status, 200, "{}", lowered.body);
    assert_eq!(lowered.body["maxPerCustomer"], 1);
    let refused = alice.order(&[(&product, 1)]).await;
    assert_eq!(
        (&refused.body["limit"], &refused.body["held"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(h.order_status(&mine[1]).await, "processed");
    // Lifting it lets her order again.
    let lifted = h
        .api
        .patch(
            &format!("/products/{product}"),
            json!({"maxPerCustomer": null}),
        )
        .await;
    assert_eq!(lifted.body["maxPerCustomer"], Value::Null);
    assert_eq!(alice.order(&[(&product, 4)]).await.status, 201);
    h.settle().await;
    h.db.assert_always_invariants().await;
    h.db.assert_reserved_matches_open_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_orders_racing_their_cancellations_never_hold_more_than_the_cap() {
    let h = Arc::new(Harness::new().await);
    let product = bucketed_product(&h.api, 1_000, 8, json!(3)).await;
    let dave = h.api.as_customer("dave");
    // Rounds of simultaneous orders, each followed by cancelling some of what was placed.
    for round in 0..4 {
        let responses = all((0..10).map(|_| {
            let dave = dave.clone();
            let product = product.clone();
            tokio::spawn(async move { dave.order(&[(&product, 1)]).await })
        }))
        .await;
        assert_eq!(
            count(&responses, 201, "") + count(&responses, 409, "/problems/limit-exceeded"),
            10
        );
        let held =
            h.db.scalar("SELECT coalesce(sum(held), 0)::bigint FROM customer_holdings")
                .await;
        assert!(held <= 3, "round {round}: {held} held");
        let placed: Vec<String> =
            h.db.client()
                .await
                .query(
                    "SELECT id::text FROM orders WHERE status IN ('pending', 'processed')",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
        h.settle().await;
        for id in placed.iter().take(2) {
            let cancel = dave
                .patch(
                    &format!("/orders/{id}/status"),
                    json!({"status": "cancelled"}),
                )
                .await;
            assert_eq!(cancel.status, 200, "{}", cancel.body);
        }
        h.settle().await;
        h.db.assert_always_invariants().await;
    }
    h.db.assert_reserved_matches_open_orders().await;
}

/// A one-line order that finds every bucket with enough held waits for one of those, and
/// for nothing else: not for an empty bucket another transaction holds, as an order that
/// locks every bucket would.
#[tokio::test]
async fn a_one_line_order_finding_every_bucket_held_waits_only_for_one_that_can_take_it() {
    let db = TestDb::new().await;
    let api = Arc::new(Api::new(db.pool.clone()));
    let product = bucketed_product(&api, 30, 4, json!(null)).await;
    // Bucket 0 gives its units to bucket 1: the totals are unchanged.
    db.client()
        .await
        .batch_execute(&format!(
            "UPDATE stock_buckets SET inventory = inventory
                 + CASE bucket WHEN 1 THEN (SELECT inventory FROM stock_buckets
                                            WHERE product_id = '{product}' AND bucket = 0)
                               ELSE -inventory END
             WHERE product_id = '{product}' AND bucket IN (0, 1)"
        ))
        .await
        .expect("empty bucket 0");
    assert_eq!(
        db.scalar(&format!(
            "SELECT inventory FROM stock_buckets WHERE product_id = '{product}' AND bucket = 0"
        ))
        .await,
        0
    );
    let lock_buckets = |buckets: &str| {
        format!(
            "SELECT 1 FROM stock_buckets
             WHERE product_id = '{product}' AND bucket IN ({buckets}) FOR UPDATE"
        )
    };
    let empty = db.hold(&lock_buckets("0")).await;
    let stocked = db.hold(&lock_buckets("1, 2, 3")).await;
    let order = {
        let api = api.clone();
        let product = product.clone();
        tokio::spawn(async move { api.order(&[(&product, 1)]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!order.is_finished(), "the order waits for a stocked bucket");
    stocked.release().await;
    let placed = tokio::time::timeout(std::time::Duration::from_secs(2), order)
        .await
        .expect("the order waited for the empty bucket")
        .unwrap();
    assert_eq!(placed.status, 201, "{}", placed.body);
    empty.release().await;
    assert_eq!(api.stock(&product).await, (30, 1));
    db.assert_always_invariants().await;
}

#[tokio::test]
async fn bad_bucket_counts_and_caps_are_refused_naming_the_field() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    for (field, value) in [
        ("stockBuckets", json!(0)),
        ("stockBuckets", json!(65)),
        ("stockBuckets", json!(2.5)),
        ("maxPerCustomer", json!(0)),
        ("maxPerCustomer", json!(10_001)),
        ("maxPerCustomer", json!(-1)),
    ] {
        let mut body = json!({"name": "x", "price": 1, "inventory": 1});
        body[field] = value.clone();
        let created = api.post("/products", body).await;
        assert_eq!(created.status, 422, "{field} {value}: {}", created.body);
        assert_eq!(created.error_fields(), [field]);
    }
    let wrong_type = api
        .post(
            "/products",
            json!({"name": "x", "price": 1, "inventory": 1, "stockBuckets": "8"}),
        )
        .await;
    assert_eq!(wrong_type.problem_type(), "/problems/malformed-request");
    let product = api.product("1.00", 5).await;
    for (field, value) in [
        ("stockBuckets", json!(null)),
        ("stockBuckets", json!(100)),
        ("maxPerCustomer", json!(0)),
    ] {
        let patched = api
            .patch(&format!("/products/{product}"), json!({ field: value }))
            .await;
        assert_eq!(patched.status, 422, "{field} {value}: {}", patched.body);
        assert_eq!(patched.error_fields(), [field]);
    }
    let defaults = api.get(&format!("/products/{product}")).await.body;
    assert_eq!(defaults["stockBuckets"], 1);
    assert_eq!(defaults["maxPerCustomer"], Value::Null);
}
