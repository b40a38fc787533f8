//! Test support: a fresh database per test, RabbitMQ names per test, and real API Gateway v2
//! and RabbitMQ event payloads built from AWS's own fixture shapes.

pub mod api;
pub mod broker;
pub mod database;
pub mod harness;
pub mod stack;

pub use api::{Api, Identity, TestResponse, TEST_STAFF};
pub use broker::{
    header_int, header_string, rabbitmq_event, rabbitmq_event_json, EventMessage, TestBroker,
};
pub use database::{LockHolder, TestDb, APP_ROLE};
pub use harness::Harness;

/// The PostgreSQL server tests create their databases on.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

/// The RabbitMQ broker tests declare their own queues on.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A short unique name part for this test's database, exchange and queues.
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs a test's clean-up from `Drop`, which runs inside the test's runtime: a thread with a
/// runtime of its own can block on async work there.
pub(crate) fn clean_up<F>(work: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future,
{
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work());
        }
    })
    .join();
}
