//! `process-orders`: applies a RabbitMQ batch from the Amazon MQ event source mapping.
//!
//! The mapping has no partial-batch response and redelivers the whole batch when the
//! function fails, so the function sorts out every message itself: applied (or found
//! applied already), sent to a delay queue to be retried, or parked in the dead-letter queue
//! with its reason. It fails only when it cannot route a failure, and then a redelivery is
//! safe because every effect is guarded by the order's stored state.

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use deadpool_postgres::Pool;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::Instrument;

use super::{headers, BrokerError, EventType, OrderEvent, Outgoing, Publisher, Topology};
use crate::domain::{OrderId, OrderStatus};
use crate::metrics::{record, Metric};
use crate::store::{self, CommandOutcome, OrderCommand, StoreError};
use crate::telemetry::error_chain;

/// Header counting the attempts a message has had before this delivery.
pub const ATTEMPTS_HEADER: &str = "x-attempts";
/// Header naming why a message was parked (API.md).
pub const DLQ_REASON_HEADER: &str = "x-dlq-reason";
/// Header naming why the last attempt failed, on messages waiting to be retried.
pub const LAST_ERROR_HEADER: &str = "x-last-error";
/// Deliveries of a redelivered batch after which the message being tried when the
/// invocation died is parked as the culprit.
pub const POISON_DELIVERIES: i32 = 3;

/// Header counting the outages of ours a message has waited out: they set its delay, never
/// its attempts.
pub const OUTAGE_WAITS_HEADER: &str = "x-outage-waits";

/// The only way `process-orders` fails an invocation: it could not route a failed message.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not route failed messages to their retry or dead-letter queues")]
    CannotRoute(#[source] BrokerError),
}

/// What the invocation did with its batch, returned as the function's result and logged.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    pub received: usize,
    /// Messages whose effect this invocation made.
    pub applied: usize,
    /// Messages whose effect was made before (duplicates, copies, overtaken orders) or that
    /// ask for nothing.
    pub unchanged: usize,
    pub retried: usize,
    /// Messages sent to wait out an outage of ours, attempts untouched.
    pub waiting: usize,
    pub parked: usize,
    /// Message ids (or `queue#index` when a message has none) of retried and parked messages.
    pub failed_message_ids: Vec<String>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Disposition {
    Applied,
    Unchanged,
    /// A passing failure: try again later.
    Retry(String),
    /// Our own outage (database away, timing out, credentials being rotated): not the
    /// message's fault, so it waits without spending an attempt, however long it lasts.
    Wait(String),
    /// Can never succeed.
    Park(String),
}

