//! Puts parked messages back on `orders` with their attempts reset: `{}` for all of them,
//! `{"reason": "...", "max": N}` for some. Invoked by an operator, never on a schedule.
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::messaging::{redrive_parked, Broker, RedriveRequest, Topology};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let broker = Broker::new(shared::config::BrokerConfig::load().await?);
    let topology = Topology::new(broker.config());
    let (broker, topology) = (&broker, &topology);
    run(service_fn(
        move |event: LambdaEvent<RedriveRequest>| async move {
            let report = redrive_parked(broker, topology, &event.payload).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
