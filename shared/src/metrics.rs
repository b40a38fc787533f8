//! CloudWatch metrics in the embedded metric format (EMF): at the end of each invocation,
//! one JSON line per dimension set on stdout, which Lambda sends to the function's log group
//! and CloudWatch Logs turns into metrics: no agent, no API call, nothing on the request's
//! path that can fail or wait.
//!
//! A writer of our own on `serde_json` (already a dependency) rather than `metrics` with
//! `metrics_cloudwatch_embedded`: the functions need a dozen counters and gauges written once
//! per invocation, which is this file, while those crates bring a global registry, atomic
//! recorders, histograms and their dependency trees into binaries that must stay under
//! 8 MiB stripped and are within a few kilobytes of it.
//!
//! Recording is one mechanism for every function: the binary runs each invocation inside
//! [`invocation`], which gives it a recorder of its own (a task-local [`Metrics`]); code
//! anywhere in that invocation records with [`record`] or [`record_by`], and the recorder
//! is written once when the invocation ends, whatever its outcome. Outside an invocation
//! (tools, unit tests) recording does nothing. Metrics never fail a request: recording
//! only adds to a map, and a sink that cannot be written is ignored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::domain::OrderEvent;

/// The namespace when `METRICS_NAMESPACE` is unset (the template sets
/// `OrderSystem/<stack>`).
pub const DEFAULT_NAMESPACE: &str = "OrderSystem/local";

/// EMF limits (CloudWatch's specification): metric definitions per directive, dimension
/// keys per dimension set.
pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
pub const MAX_DIMENSIONS_PER_SET: usize = 30;

/// A metric without dimensions. The names are the template's: its alarms and dashboard
/// read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Orders committed (their `order.created` event with them).
    OrdersPlaced,
    /// Messages in one `process-orders` batch.
    ProcessorBatchSize,
    MessagesApplied,
    MessagesUnchanged,
    /// Sent to a delay queue: a passing failure, or waiting out an outage of ours.
    MessagesRetried,
    MessagesParked,
    /// Events a function or the relay could not hand to the broker (the outbox keeps them).
    PublishFailures,
    /// Age of the oldest outbox row not yet published, 0 when there is none.
    OldestUnpublishedAge,
    /// Orders unsettled for longer than `UNSETTLED_ORDER_SECONDS`.
    UnsettledOrders,
    /// Messages waiting in `orders.dlq`.
    ParkedMessages,
    /// Products whose ledger does not add up to their stock (INVARIANTS.md 6).
    StockDrift,
}

/// A metric split by one dimension, whose key is fixed by the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SplitMetric {
    /// `Reason`: the problem type's last segment (`insufficient-stock`, …).
    OrdersRefused,
    /// `Status`: the status an order moved to.
    StatusChanges,
    /// `Queue`: `orders` or `orders.dlq` (without the queue prefix).
    QueueDepth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
        }
    }
}

/// How values recorded twice in one invocation combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Events: they add up.
    Counter,
    /// A level measured at one moment: the last measurement stands.
    Gauge,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::OrdersPlaced => "OrdersPlaced",
            Metric::ProcessorBatchSize => "ProcessorBatchSize",
            Metric::MessagesApplied => "MessagesApplied",
            Metric::MessagesUnchanged => "MessagesUnchanged",
            Metric::MessagesRetried => "MessagesRetried",
            Metric::MessagesParked => "MessagesParked",
            Metric::PublishFailures => "PublishFailures",
            Metric::OldestUnpublishedAge => "OldestUnpublishedAge",
            Metric::UnsettledOrders => "UnsettledOrders",
            Metric::ParkedMessages => "ParkedMessages",
            Metric::StockDrift => "StockDrift",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Metric::OldestUnpublishedAge => Unit::Seconds,
            _ => Unit::Count,
        }
    }

    fn kind(self) -> Kind {
        match self {
            Metric::OrdersPlaced
            | Metric::MessagesApplied
            | Metric::MessagesUnchanged
            | Metric::MessagesRetried
            | Metric::MessagesParked
            | Metric::PublishFailures => Kind::Counter,
            Metric::ProcessorBatchSize
            | Metric::OldestUnpublishedAge
            | Metric::UnsettledOrders
            | Metric::ParkedMessages
            | Metric::StockDrift => Kind::Gauge,
        }
    }
}

impl SplitMetric {
    pub fn name(self) -> &'static str {
        match self {
            SplitMetric::OrdersRefused => "OrdersRefused",
            SplitMetric::StatusChanges => "StatusChanges",
            SplitMetric::QueueDepth => "QueueDepth",
        }
    }

    pub fn dimension(self) -> &'static str {
        match self {
            SplitMetric::OrdersRefused => "Reason",
            SplitMetric::StatusChanges => "Status",
            SplitMetric::QueueDepth => "Queue",
        }
    }

    fn kind(self) -> Kind {
        match self {
            SplitMetric::OrdersRefused | SplitMetric::StatusChanges => Kind::Counter,
            SplitMetric::QueueDepth => Kind::Gauge,
        }
    }
}

