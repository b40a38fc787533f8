use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::messaging::{AmazonMqEvent, Processor};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let processor = Processor::load().await?;
    let processor = &processor;
    let metrics = &shared::metrics::Emitter::from_env();
    run(service_fn(
        move |event: LambdaEvent<AmazonMqEvent>| async move {
            shared::metrics::invocation(metrics, processor.handle(&event.payload))
                .await
                .map_err(Error::from)
        },
    ))
    .await
}
