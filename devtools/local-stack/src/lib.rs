//! The order system on one machine, as AWS runs it: the real function binaries under
//! `cargo lambda watch` (the Lambda runtime emulator), fronted by a local API Gateway (HTTP
//! API, payload 2.0), fed by a local Amazon MQ event source mapping, with the outbox relay
//! on a schedule. Routes and their authorizers, binaries, timeouts and batching come from
//! `template.yaml`; bearer tokens are checked against a key pair of the checkout (`auth`).

pub mod apigw;
pub mod auth;
pub mod functions;
pub mod gateway;
pub mod invoke;
pub mod logging;
pub mod mapping;
pub mod relay;
pub mod rmq;
pub mod stack;
pub mod template;
