use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use shared::messaging::{relay_once, OutboxRelay};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let relay = OutboxRelay::load().await?;
    let relay = &relay;
    let metrics = &shared::metrics::Emitter::from_env();
    // The schedule's event carries nothing the relay needs.
    run(service_fn(move |_: LambdaEvent<Value>| async move {
        let report = shared::metrics::invocation(metrics, relay_once(relay)).await?;
        Ok::<_, Error>(serde_json::to_value(report)?)
    }))
    .await
}
