//! Every product route of API.md through real API Gateway v2 events.

use serde_json::json;
use system_tests::{Api, TestDb};

async fn api() -> (TestDb, Api) {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    (db, api)
}

#[tokio::test]
async fn creating_a_product_returns_it_with_its_location_and_records_its_stock() {
    let (db, api) = api().await;
    let response = api
        .post(
            "/products",
            json!({"name": "  Mug ", "price": 19.99, "inventory": 12, "sku": "MUG-1", "description": "Blue", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let body = &response.body;
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        response.header("location"),
        Some(format!("/products/{id}").as_str())
    );
    assert_eq!(body["name"], "Mug");
    assert_eq!(body["price"], "19.99");
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["sku"], "MUG-1");
    assert_eq!(
        (
            body["inventory"].as_i64(),
            body["reserved"].as_i64(),
            body["available"].as_i64()
        ),
        (Some(12), Some(0), Some(12))
    );
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let fetched = api.get(&format!("/products/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(&fetched.body, body);
    db.assert_always_invariants().await;
}

#[tokio::test]
async fn a_product_without_optional_fields_gets_defaults() {
    let (_db, api) = api().await;
    let response = api
        .post(
            "/products",
            json!({"name": "Pen", "price": "0.5", "inventory": 0}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["sku"], serde_json::Value::Null);
    assert_eq!(response.body["description"], serde_json::Value::Null);
    assert_eq!(response.body["currency"], "USD");
    assert_eq!(response.body["price"], "0.50");
}

#[tokio::test]
async fn every_broken_rule_of_a_product_is_named() {
    let (_db, api) = api().await;
    let response = api
        .post(
            "/products",
            json!({"name": "", "price": 1.234, "inventory": -1, "sku": "bad sku", "currency": "XYZ", "colour": "red"}),
        )
        .await;
    assert_eq!(response.status, 422);
    assert_eq!(response.problem_type(), "/problems/validation");
    let mut fields = response.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        ["colour", "currency", "inventory", "name", "price", "sku"]
    );
    let unknown = &response.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "colour")
        .unwrap()["message"];
    assert_eq!(unknown, "unknown field");

    let missing = api.post("/products", json!({})).await;
    let mut fields = missing.error_fields();
    fields.sort();
    assert_eq!(fields, ["inventory", "name", "price"]);
}

#[tokio::test]
async fn prices_and_inventory_bounds_are_exact() {
    let (_db, api) = api().await;
    for (price, inventory, status) in [
        (json!("999999999.99"), json!(1_000_000_000), 201),
        (json!(999999999.99), json!(0), 201),
        (json!("1000000000.00"), json!(1), 422),
        (json!(-0.01), json!(1), 422),
        (json!(1), json!(1_000_000_001), 422),
        (json!(1), json!(1.5), 422),
    ] {
        let response = api
            .post(
                "/products",
                json!({"name": "x", "price": price, "inventory": inventory}),
            )
            .await;
        assert_eq!(
            response.status, status,
            "{price} {inventory}: {}",
            response.body
        );
    }
    let response = api
        .post(
            "/products",
            json!({"name": "x", "price": 999999999.99, "inventory": 0}),
        )
        .await;
    assert_eq!(response.body["price"], "999999999.99");
}

#[tokio::test]
async fn wrong_json_types_and_non_json_are_malformed_requests() {
    let (_db, api) = api().await;
    let wrong_type = api
        .post("/products", json!({"name": 5, "price": 1, "inventory": 1}))
        .await;
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.problem_type(), "/problems/malformed-request");
    assert!(wrong_type.body["detail"].as_str().unwrap().contains("name"));

    let not_json = api
        .request(
            "POST",
            "/products",
            &[("content-type", "application/json")],
            Some(b"{not json"),
        )
        .await;
    assert_eq!(not_json.status, 400);
    let array = api.post("/products", json!([1, 2])).await;
    assert_eq!(array.status, 400);
    let binary = api
        .request("POST", "/products", &[], Some(&[0xff, 0xfe, 0x00]))
        .await;
    assert_eq!(binary.status, 400);
}

#[tokio::test]
async fn media_type_and_size_rules_apply() {
    let (_db, api) = api().await;
    let body = br#"{"name":"x","price":1,"inventory":1}"#;
    let text = api
        .request(
            "POST",
            "/products",
            &[("content-type", "text/plain")],
            Some(body),
        )
        .await;
    assert_eq!(text.status, 415);
    assert_eq!(text.problem_type(), "/problems/unsupported-media-type");
    let no_type = api.request("POST", "/products", &[], Some(body)).await;
    assert_eq!(
        no_type.status, 201,
        "a missing Content-Type is read as JSON"
    );
    let charset = api
        .request(
            "POST",
            "/products",
            &[("content-type", "application/json; charset=utf-8")],
            Some(body),
        )
        .await;
    assert_eq!(charset.status, 201);

    let big = format!(
        r#"{{"name":"x","price":1,"inventory":1,"description":"{}"}}"#,
        "a".repeat(70_000)
    );
    let too_large = api
        .request(
            "POST",
            "/products",
            &[("content-type", "application/json")],
            Some(big.as_bytes()),
        )
        .await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.problem_type(), "/problems/payload-too-large");
}

