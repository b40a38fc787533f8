use deadpool_postgres::Pool;
use lapin::types::ShortString;
use lapin::BasicProperties;

use super::{Broker, BrokerError, OrderEvent, Outgoing};
use crate::store;
use crate::telemetry::error_chain;

/// Publishes order events from the outbox to the `orders` exchange.
pub struct Publisher {
    broker: Broker,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The AMQP message of an event, with the properties API.md lists.
    pub fn outgoing(&self, event: &OrderEvent) -> Outgoing {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(event.message_id.to_string()))
            .with_type(ShortString::from(event.event_type.as_str()))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_timestamp(event.occurred_at.timestamp().max(0) as u64)
            .with_correlation_id(ShortString::from(event.correlation_id.as_str()));
        Outgoing {
            exchange: self.broker.config().exchange.clone(),
            routing_key: event.routing_key(),
            body,
            properties,
        }
    }

    /// Publishes events and waits for the broker's confirms.
    pub async fn publish(&self, events: &[OrderEvent]) -> Result<(), BrokerError> {
        let messages: Vec<Outgoing> = events.iter().map(|e| self.outgoing(e)).collect();
        self.broker.publish(&messages).await
    }

    /// After the transaction that wrote `events` to the outbox committed: publish them and
    /// mark them sent. Failure here loses nothing — the rows stay unsent and the outbox relay
    /// publishes them — so it is logged, not returned.
    pub async fn publish_committed(&self, pool: &Pool, events: &[OrderEvent]) {
        if let Err(e) = self.publish(events).await {
            tracing::warn!(error = %error_chain(&e), "publish failed; the outbox relay will retry");
            return;
        }
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.message_id).collect();
        if let Err(e) = store::mark_published(pool, &ids).await {
            tracing::warn!(error = %error_chain(&e), "could not mark outbox rows sent; they will be published again");
        }
    }
}
