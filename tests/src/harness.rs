use std::time::Duration;

use shared::http::ApiState;
use shared::messaging::{BatchSummary, Broker, Processor, Publisher};

use crate::{rabbitmq_event, Api, EventMessage, TestBroker, TestDb};

/// The system in-process on a database and broker names of the test's own: the HTTP
/// handlers publishing after commit, and the processor fed as the event source mapping
/// feeds it.
pub struct Harness {
    pub db: TestDb,
    pub broker: TestBroker,
    pub api: Api,
    pub processor: Processor,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_broker(TestBroker::new().await).await
    }

    /// The system on `broker`'s topology (e.g. [`TestBroker::quorum`]).
    pub async fn with_broker(broker: TestBroker) -> Self {
        let db = TestDb::new().await;
        let api = Api::with_state(ApiState {
            pool: db.pool.clone(),
            publisher: Some(Publisher::new(broker.broker())),
        });
        let processor = Processor::new(db.pool.clone(), Publisher::new(broker.broker()));
        Self {
            db,
            broker,
            api,
            processor,
        }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.broker.broker())
    }

    pub fn unreachable_broker(&self) -> Broker {
        let mut config = self.broker.config.clone();
        config.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
        Broker::new(config)
    }

    pub async fn handle(&self, messages: &[EventMessage]) -> BatchSummary {
        let event = rabbitmq_event(&self.broker.topology.queue, messages);
        self.processor
            .handle(&event)
            .await
            .expect("the batch is handled")
    }

    /// Moves what waits in the processor's queue through the processor, as the event source
    /// mapping would, until the queue stays empty.
    pub async fn settle(&self) -> Vec<BatchSummary> {
        let mut summaries = Vec::new();
        loop {
            let messages: Vec<EventMessage> = self
                .broker
                .wait_for(&self.broker.topology.queue, 1, Duration::from_millis(300))
                .await
                .iter()
                .map(|(data, properties)| EventMessage::from_delivery(data, properties))
                .collect();
            if messages.is_empty() {
                return summaries;
            }
            summaries.push(self.handle(&messages).await);
        }
    }

    /// Waits for every confirm the API and the processor sent for and marks what they
    /// confirmed, as their next transactions would.
    pub async fn mark_confirmed(&self) {
        if let Some(publisher) = &self.api.state.publisher {
            publisher
                .mark_confirmed(&self.db.pool)
                .await
                .expect("API marks");
        }
        self.processor
            .publisher()
            .mark_confirmed(&self.db.pool)
            .await
            .expect("processor marks");
    }

    pub async fn order_status(&self, id: &str) -> String {
        self.api.get(&format!("/orders/{id}")).await.body["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