/// The event Amazon MQ's event source mapping sends: messages keyed `queue::vhost`.
///
/// Read with types of our own rather than `aws_lambda_events`' `RabbitMqEvent`, whose
/// `priority` and `deliveryMode` are plain integers: Amazon MQ sends `null` for a property a
/// message does not set, and one such message would fail the whole batch forever. Each
/// message is read on its own, so one that does not even parse is parked alone.
///
/// The messages are kept as their raw JSON text and each is read straight into its type:
/// building a `Value` tree of a 1,000-message payload first, then reading the types out of
/// it, was most of the cost of decoding a batch (see BENCHMARKS.md, process-orders).
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmazonMqEvent {
    #[serde(default, rename = "rmqMessagesByQueue")]
    pub messages_by_queue: HashMap<String, Vec<Box<RawValue>>>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmazonMqMessage {
    #[serde(default)]
    basic_properties: AmazonMqProperties,
    #[serde(default)]
    data: Option<String>,
    /// Set by the broker on a message it delivered before: its batch failed or timed out.
    #[serde(default)]
    redelivered: bool,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmazonMqProperties {
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<HashMap<String, Value>>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// A message's command, with the message's place in the batch.
type IndexedCommand = (usize, (OrderId, OrderCommand, String));

/// One message of the batch, decoded as far as it goes.
struct Incoming {
    message: AmazonMqMessage,
    /// Used in the summary and logs.
    label: String,
    body: Vec<u8>,
    /// Attempts before this delivery.
    previous_attempts: u32,
    /// Outages waited out before this delivery.
    previous_outage_waits: u32,
    decoded: Result<Option<(OrderId, OrderCommand, String)>, String>,
}

impl Incoming {
    /// The request id of the HTTP call that caused the event: the event's `correlationId`,
    /// or the message's AMQP `correlation_id` when the body does not read as an event.
    fn correlation_id(&self) -> &str {
        match &self.decoded {
            Ok(Some((_, _, correlation))) => correlation,
            _ => self
                .message
                .basic_properties
                .correlation_id
                .as_deref()
                .unwrap_or_default(),
        }
    }

    /// The span every log line about this message is written in, so that a request's lines
    /// in the HTTP function and the processor's lines about its event share its id.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "message",
            correlation_id = %self.correlation_id(),
            message_id = %self.label
        )
    }
}

pub struct Processor {
    pool: Pool,
    publisher: Publisher,
    topology: Topology,
}

impl Processor {
    pub fn new(pool: Pool, publisher: Publisher) -> Self {
        let topology = Topology::new(publisher.broker().config());
        Self {
            pool,
            publisher,
            topology,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub async fn handle(&self, event: &AmazonMqEvent) -> Result<BatchSummary, ProcessError> {
        let incoming: Vec<Incoming> = event
            .messages_by_queue
            .iter()
            .flat_map(|(queue, messages)| {
                messages
                    .iter()
                    .enumerate()
                    .map(move |(index, message)| decode(queue, index, message))
            })
            .collect();
        record(Metric::ProcessorBatchSize, incoming.len() as f64);

        let mut dispositions: Vec<Disposition> = incoming
            .iter()
            .map(|m| match &m.decoded {
                Err(reason) => Disposition::Park(reason.clone()),
                Ok(None) => Disposition::Unchanged,
                Ok(Some(_)) => Disposition::Unchanged,
            })
            .collect();
        let commands: Vec<IndexedCommand> = incoming
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.decoded.clone().ok().flatten().map(|c| (i, c)))
            .collect();
        if !commands.is_empty() {
            if incoming.iter().any(|m| m.message.redelivered) {
                self.apply_guarded(&incoming, &commands, &mut dispositions)
                    .await;
            } else {
                self.apply(&incoming, &commands, &mut dispositions).await;
            }
        }

        let summary = self.route_failures(&incoming, &dispositions).await?;
        summary.record_metrics();
        tracing::info!(
            received = summary.received,
            applied = summary.applied,
            unchanged = summary.unchanged,
            retried = summary.retried,
            waiting = summary.waiting,
            parked = summary.parked,
            failed = ?summary.failed_message_ids,
            "batch handled"
        );
        Ok(summary)
    }

    /// Applies the commands as set-based transactions, one per part of the batch, the parts
    /// run together on the pool's connections (see [`parts`]). If a part fails for a reason
    /// that is not the database being away, one of its messages may be to blame: each is
    /// then applied on its own, so a bad one fails alone and the good ones still go through.
    async fn apply(
        &self,
        incoming: &[Incoming],
        commands: &[IndexedCommand],
        dispositions: &mut [Disposition],
    ) {
        let parts = parts(commands, self.pool.status().max_size);
        let results = futures_util::future::join_all(parts.iter().map(|part| async move {
            let all: Vec<(OrderId, OrderCommand, String)> =
                part.iter().map(|(_, command)| command.clone()).collect();
            self.apply_and_publish(&all).await
        }))
        .await;
        for (part, result) in parts.iter().zip(results) {
            self.settle_part(incoming, part, result, dispositions).await;
        }
    }

    /// What became of each message of one part, from its transaction's result.
    async fn settle_part(
        &self,
        incoming: &[Incoming],
        part: &[&IndexedCommand],
        result: Result<store::BatchOutcomes, StoreError>,
        dispositions: &mut [Disposition],
    ) {
        match result {
            Ok(outcomes) => {
                // Copies of one command in a batch (always in one part): the first made the
                // effect, the rest are duplicates of it.
                let mut seen = HashSet::new();
                for (index, (order, command, _)) in part.iter().copied() {
                    let outcome = match disposition(outcomes.get(&(*order, *command)).copied()) {
                        Disposition::Applied if !seen.insert((*order, *command)) => {
                            Disposition::Unchanged
                        }
                        other => other,
                    };
                    // The part was one statement: each message still gets its line, in its
                    // own span.
                    incoming[*index]
                        .span()
                        .in_scope(|| log_outcome(*order, *command, &outcome));
                    dispositions[*index] = outcome;
                }
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %error_chain(&e), "database unavailable; the batch waits it out");
                for (index, _) in part.iter().copied() {
                    dispositions[*index] = Disposition::Wait("database unavailable".into());
                }
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "batch failed; applying its messages one by one");
                for (index, command) in part.iter().copied() {
                    dispositions[*index] = self
                        .apply_one(command)
                        .instrument(incoming[*index].span())
                        .await;
                }
            }
        }
    }

    /// A redelivered batch: an earlier invocation with it crashed or ran out of time, and
    /// one of its messages may be why. Each message is applied on its own, counted before
    /// its try and forgotten after it, so the one that keeps failing the invocation is the
    /// one whose count grows; after [`POISON_DELIVERIES`] it is parked and the rest go on.
    async fn apply_guarded(
        &self,
        incoming: &[Incoming],
        commands: &[IndexedCommand],
        dispositions: &mut [Disposition],
    ) {
        for (index, command) in commands {
            let label = &incoming[*index].label;
            let guarded = async {
                match store::count_delivery(&self.pool, label).await {
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "database unavailable; the batch waits it out");
                        Disposition::Wait("database unavailable".into())
                    }
                    Ok(tries) if tries >= POISON_DELIVERIES => {
                        tracing::error!(message = %label, tries, "message keeps failing the invocation; parking it");
                        let _ = store::forget_delivery(&self.pool, label).await;
                        Disposition::Park(format!(
                            "crashed or timed out the processor on {tries} deliveries"
                        ))
                    }
                    Ok(_) => {
                        let outcome = self.apply_one(command).await;
                        if let Err(e) = store::forget_delivery(&self.pool, label).await {
                            tracing::warn!(error = %error_chain(&e), message = %label, "delivery count not forgotten");
                        }
                        outcome
                    }
                }
            };
            dispositions[*index] = guarded.instrument(incoming[*index].span()).await;
        }
    }

    /// One message on its own: what became of it.
    async fn apply_one(&self, command: &(OrderId, OrderCommand, String)) -> Disposition {
        let outcome = match self.apply_and_publish(std::slice::from_ref(command)).await {
            Ok(outcomes) => disposition(outcomes.get(&(command.0, command.1)).copied()),
            Err(e) if e.is_unavailable() => Disposition::Wait("database unavailable".into()),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), order = %command.0, "message failed");
                Disposition::Retry(format!("database error: {e}"))
            }
        };
        log_outcome(command.0, command.1, &outcome);
        outcome
    }

    async fn apply_and_publish(
        &self,
        commands: &[(OrderId, OrderCommand, String)],
    ) -> Result<store::BatchOutcomes, StoreError> {
        self.publisher
            .write(|sent| async move {
                store::apply_order_commands(&self.pool, commands, &sent).await
            })
            .await
    }

    /// Sends retried messages to their delay queue and parked ones to the dead-letter queue,
    /// all pipelined and confirmed before the invocation returns.
    async fn route_failures(
        &self,
        incoming: &[Incoming],
        dispositions: &[Disposition],
    ) -> Result<BatchSummary, ProcessError> {
        let mut summary = BatchSummary {
            received: incoming.len(),
            ..BatchSummary::default()
        };
        let mut outgoing = Vec::new();
        for (message, disposition) in incoming.iter().zip(dispositions) {
            let attempt = message.previous_attempts.saturating_add(1);
            let mut attempts = attempt;
            let mut outage_waits = message.previous_outage_waits;
            let (queue, reason_header, reason) = match disposition {
                Disposition::Applied => {
                    summary.applied += 1;
                    continue;
                }
                Disposition::Unchanged => {
                    summary.unchanged += 1;
                    continue;
                }
                Disposition::Wait(reason) => {
                    summary.waiting += 1;
                    attempts = message.previous_attempts;
                    let queue = self.topology.outage_queue_after(outage_waits).to_owned();
                    outage_waits = outage_waits.saturating_add(1);
                    (queue, LAST_ERROR_HEADER, reason.clone())
                }
                Disposition::Retry(reason) => match self.topology.retry_queue_after(attempt) {
                    Some(queue) if attempt < self.topology.max_attempts() => {
                        summary.retried += 1;
                        (queue.to_owned(), LAST_ERROR_HEADER, reason.clone())
                    }
                    _ => {
                        summary.parked += 1;
                        (
                            self.topology.dead_letter_queue.clone(),
                            DLQ_REASON_HEADER,
                            format!("{reason} (after {attempt} attempts)"),
                        )
                    }
                },
                Disposition::Park(reason) => {
                    summary.parked += 1;
                    (
                        self.topology.dead_letter_queue.clone(),
                        DLQ_REASON_HEADER,
                        reason.clone(),
                    )
                }
            };
            message.span().in_scope(
                || tracing::warn!(attempt, queue = %queue, reason = %reason, "message not applied"),
            );
            summary.failed_message_ids.push(message.label.clone());
            outgoing.push(Outgoing {
                // The default exchange routes by queue name, straight to the delay or
                // dead-letter queue, without going through the topic exchange again.
                exchange: String::new(),
                routing_key: queue,
                body: message.body.clone(),
                properties: forwarded_properties(
                    &message.message,
                    Counts {
                        attempts,
                        outage_waits,
                    },
                    reason_header,
                    &reason,
                ),
            });
        }
        self.publisher
            .broker()
            .publish(&outgoing)
            .await
            .map_err(ProcessError::CannotRoute)?;
        Ok(summary)
    }
}

