//! Brings the database schema and the broker topology up to date. Locally and in CI it runs
//! as a command (`cargo run -p migrate`); deployed, the same code runs as the template's
//! custom resource on every deploy.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use shared::setup::{handle_invocation, set_up};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        let report = set_up().await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    run(service_fn(|event: LambdaEvent<Value>| async move {
        handle_invocation(event.payload).await.map_err(Error::from)
    }))
    .await
}
