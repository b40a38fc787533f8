use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::messaging::{AmazonMqEvent, Processor};

// One thread: an invocation's work is one task (its parts are polled together), and at
// 512 MB Lambda gives a third of a vCPU; every extra worker thread only adds a malloc arena
// to the peak memory of a 1,000-message batch.
#[tokio::main(flavor = "current_thread")]
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