#[tokio::test]
async fn a_second_product_with_the_same_sku_is_refused() {
    let (_db, api) = api().await;
    let first = api
        .post(
            "/products",
            json!({"name": "a", "price": 1, "inventory": 1, "sku": "SKU-1"}),
        )
        .await;
    assert_eq!(first.status, 201);
    let second = api
        .post(
            "/products",
            json!({"name": "b", "price": 1, "inventory": 1, "sku": "SKU-1"}),
        )
        .await;
    assert_eq!(second.status, 409);
    assert_eq!(second.problem_type(), "/problems/duplicate-sku");
    let without_sku = api
        .post(
            "/products",
            json!({"name": "c", "price": 1, "inventory": 1}),
        )
        .await;
    let another_without = api
        .post(
            "/products",
            json!({"name": "d", "price": 1, "inventory": 1}),
        )
        .await;
    assert_eq!((without_sku.status, another_without.status), (201, 201));
}

#[tokio::test]
async fn unknown_and_malformed_product_ids_are_not_found() {
    let (_db, api) = api().await;
    for path in [
        "/products/not-a-uuid",
        &format!("/products/{}", uuid::Uuid::now_v7()),
    ] {
        let response = api.get(path).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.problem_type(), "/problems/not-found");
    }
    let patch = api
        .patch(
            &format!("/products/{}", uuid::Uuid::now_v7()),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(patch.status, 404);
    let adjust = api
        .post(
            &format!("/products/{}/inventory-adjustments", uuid::Uuid::now_v7()),
            json!({"delta": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(adjust.status, 404);
    let unknown_route = api.get("/nothing-here").await;
    assert_eq!(unknown_route.status, 404);
}

#[tokio::test]
async fn patching_a_product_changes_only_what_was_sent_and_open_orders_keep_their_prices() {
    let (_db, api) = api().await;
    let id = api.product("10.00", 5).await;
    let order = api.order(&[(&id, 2)]).await;
    assert_eq!(order.status, 201);

    let patched = api
        .patch(
            &format!("/products/{id}"),
            json!({"price": "12.50", "description": "new"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["price"], "12.50");
    assert_eq!(patched.body["description"], "new");
    assert_eq!(patched.body["name"], "Test product");

    let cleared = api
        .patch(&format!("/products/{id}"), json!({"description": null}))
        .await;
    assert_eq!(cleared.body["description"], serde_json::Value::Null);

    let order_id = order.body["id"].as_str().unwrap();
    let order = api.get(&format!("/orders/{order_id}")).await;
    assert_eq!(order.body["items"][0]["unitPrice"], "10.00");
    assert_eq!(order.body["total"], "20.00");
}

#[tokio::test]
async fn a_patch_must_be_valid_and_change_something() {
    let (_db, api) = api().await;
    let id = api.product("1", 1).await;
    let empty = api.patch(&format!("/products/{id}"), json!({})).await;
    assert_eq!(empty.status, 422);
    let invalid = api
        .patch(
            &format!("/products/{id}"),
            json!({"name": null, "price": "-1", "inventory": 5}),
        )
        .await;
    assert_eq!(invalid.status, 422);
    let mut fields = invalid.error_fields();
    fields.sort();
    assert_eq!(fields, ["inventory", "name", "price"]);
    let wrong_type = api
        .patch(&format!("/products/{id}"), json!({"price": true}))
        .await;
    assert_eq!(wrong_type.status, 400);
}

#[tokio::test]
async fn inventory_adjustments_move_stock_but_never_below_what_orders_hold() {
    let (db, api) = api().await;
    let id = api.product("1", 10).await;
    assert_eq!(api.order(&[(&id, 6)]).await.status, 201);
    let path = format!("/products/{id}/inventory-adjustments");

    let added = api
        .post(&path, json!({"delta": 5, "reason": "restock"}))
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(
        (
            added.body["inventory"].as_i64(),
            added.body["available"].as_i64()
        ),
        (Some(15), Some(9))
    );

    let too_much = api
        .post(&path, json!({"delta": -10, "reason": "breakage"}))
        .await;
    assert_eq!(too_much.status, 409);
    assert_eq!(too_much.problem_type(), "/problems/insufficient-stock");
    assert_eq!(too_much.body["shortages"][0]["requested"], 10);
    assert_eq!(too_much.body["shortages"][0]["available"], 9);

    let exact = api
        .post(&path, json!({"delta": -9, "reason": "breakage"}))
        .await;
    assert_eq!(exact.status, 200);
    assert_eq!(api.stock(&id).await, (6, 6));

    let invalid = api
        .post(&path, json!({"delta": 0, "reason": "  ", "extra": 1}))
        .await;
    assert_eq!(invalid.status, 422);
    let mut fields = invalid.error_fields();
    fields.sort();
    assert_eq!(fields, ["delta", "extra", "reason"]);
    db.assert_always_invariants().await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM inventory_ledger WHERE reason = 'adjustment'")
            .await,
        2
    );
}

#[tokio::test]
async fn listing_products_returns_every_item_exactly_once_oldest_first() {
    let (_db, api) = api().await;
    let mut created = Vec::new();
    for _ in 0..23 {
        created.push(api.product("1", 1).await);
    }
    let mut seen = Vec::new();
    let mut path = "/products?limit=5".to_owned();
    loop {
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page.body["nextCursor"].as_str() {
            Some(cursor) => path = format!("/products?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    let default_page = api.get("/products").await;
    assert_eq!(default_page.body["items"].as_array().unwrap().len(), 23);
    assert_eq!(default_page.body["nextCursor"], serde_json::Value::Null);
}

#[tokio::test]
async fn bad_limits_and_cursors_are_named() {
    let (_db, api) = api().await;
    for query in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "cursor=garbage",
        "limit=0&cursor=garbage",
    ] {
        let response = api.get(&format!("/products?{query}")).await;
        assert_eq!(response.status, 422, "{query}");
        assert!(!response.error_fields().is_empty());
    }
    let orders_cursor = {
        let product = api.product("1", 10).await;
        api.order(&[(&product, 1)]).await;
        api.order(&[(&product, 1)]).await;
        api.get("/orders?limit=1").await.body["nextCursor"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let crossed = api.get(&format!("/products?cursor={orders_cursor}")).await;
    assert_eq!(
        crossed.status, 422,
        "an orders cursor is not a products cursor"
    );
}

#[tokio::test]
async fn text_with_nul_characters_is_refused_not_a_server_error() {
    let (_db, api) = api().await;
    let id = api.product("1", 5).await;
    let adjust = api
        .post(
            &format!("/products/{id}/inventory-adjustments"),
            json!({"delta": 1, "reason": "a\u{0}b"}),
        )
        .await;
    assert_eq!(adjust.status, 422);
    assert_eq!(adjust.error_fields(), ["reason"]);
    let create = api
        .post(
            "/products",
            json!({"name": "x\u{0}", "price": 1, "inventory": 1, "description": "\u{0}"}),
        )
        .await;
    let mut fields = create.error_fields();
    fields.sort();
    assert_eq!(fields, ["description", "name"]);
}
