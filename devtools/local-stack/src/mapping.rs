//! The local Amazon MQ event source mapping: consumes a RabbitMQ queue with manual acks,
//! gathers batches by size and window, invokes the function one batch at a time with the
//! event AWS would send, acks the batch when the function succeeds and puts the whole batch
//! back (redelivered) when it fails. It reconnects, with backoff, whenever the broker goes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;

use crate::invoke::{InvokeError, Invoker};
use crate::rmq;

#[derive(Debug, Clone)]
pub struct MappingConfig {
    pub amqp_url: String,
    pub queue: String,
    pub batch_size: usize,
    pub batching_window: Duration,
    pub function: String,
    pub function_timeout: Duration,
    pub event_source_arn: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    Cancelled,
    #[error("{0} is not a valid AMQP URL: {1}")]
    Url(String, String),
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONSUMER_TAG: &str = "local-stack-event-source-mapping";

/// Runs until `shutdown` turns true.
pub async fn run(config: MappingConfig, invoker: Invoker, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            outcome = session(&config, &invoker) => outcome,
        };
        if let Err(e) = outcome {
            // A session that ran a while was healthy: start backing off afresh.
            if started.elapsed() > MAX_BACKOFF {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!("{e}; reconnecting in {}s", backoff.as_secs());
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One connection's life. Returns only with an error: the caller reconnects. Dropping it
/// (on shutdown) closes the connection, and RabbitMQ requeues whatever was not acked.
async fn session(config: &MappingConfig, invoker: &Invoker) -> Result<(), MappingError> {
    let uri: lapin::uri::AMQPUri = config
        .amqp_url
        .parse()
        .map_err(|e: String| MappingError::Url(redact(&config.amqp_url), e))?;
    let queue_key = rmq::queue_key(&config.queue, &uri.vhost);
    // Named, so that the broker's tools (and the tests) can tell this connection apart.
    let properties =
        ConnectionProperties::default().with_connection_name(connection_name(&config.queue).into());
    let connection = Connection::connect_uri(uri, properties).await?;
    let channel = connection.create_channel().await?;
    // Enough unacked messages in flight for a full batch.
    let prefetch = u16::try_from(config.batch_size).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        "consuming {queue_key} for {} (batches of up to {}, window {:?})",
        config.function,
        config.batch_size,
        config.batching_window
    );
    let envelope = rmq::envelope_size(&config.event_source_arn, &queue_key);
    let mut failures = 0u32;
    loop {
        let Some(first) = consumer.next().await else {
            return Err(MappingError::Cancelled);
        };
        let first = first?;
        let mut messages = vec![message(&first)];
        let mut size = envelope + messages[0].to_string().len();
        let mut last = first;
        let mut count = 1;
        let deadline = tokio::time::Instant::now() + config.batching_window;
        while count < config.batch_size {
            let next = match tokio::time::timeout_at(deadline, consumer.next()).await {
                Err(_) => break,
                Ok(None) => return Err(MappingError::Cancelled),
                Ok(Some(next)) => next?,
            };
            let entry = message(&next);
            let entry_size = entry.to_string().len() + 1;
            if size + entry_size > rmq::MAX_PAYLOAD_BYTES {
                // Lambda stops a batch at the payload limit; the message that would cross it
                // waits for the next batch, so put it back (it is the latest delivery, so
                // rejecting it alone leaves the batch untouched).
                next.acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await?;
                break;
            }
            size += entry_size;
            messages.push(entry);
            last = next;
            count += 1;
        }
        let event = rmq::event(&config.event_source_arn, &queue_key, messages);
        let started = Instant::now();
        let outcome = invoker
            .invoke(
                &config.function,
                Bytes::from(event.to_string()),
                config.function_timeout,
            )
            .await;
        let elapsed = started.elapsed().as_millis();
        match outcome {
            Ok(answer) => {
                channel
                    .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
                    .await?;
                failures = 0;
                tracing::info!(
                    "{} took a batch of {count} ({elapsed} ms): {}",
                    config.function,
                    String::from_utf8_lossy(&answer)
                );
            }
            Err(e) => {
                channel
                    .basic_nack(
                        last.delivery_tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await?;
                failures += 1;
                let pause = failure_pause(failures, &e);
                tracing::error!(
                    "batch of {count} put back for redelivery after {elapsed} ms: {e}; next batch in {}s",
                    pause.as_secs()
                );
                // Lambda backs off a failing mapping instead of redelivering in a hot loop.
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The client-provided name of the mapping's connection to the broker.
pub fn connection_name(queue: &str) -> String {
    format!("local-stack event source mapping for {queue}")
}

fn message(delivery: &Delivery) -> serde_json::Value {
    rmq::message(&delivery.properties, &delivery.data, delivery.redelivered)
}

fn failure_pause(failures: u32, error: &InvokeError) -> Duration {
    let base = match error {
        InvokeError::Unreachable { .. } | InvokeError::NoSuchFunction { .. } => 5,
        _ => 1,
    };
    Duration::from_secs(base << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_up_to_a_cap() {
        let error = InvokeError::FunctionError {
            function: "f".into(),
            body: String::new(),
        };
        assert_eq!(failure_pause(1, &error), Duration::from_secs(1));
        assert_eq!(failure_pause(2, &error), Duration::from_secs(2));
        assert_eq!(failure_pause(9, &error), MAX_BACKOFF);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
    }
}
