//! Who may do what (API.md, Authorization), in-process: every route called with the
//! authorizer context API Gateway's JWT authorizer sends for staff and for customers, and
//! without one. (The token checks themselves — signature, issuer, lifetime — are API
//! Gateway's, and the local gateway's: `local_stack.rs`.)

use std::sync::Arc;

use serde_json::{json, Value};
use system_tests::{Api, Harness, Identity, TestDb, TEST_STAFF};

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

struct Shop {
    _db: TestDb,
    staff: Api,
    alice: Api,
    bob: Api,
    product: String,
    alices_order: String,
}

async fn shop() -> Shop {
    let db = TestDb::new().await;
    let staff = Api::new(db.pool.clone());
    let alice = staff.as_customer("alice");
    let bob = staff.as_customer("bob");
    let product = staff.product("4.00", 50).await;
    let placed = alice.order(&[(&product, 1)]).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let alices_order = id(&placed.body);
    Shop {
        _db: db,
        staff,
        alice,
        bob,
        product,
        alices_order,
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_the_contract_says() {
    let shop = shop().await;
    let (p, o) = (shop.product.clone(), shop.alices_order.clone());
    let anonymous = shop.staff.anonymous();
    let callers: [(&str, &Api); 4] = [
        ("anonymous", &anonymous),
        ("alice", &shop.alice),
        ("bob", &shop.bob),
        ("staff", &shop.staff),
    ];
    let json_headers = [("content-type", "application/json")];
    // (method, path, body, statuses for anonymous, alice (the order's customer), bob, staff)
    type Row<'a> = (&'a str, String, Option<Value>, [u16; 4]);
    let rows: Vec<Row> = vec![
        ("GET", "/products".into(), None, [200, 200, 200, 200]),
        ("GET", format!("/products/{p}"), None, [200, 200, 200, 200]),
        (
            "POST",
            "/products".into(),
            Some(json!({"name": "Cup", "price": "1.00", "inventory": 1})),
            [401, 403, 403, 201],
        ),
        (
            "PATCH",
            format!("/products/{p}"),
            Some(json!({"price": "0"})),
            [401, 403, 403, 200],
        ),
        (
            "POST",
            format!("/products/{p}/inventory-adjustments"),
            Some(json!({"delta": 5, "reason": "restock"})),
            [401, 403, 403, 200],
        ),
        (
            "GET",
            format!("/products/{p}/stock-movements"),
            None,
            [401, 403, 403, 200],
        ),
        (
            "POST",
            "/orders".into(),
            Some(json!({"productId": p, "quantity": 1})),
            [401, 201, 201, 201],
        ),
        (
            "POST",
            "/orders".into(),
            Some(json!({"items": [{"productId": p, "quantity": 1}], "customerId": "bob"})),
            [401, 403, 201, 201],
        ),
        ("GET", "/orders".into(), None, [401, 200, 200, 200]),
        (
            "GET",
            "/orders?customerId=bob".into(),
            None,
            [401, 403, 200, 200],
        ),
        ("GET", format!("/orders/{o}"), None, [401, 200, 404, 200]),
        (
            "PATCH",
            format!("/orders/{o}/status"),
            Some(json!({"status": "shipped"})),
            [401, 403, 403, 409],
        ),
        (
            "PATCH",
            format!("/orders/{o}/status"),
            Some(json!({"status": "cancelled"})),
            [401, 200, 404, 200],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &rows {
        for ((who, api), expected) in callers.iter().zip(expected) {
            let body = body.as_ref().map(Value::to_string);
            let response = api
                .request(
                    method,
                    path,
                    if body.is_some() { &json_headers } else { &[] },
                    body.as_ref().map(String::as_bytes),
                )
                .await;
            if response.status != *expected {
                wrong.push(format!(
                    "{method} {path} as {who}: {} (expected {expected}) {}",
                    response.status, response.body
                ));
            }
            if response.status == 403 {
                assert_eq!(response.problem_type(), "/problems/forbidden");
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_customer_orders_for_itself_and_sees_only_its_own_orders() {
    let shop = shop().await;
    let placed = shop
        .bob
        .post(
            "/orders",
            json!({"items": [{"productId": shop.product, "quantity": 2}]}),
        )
        .await;
    assert_eq!(placed.status, 201);
    assert_eq!(
        placed.body["customerId"], "bob",
        "a customer's sub is its id"
    );
    let named_self = shop
        .bob
        .post(
            "/orders",
            json!({"items": [{"productId": shop.product, "quantity": 1}], "customerId": "bob"}),
        )
        .await;
    assert_eq!(named_self.status, 201);
    let for_alice = shop
        .bob
        .post(
            "/orders",
            json!({"items": [{"productId": shop.product, "quantity": 1}], "customerId": "alice"}),
        )
        .await;
    assert_eq!(for_alice.status, 403);
    // The refused order reserved nothing: 50 − alice's 1 − bob's 3.
    assert_eq!(shop.staff.stock(&shop.product).await, (50, 4));

    let bobs: Vec<String> = shop.bob.get("/orders").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(bobs, [id(&placed.body), id(&named_self.body)]);
    let everyone = shop.staff.get("/orders").await.body["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(everyone, 3);
    let alices = shop.staff.get("/orders?customerId=alice").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect::<Vec<_>>();
    assert_eq!(alices, std::slice::from_ref(&shop.alices_order));
}

#[tokio::test]
async fn a_customer_cancels_its_own_order_and_nothing_else() {
    let shop = shop().await;
    let o = &shop.alices_order;
    let by_bob = shop
        .bob
        .patch(
            &format!("/orders/{o}/status"),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(
        (by_bob.status, by_bob.problem_type()),
        (404, "/problems/not-found")
    );
    assert_eq!(
        shop.staff.get(&format!("/orders/{o}")).await.body["status"],
        "pending"
    );
    let cancelled = shop
        .alice
        .patch(
            &format!("/orders/{o}/status"),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let history = cancelled.body["statusHistory"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| (h["status"].as_str().unwrap(), h["by"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [("pending", "alice"), ("cancelled", "alice")]
    );
}

#[tokio::test]
async fn a_request_without_a_usable_subject_is_forbidden() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let mut event = system_tests::api::apigw_event("GET", "/orders", &[], None);
    let mut authorizer = Identity::Customer("x".into()).authorizer().unwrap();
    authorizer["jwt"]["claims"]
        .as_object_mut()
        .unwrap()
        .remove("sub");
    event["requestContext"]["authorizer"] = authorizer;
    let response = api.anonymous().send_event(&event).await;
    assert_eq!(response.status, 403);
    assert_eq!(response.problem_type(), "/problems/forbidden");
}

#[tokio::test]
async fn staff_scope_is_read_from_scp_arrays_too() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let mut event = system_tests::api::apigw_event(
        "POST",
        "/products",
        &[("content-type", "application/json")],
        Some(br#"{"name":"Cup","price":"1.00","inventory":1}"#),
    );
    let mut authorizer = Identity::Customer("ops-1".into()).authorizer().unwrap();
    let claims = authorizer["jwt"]["claims"].as_object_mut().unwrap();
    claims.remove("scope");
    // API Gateway hands a JSON-array claim on rendered like this.
    claims.insert("scp".into(), json!("[email oms/staff]"));
    event["requestContext"]["authorizer"] = authorizer;
    let response = api.anonymous().send_event(&event).await;
    assert_eq!(response.status, 201, "{}", response.body);
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_caller() {
    let shop = shop().await;
    let body = json!({"items": [{"productId": shop.product, "quantity": 1}]}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "checkout-1"),
    ];
    let send = |api: &Api| {
        let api = api.clone();
        let body = body.clone();
        async move {
            api.request("POST", "/orders", &headers, Some(body.as_bytes()))
                .await
        }
    };
    let alice_first = send(&shop.alice).await;
    let bob_first = send(&shop.bob).await;
    let alice_again = send(&shop.alice).await;
    assert_eq!(
        (alice_first.status, bob_first.status, alice_again.status),
        (201, 201, 201)
    );
    assert_ne!(id(&alice_first.body), id(&bob_first.body));
    assert_eq!(bob_first.body["customerId"], "bob");
    assert_eq!(bob_first.header("idempotency-replayed"), None);
    assert_eq!(id(&alice_again.body), id(&alice_first.body));
    assert_eq!(alice_again.header("idempotency-replayed"), Some("true"));
}

#[tokio::test]
async fn two_customers_racing_with_one_key_get_two_orders() {
    let shop = shop().await;
    let body = json!({"items": [{"productId": shop.product, "quantity": 1}]}).to_string();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let api = shop.staff.as_customer(&format!("racer-{}", i % 2));
            let body = body.clone();
            tokio::spawn(async move {
                let headers = [
                    ("content-type", "application/json"),
                    ("idempotency-key", "same-key"),
                ];
                api.request("POST", "/orders", &headers, Some(body.as_bytes()))
                    .await
            })
        })
        .collect();
    let mut orders =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for task in tasks {
        let response = task.await.unwrap();
        assert!(
            response.status == 201 || response.status == 409,
            "{}",
            response.body
        );
        if response.status == 201 {
            orders
                .entry(response.body["customerId"].as_str().unwrap().to_owned())
                .or_default()
                .insert(id(&response.body));
        }
    }
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert!(orders.values().all(|ids| ids.len() == 1), "{orders:?}");
    // Alice's order and one per racer.
    assert_eq!(shop.staff.stock(&shop.product).await, (50, 3));
}

#[tokio::test]
async fn a_customers_cancel_racing_staffs_shipment_has_one_winner_and_stock_follows_it() {
    for round in 0..6 {
        let h = Arc::new(Harness::new().await);
        let product = h.api.product("2.00", 10).await;
        let customer = h.api.as_customer("carol");
        let order = id(&customer.order(&[(&product, 3)]).await.body);
        h.settle().await;
        assert_eq!(h.order_status(&order).await, "processed");

        let path = format!("/orders/{order}/status");
        let cancel = {
            let customer = customer.clone();
            let path = path.clone();
            tokio::spawn(async move { customer.patch(&path, json!({"status": "cancelled"})).await })
        };
        let ship = {
            let staff = h.api.as_staff("dana");
            tokio::spawn(async move { staff.patch(&path, json!({"status": "shipped"})).await })
        };
        let (cancel, ship) = (cancel.await.unwrap(), ship.await.unwrap());
        let mut statuses = [cancel.status, ship.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            cancel.body,
            ship.body
        );
        h.settle().await;
        let (status, stock) = (h.order_status(&order).await, h.api.stock(&product).await);
        if cancel.status == 200 {
            assert_eq!((status.as_str(), stock), ("cancelled", (10, 0)));
        } else {
            assert_eq!((status.as_str(), stock), ("shipped", (7, 0)));
        }
        let actor: String = h
            .db
            .client()
            .await
            .query_one(
                "SELECT actor FROM inventory_ledger WHERE order_id = $1 AND reason <> 'reserve'",
                &[&uuid::Uuid::parse_str(&order).unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            actor,
            if cancel.status == 200 {
                "carol"
            } else {
                "dana"
            }
        );
        h.db.assert_always_invariants().await;
    }
}

#[tokio::test]
async fn staff_read_a_products_ledger_with_who_moved_what() {
    let h = Harness::new().await;
    let product = h.api.product("3.00", 20).await;
    let adjusted = h
        .api
        .as_staff("erin")
        .post(
            &format!("/products/{product}/inventory-adjustments"),
            json!({"delta": -2, "reason": "damaged in transit"}),
        )
        .await;
    assert_eq!(adjusted.status, 200);
    let customer = h.api.as_customer("frank");
    let shipped_order = id(&customer.order(&[(&product, 4)]).await.body);
    let cancelled_order = id(&customer.order(&[(&product, 1)]).await.body);
    h.settle().await;
    let ship = h
        .api
        .as_staff("gina")
        .patch(
            &format!("/orders/{shipped_order}/status"),
            json!({"status": "shipped"}),
        )
        .await;
    assert_eq!(ship.status, 200);
    assert_eq!(ship.body["statusHistory"][1]["by"], "system");
    assert_eq!(ship.body["statusHistory"][2]["by"], "gina");
    let cancel = customer
        .patch(
            &format!("/orders/{cancelled_order}/status"),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(cancel.status, 200);
    h.settle().await;

    // Read it two entries a page, following the cursor to the end.
    let mut movements = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".into(),
        };
        let page = h
            .api
            .get(&format!("/products/{product}/stock-movements{query}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        movements.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let summary: Vec<(String, i64, i64, String, Value, Value)> = movements
        .iter()
        .map(|m| {
            (
                m["reason"].as_str().unwrap().to_owned(),
                m["delta"]["inventory"].as_i64().unwrap(),
                m["delta"]["reserved"].as_i64().unwrap(),
                m["by"].as_str().unwrap().to_owned(),
                m["orderId"].clone(),
                m["adjustmentReason"].clone(),
            )
        })
        .collect();
    let (o1, o2) = (json!(shipped_order), json!(cancelled_order));
    let expected = vec![
        ("initial", 20, 0, TEST_STAFF, Value::Null, Value::Null),
        (
            "adjustment",
            -2,
            0,
            "erin",
            Value::Null,
            json!("damaged in transit"),
        ),
        ("reserve", 0, 4, "frank", o1.clone(), Value::Null),
        ("reserve", 0, 1, "frank", o2.clone(), Value::Null),
        ("commit", -4, -4, "gina", o1, Value::Null),
        ("release", 0, -1, "frank", o2, Value::Null),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(r, i, q, by, o, a)| (r.to_owned(), i, q, by.to_owned(), o, a))
        .collect();
    assert_eq!(summary, expected);
    // The ledger adds up to the product's figures.
    let (inventory, reserved) = h.api.stock(&product).await;
    assert_eq!(summary.iter().map(|m| m.1).sum::<i64>(), inventory);
    assert_eq!(summary.iter().map(|m| m.2).sum::<i64>(), reserved);

    let unknown = h
        .api
        .get(&format!(
            "/products/{}/stock-movements",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_eq!(unknown.status, 404);
    let bad = h
        .api
        .get(&format!(
            "/products/{product}/stock-movements?cursor=nope&limit=0"
        ))
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.error_fields(), ["limit", "cursor"]);
}
