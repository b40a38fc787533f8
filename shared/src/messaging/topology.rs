use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::ExchangeKind;

use super::{Broker, BrokerError};
use crate::config::{BrokerConfig, QueueType};

/// The routing keys the processor acts on. Its own `processed`/`rejected` events are not
/// among them, so they never come back to it.
pub const PROCESSOR_BINDINGS: [&str; 3] = [
    "order.created",
    "order.status_changed.shipped",
    "order.status_changed.cancelled",
];

/// Names of everything the order system declares on the broker. Tests give each run its own
/// prefix so they never share a queue.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Topic exchange every order event is published to.
    pub exchange: String,
    /// The queue the event source mapping reads for `process-orders`.
    pub queue: String,
    /// One delay queue per retry: messages wait out their TTL there, then dead-letter
    /// straight back into `queue` through the default exchange. One queue per delay because
    /// RabbitMQ only expires the head of a queue: mixed delays in one queue would block.
    pub retry_queues: Vec<(String, Duration)>,
    /// Where messages that can never succeed are parked with their reason.
    pub dead_letter_queue: String,
    /// Bound to every event (`order.#`) and keeping none (TTL 0), so every routing key has
    /// a queue and an unroutable publish means a missing topology, not a normal case —
    /// without holding a message nobody reads: a tail that kept them grew large enough to
    /// raise the broker's memory alarm, which blocks every publisher. Consumers that want
    /// every event bind a queue of their own.
    pub sink_queue: String,
    /// The unread tail that the sink replaces; removed when the topology is declared.
    legacy_audit_queue: String,
    /// Every queue's `x-queue-type`. A queue keeps the type it was declared with: changing
    /// it means new queues (RabbitMQ refuses to redeclare one as another type).
    queue_type: QueueType,
}

/// `1s`, `600s`, or `50ms` for a delay shorter than a second or not whole.
fn delay_label(delay: Duration) -> String {
    if delay.subsec_millis() == 0 && delay.as_secs() > 0 {
        format!("{}s", delay.as_secs())
    } else {
        format!("{}ms", delay.as_millis())
    }
}

impl Topology {
    pub fn new(config: &BrokerConfig) -> Self {
        let prefix = &config.queue_prefix;
        let queue = format!("{prefix}orders");
        Self {
            exchange: config.exchange.clone(),
            retry_queues: config
                .retry_delays
                .iter()
                .map(|delay| (format!("{queue}.retry.{}", delay_label(*delay)), *delay))
                .collect(),
            dead_letter_queue: format!("{queue}.dlq"),
            sink_queue: format!("{queue}.sink"),
            legacy_audit_queue: format!("{queue}.audit"),
            queue_type: config.queue_type,
            queue,
        }
    }

    /// The arguments every queue is declared with, to which a queue adds its own. A classic
    /// queue is declared without `x-queue-type`, as the queues of earlier deploys were (and
    /// so takes a virtual host's default type, where an operator set one).
    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from(self.queue_type.as_str())),
            );
        }
        arguments
    }

    /// The delay queue for a message whose `attempt` (1-based) just failed.
    pub fn retry_queue_after(&self, attempt: u32) -> Option<&str> {
        self.retry_queues
            .get(attempt.checked_sub(1)? as usize)
            .map(|(name, _)| name.as_str())
    }

    /// A message's attempts: one per delay, then the last failure parks it.
    pub fn max_attempts(&self) -> u32 {
        self.retry_queues.len() as u32 + 1
    }

    /// The delay queue for a message that has waited out `waits` outages already: the
    /// delays grow as for failures, then stay at the longest, however long the outage.
    pub fn outage_queue_after(&self, waits: u32) -> &str {
        let last = self.retry_queues.len().saturating_sub(1);
        self.retry_queues
            .get((waits as usize).min(last))
            .map_or(self.queue.as_str(), |(name, _)| name.as_str())
    }

    /// Declares everything; safe to run any number of times (every deploy and local start).
    pub async fn declare(&self, broker: &Broker) -> Result<(), BrokerError> {
        let channel = broker.channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Refused)?;
        channel
            .queue_declare(self.queue.as_str().into(), durable, self.queue_arguments())
            .await
            .map_err(BrokerError::Refused)?;
        for key in PROCESSOR_BINDINGS {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::Refused)?;
        }
        for (name, delay) in &self.retry_queues {
            let mut arguments = self.queue_arguments();
            arguments.insert(
                ShortString::from("x-message-ttl"),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            arguments.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from("")),
            );
            arguments.insert(
                ShortString::from("x-dead-letter-routing-key"),
                AMQPValue::LongString(LongString::from(self.queue.as_str())),
            );
            channel
                .queue_declare(name.as_str().into(), durable, arguments)
                .await
                .map_err(BrokerError::Refused)?;
        }
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                self.queue_arguments(),
            )
            .await
            .map_err(BrokerError::Refused)?;
        // A message routed here expires at once: routed (so confirmed, not returned), kept
        // nowhere.
        let mut sink = self.queue_arguments();
        sink.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(0),
        );
        channel
            .queue_declare(self.sink_queue.as_str().into(), durable, sink)
            .await
            .map_err(BrokerError::Refused)?;
        channel
            .queue_bind(
                self.sink_queue.as_str().into(),
                self.exchange.as_str().into(),
                "order.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Refused)?;
        // Deleting a queue that does not exist succeeds, so this is safe on every declare.
        channel
            .queue_delete(
                self.legacy_audit_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .map_err(BrokerError::Refused)?;
        Ok(())
    }

    /// Removes everything `declare` made; tests call it to leave nothing behind.
    pub async fn delete(&self, broker: &Broker) -> Result<(), BrokerError> {
        let channel = broker.channel().await?;
        let queues = [&self.queue, &self.dead_letter_queue, &self.sink_queue]
            .into_iter()
            .chain(self.retry_queues.iter().map(|(name, _)| name));
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(BrokerError::Refused)?;
        }
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(BrokerError::Refused)?;
        Ok(())
    }
}
