//! Nothing commits after its caller gave up (issue 12, item 2; INVARIANTS.md 9): every
//! database wait is bounded below the function's timeout and answered 503 with
//! `Retry-After`, and the transaction that waited is undone.

use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::{Api, TestDb};

const BOUND: Duration = Duration::from_millis(800);

async fn assert_unavailable_within_bound(
    api: &Api,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let started = Instant::now();
    // Without a bound the request would wait for the holder forever: give up on it.
    let response = tokio::time::timeout(
        BOUND * 10,
        api.request(method, path, headers, Some(body.as_bytes())),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} is still waiting after {:?}", BOUND * 10));
    let waited = started.elapsed();
    assert_eq!(response.status, 503, "{method} {path}: {}", response.body);
    assert_eq!(response.problem_type(), "/problems/unavailable");
    assert!(response.header("retry-after").is_some());
    assert!(
        waited < BOUND * 4,
        "{method} {path} waited {waited:?} for a bound of {BOUND:?}"
    );
}

#[tokio::test]
async fn orders_waiting_on_a_locked_product_get_503_and_are_never_committed() {
    let db = TestDb::with_statement_timeout(BOUND).await;
    let api = Api::new(db.pool.clone());
    let a = api.product("1.00", 10).await;
    let b = api.product("2.00", 10).await;
    // A long restock holds the product's row.
    let holder = db
        .hold(&format!(
            "SELECT 1 FROM products WHERE id = '{a}' FOR UPDATE"
        ))
        .await;
    let json = [("content-type", "application/json")];
    let keyed = [
        ("content-type", "application/json"),
        ("idempotency-key", "retry-me"),
    ];
    let one_line = json!({"productId": a, "quantity": 1}).to_string();
    let two_lines =
        json!({"items": [{"productId": a, "quantity": 1}, {"productId": b, "quantity": 1}]})
            .to_string();
    assert_unavailable_within_bound(&api, "POST", "/orders", &json, &one_line).await;
    assert_unavailable_within_bound(&api, "POST", "/orders", &json, &two_lines).await;
    assert_unavailable_within_bound(&api, "POST", "/orders", &keyed, &one_line).await;
    holder.release().await;

    // The waits were undone, not left to commit once the lock went away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(db.scalar("SELECT count(*) FROM orders").await, 0);
    assert_eq!(api.stock(&a).await, (10, 0));
    // The key stayed free: the retry is handled afresh.
    let retried = api
        .request("POST", "/orders", &keyed, Some(one_line.as_bytes()))
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(retried.header("idempotency-replayed"), None);
    db.assert_always_invariants().await;
}

#[tokio::test]
async fn a_status_change_waiting_on_a_locked_order_gets_503_and_changes_nothing() {
    let db = TestDb::with_statement_timeout(BOUND).await;
    let api = Api::new(db.pool.clone());
    let product = api.product("1.00", 10).await;
    let order = api.order(&[(&product, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let holder = db
        .hold(&format!(
            "SELECT 1 FROM orders WHERE id = '{order}' FOR UPDATE"
        ))
        .await;
    assert_unavailable_within_bound(
        &api,
        "PATCH",
        &format!("/orders/{order}/status"),
        &[("content-type", "application/json")],
        r#"{"status":"cancelled"}"#,
    )
    .await;
    let adjust_holder = db
        .hold(&format!(
            "SELECT 1 FROM products WHERE id = '{product}' FOR UPDATE"
        ))
        .await;
    assert_unavailable_within_bound(
        &api,
        "POST",
        &format!("/products/{product}/inventory-adjustments"),
        &[("content-type", "application/json")],
        r#"{"delta": 5, "reason": "restock"}"#,
    )
    .await;
    holder.release().await;
    adjust_holder.release().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = api.get(&format!("/orders/{order}")).await;
    assert_eq!(read.body["status"], "pending");
    assert_eq!(db.scalar("SELECT count(*) FROM outbox").await, 1);
    assert_eq!(api.stock(&product).await, (10, 1));
}