/// One dimension (key and value); `None` for the dimensionless set.
type Dimension = Option<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    unit: Unit,
    value: f64,
}

/// What one invocation recorded, grouped by dimension set: each group is one EMF document.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    groups: BTreeMap<Dimension, BTreeMap<&'static str, Sample>>,
}

impl Metrics {
    pub fn add(&mut self, metric: Metric, value: f64) {
        self.put(None, metric.name(), metric.unit(), metric.kind(), value);
    }

    pub fn add_by(&mut self, metric: SplitMetric, dimension_value: &str, value: f64) {
        let dimension = Some((metric.dimension(), dimension_value.to_owned()));
        self.put(dimension, metric.name(), Unit::Count, metric.kind(), value);
    }

    fn put(
        &mut self,
        dimension: Dimension,
        name: &'static str,
        unit: Unit,
        kind: Kind,
        value: f64,
    ) {
        // JSON has no NaN or infinity; such a value would make the whole line unreadable.
        if !value.is_finite() {
            return;
        }
        let entry = self
            .groups
            .entry(dimension)
            .or_default()
            .entry(name)
            .or_insert(Sample { unit, value: 0.0 });
        entry.value = match kind {
            Kind::Counter => entry.value + value,
            Kind::Gauge => value,
        };
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The EMF documents, one per dimension set, stamped `timestamp_ms` (milliseconds since
    /// the Unix epoch). A document holds every metric of its set, at most
    /// [`MAX_METRICS_PER_DIRECTIVE`] per directive.
    pub fn documents(&self, namespace: &str, timestamp_ms: i64) -> Vec<Value> {
        self.groups
            .iter()
            .map(|(dimension, values)| {
                let keys: Vec<&str> = dimension.iter().map(|(key, _)| *key).collect();
                let names: Vec<(&str, Unit)> =
                    values.iter().map(|(name, v)| (*name, v.unit)).collect();
                let directives: Vec<Value> = names
                    .chunks(MAX_METRICS_PER_DIRECTIVE)
                    .map(|chunk| {
                        let definitions: Vec<Value> = chunk
                            .iter()
                            .map(|(name, unit)| json!({"Name": name, "Unit": unit.as_str()}))
                            .collect();
                        json!({
                            "Namespace": namespace,
                            "Dimensions": [keys],
                            "Metrics": definitions,
                        })
                    })
                    .collect();
                let mut document = Map::new();
                document.insert(
                    "_aws".into(),
                    json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
                );
                if let Some((key, value)) = dimension {
                    document.insert((*key).into(), json!(value));
                }
                for (name, v) in values {
                    document.insert((*name).into(), json!(v.value));
                }
                Value::Object(document)
            })
            .collect()
    }
}

/// Where the lines go: stdout deployed and locally, memory in tests.
#[derive(Debug, Clone)]
enum Sink {
    Stdout,
    Memory(Arc<Mutex<Vec<String>>>),
}

/// Writes an invocation's metrics: the namespace and the sink, built once per execution
/// environment.
#[derive(Debug, Clone)]
pub struct Emitter {
    namespace: String,
    sink: Sink,
}

/// The lines an in-memory [`Emitter`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Emitter {
    /// Stdout, in the namespace `METRICS_NAMESPACE` names (default [`DEFAULT_NAMESPACE`]).
    pub fn from_env() -> Self {
        let namespace = std::env::var("METRICS_NAMESPACE")
            .ok()
            .filter(|ns| !ns.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        Self {
            namespace,
            sink: Sink::Stdout,
        }
    }

    /// An emitter that keeps its lines in memory, for tests to read.
    pub fn in_memory(namespace: &str) -> (Self, Captured) {
        let captured = Captured::default();
        let emitter = Self {
            namespace: namespace.to_owned(),
            sink: Sink::Memory(Arc::clone(&captured.0)),
        };
        (emitter, captured)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Writes `metrics` as EMF lines, each in one write so that log lines of other threads
    /// never interleave with it. Nothing is written for an invocation that recorded nothing.
    pub fn emit(&self, metrics: &Metrics) {
        if metrics.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let lines = metrics
            .documents(&self.namespace, now)
            .into_iter()
            .map(|document| document.to_string());
        match &self.sink {
            Sink::Stdout => {
                let mut stdout = std::io::stdout().lock();
                for line in lines {
                    // A closed stdout loses the metrics, never the request.
                    let _ = stdout.write_all(format!("{line}\n").as_bytes());
                }
                let _ = stdout.flush();
            }
            Sink::Memory(buffer) => buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(lines),
        }
    }
}

tokio::task_local! {
    static RECORDER: RefCell<Metrics>;
}

/// Runs one invocation with a recorder of its own and writes what it recorded when it ends.
pub async fn invocation<F: Future>(emitter: &Emitter, work: F) -> F::Output {
    let (output, metrics) = RECORDER
        .scope(RefCell::new(Metrics::default()), async {
            let output = work.await;
            let metrics = RECORDER.with(RefCell::take);
            (output, metrics)
        })
        .await;
    emitter.emit(&metrics);
    output
}

/// Runs `work` as an invocation whose lines are returned instead of written (tests).
pub async fn capture<F: Future>(work: F) -> (F::Output, Vec<String>) {
    let (emitter, captured) = Emitter::in_memory(Emitter::from_env().namespace());
    let output = invocation(&emitter, work).await;
    (output, captured.lines())
}

fn with_recorder(f: impl FnOnce(&mut Metrics)) {
    // Outside an invocation there is no recorder; a recorder already borrowed cannot be
    // (recording never awaits), but a metric is never worth a panic.
    let _ = RECORDER.try_with(|cell| {
        if let Ok(mut metrics) = cell.try_borrow_mut() {
            f(&mut metrics);
        }
    });
}

/// Records `value` for `metric` in the current invocation.
pub fn record(metric: Metric, value: f64) {
    with_recorder(|m| m.add(metric, value));
}

/// Records `value` for `metric` split by `dimension_value` in the current invocation.
pub fn record_by(metric: SplitMetric, dimension_value: &str, value: f64) {
    with_recorder(|m| m.add_by(metric, dimension_value, value));
}

/// Counts what a transaction committed, by its events: every order placed and every status
/// change commits its event with it (INVARIANTS.md 5), so counting committed events counts
/// them exactly once, whichever function made them.
pub fn record_committed(events: &[OrderEvent]) {
    use crate::domain::EventType;
    if events.is_empty() {
        return;
    }
    with_recorder(|m| {
        for event in events {
            match event.event_type {
                EventType::Created => m.add(Metric::OrdersPlaced, 1.0),
                EventType::StatusChanged => {
                    m.add_by(SplitMetric::StatusChanges, event.status.as_str(), 1.0)
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dimension_set_is_one_document_of_the_emf_shape() {
        let mut metrics = Metrics::default();
        metrics.add(Metric::OrdersPlaced, 1.0);
        metrics.add(Metric::OrdersPlaced, 2.0);
        metrics.add(Metric::OldestUnpublishedAge, 40.0);
        metrics.add(Metric::OldestUnpublishedAge, 12.5);
        metrics.add_by(SplitMetric::OrdersRefused, "insufficient-stock", 1.0);
        metrics.add_by(SplitMetric::QueueDepth, "orders", 7.0);
        metrics.add_by(SplitMetric::QueueDepth, "orders.dlq", 0.0);
        metrics.add(Metric::StockDrift, f64::NAN);

        let documents = metrics.documents("OrderSystem/test", 1_764_000_000_123);
        assert_eq!(documents.len(), 4, "{documents:#?}");
        let plain = &documents[0];
        assert_eq!(
            *plain,
            json!({
                "_aws": {
                    "Timestamp": 1_764_000_000_123_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "OrderSystem/test",
                        "Dimensions": [[]],
                        "Metrics": [
                            {"Name": "OldestUnpublishedAge", "Unit": "Seconds"},
                            {"Name": "OrdersPlaced", "Unit": "Count"},
                        ],
                    }],
                },
                "OrdersPlaced": 3.0,
                "OldestUnpublishedAge": 12.5,
            }),
            "counters add up, gauges keep the last value, a NaN is dropped"
        );
        let dlq = documents
            .iter()
            .find(|d| d["Queue"] == "orders.dlq")
            .expect("one document per queue");
        assert_eq!(dlq["QueueDepth"], json!(0.0));
        assert_eq!(
            dlq["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Queue"]])
        );
        let refused = documents
            .iter()
            .find(|d| d["Reason"] == "insufficient-stock")
            .expect("refusals by reason");
        assert_eq!(refused["OrdersRefused"], json!(1.0));
    }

    #[test]
    fn a_directive_holds_at_most_a_hundred_metrics() {
        let mut metrics = Metrics::default();
        for i in 0..150 {
            let name: &'static str = Box::leak(format!("M{i:03}").into_boxed_str());
            metrics.put(None, name, Unit::Count, Kind::Counter, 1.0);
        }
        let documents = metrics.documents("ns", 0);
        let directives = documents[0]["_aws"]["CloudWatchMetrics"]
            .as_array()
            .unwrap();
        assert_eq!(
            directives
                .iter()
                .map(|d| d["Metrics"].as_array().unwrap().len())
                .collect::<Vec<_>>(),
            [100, 50]
        );
    }

    #[tokio::test]
    async fn an_invocation_writes_what_it_recorded_once_and_nothing_outside_one() {
        record(Metric::OrdersPlaced, 1.0);
        let (emitter, captured) = Emitter::in_memory("ns");
        let answer = invocation(&emitter, async {
            record(Metric::PublishFailures, 2.0);
            tokio::task::yield_now().await;
            record(Metric::PublishFailures, 1.0);
            record_by(SplitMetric::StatusChanges, "shipped", 1.0);
            42
        })
        .await;
        assert_eq!(answer, 42);
        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let documents: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(documents[0]["PublishFailures"], json!(3.0));
        assert!(documents[0].get("OrdersPlaced").is_none());
        assert_eq!(documents[1]["Status"], "shipped");

        invocation(&emitter, async {}).await;
        assert_eq!(
            captured.lines().len(),
            2,
            "an empty invocation writes nothing"
        );
    }
}
