//! Random input at every body parser and domain constructor (issue 12, item 10): nothing
//! panics, no client input yields a 5xx, and every validation error names its field.
//! Bounded: `PROPTEST_CASES` cases per property (default 200), run in CI with the others.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use system_tests::{Api, TestDb};

/// JSON values of every type, with the extremes that break naive parsers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(0),
            json!(-1),
            json!(1_000_000_001),
            json!(10_001),
        ]),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("-9223372036854775808".to_owned()),
            Just("99999999999999999999999".to_owned()),
            Just("1e400".to_owned()),
            Just("0.001".to_owned()),
            Just("\u{0}".to_owned()),
            Just("".to_owned()),
            Just("USD".to_owned()),
            Just("pending".to_owned()),
            Just("cancelled".to_owned()),
            ".{0,40}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Mostly the fields the API knows, sometimes others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "name", "price", "inventory", "description", "sku", "currency", "items",
            "productId", "quantity", "customerId", "status", "delta", "reason",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z]{1,8}",
    ]
}

/// A request body: an object of known and unknown fields, any JSON, or raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec((field_name(), json_value()), 0..8).prop_map(|fields| {
            Value::Object(fields.into_iter().collect::<Map<_, _>>())
                .to_string()
                .into_bytes()
        }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn no_body_makes_any_write_route_fail_on_our_side() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_db, api, routes) = runtime.block_on(async {
        let db = TestDb::new().await;
        let api = Api::new(db.pool.clone());
        let product = api.product("2.00", 1_000_000).await;
        let order = api.order(&[(&product, 1)]).await.body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let routes = vec![
            ("POST", "/products".to_owned()),
            ("PATCH", format!("/products/{product}")),
            ("POST", format!("/products/{product}/inventory-adjustments")),
            ("POST", "/orders".to_owned()),
            ("PATCH", format!("/orders/{order}/status")),
        ];
        (db, api, routes)
    });
    let customer = api.as_customer("fuzzer");
    let mut runner = TestRunner::new(config());
    runner
        .run(
            &(prop::sample::select(routes), body(), any::<bool>()),
            |((method, path), body, as_customer)| {
                let caller = if as_customer { &customer } else { &api };
                let response = runtime.block_on(caller.request(
                    method,
                    &path,
                    &[("content-type", "application/json")],
                    Some(&body),
                ));
                prop_assert!(
                    response.status < 500,
                    "{method} {path} {}: {} {}",
                    String::from_utf8_lossy(&body),
                    response.status,
                    response.body
                );
                if response.status == 422 && response.problem_type() == "/problems/validation" {
                    let errors = response.body["errors"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    prop_assert!(!errors.is_empty(), "{}", response.body);
                    for error in errors {
                        let field = error["field"].as_str().unwrap_or_default();
                        prop_assert!(
                            !field.is_empty(),
                            "an error without its field: {}",
                            response.body
                        );
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn domain_constructors_take_any_text_without_panicking() {
    use shared::domain::{
        AdjustmentReason, Currency, CustomerId, Description, IdempotencyKey, Money, OrderStatus,
        ProductName, Quantity, Sku, StockDelta,
    };
    let mut runner = TestRunner::new(config());
    runner
        .run(&any::<String>(), |text| {
            let _ = Money::parse_price(&text);
            let _ = Quantity::parse_number(&text);
            let _ = StockDelta::parse_number(&text);
            let _ = ProductName::parse(&text);
            let _ = Description::parse(&text);
            let _ = Sku::parse(&text);
            let _ = CustomerId::parse(&text);
            let _ = AdjustmentReason::parse(&text);
            let _ = IdempotencyKey::parse(&text);
            let _ = Currency::parse(&text);
            let _ = OrderStatus::parse(&text);
            Ok(())
        })
        .unwrap();
    runner
        .run(&any::<i64>(), |n| {
            let literal = n.to_string();
            if let Ok(delta) = StockDelta::parse_number(&literal) {
                prop_assert!(delta.get() != 0 && delta.get().abs() <= StockDelta::LIMIT);
            }
            if let Ok(quantity) = Quantity::parse_number(&literal) {
                prop_assert!((1..=10_000).contains(&i64::from(quantity.get())));
            }
            Ok(())
        })
        .unwrap();
}