impl BatchSummary {
    /// The batch's outcomes as metrics. Messages waiting out an outage of ours are retried
    /// too (they go to a delay queue), so they count there.
    fn record_metrics(&self) {
        record(Metric::MessagesApplied, self.applied as f64);
        record(Metric::MessagesUnchanged, self.unchanged as f64);
        record(
            Metric::MessagesRetried,
            (self.retried + self.waiting) as f64,
        );
        record(Metric::MessagesParked, self.parked as f64);
    }
}

/// The line each applied (or tried) message gets, in its span.
fn log_outcome(order: OrderId, command: OrderCommand, outcome: &Disposition) {
    tracing::info!(order = %order, command = ?command, outcome = ?outcome, "message handled");
}

fn disposition(outcome: Option<CommandOutcome>) -> Disposition {
    match outcome {
        Some(CommandOutcome::Applied) => Disposition::Applied,
        Some(CommandOutcome::AlreadyApplied) => Disposition::Unchanged,
        Some(CommandOutcome::UnknownOrder) | None => Disposition::Retry("unknown order".into()),
    }
}

/// The fewest messages a part has: a batch under twice this is one transaction, because
/// another commit would cost more than the parallelism gains.
const MIN_PART: usize = 200;

/// Splits a batch's commands into at most `connections` parts of whole orders, to be
/// applied as that many transactions at once. One transaction uses one database core and
/// leaves this function idle while it runs; parts keep both busy, each part's client work
/// (its rows read, its statement built, its events sent) running while another part's
/// statements execute. Every command of an order is in the same part, so parts never lock
/// the same order; the products and buckets a part locks it takes in id order, as every
/// transaction does, so parts can wait for each other but never deadlock.
fn parts(commands: &[IndexedCommand], connections: usize) -> Vec<Vec<&IndexedCommand>> {
    let mut sorted: Vec<_> = commands.iter().collect();
    sorted.sort_by_key(|(_, (order, _, _))| *order);
    let count = connections.min(commands.len() / MIN_PART).max(1);
    let target = sorted.len().div_ceil(count);
    let mut parts: Vec<Vec<_>> = Vec::with_capacity(count);
    let mut current = Vec::with_capacity(target);
    for command in sorted {
        let same_order = current
            .last()
            .is_some_and(|last: &&(usize, (OrderId, _, _))| last.1 .0 == command.1 .0);
        if current.len() >= target && !same_order {
            parts.push(std::mem::take(&mut current));
        }
        current.push(command);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

fn decode(queue: &str, index: usize, raw: &RawValue) -> Incoming {
    let parsed = serde_json::from_str::<AmazonMqMessage>(raw.get());
    let unreadable = parsed.is_err();
    let mut message = parsed.unwrap_or_else(|_| AmazonMqMessage {
        // Keep what can be kept, so the parked copy still holds the body.
        data: serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|raw| raw.get("data").and_then(Value::as_str).map(str::to_owned)),
        ..AmazonMqMessage::default()
    });
    let label = message
        .basic_properties
        .message_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{queue}#{index}"));
    let header_count = |name: &str| {
        message
            .basic_properties
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .and_then(header_u32)
            .unwrap_or(0)
    };
    let previous_attempts = header_count(ATTEMPTS_HEADER);
    let previous_outage_waits = header_count(OUTAGE_WAITS_HEADER);
    // The base64 text is not needed once decoded: a retried or parked copy carries `body`.
    let body = message
        .data
        .take()
        .as_deref()
        .map(|data| {
            BASE64
                .decode(data)
                .map_err(|_| "malformed: data is not base64".to_owned())
        })
        .unwrap_or_else(|| Err("malformed: the message has no body".to_owned()));
    let (body, decoded) = match body {
        Ok(bytes) => {
            let decoded = command_of(&bytes);
            (bytes, decoded)
        }
        Err(reason) => (Vec::new(), Err(reason)),
    };
    let decoded = if unreadable {
        Err("malformed: the event's message does not have the Amazon MQ shape".to_owned())
    } else {
        decoded
    };
    Incoming {
        message,
        label,
        body,
        previous_attempts,
        previous_outage_waits,
        decoded,
    }
}

/// Classifies a body: a command, nothing to do, or the reason it can never succeed.
fn command_of(body: &[u8]) -> Result<Option<(OrderId, OrderCommand, String)>, String> {
    // A good message is read once, straight into its type; only a bad one is read again to
    // say what is wrong with it.
    let event: OrderEvent = serde_json::from_slice(body).map_err(|e| why_unreadable(body, &e))?;
    let command = match (event.event_type, event.status) {
        (EventType::Created, _) => Some(OrderCommand::Process),
        (EventType::StatusChanged, OrderStatus::Shipped) => Some(OrderCommand::CommitStock),
        (EventType::StatusChanged, OrderStatus::Cancelled) => Some(OrderCommand::ReleaseStock),
        // Other changes carry no work for the processor (it is not bound to them).
        (EventType::StatusChanged, _) => None,
    };
    Ok(command.map(|c| (event.order_id, c, event.correlation_id)))
}

/// The reason a body is not an order event, for the dead-letter queue.
fn why_unreadable(body: &[u8], error: &serde_json::Error) -> String {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return format!("malformed: not JSON ({e})"),
    };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return "malformed: no message type".to_owned();
    };
    if kind != EventType::Created.as_str() && kind != EventType::StatusChanged.as_str() {
        return format!("unknown message type {kind:?}");
    }
    format!("malformed: {error}")
}

