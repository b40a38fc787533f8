use shared::config::{BrokerConfig, QueueType};
use shared::messaging::{Broker, Topology};

/// An exchange and queues of the test's own on the real RabbitMQ, deleted when the test ends.
pub struct TestBroker {
    pub config: BrokerConfig,
    pub topology: Topology,
    /// A queue of the test's own bound to every event (`order.#`), as any consumer may bind
    /// one, to see what was published; none for the bench (see [`TestBroker::without_observer`]).
    observer: Option<String>,
}

impl TestBroker {
    pub async fn new() -> Self {
        Self::with_retry_delays(shared::config::DEFAULT_RETRY_DELAYS.to_vec()).await
    }

    /// Delay queues of these delays, so a test can wait out the whole ladder.
    pub async fn with_retry_delays(retry_delays: Vec<std::time::Duration>) -> Self {
        Self::with_config(retry_delays, QueueType::Classic).await
    }

    /// A topology of quorum queues, as a clustered broker has (one node replicates to itself).
    pub async fn quorum() -> Self {
        Self::with_config(
            shared::config::DEFAULT_RETRY_DELAYS.to_vec(),
            QueueType::Quorum,
        )
        .await
    }

    /// The system's own topology and nothing else, as deployed: what the benchmarks publish
    /// to. An observer keeps every event in the broker's memory, unread, and doubles the
    /// broker's work per event (27–35 against 57–65 ms of its CPU per 1,000 on the 2-core
    /// dev machine), work that belongs to whoever binds a queue, on the broker's own host.
    pub async fn without_observer() -> Self {
        Self::declare(
            shared::config::DEFAULT_RETRY_DELAYS.to_vec(),
            QueueType::Classic,
            false,
        )
        .await
    }

    async fn with_config(retry_delays: Vec<std::time::Duration>, queue_type: QueueType) -> Self {
        Self::declare(retry_delays, queue_type, true).await
    }

    async fn declare(
        retry_delays: Vec<std::time::Duration>,
        queue_type: QueueType,
        with_observer: bool,
    ) -> Self {
        let suffix = crate::unique_suffix();
        let config = BrokerConfig {
            url: crate::amqp_url(),
            exchange: format!("test.{suffix}.orders"),
            queue_prefix: format!("test.{suffix}."),
            retry_delays,
            queue_type,
        };
        let topology = Topology::new(&config);
        let broker = Broker::new(config.clone());
        topology
            .declare(&broker)
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README)");
        let observer = with_observer.then(|| format!("{}observer", config.queue_prefix));
        if let Some(observer) = &observer {
            let channel = broker.channel().await.expect("channel");
            channel
                .queue_declare(
                    observer.as_str().into(),
                    lapin::options::QueueDeclareOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("declare the observer queue");
            channel
                .queue_bind(
                    observer.as_str().into(),
                    config.exchange.as_str().into(),
                    "order.#".into(),
                    lapin::options::QueueBindOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("bind the observer queue");
        }
        broker.reset().await;
        Self {
            config,
            topology,
            observer,
        }
    }

    pub fn broker(&self) -> Broker {
        Broker::new(self.config.clone())
    }

    /// The observer queue's name.
    pub fn observer(&self) -> &str {
        self.observer
            .as_deref()
            .expect("a TestBroker made without_observer has no observer")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let config = self.config.clone();
        let topology = self.topology.clone();
        let observer = self.observer.clone();
        crate::clean_up(move || async move {
            let broker = Broker::new(config);
            if let (Some(observer), Ok(channel)) = (observer, broker.channel().await) {
                let _ = channel
                    .queue_delete(
                        observer.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
            let _ = topology.delete(&broker).await;
            broker.reset().await;
        });
    }
}

use base64::Engine;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::AMQPValue;
use serde_json::{json, Value};

const RABBITMQ_FIXTURE: &str = include_str!("../fixtures/rabbitmq-event.json");

/// One message as the event source mapping hands it over: body and AMQP properties.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    /// Header values as AWS encodes them (strings become `{"bytes": [...]}`).
    pub headers: serde_json::Map<String, Value>,
    pub redelivered: bool,
}

impl EventMessage {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            message_id: None,
            message_type: None,
            headers: serde_json::Map::new(),
            redelivered: false,
        }
    }

