use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use tokio::sync::Mutex;

use crate::config::BrokerConfig;

/// How long to wait for the broker before treating it as down. A request never waits on the
/// broker longer than this: its message stays in the outbox for the relay.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a publish may take from the first frame sent to the last confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(12);

/// How long a broker that failed is left alone before the next attempt.
const COOL_DOWN: Duration = Duration::from_secs(5);

/// How long closing a connection may take; a blocked or dead broker may never answer.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach the broker")]
    Unreachable(#[source] lapin::Error),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused an operation")]
    Refused(#[source] lapin::Error),
    #[error("the broker did not confirm message {0}")]
    Nacked(String),
    #[error("no queue is bound for routing key {0} (is the topology declared?)")]
    Unroutable(String),
    #[error("the broker failed within the last {0:?}; not trying again yet")]
    CoolingDown(Duration),
    /// A memory or disk alarm: the broker reads nothing from publishers until it clears.
    #[error("the broker blocked publishing ({0})")]
    Blocked(String),
}

impl BrokerError {
    /// The broker refused this one message, not the connection: trying it again as it is
    /// will not help soon.
    pub fn is_refusal_of_message(&self) -> bool {
        matches!(self, BrokerError::Nacked(_) | BrokerError::Unroutable(_))
    }

    /// The connection is gone or unusable (as opposed to the broker refusing a message).
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            BrokerError::Unreachable(_) | BrokerError::Timeout(_) | BrokerError::Refused(_)
        )
    }

    /// The broker cannot take messages now, for a while: leave it alone (cool down)
    /// rather than have every caller wait for it.
    pub fn is_outage(&self) -> bool {
        self.is_connection_failure() || matches!(self, BrokerError::Blocked(_))
    }
}

/// One message to publish: persistent, JSON, confirmed, and `mandatory` so that a message no
/// queue would receive is an error rather than a silent drop.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Outgoing {
    pub fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default()
    }
}

/// Builds the AMQP headers table from string and integer values.
pub fn headers(entries: impl IntoIterator<Item = (&'static str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(ShortString::from(name), value);
    }
    table
}

/// A lazily opened connection with one confirm-mode channel, reopened after the broker went
/// away. Built once per execution environment; connecting is deferred to the first publish
/// so a cold start never fails because the broker is down.
pub struct Broker {
    config: BrokerConfig,
    channel: Mutex<Option<(Connection, Channel)>>,
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            channel: Mutex::new(None),
            down_until: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The open confirm channel, (re)connecting if there is none.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.channel.lock().await;
        if let Some((connection, channel)) = guard.as_ref() {
            if connection.status().blocked() {
                // A new connection would be blocked at its first publish as well.
                return Err(BrokerError::Blocked("connection.blocked".into()));
            }
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *guard = None;
        let connect = async {
            let connection = super::connect::connect(&self.config.url)
                .await
                .map_err(BrokerError::Unreachable)?;
            let channel = connection
                .create_channel()
                .await
                .map_err(BrokerError::Unreachable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(BrokerError::Refused)?;
            Ok::<_, BrokerError>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(BROKER_TIMEOUT, connect)
            .await
            .map_err(|_| BrokerError::Timeout(BROKER_TIMEOUT))??;
        *guard = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Forgets the connection so the next call reconnects (after an error on it). Closing
    /// is polite, not needed: it gets a short bound.
    pub async fn reset(&self) {
        let taken = self.channel.lock().await.take();
        if let Some((connection, _)) = taken {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "reset".into())).await;
        }
    }

    /// Counts the broker as down for [`COOL_DOWN`]: callers skip it and leave their
    /// messages to the outbox relay.
    pub fn cool_down(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + COOL_DOWN);
    }

    /// Publishes every message, pipelined, and returns once the broker confirmed them all.
    pub async fn publish(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        self.with_retry(messages, || async {
            let confirms = self.send_once(messages).await?;
            confirm_all(confirms, messages).await
        })
        .await
    }

