//! CloudWatch metrics (issue 13, item 5): every invocation's EMF lines, parsed and held to
//! CloudWatch's specification, carry the figures the template's alarms and dashboard read;
//! the relay's run proves the stock adds up, even for a ledger row that commits late; and
//! the processor's log lines about a message carry the request id that caused it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shared::domain::ProductId;
use shared::messaging::{relay_once, OutboxRelay};
use shared::metrics::{capture, MAX_DIMENSIONS_PER_SET, MAX_METRICS_PER_DIRECTIVE};
use shared::store::StockDrift;
use system_tests::{EventMessage, Harness, TestResponse};

/// Units CloudWatch accepts in a metric definition.
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Parses EMF lines and checks each against CloudWatch's specification: one JSON object per
/// line with `_aws.Timestamp` in epoch milliseconds and `CloudWatchMetrics` directives, each
/// with a namespace, dimension sets of at most 30 keys whose values are strings at the top
/// level, and at most 100 metric definitions whose values are numbers at the top level.
fn emf(lines: &[String]) -> Vec<Value> {
    let now = chrono::Utc::now().timestamp_millis();
    lines
        .iter()
        .map(|line| {
            assert!(!line.contains('\n'), "one line per document: {line}");
            let document: Value = serde_json::from_str(line).expect("each line is JSON");
            let aws = document["_aws"].as_object().expect("_aws metadata");
            let timestamp = aws["Timestamp"].as_i64().expect("Timestamp: integer ms");
            assert!(
                (now - 60_000..=now + 1_000).contains(&timestamp),
                "Timestamp {timestamp} is epoch milliseconds of now"
            );
            let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
            assert!(!directives.is_empty());
            for directive in directives {
                let namespace = directive["Namespace"].as_str().expect("Namespace");
                assert!(!namespace.is_empty() && namespace.len() <= 1024);
                for set in directive["Dimensions"].as_array().expect("Dimensions") {
                    let keys = set.as_array().expect("a dimension set is an array");
                    assert!(keys.len() <= MAX_DIMENSIONS_PER_SET);
                    for key in keys {
                        let key = key.as_str().expect("dimension keys are strings");
                        assert!(
                            document[key].is_string(),
                            "dimension {key} is a string member: {line}"
                        );
                    }
                }
                let metrics = directive["Metrics"].as_array().expect("Metrics");
                assert!(!metrics.is_empty() && metrics.len() <= MAX_METRICS_PER_DIRECTIVE);
                for metric in metrics {
                    let name = metric["Name"].as_str().expect("Name");
                    assert!(UNITS.contains(&metric["Unit"].as_str().expect("Unit")));
                    assert!(
                        document[name].is_number(),
                        "metric {name} is a number member: {line}"
                    );
                }
            }
            document
        })
        .collect()
}

/// The value of `name` in the documents, under the dimension `dimension` (or none).
fn value(documents: &[Value], name: &str, dimension: Option<(&str, &str)>) -> Option<f64> {
    let found: Vec<f64> = documents
        .iter()
        .filter(|d| {
            let keys = &d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0];
            match dimension {
                None => keys == &json!([]),
                Some((key, wanted)) => keys == &json!([key]) && d[key] == wanted,
            }
        })
        .filter_map(|d| d[name].as_f64())
        .collect();
    assert!(found.len() <= 1, "{name} is written once: {documents:?}");
    found.first().copied()
}

