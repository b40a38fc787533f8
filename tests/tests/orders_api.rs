//! Every order route of API.md through real API Gateway v2 events.

use serde_json::{json, Value};
use system_tests::{Api, TestDb};

async fn api() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn placing_an_order_reserves_stock_and_snapshots_prices() {
    let (db, api) = api().await;
    let a = api.product("2.50", 10).await;
    let b = api.product("0.10", 10).await;
    let response = api
        .post(
            "/orders",
            json!({"items": [{"productId": a, "quantity": 2}, {"productId": b, "quantity": 3}, {"productId": a, "quantity": 1}], "customerId": "c-42"}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let order = &response.body;
    let id = id_of(order);
    assert_eq!(
        response.header("location"),
        Some(format!("/orders/{id}").as_str())
    );
    assert_eq!(order["status"], "pending");
    assert_eq!(order["customerId"], "c-42");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["total"], "7.80");
    assert_eq!(
        order["items"].as_array().unwrap().len(),
        2,
        "lines of one product are merged"
    );
    let line_a = order["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["productId"] == a.as_str())
        .unwrap();
    assert_eq!(
        (
            line_a["quantity"].as_i64(),
            line_a["unitPrice"].as_str(),
            line_a["lineTotal"].as_str()
        ),
        (Some(3), Some("2.50"), Some("7.50"))
    );
    assert_eq!(order["statusHistory"][0]["status"], "pending");
    assert_eq!(api.stock(&a).await, (10, 3));
    assert_eq!(api.stock(&b).await, (10, 3));

    let fetched = api.get(&format!("/orders/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(&fetched.body, order);
    assert_eq!(
        db.scalar("SELECT count(*) FROM outbox WHERE routing_key = 'order.created'")
            .await,
        1
    );
    db.assert_always_invariants().await;
    db.assert_reserved_matches_open_orders().await;
}

#[tokio::test]
async fn the_seed_form_and_a_pending_status_are_accepted() {
    let (_db, api) = api().await;
    let a = api.product("1", 5).await;
    let response = api
        .post(
            "/orders",
            json!({"productId": a, "quantity": 2, "status": "pending"}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["items"][0]["quantity"], 2);
    assert_eq!(response.body["customerId"], Value::Null);

    let other_status = api
        .post(
            "/orders",
            json!({"productId": a, "quantity": 1, "status": "shipped"}),
        )
        .await;
    assert_eq!(other_status.status, 422);
    assert_eq!(other_status.error_fields(), ["status"]);
}

#[tokio::test]
async fn an_order_beyond_stock_is_refused_and_reserves_nothing() {
    let (db, api) = api().await;
    let a = api.product("1", 5).await;
    let b = api.product("1", 1).await;
    let response = api.order(&[(&a, 2), (&b, 2)]).await;
    assert_eq!(response.status, 409);
    assert_eq!(response.problem_type(), "/problems/insufficient-stock");
    assert_eq!(
        response.body["shortages"],
        json!([{"productId": b, "requested": 2, "available": 1}])
    );
    assert_eq!(api.stock(&a).await, (5, 0), "all lines or none");
    assert_eq!(db.scalar("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn orders_naming_unknown_products_are_refused_with_their_ids() {
    let (_db, api) = api().await;
    let a = api.product("1", 5).await;
    let ghost = uuid::Uuid::now_v7().to_string();
    let response = api.order(&[(&a, 1), (&ghost, 1)]).await;
    assert_eq!(response.status, 422);
    assert_eq!(response.problem_type(), "/problems/unknown-product");
    assert_eq!(response.body["productIds"], json!([ghost]));
}

#[tokio::test]
async fn an_order_mixing_currencies_is_refused() {
    let (_db, api) = api().await;
    let usd = api.product("1", 5).await;
    let eur = api
        .post(
            "/products",
            json!({"name": "e", "price": 1, "inventory": 5, "currency": "EUR"}),
        )
        .await;
    let response = api
        .order(&[(&usd, 1), (eur.body["id"].as_str().unwrap(), 1)])
        .await;
    assert_eq!(response.status, 422);
    assert_eq!(response.error_fields(), ["items"]);
}

#[tokio::test]
async fn order_lines_are_validated_and_named() {
    let (_db, api) = api().await;
    let a = api.product("1", 50_000).await;
    let cases = [
        (json!({"items": []}), vec!["items"]),
        (
            json!({"items": [{"productId": "nope", "quantity": 0, "colour": 1}]}),
            vec!["items[0].colour", "items[0].productId", "items[0].quantity"],
        ),
        (
            json!({"items": [{"productId": a, "quantity": 10_001}]}),
            vec!["items[0].quantity"],
        ),
        (
            json!({"items": [{"productId": a, "quantity": 6000}, {"productId": a, "quantity": 5000}]}),
            vec!["items"],
        ),
        (
            json!({"items": [{"productId": a, "quantity": 1}], "customerId": ""}),
            vec!["customerId"],
        ),
        (
            json!({"items": [{"productId": a, "quantity": 1}], "productId": a}),
            vec!["productId"],
        ),
        (json!({"quantity": 1}), vec!["productId"]),
        (json!({"productId": a, "quantity": 1.5}), vec!["quantity"]),
    ];
    for (body, expected) in cases {
        let response = api.post("/orders", body.clone()).await;
        assert_eq!(response.status, 422, "{body}: {}", response.body);
        let mut fields = response.error_fields();
        fields.sort();
        assert_eq!(fields, expected, "{body}");
    }
    let fifty_one: Vec<Value> = (0..51)
        .map(|_| json!({"productId": a, "quantity": 1}))
        .collect();
    let response = api.post("/orders", json!({"items": fifty_one})).await;
    assert_eq!(response.status, 422, "51 lines are counted before merging");
    let fifty: Vec<Value> = (0..50)
        .map(|_| json!({"productId": a, "quantity": 1}))
        .collect();
    let response = api.post("/orders", json!({"items": fifty})).await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["items"][0]["quantity"], 50);

    let wrong_type = api
        .post("/orders", json!({"items": {"productId": a}}))
        .await;
    assert_eq!(wrong_type.status, 400);
    let wrong_item_type = api
        .post(
            "/orders",
            json!({"items": [{"productId": a, "quantity": "2"}]}),
        )
        .await;
    assert_eq!(wrong_item_type.status, 400);
}

#[tokio::test]
async fn a_repeated_idempotency_key_replays_the_first_response() {
    let (db, api) = api().await;
    let a = api.product("3", 10).await;
    let body = json!({"items": [{"productId": a, "quantity": 2}]}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "key-1"),
    ];
    let first = api
        .request("POST", "/orders", &headers, Some(body.as_bytes()))
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotency-replayed"), None);
    // The order moves on; the replay is still the first response.
    let id = id_of(&first.body);
    assert_eq!(
        api.patch(
            &format!("/orders/{id}/status"),
            json!({"status": "cancelled"})
        )
        .await
        .status,
        200
    );

    let same_meaning =
        json!({"items": [{"productId": a, "quantity": 1}, {"productId": a, "quantity": 1}]})
            .to_string();
    let again = api
        .request("POST", "/orders", &headers, Some(same_meaning.as_bytes()))
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(db.scalar("SELECT count(*) FROM orders").await, 1);
    assert_eq!(api.stock(&a).await, (10, 2), "reserved once");

    let different = json!({"items": [{"productId": a, "quantity": 3}]}).to_string();
    let reused = api
        .request("POST", "/orders", &headers, Some(different.as_bytes()))
        .await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.problem_type(), "/problems/idempotency-key-reuse");
}

#[tokio::test]
async fn a_failed_request_leaves_its_idempotency_key_free() {
    let (_db, api) = api().await;
    let a = api.product("3", 1).await;
    let body = json!({"items": [{"productId": a, "quantity": 2}]}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "retry-me"),
    ];
    let refused = api
        .request("POST", "/orders", &headers, Some(body.as_bytes()))
        .await;
    assert_eq!(refused.status, 409);
    let restock = api
        .post(
            &format!("/products/{a}/inventory-adjustments"),
            json!({"delta": 5, "reason": "restock"}),
        )
        .await;
    assert_eq!(restock.status, 200);
    let retried = api
        .request("POST", "/orders", &headers, Some(body.as_bytes()))
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(retried.header("idempotency-replayed"), None);
}

#[tokio::test]
async fn a_key_still_being_handled_answers_request_in_progress() {
    // The wait for the key is the role's lock bound, as deployed (here a short one).
    let db = TestDb::with_statement_timeout(std::time::Duration::from_millis(800)).await;
    let api = Api::new(db.pool.clone());
    let a = api.product("3", 5).await;
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    // Another request holds the key: it claimed the (caller, key) row, as a creation does,
    // and has not committed.
    tx.execute(
        "INSERT INTO idempotency_keys (caller, key, fingerprint, order_id, response_body)
         VALUES ($1, 'busy-key', 'x', gen_random_uuid(), '')",
        &[&system_tests::TEST_STAFF],
    )
    .await
    .unwrap();
    let body = json!({"items": [{"productId": a, "quantity": 1}]}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "busy-key"),
    ];
    let response = api
        .request("POST", "/orders", &headers, Some(body.as_bytes()))
        .await;
    assert_eq!(response.status, 409);
    assert_eq!(response.problem_type(), "/problems/request-in-progress");
    tx.rollback().await.unwrap();
    assert_eq!(api.stock(&a).await, (5, 0));
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_named() {
    let (_db, api) = api().await;
    let a = api.product("3", 5).await;
    let body = json!({"productId": a, "quantity": 1}).to_string();
    let long = "k".repeat(256);
    let response = api
        .request(
            "POST",
            "/orders",
            &[("idempotency-key", &long)],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(response.status, 422);
    assert_eq!(response.error_fields(), ["Idempotency-Key"]);
}

#[tokio::test]
async fn clients_move_orders_along_the_transition_table_only() {
    let (db, api) = api().await;
    let a = api.product("1", 10).await;
    let id = id_of(&api.order(&[(&a, 1)]).await.body);
    let path = format!("/orders/{id}/status");

    let processed = api.patch(&path, json!({"status": "processed"})).await;
    assert_eq!(
        processed.status, 409,
        "pending → processed is the processor's"
    );
    assert_eq!(processed.problem_type(), "/problems/invalid-transition");
    assert_eq!(
        (
            processed.body["from"].as_str(),
            processed.body["to"].as_str()
        ),
        (Some("pending"), Some("processed"))
    );
    assert_eq!(processed.body["allowed"], json!(["cancelled"]));

    let same = api.patch(&path, json!({"status": "pending"})).await;
    assert_eq!(same.status, 200, "asking for the current status is a no-op");

    // The processor's move, as it makes it.
    db.mark_processed(&id).await;
    let shipped = api.patch(&path, json!({"status": "shipped"})).await;
    assert_eq!(shipped.status, 200, "{}", shipped.body);
    assert_eq!(shipped.body["status"], "shipped");
    let cancel = api.patch(&path, json!({"status": "cancelled"})).await;
    assert_eq!(cancel.status, 409);
    assert_eq!(cancel.body["allowed"], json!(["delivered"]));
    let delivered = api.patch(&path, json!({"status": "delivered"})).await;
    assert_eq!(delivered.status, 200);
    let history: Vec<&str> = delivered.body["statusHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["pending", "processed", "shipped", "delivered"]);
    let routing: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT routing_key FROM outbox ORDER BY created_at, routing_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        routing,
        [
            "order.created",
            "order.status_changed.shipped",
            "order.status_changed.delivered"
        ]
    );
}

#[tokio::test]
async fn status_requests_are_validated() {
    let (_db, api) = api().await;
    let a = api.product("1", 10).await;
    let id = id_of(&api.order(&[(&a, 1)]).await.body);
    let path = format!("/orders/{id}/status");
    let unknown = api.patch(&path, json!({"status": "lost"})).await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.error_fields(), ["status"]);
    let missing = api.patch(&path, json!({})).await;
    assert_eq!(missing.status, 422);
    let wrong_type = api.patch(&path, json!({"status": 1})).await;
    assert_eq!(wrong_type.status, 400);
    let not_found = api
        .patch(
            &format!("/orders/{}/status", uuid::Uuid::now_v7()),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(not_found.status, 404);
    let bad_id = api
        .patch("/orders/123/status", json!({"status": "cancelled"}))
        .await;
    assert_eq!(bad_id.status, 404);
    assert_eq!(api.get("/orders/123").await.status, 404);
    assert_eq!(
        api.get(&format!("/orders/{}", uuid::Uuid::now_v7()))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn listing_orders_pages_through_every_order_once_and_filters_by_status() {
    let (_db, api) = api().await;
    let a = api.product("1", 100).await;
    let mut created = Vec::new();
    for _ in 0..12 {
        created.push(id_of(&api.order(&[(&a, 1)]).await.body));
    }
    for id in &created[..4] {
        api.patch(
            &format!("/orders/{id}/status"),
            json!({"status": "cancelled"}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = "/orders?limit=5".to_owned();
    loop {
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(page.body["items"].as_array().unwrap().iter().map(id_of));
        match page.body["nextCursor"].as_str() {
            Some(cursor) => path = format!("/orders?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);

    let cancelled = api.get("/orders?status=cancelled&limit=3").await;
    assert_eq!(cancelled.body["items"].as_array().unwrap().len(), 3);
    let cursor = cancelled.body["nextCursor"].as_str().unwrap();
    let rest = api
        .get(&format!("/orders?status=cancelled&limit=3&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["nextCursor"], Value::Null);

    let bad = api.get("/orders?status=lost&limit=0").await;
    assert_eq!(bad.status, 422);
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(fields, ["limit", "status"]);
}

/// Order placement is one many-CTE statement (one for one line, one for several): PostgreSQL must settle on a generic plan for
/// it rather than plan it on every call, whatever the lines and the confirmed events a warm
/// environment hands it to mark.
#[tokio::test]
async fn order_placement_reuses_one_generic_plan() {
    use shared::domain::{OrderLines, ProductId, Quantity};
    use shared::store::{create_order, NewOrder, SentMessages};

    let db = TestDb::with_pool_size(1).await;
    let api = Api::new(db.pool.clone());
    let a = ProductId::parse(&api.product("1.00", 100).await).unwrap();
    let b = ProductId::parse(&api.product("2.00", 100).await).unwrap();
    // A shop in use: plan costs depend on table sizes, and on an almost empty database
    // the generic plan wins whatever the statement looks like.
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO products (id, name, price, currency)
             SELECT gen_random_uuid(), 'p' || k, 1.00, 'USD' FROM generate_series(1, 1000) k;
             INSERT INTO stock_buckets (product_id, bucket, inventory)
             SELECT id, 0, 10 FROM products p
             WHERE NOT EXISTS (SELECT 1 FROM stock_buckets s WHERE s.product_id = p.id);
             INSERT INTO outbox (message_id, routing_key, payload, published_at)
             SELECT gen_random_uuid(), 'order.created', '{}', now() FROM generate_series(1, 20000);",
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
    drop(client);
    let one = Quantity::try_from(1).unwrap();
    let staff = shared::domain::Caller::from_token(
        Some(system_tests::TEST_STAFF),
        [shared::domain::STAFF_SCOPE].into_iter(),
    )
    .unwrap();
    for i in 0..16 {
        let lines = if i < 8 {
            vec![(a, one)]
        } else {
            vec![(a, one), (b, one)]
        };
        let new = NewOrder {
            lines: OrderLines::merge(lines, "items").unwrap(),
            customer_id: None,
        };
        // A warm environment has confirmed events to mark, or none (its first requests,
        // or a broker that is away).
        let sent = if i % 4 < 2 {
            SentMessages::none()
        } else {
            SentMessages::new(vec![uuid::Uuid::now_v7()], Some(std::time::Instant::now()))
        };
        create_order(&db.pool, &new, &staff, None, "plan-test", &sent)
            .await
            .unwrap();
    }
    let client = db.pool.get().await.unwrap();
    if db.multiplexed {
        // Through a pooler every statement runs unnamed: no server connection keeps one
        // (`scripts/test.sh` runs this test again without the pooler for the plans).
        let rows = client
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        let count = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(
            count.as_deref(),
            Some("0"),
            "a named statement was prepared"
        );
        return;
    }
    for statement in ["WITH product AS%", "WITH lines AS%"] {
        let row = client
            .query_one(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements
                 WHERE statement LIKE $1",
                &[&statement],
            )
            .await
            .unwrap();
        let (generic, custom): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (generic, custom),
            (3, 5),
            "{statement}: PostgreSQL plans five times, then keeps the generic plan"
        );
    }
}