    /// An order event body of API.md.
    pub fn order_event(kind: &str, order_id: &str, status: &str) -> Self {
        let message_id = uuid::Uuid::now_v7().to_string();
        let body = json!({
            "messageId": message_id,
            "type": kind,
            "orderId": order_id,
            "status": status,
            "occurredAt": "2026-11-26T10:00:00Z",
            "correlationId": "test",
        });
        Self {
            message_id: Some(message_id),
            message_type: Some(kind.to_owned()),
            ..Self::new(body.to_string())
        }
    }

    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.headers.insert("x-attempts".into(), json!(attempts));
        self
    }

    /// The message as the mapping delivers a copy of it that was delivered before.
    pub fn redelivered(mut self) -> Self {
        self.redelivered = true;
        self
    }

    /// A message received from RabbitMQ, as the mapping would pass it on.
    pub fn from_delivery(data: &[u8], properties: &lapin::BasicProperties) -> Self {
        let mut headers = serde_json::Map::new();
        if let Some(table) = properties.headers() {
            for (name, value) in table.inner() {
                headers.insert(name.to_string(), aws_header(value));
            }
        }
        Self {
            body: data.to_vec(),
            message_id: properties.message_id().as_ref().map(|v| v.to_string()),
            message_type: properties.kind().as_ref().map(|v| v.to_string()),
            headers,
            redelivered: false,
        }
    }
}

/// A header value as Amazon MQ writes it: strings as Java's signed bytes.
fn aws_header(value: &AMQPValue) -> Value {
    let signed = |bytes: &[u8]| json!(bytes.iter().map(|b| *b as i8).collect::<Vec<i8>>());
    match value {
        AMQPValue::LongString(s) => json!({"bytes": signed(s.as_bytes())}),
        AMQPValue::ShortString(s) => json!({"bytes": signed(s.as_str().as_bytes())}),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        other => json!(format!("{other:?}")),
    }
}

/// The Amazon MQ for RabbitMQ event AWS sends, built from AWS's own example: messages keyed
/// `queue::vhost`, base64 `data`, `basicProperties`, `redelivered`.
pub fn rabbitmq_event(queue: &str, messages: &[EventMessage]) -> shared::messaging::AmazonMqEvent {
    // From the text, as the runtime reads the payload (messages are kept as raw JSON).
    serde_json::from_str(&rabbitmq_event_json(queue, messages).to_string())
        .expect("the event has Amazon MQ's shape")
}

/// The same event as JSON, as it reaches the function.
pub fn rabbitmq_event_json(queue: &str, messages: &[EventMessage]) -> Value {
    let mut event: Value = serde_json::from_str(RABBITMQ_FIXTURE).expect("fixture");
    let template = event["rmqMessagesByQueue"]["test::/"][0].clone();
    let mapped: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut message = template.clone();
            let properties = &mut message["basicProperties"];
            properties["contentType"] = json!("application/json");
            properties["headers"] = Value::Object(m.headers.clone());
            properties["deliveryMode"] = json!(2);
            // Amazon MQ sends null for properties the publisher did not set.
            properties["priority"] = Value::Null;
            properties["expiration"] = Value::Null;
            properties["messageId"] = json!(m.message_id);
            properties["type"] = json!(m.message_type);
            properties["bodySize"] = json!(m.body.len());
            message["redelivered"] = json!(m.redelivered);
            message["data"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.body));
            message
        })
        .collect();
    event["rmqMessagesByQueue"] = json!({ format!("{queue}::/"): mapped });
    event
}

impl TestBroker {
    /// Empties the processor's queue and the observer, as their consumers would keep them.
    pub async fn purge(&self) {
        let broker = self.broker();
        let channel = broker.channel().await.expect("channel");
        for queue in std::iter::once(&self.topology.queue).chain(&self.observer) {
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .expect("queue.purge");
        }
        broker.reset().await;
    }

    /// Takes every message now in `queue`, acknowledging each.
    pub async fn drain(&self, queue: &str) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
        let broker = self.broker();
        let channel = broker.channel().await.expect("channel");
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            let delivery = message.delivery;
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            messages.push((delivery.data.clone(), delivery.properties.clone()));
        }
        broker.reset().await;
        messages
    }

    /// Waits until `queue` holds at least `count` messages (or `timeout` passes), then drains it.
    pub async fn wait_for(
        &self,
        queue: &str,
        count: usize,
        timeout: std::time::Duration,
    ) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            messages.extend(self.drain(queue).await);
            if messages.len() >= count || tokio::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// A string header of a message, as RabbitMQ holds it.
pub fn header_string(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn header_int(properties: &lapin::BasicProperties, name: &str) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}