fn id(response: &TestResponse) -> String {
    assert_eq!(response.status, 201, "{}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

fn relay(h: &Harness) -> OutboxRelay {
    OutboxRelay {
        pool: h.db.pool.clone(),
        publisher: h.publisher(),
        min_age: Duration::from_secs(30),
        retention: Duration::from_secs(7 * 24 * 3600),
        unsettled_after: Duration::from_secs(300),
    }
}

/// Everything the current thread logs (a `#[tokio::test]` runs on one thread), as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn an_order_placed_counts_once_and_a_refused_one_counts_by_its_problem_type() {
    let h = Harness::new().await;
    let product = h.api.product("2.00", 2).await;

    let (placed, lines) = capture(h.api.order(&[(&product, 1)])).await;
    let order = id(&placed);
    let documents = emf(&lines);
    assert_eq!(value(&documents, "OrdersPlaced", None), Some(1.0));
    assert_eq!(documents.len(), 1, "nothing else happened: {documents:?}");

    let (refused, lines) = capture(h.api.order(&[(&product, 5)])).await;
    assert_eq!(refused.problem_type(), "/problems/insufficient-stock");
    let documents = emf(&lines);
    assert_eq!(
        value(
            &documents,
            "OrdersRefused",
            Some(("Reason", "insufficient-stock"))
        ),
        Some(1.0)
    );
    assert_eq!(value(&documents, "OrdersPlaced", None), None);

    let unknown = ProductId::generate().to_string();
    let (refused, lines) = capture(h.api.order(&[(&unknown, 1)])).await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        value(
            &emf(&lines),
            "OrdersRefused",
            Some(("Reason", "unknown-product"))
        ),
        Some(1.0)
    );

    // A replayed creation commits nothing: it is no new order.
    let body = json!({"productId": product, "quantity": 1}).to_string();
    let keyed = || {
        h.api.request(
            "POST",
            "/orders",
            &[
                ("content-type", "application/json"),
                ("Idempotency-Key", "metrics-key"),
            ],
            Some(body.as_bytes()),
        )
    };
    let (first, lines) = capture(keyed()).await;
    assert_eq!(first.status, 201);
    assert_eq!(value(&emf(&lines), "OrdersPlaced", None), Some(1.0));
    let (replay, lines) = capture(keyed()).await;
    assert_eq!(replay.header("Idempotency-Replayed"), Some("true"));
    assert!(lines.is_empty(), "{lines:?}");

    let (cancelled, lines) = capture(h.api.patch(
        &format!("/orders/{order}/status"),
        json!({"status": "cancelled"}),
    ))
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(
        value(&emf(&lines), "StatusChanges", Some(("Status", "cancelled"))),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_processor_batch_reports_its_size_its_outcomes_and_logs_each_message_with_its_request_id()
{
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    id(&h.api.order(&[(&product, 1)]).await);
    id(&h.api.order(&[(&product, 2)]).await);
    let delivered = h
        .broker
        .wait_for(&h.broker.topology.queue, 2, Duration::from_secs(5))
        .await;
    assert_eq!(delivered.len(), 2);
    let correlation_ids: Vec<String> = delivered
        .iter()
        .map(|(body, _)| {
            let event: Value = serde_json::from_slice(body).unwrap();
            event["correlationId"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut messages: Vec<EventMessage> = delivered
        .iter()
        .map(|(data, properties)| EventMessage::from_delivery(data, properties))
        .collect();
    // A copy of the first (unchanged), a body that can never be applied (parked) and an
    // order nobody knows yet (retried).
    messages.push(messages[0].clone());
    messages.push(EventMessage::new("not json"));
    messages.push(EventMessage::order_event(
        "order.created",
        &uuid::Uuid::now_v7().to_string(),
        "pending",
    ));

    let (logs, guard) = Logs::start();
    let (summary, lines) = capture(h.handle(&messages)).await;
    assert_eq!(
        (
            summary.applied,
            summary.unchanged,
            summary.retried,
            summary.parked
        ),
        (2, 1, 1, 1)
    );
    let documents = emf(&lines);
    for (name, expected) in [
        ("ProcessorBatchSize", 5.0),
        ("MessagesApplied", 2.0),
        ("MessagesUnchanged", 1.0),
        ("MessagesRetried", 1.0),
        ("MessagesParked", 1.0),
    ] {
        assert_eq!(value(&documents, name, None), Some(expected), "{name}");
    }
    assert_eq!(
        value(&documents, "StatusChanges", Some(("Status", "processed"))),
        Some(2.0)
    );

    // A redelivered batch goes one message at a time: its lines carry the id all the same.
    let again = messages[0].clone().redelivered();
    let (summary, _) = capture(h.handle(&[again])).await;
    assert_eq!(summary.unchanged, 1);
    drop(guard);

    let lines = logs.lines();
    for correlation in &correlation_ids {
        let handled = lines
            .iter()
            .filter(|l| {
                l.contains("message handled")
                    && l.contains(&format!("correlation_id={correlation}"))
            })
            .count();
        let expected = if correlation == &correlation_ids[0] {
            3
        } else {
            1
        };
        assert_eq!(
            handled, expected,
            "every message of request {correlation} logs in its span: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("message not applied") && l.contains("correlation_id=test")),
        "the retried message's line carries its event's id: {lines:#?}"
    );
}

#[tokio::test]
async fn the_relay_run_reports_the_backlog_unsettled_orders_and_queue_depths() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let order = id(&h.api.order(&[(&product, 1)]).await);
    h.mark_confirmed().await;
    h.broker.drain(&h.broker.topology.queue).await;
    // One message parked, an order left pending for an hour, and an outbox row nobody could
    // publish for as long.
    let parked = h.handle(&[EventMessage::new("not json")]).await;
    assert_eq!(parked.parked, 1);
    h.db.client()
        .await
        .batch_execute(&format!(
            "UPDATE orders SET updated_at = now() - interval '1 hour' WHERE id = '{order}';
             INSERT INTO outbox (message_id, routing_key, payload, created_at)
             VALUES (gen_random_uuid(), 'order.created', '{{\"not\": \"an event\"}}',
                     now() - interval '1 hour');"
        ))
        .await
        .unwrap();

    let (report, lines) = capture(relay_once(&relay(&h))).await;
    let report = report.expect("the run succeeds");
    assert_eq!((report.failed, report.reannounced), (1, 1));
    let documents = emf(&lines);
    let age = value(&documents, "OldestUnpublishedAge", None).expect("age");
    assert!((3600.0..3700.0).contains(&age), "{age}");
    assert_eq!(
        documents[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == "OldestUnpublishedAge")
            .map(|m| m["Unit"].clone()),
        Some(json!("Seconds"))
    );
    assert_eq!(value(&documents, "UnsettledOrders", None), Some(1.0));
    assert_eq!(value(&documents, "PublishFailures", None), Some(1.0));
    assert_eq!(
        value(&documents, "QueueDepth", Some(("Queue", "orders"))),
        Some(1.0),
        "the order announced again waits for the processor"
    );
    assert_eq!(
        value(&documents, "QueueDepth", Some(("Queue", "orders.dlq"))),
        Some(1.0)
    );
    assert_eq!(value(&documents, "ParkedMessages", None), Some(1.0));
    assert_eq!(value(&documents, "StockDrift", None), Some(0.0));
}

#[tokio::test]
async fn stock_drift_is_zero_when_the_ledger_adds_up_and_names_a_product_changed_behind_it() {
    let h = Harness::new().await;
    let relay = relay(&h);
    let good = h.api.product("1.00", 10).await;
    let bad = h.api.product("1.00", 10).await;
    id(&h.api.order(&[(&good, 2), (&bad, 1)]).await);
    for _ in 0..2 {
        let (report, lines) = capture(relay_once(&relay)).await;
        assert_eq!(report.unwrap().stock_drift, []);
        assert_eq!(value(&emf(&lines), "StockDrift", None), Some(0.0));
    }

    h.db.client()
        .await
        .batch_execute(&format!(
            "UPDATE stock_buckets SET inventory = inventory + 3 WHERE product_id = '{bad}' AND bucket = 0"
        ))
        .await
        .unwrap();
    // The check looks where the ledger changed: the next movement of the product.
    id(&h.api.order(&[(&bad, 1)]).await);
    let (logs, guard) = Logs::start();
    let (report, lines) = capture(relay_once(&relay)).await;
    drop(guard);
    assert_eq!(
        report.unwrap().stock_drift,
        [StockDrift {
            product_id: ProductId::parse(&bad).unwrap(),
            ledger_inventory: 10,
            ledger_reserved: 2,
            stored_inventory: 13,
            stored_reserved: 2,
        }]
    );
    assert_eq!(value(&emf(&lines), "StockDrift", None), Some(1.0));
    assert!(
        logs.lines().iter().any(|l| l.contains("ERROR")
            && l.contains("stock does not add up to its ledger")
            && l.contains(&bad)),
        "{:#?}",
        logs.lines()
    );
}

#[tokio::test]
async fn a_ledger_row_that_commits_after_later_rows_were_checked_is_checked_all_the_same() {
    let h = Harness::new().await;
    let relay = relay(&h);
    let late_product = h.api.product("1.00", 10).await;
    let other = h.api.product("1.00", 10).await;
    // A transaction writes a ledger row without the stock change it records and stays
    // open, while later rows commit and are checked.
    let mut late_session = h.db.owner.get().await.unwrap();
    let late = late_session.transaction().await.unwrap();
    late.batch_execute(&format!(
        "INSERT INTO inventory_ledger (product_id, inventory_delta, reserved_delta, reason, actor)
         VALUES ('{late_product}', 5, 0, 'adjustment', 'late')"
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        id(&h.api.order(&[(&other, 1)]).await);
        let (report, _) = capture(relay_once(&relay)).await;
        assert_eq!(
            report.unwrap().stock_drift,
            [],
            "the late row is not visible"
        );
    }
    late.commit().await.unwrap();

    let (report, lines) = capture(relay_once(&relay)).await;
    let drift = report.unwrap().stock_drift;
    assert_eq!(
        drift.iter().map(|d| d.product_id).collect::<Vec<_>>(),
        [ProductId::parse(&late_product).unwrap()],
        "the watermark did not pass the row while its transaction ran"
    );
    assert_eq!(value(&emf(&lines), "StockDrift", None), Some(1.0));
}
