//! Our own outages are not the message's fault (issue 12, item 4; API.md, Messages): a
//! database outage longer than the whole retry ladder parks nothing, and once it ends every
//! message is applied.

use std::time::{Duration, Instant};

use shared::config::DatabaseConfig;
use shared::db::build_pool;
use shared::messaging::{Processor, Publisher};
use system_tests::{EventMessage, Harness, TestBroker};

fn id(response: &system_tests::TestResponse) -> String {
    response.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_ladder_parks_nothing() {
    // The ladder, shortened: 50 + 100 + 150 + 200 ms. The outage lasts 3 s, ten ladders.
    let delays: Vec<Duration> = [50, 100, 150, 200].map(Duration::from_millis).to_vec();
    let ladder: Duration = delays.iter().sum();
    let mut h = Harness::new().await;
    h.broker = TestBroker::with_retry_delays(delays).await;
    h.processor = Processor::new(h.db.pool.clone(), Publisher::new(h.broker.broker()));
    let api = h.api.clone();
    // The API publishes to the test's new topology.
    let api = system_tests::Api::with_state(shared::http::ApiState {
        pool: api.state.pool.clone(),
        publisher: Some(Publisher::new(h.broker.broker())),
    });
    let product = api.product("1.00", 10).await;
    let orders: Vec<String> = {
        let mut orders = Vec::new();
        for _ in 0..3 {
            orders.push(id(&api.order(&[(&product, 1)]).await));
        }
        orders
    };

    // The processor's database is away: nothing listens where its pool points.
    let mut unreachable = DatabaseConfig::from_url("postgres://postgres@127.0.0.1:1/none").unwrap();
    unreachable.timeout = Duration::from_millis(200);
    let down = Processor::new(
        build_pool(&unreachable).unwrap(),
        Publisher::new(h.broker.broker()),
    );
    let outage = Duration::from_secs(3);
    let started = Instant::now();
    let mut waited = 0;
    while started.elapsed() < outage {
        let messages: Vec<EventMessage> = h
            .broker
            .wait_for(&h.broker.topology.queue, 1, Duration::from_millis(300))
            .await
            .iter()
            .map(|(data, properties)| EventMessage::from_delivery(data, properties))
            .collect();
        if messages.is_empty() {
            continue;
        }
        let event = system_tests::rabbitmq_event(&h.broker.topology.queue, &messages);
        let summary = down
            .handle(&event)
            .await
            .expect("outages are routed, not failed");
        assert_eq!(summary.parked, 0, "{summary:?}");
        assert_eq!(summary.waiting, messages.len(), "{summary:?}");
        waited += summary.waiting;
    }
    assert!(
        waited >= 3 * 5,
        "each message went round the ladder more than its 5 attempts ({waited} waits in {outage:?}, ladder {ladder:?})"
    );
    assert!(h
        .broker
        .drain(&h.broker.topology.dead_letter_queue)
        .await
        .is_empty());

    // The database is back: everything waiting comes round and is applied once.
    tokio::time::sleep(delays_max()).await;
    h.settle().await;
    for order in &orders {
        assert_eq!(h.order_status(order).await, "processed");
    }
    assert!(h
        .broker
        .drain(&h.broker.topology.dead_letter_queue)
        .await
        .is_empty());
    h.db.assert_always_invariants().await;
}

fn delays_max() -> Duration {
    Duration::from_millis(250)
}
