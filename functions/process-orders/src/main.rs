use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::messaging::Processor;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let processor = Processor::load().await?;
    let processor = &processor;
    run(service_fn(
        move |event: LambdaEvent<RabbitMqEvent>| async move {
            processor.handle(&event.payload).await.map_err(Error::from)
        },
    ))
    .await
}
