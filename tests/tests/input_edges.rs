//! Input at the edges (issue 12, item 10): the largest bodies and the extreme numbers get
//! a short 4xx that names the field, never a 5xx or an answer larger than the question.

use serde_json::json;
use system_tests::{Api, TestDb};

#[tokio::test]
async fn a_body_full_of_empty_order_lines_gets_one_short_error() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    // Just under 64 KiB of `{}` lines.
    let lines = vec!["{}"; 21_000].join(",");
    let body = format!(r#"{{"items":[{lines}]}}"#);
    assert!(body.len() < 64 * 1024);
    let response = api
        .request(
            "POST",
            "/orders",
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(response.status, 422);
    assert_eq!(response.error_fields(), ["items"]);
    let size = response.body.to_string().len();
    assert!(size < 1024, "a {size}-byte answer to a 64 KiB request");
}

#[tokio::test]
async fn many_broken_fields_are_named_up_to_a_bound_and_counted_beyond_it() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    // 50 lines (the most there may be), each with two broken fields: 100 errors.
    let items: Vec<_> = (0..50)
        .map(|_| json!({"productId": "not-a-uuid", "quantity": 0}))
        .collect();
    let response = api.post("/orders", json!({ "items": items })).await;
    assert_eq!(response.status, 422);
    let errors = response.body["errors"].as_array().unwrap();
    assert!(errors.len() <= 20, "{} errors listed", errors.len());
    assert_eq!(errors[0]["field"], "items[0].productId");
    assert_eq!(response.body["moreErrors"], 100 - errors.len());
}

#[tokio::test]
async fn the_most_negative_delta_is_a_validation_error() {
    let db = TestDb::new().await;
    let api = Api::new(db.pool.clone());
    let product = api.product("1.00", 5).await;
    for delta in [
        "-9223372036854775808",
        "9223372036854775807",
        "-1000000001",
        "99999999999999999999",
    ] {
        let body = format!(r#"{{"delta": {delta}, "reason": "count"}}"#);
        let response = api
            .request(
                "POST",
                &format!("/products/{product}/inventory-adjustments"),
                &[("content-type", "application/json")],
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(response.status, 422, "{delta}: {}", response.body);
        assert_eq!(response.error_fields(), ["delta"]);
    }
    assert_eq!(api.stock(&product).await, (5, 0));
}
