//! Brings the database schema and the broker topology up to date. Locally and in CI it runs
//! as a command (`cargo run -p migrate`); deployed, the same code runs as a Lambda function.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use shared::setup::{set_up, SetupReport};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        let report = set_up().await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    run(service_fn(|_: LambdaEvent<Value>| async {
        Ok::<SetupReport, Error>(set_up().await?)
    }))
    .await
}