/// Reads a header as AWS delivers it: numbers as JSON numbers, strings as `{"bytes": [...]}`.
fn header_u32(value: &Value) -> Option<u32> {
    header_text(value)?.trim().parse().ok()
}

/// What a forwarded message has been through.
struct Counts {
    attempts: u32,
    outage_waits: u32,
}

/// The original message's properties, with the counts and reason added, so a parked or
/// retried message keeps its identity and correlation.
fn forwarded_properties(
    message: &AmazonMqMessage,
    counts: Counts,
    reason_header: &'static str,
    reason: &str,
) -> BasicProperties {
    let original = &message.basic_properties;
    let mut table: FieldTable = headers([
        (
            ATTEMPTS_HEADER,
            AMQPValue::LongLongInt(i64::from(counts.attempts)),
        ),
        (
            OUTAGE_WAITS_HEADER,
            AMQPValue::LongLongInt(i64::from(counts.outage_waits)),
        ),
        (
            reason_header,
            AMQPValue::LongString(LongString::from(reason)),
        ),
    ]);
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = &original.content_type {
        properties = properties.with_content_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &original.message_id {
        properties = properties.with_message_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &original.correlation_id {
        properties = properties.with_correlation_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &original.kind {
        properties = properties.with_type(ShortString::from(v.as_str()));
    }
    // Keep the other headers the message came with.
    let reserved: HashSet<&str> = [
        ATTEMPTS_HEADER,
        OUTAGE_WAITS_HEADER,
        DLQ_REASON_HEADER,
        LAST_ERROR_HEADER,
    ]
    .into();
    for (name, value) in original.headers.iter().flatten() {
        if !reserved.contains(name.as_str()) {
            if let Some(text) = header_text(value) {
                table.insert(
                    ShortString::from(name.as_str()),
                    AMQPValue::LongString(LongString::from(text)),
                );
            }
        }
    }
    properties.with_headers(table)
}

fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        // Amazon MQ writes string headers as Java's signed bytes: "é" is [-61, -87].
        Value::Object(map) => {
            let bytes: Vec<u8> = map
                .get("bytes")?
                .as_array()?
                .iter()
                .map(|b| match b.as_i64() {
                    Some(b @ -128..=255) => Some(b as u8),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            String::from_utf8(bytes).ok()
        }
        _ => None,
    }
}

impl Processor {
    /// Builds the processor from its configuration (environment and secrets).
    pub async fn load() -> Result<Self, crate::config::ConfigError> {
        let pool = crate::db::build_pool(&crate::config::DatabaseConfig::load().await?)?;
        let broker = super::Broker::new(crate::config::BrokerConfig::load().await?);
        Ok(Self::new(pool, Publisher::new(broker)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_classified() {
        assert!(command_of(b"not json")
            .unwrap_err()
            .starts_with("malformed"));
        assert!(command_of(br#"{"type":"order.exploded"}"#)
            .unwrap_err()
            .starts_with("unknown message type"));
        assert!(command_of(br#"{"type":"order.created"}"#)
            .unwrap_err()
            .starts_with("malformed"));
        let created = format!(
            r#"{{"messageId":"{}","type":"order.created","orderId":"{}","status":"pending","occurredAt":"2026-01-01T00:00:00Z","correlationId":"c"}}"#,
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7()
        );
        assert!(matches!(
            command_of(created.as_bytes()),
            Ok(Some((_, OrderCommand::Process, _)))
        ));
    }

    #[test]
    fn a_batch_is_split_into_parts_of_whole_orders() {
        let orders: Vec<OrderId> = (0..300)
            .map(|_| OrderId::from_uuid(uuid::Uuid::now_v7()))
            .collect();
        // 1,000 commands over 300 orders, the copies of an order scattered through the batch.
        let commands: Vec<IndexedCommand> = (0..1_000)
            .map(|i| {
                (
                    i,
                    (orders[(i * 7) % 300], OrderCommand::Process, String::new()),
                )
            })
            .collect();
        let split = parts(&commands, 2);
        assert_eq!(split.len(), 2);
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 1_000);
        let mut indexes: Vec<usize> = split.iter().flatten().map(|(i, _)| *i).collect();
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..1_000).collect::<Vec<_>>(),
            "every command exactly once"
        );
        let orders_of = |part: &Vec<&IndexedCommand>| {
            part.iter()
                .map(|(_, (order, _, _))| *order)
                .collect::<HashSet<_>>()
        };
        assert!(
            orders_of(&split[0]).is_disjoint(&orders_of(&split[1])),
            "an order's commands all in one part"
        );
        assert!(
            split.iter().all(|part| part.len() >= 400),
            "parts about even: {:?}",
            split.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // Small batches stay one transaction; one connection means one part.
        assert_eq!(parts(&commands[..MIN_PART * 2 - 1], 4).len(), 1);
        assert_eq!(parts(&commands, 1).len(), 1);
        assert_eq!(parts(&commands, 8).len(), 5);
        assert!(parts(&[], 2).is_empty());
    }

    #[test]
    fn attempts_are_read_from_numbers_and_aws_byte_strings() {
        assert_eq!(header_u32(&serde_json::json!(3)), Some(3));
        assert_eq!(header_u32(&serde_json::json!({"bytes": [52]})), Some(4));
        assert_eq!(header_u32(&serde_json::json!(null)), None);
        assert_eq!(
            header_text(&serde_json::json!({"bytes": [-61, -87]})).as_deref(),
            Some("é")
        );
    }
}