    /// Publishes every message, pipelined, and tells for each whether the broker took it:
    /// one refused message (unroutable, nacked) does not hold back the others. The outer
    /// error is the broker being away, when no message can be judged; messages whose
    /// confirm did not come within the deadline are reported as timed out.
    pub async fn publish_each(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        let confirms = self.send(messages).await?;
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut outcomes = Vec::with_capacity(messages.len());
        for (confirm, message) in confirms.into_iter().zip(messages) {
            let outcome = tokio::time::timeout_at(deadline, confirmed(confirm, message))
                .await
                .unwrap_or(Err(BrokerError::Timeout(CONFIRM_TIMEOUT)));
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Writes every message to the broker's socket, pipelined, and returns their confirms
    /// without waiting for them: for a caller whose messages are safe elsewhere (in the
    /// outbox) and who only needs to learn later which ones arrived.
    pub async fn send(&self, messages: &[Outgoing]) -> Result<Vec<PublisherConfirm>, BrokerError> {
        self.with_retry(messages, || self.send_once(messages)).await
    }

    /// Runs `operation` with the broker's failure rules.
    ///
    /// A connection kept from an earlier invocation may have died while the execution
    /// environment was frozen: a failure on it is retried once on a fresh connection. After a
    /// failure on a fresh connection the broker counts as down for [`COOL_DOWN`], so requests
    /// do not each wait for it; their messages stay in the outbox for the relay.
    async fn with_retry<T, F, Fut>(
        &self,
        messages: &[Outgoing],
        operation: F,
    ) -> Result<T, BrokerError>
    where
        T: Default,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        if messages.is_empty() {
            return Ok(T::default());
        }
        if let Some(until) = *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) {
            if Instant::now() < until {
                return Err(BrokerError::CoolingDown(COOL_DOWN));
            }
        }
        let had_connection = self.channel.lock().await.is_some();
        let mut result = self.attempt(&operation).await;
        if had_connection
            && result
                .as_ref()
                .is_err_and(BrokerError::is_connection_failure)
        {
            result = self.attempt(&operation).await;
        }
        if result.as_ref().is_err_and(BrokerError::is_outage) {
            self.cool_down();
        } else if result.is_ok() {
            *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }

    async fn attempt<T, F, Fut>(&self, operation: &F) -> Result<T, BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let result = tokio::time::timeout(CONFIRM_TIMEOUT, operation())
            .await
            .unwrap_or(Err(BrokerError::Timeout(CONFIRM_TIMEOUT)));
        if result
            .as_ref()
            .is_err_and(BrokerError::is_connection_failure)
        {
            self.reset().await;
        }
        result
    }

    async fn send_once(&self, messages: &[Outgoing]) -> Result<Vec<PublisherConfirm>, BrokerError> {
        let channel = self.channel().await?;
        let publishes = messages.iter().map(|message| {
            channel.basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            )
        });
        // Polled together, every message is queued before the I/O loop writes, so a batch
        // goes out in a few large writes instead of one wake-up and one write per message.
        futures_util::future::try_join_all(publishes)
            .await
            .map_err(BrokerError::Unreachable)
    }
}

/// Waits for the broker's answer on one sent message: confirmed and routed, or why not.
pub async fn confirmed(confirm: PublisherConfirm, message: &Outgoing) -> Result<(), BrokerError> {
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| BrokerError::Timeout(CONFIRM_TIMEOUT))?
        .map_err(BrokerError::Unreachable)?;
    if confirmation.is_nack() {
        return Err(BrokerError::Nacked(message.message_id()));
    }
    if confirmation.take_message().is_some() {
        return Err(BrokerError::Unroutable(message.routing_key.clone()));
    }
    Ok(())
}

async fn confirm_all(
    confirms: Vec<PublisherConfirm>,
    messages: &[Outgoing],
) -> Result<(), BrokerError> {
    for (confirm, message) in confirms.into_iter().zip(messages) {
        confirmed(confirm, message).await?;
    }
    Ok(())
}
