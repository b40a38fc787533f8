//! A database that is away is a 503 with Retry-After, never a 5xx of another kind; the pool
//! heals by itself when the database is back.

use serde_json::json;
use shared::config::DatabaseConfig;
use shared::db::build_pool;
use system_tests::{Api, TestDb};

fn unreachable_pool() -> deadpool_postgres::Pool {
    // Nothing listens on port 1.
    let mut config =
        DatabaseConfig::from_url("postgres://postgres@127.0.0.1:1/none?sslmode=disable").unwrap();
    config.timeout = std::time::Duration::from_secs(1);
    build_pool(&config).unwrap()
}

#[tokio::test]
async fn every_route_answers_503_with_retry_after_when_the_database_is_down() {
    let api = Api::new(unreachable_pool());
    let id = uuid::Uuid::now_v7();
    let responses = [
        api.post(
            "/products",
            json!({"name": "x", "price": 1, "inventory": 1}),
        )
        .await,
        api.get("/products").await,
        api.get(&format!("/products/{id}")).await,
        api.patch(&format!("/products/{id}"), json!({"name": "y"}))
            .await,
        api.post(
            &format!("/products/{id}/inventory-adjustments"),
            json!({"delta": 1, "reason": "r"}),
        )
        .await,
        api.post("/orders", json!({"productId": id, "quantity": 1}))
            .await,
        api.get("/orders").await,
        api.get(&format!("/orders/{id}")).await,
        api.patch(
            &format!("/orders/{id}/status"),
            json!({"status": "cancelled"}),
        )
        .await,
    ];
    for response in responses {
        assert_eq!(response.status, 503, "{}", response.body);
        assert_eq!(response.problem_type(), "/problems/unavailable");
        assert!(response.header("retry-after").is_some());
        assert!(
            !response.body.to_string().contains("127.0.0.1"),
            "no internals leak"
        );
    }
}

#[tokio::test]
async fn client_errors_are_still_client_errors_when_the_database_is_down() {
    let api = Api::new(unreachable_pool());
    let response = api.post("/products", json!({"name": ""})).await;
    assert_eq!(response.status, 422);
}

#[tokio::test]
async fn the_pool_recovers_after_its_connections_are_killed() {
    let db = TestDb::with_pool_size(2).await;
    let api = Api::new(db.pool.clone());
    let product = api.product("1", 5).await;
    // Terminate every connection of this database, as a restart would.
    let (admin, connection) =
        tokio_postgres::connect(&system_tests::admin_database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(api.get(&format!("/products/{product}")).await.status);
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}
