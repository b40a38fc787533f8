use std::sync::{Arc, Mutex, MutexGuard};

use deadpool_postgres::Pool;
use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::broker::confirmed;
use super::{Broker, BrokerError, OrderEvent, Outgoing};
use crate::store::{self, SentMessages, StoreError};
use crate::telemetry::error_chain;

/// Publishes order events from the outbox to the `orders` exchange.
///
/// Events written by a request are sent right after its commit, but the request does not
/// wait for the broker's confirms: the outbox row already makes the event safe, so waiting
/// would only tell the request what it does not need to know. The confirms are gathered in
/// the background, and the ids they confirm are marked sent by this execution environment's
/// next outbox-writing transaction, in the same round trip as its own work
/// ([`Publisher::take_confirmed`]). An id never marked (the environment was reclaimed, the
/// broker never confirmed) is published again by the outbox relay: a harmless duplicate.
pub struct Publisher {
    broker: Broker,
    confirmed: Arc<Mutex<Vec<Uuid>>>,
    awaiting: Mutex<Vec<JoinHandle<()>>>,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            confirmed: Arc::default(),
            awaiting: Mutex::default(),
        }
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

    /// After the transaction that wrote `events` to the outbox committed: sends them, and
    /// once the broker confirms each, keeps its id to be marked sent. Failure here loses
    /// nothing — the rows stay unsent and the outbox relay publishes them — so it is logged,
    /// not returned.
    pub async fn publish_committed(&self, events: &[OrderEvent]) {
        let messages: Vec<Outgoing> = events.iter().map(|e| self.outgoing(e)).collect();
        let confirms = match self.broker.send(&messages).await {
            Ok(confirms) => confirms,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "publish failed; the outbox relay will retry");
                return;
            }
        };
        let ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
        let sink = Arc::clone(&self.confirmed);
        let task = tokio::spawn(async move {
            for ((confirm, message), id) in confirms.into_iter().zip(&messages).zip(ids) {
                match confirmed(confirm, message).await {
                    Ok(()) => lock(&sink).push(id),
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), message = %id, "not confirmed; the outbox relay will publish it again");
                    }
                }
            }
        });
        let mut awaiting = lock(&self.awaiting);
        awaiting.retain(|task| !task.is_finished());
        awaiting.push(task);
    }

    /// The ids confirmed since the last call, for the caller's next transaction to mark
    /// sent. Give them back with [`Publisher::keep_confirmed`] if that transaction fails.
    pub fn take_confirmed(&self) -> SentMessages {
        SentMessages::new(std::mem::take(&mut *lock(&self.confirmed)))
    }

    /// Returns ids taken for a transaction that did not commit.
    pub fn keep_confirmed(&self, sent: SentMessages) {
        lock(&self.confirmed).extend(sent.into_ids());
    }

    /// Waits for every confirm sent so far, then marks what they confirmed in a transaction
    /// of its own: when no other transaction is coming to carry the marks (shutdown, tests).
    pub async fn mark_confirmed(&self, pool: &Pool) -> Result<(), StoreError> {
        let awaiting: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.awaiting));
        for task in awaiting {
            // A task that panicked confirmed nothing more; its rows stay for the relay.
            let _ = task.await;
        }
        let sent = self.take_confirmed();
        if let Err(e) = store::mark_published(pool, sent.ids()).await {
            self.keep_confirmed(sent);
            return Err(e);
        }
        Ok(())
    }
}

/// The lists hold plain ids, so one left by a panicking holder is still sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
