use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::broker::confirmed;
use super::{Broker, BrokerError, OrderEvent, Outgoing};
use crate::metrics::{record, Metric};
use crate::store::{self, SentMessages, StoreError};
use crate::telemetry::error_chain;

/// How long after sending a message its mark may ride on a later transaction. The outbox
/// relay leaves rows younger than its minimum age (30 s by default) alone, and that age
/// must stay above this window: within it, a marking transaction and the relay never touch
/// the same row.
pub const MARK_WINDOW: Duration = Duration::from_secs(20);

/// How long a request may spend handing its committed events to the broker before it
/// answers anyway. Writing to a healthy broker takes well under a millisecond; a blocked
/// one (memory or disk alarm) reads nothing, and the events are safe in the outbox.
pub const SEND_BUDGET: Duration = Duration::from_millis(150);

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
    /// Confirmed ids with when they were sent.
    confirmed: Arc<Mutex<Vec<(Uuid, Instant)>>>,
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
    ///
    /// Sending gets [`SEND_BUDGET`]: past it the caller answers without it, the broker
    /// counts as down for a while so the next callers do not wait for it either, and the
    /// relay publishes the rows.
    pub async fn publish_committed(&self, events: &[OrderEvent]) {
        let messages: Vec<Outgoing> = events.iter().map(|e| self.outgoing(e)).collect();
        let sent = tokio::time::timeout(SEND_BUDGET, self.broker.send(&messages)).await;
        let confirms = match sent {
            Ok(Ok(confirms)) => confirms,
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "publish failed; the outbox relay will retry");
                record(Metric::PublishFailures, events.len() as f64);
                return;
            }
            Err(_) => {
                record(Metric::PublishFailures, events.len() as f64);
                self.broker.cool_down();
                tracing::warn!(budget = ?SEND_BUDGET, "the broker did not take the events in time; the outbox relay will publish them");
                return;
            }
        };
        let sent_at = Instant::now();
        let ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
        let sink = Arc::clone(&self.confirmed);
        let task = tokio::spawn(async move {
            for ((confirm, message), id) in confirms.into_iter().zip(&messages).zip(ids) {
                match confirmed(confirm, message).await {
                    Ok(()) => lock(&sink).push((id, sent_at)),
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

    /// Runs a write use case as a unit of work: it is handed the confirmed ids to mark in
    /// its transaction; they come back here unless it marked them; the events it committed
    /// are sent right after (within [`SEND_BUDGET`]). A use case states what it does, and
    /// this bookkeeping is done the same way for every one.
    pub async fn write<T, F, Fut>(&self, use_case: F) -> Result<T, StoreError>
    where
        F: FnOnce(SentMessages) -> Fut,
        Fut: std::future::Future<Output = Result<store::Written<T>, StoreError>>,
    {
        let sent = self.take_confirmed();
        match use_case(sent.clone()).await {
            Ok(written) => {
                crate::metrics::record_committed(&written.events);
                if !written.marked {
                    self.keep_confirmed(sent);
                }
                if !written.events.is_empty() {
                    self.publish_committed(&written.events).await;
                }
                Ok(written.value)
            }
            Err(e) => {
                self.keep_confirmed(sent);
                Err(e)
            }
        }
    }

    /// The ids confirmed since the last call, for the caller's next transaction to mark
    /// sent. Give them back with [`Publisher::keep_confirmed`] if that transaction fails.
    ///
    /// Ids sent longer than [`MARK_WINDOW`] ago are left to the outbox relay (which may be
    /// publishing them again by now): a transaction never waits on a row the relay holds.
    pub fn take_confirmed(&self) -> SentMessages {
        let confirmed = std::mem::take(&mut *lock(&self.confirmed));
        let fresh: Vec<(Uuid, Instant)> = confirmed
            .into_iter()
            .filter(|(_, sent_at)| sent_at.elapsed() < MARK_WINDOW)
            .collect();
        let oldest = fresh.iter().map(|(_, sent_at)| *sent_at).min();
        SentMessages::new(fresh.into_iter().map(|(id, _)| id).collect(), oldest)
    }

    /// Returns ids taken for a transaction that did not commit. They count as sent when
    /// the oldest of them was, so they leave the window no later than they would have.
    pub fn keep_confirmed(&self, sent: SentMessages) {
        if let Some(oldest) = sent.oldest() {
            lock(&self.confirmed).extend(sent.ids().iter().map(|id| (*id, oldest)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    fn publisher() -> Publisher {
        // Never connects: the broker is only reached on a publish.
        Publisher::new(Broker::new(BrokerConfig {
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            exchange: "orders".into(),
            queue_prefix: String::new(),
            retry_delays: crate::config::DEFAULT_RETRY_DELAYS.to_vec(),
            queue_type: Default::default(),
        }))
    }

    fn ago(seconds: u64) -> Instant {
        Instant::now()
            .checked_sub(Duration::from_secs(seconds))
            .expect("the machine has been up for a minute")
    }

    #[test]
    fn marks_past_the_window_are_left_to_the_relay() {
        let publisher = publisher();
        let (stale, fresh, fresher) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        lock(&publisher.confirmed).extend([(stale, ago(25)), (fresh, ago(10)), (fresher, ago(1))]);

        let sent = publisher.take_confirmed();
        assert_eq!(sent.ids(), [fresh, fresher]);
        assert!(publisher.take_confirmed().is_empty(), "taken once");

        // Given back after a failed transaction, they keep the age of the oldest.
        publisher.keep_confirmed(sent);
        let kept = lock(&publisher.confirmed).clone();
        assert_eq!(kept.len(), 2);
        assert!(kept
            .iter()
            .all(|(_, at)| at.elapsed() >= Duration::from_secs(10)));
    }
}
