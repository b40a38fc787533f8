//! Everything the order-system functions share, organised by what it is:
//! `domain` (values that cannot be invalid and the order state machine), `store`
//! (PostgreSQL, one transaction per use case), `messaging` (RabbitMQ events, outbox relay,
//! the processor), `http` (API Gateway v2 glue and problem responses), `config`,
//! `telemetry` (logs) and `metrics` (CloudWatch embedded metric format).

pub mod aws;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod setup;
pub mod store;
pub mod telemetry;
