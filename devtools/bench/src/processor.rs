//! `process-orders` batch throughput: the set-based handler (events published and confirmed
//! included) against one transaction and one confirmed publish per message, and the
//! database part alone (`apply_order_commands` on the whole batch, nothing published).
//! The logic of `tests/benches/processor.rs`, folded in here.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::config::DatabaseConfig;
use shared::db::build_pool;
use shared::domain::OrderId;
use shared::messaging::{AmazonMqEvent, Processor, Publisher};
use shared::store::{apply_order_commands, OrderCommand, SentMessages};
use system_tests::{rabbitmq_event, rabbitmq_event_json, EventMessage, TestBroker, TestDb};
use uuid::Uuid;

use crate::machine::{settle, wait_until_quiet, ForeignCpu};
use crate::seed;
use crate::stats::{median, round, thousands, Target};
use crate::Section;

pub struct Settings {
    pub batch_sizes: Vec<usize>,
    /// Runs of the set-based and database-only measurements (median kept).
    pub repeats: usize,
}

/// A fresh database with the products and `count` pending orders, plus one more that warms
/// the connections and prepared statements first, as a warm Lambda has them.
async fn orders(count: usize) -> (TestDb, Vec<Uuid>, Uuid) {
    let db = TestDb::with_pool_size(2).await;
    seed::products(&db.owner).await;
    let mut orders = seed::pending_orders(&db.owner, count + 1).await;
    let warm_up = orders.pop().expect("the warm-up order");
    (db, orders, warm_up)
}

fn created_messages(orders: &[Uuid]) -> Vec<EventMessage> {
    orders
        .iter()
        .map(|id| EventMessage::order_event("order.created", &id.to_string(), "pending"))
        .collect()
}

fn commands(orders: &[Uuid]) -> Vec<(OrderId, OrderCommand, String)> {
    orders
        .iter()
        .map(|id| {
            (
                OrderId::from_uuid(*id),
                OrderCommand::Process,
                "bench".to_owned(),
            )
        })
        .collect()
}

/// Invocations of `size` messages back to back, as the event source mapping sends them
/// under load, until about 10,000 messages (at least three invocations), then the last
/// confirms awaited and marked: each invocation sends its `processed` events without waiting
/// for their confirms, and its marks ride on the next invocation's transaction, so only a
/// run of invocations shows what that costs. Returns messages per second over the run and
/// the milliseconds of CPU per invocation: (this process, PostgreSQL, RabbitMQ).
///
/// Each invocation starts from its payload's bytes, as `lambda_runtime` hands them over, so
/// reading the event is counted. The invocations run on a runtime of one thread with its own connections, as
/// `process-orders` runs them (`current_thread`): on the bench's multi-threaded runtime the
/// same work also pays for waking and switching worker threads.
async fn set_based(size: usize, monitor: &ForeignCpu) -> (f64, (f64, f64, f64)) {
    let invocations = (10_000 / size).max(3);
    let (db, orders, warm_up) = orders(size * invocations).await;
    let broker = TestBroker::without_observer().await;
    // Each invocation's payload as the runtime receives it: JSON bytes, read in the run.
    let payloads: Vec<Vec<u8>> = orders
        .chunks(size)
        .map(|batch| rabbitmq_event_json(&broker.topology.queue, &created_messages(batch)))
        .map(|event| serde_json::to_vec(&event).expect("JSON"))
        .collect();
    let warm_up = rabbitmq_event(&broker.topology.queue, &created_messages(&[warm_up]));
    let mut config = DatabaseConfig::from_url(&db.app_url).expect("the test database's url");
    config.pool_size = 2;
    config.multiplexed = db.multiplexed;
    let pool = build_pool(&config).expect("pool");
    let publisher = Publisher::new(broker.broker());
    // The CPU is counted from the end of the warm-up (connections made, statements prepared).
    let (warmed, is_warm) = tokio::sync::oneshot::channel();
    let (go, start_run) = tokio::sync::oneshot::channel::<()>();
    // Named, so that `perf` can tell the function's thread from the bench's own.
    let run = std::thread::Builder::new()
        .name("process-orders".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a one-thread runtime");
            runtime.block_on(async move {
                let processor = Processor::new(pool.clone(), publisher);
                let summary = processor.handle(&warm_up).await.expect("warm-up");
                assert_eq!(summary.applied, 1, "{summary:?}");
                let _ = warmed.send(());
                start_run.await.expect("the bench goes on");
                let start = Instant::now();
                for payload in &payloads {
                    let event: AmazonMqEvent = serde_json::from_slice(payload).expect("the event");
                    let summary = processor.handle(&event).await.expect("batch");
                    assert_eq!(summary.applied, size, "{summary:?}");
                }
                processor
                    .publisher()
                    .mark_confirmed(&pool)
                    .await
                    .expect("mark the last confirms");
                start.elapsed()
            })
        })
        .expect("the invocations' thread");
    is_warm.await.expect("warmed up");
    let mark = monitor.mark();
    go.send(()).expect("the run waits");
    let elapsed = tokio::task::spawn_blocking(move || run.join().expect("the run"))
        .await
        .expect("the run's thread");
    let cpu = settle(monitor, mark).await;
    let unmarked = shared::store::unpublished_count(&db.pool)
        .await
        .expect("count");
    assert_eq!(unmarked, 0, "every event confirmed and marked");
    (
        (size * invocations) as f64 / elapsed.as_secs_f64(),
        cpu.per_operation_ms(invocations as u64),
    )
}

/// The database part alone: `apply_order_commands` on the batch, nothing published.
async fn database_only(size: usize) -> Duration {
    let (db, orders, warm_up) = orders(size).await;
    let commands = commands(&orders);
    apply_order_commands(&db.pool, &self::commands(&[warm_up]), &SentMessages::none())
        .await
        .expect("warm-up");
    let start = Instant::now();
    let batch = apply_order_commands(&db.pool, &commands, &SentMessages::none())
        .await
        .expect("apply");
    let elapsed = start.elapsed();
    assert_eq!(batch.events.len(), size);
    elapsed
}

/// What the set-based handler replaces: per message, one transaction, then its event
/// published and confirmed, then its outbox row marked sent.
async fn per_message(size: usize) -> Duration {
    let (db, orders, warm_up) = orders(size).await;
    let broker = TestBroker::without_observer().await;
    let publisher = Publisher::new(broker.broker());
    one_by_one(&db, &publisher, warm_up).await;
    let start = Instant::now();
    for order in orders {
        one_by_one(&db, &publisher, order).await;
    }
    start.elapsed()
}

async fn one_by_one(db: &TestDb, publisher: &Publisher, order: Uuid) {
    let batch = apply_order_commands(&db.pool, &commands(&[order]), &SentMessages::none())
        .await
        .expect("apply");
    publisher.publish(&batch.events).await.expect("publish");
    let ids: Vec<Uuid> = batch.events.iter().map(|e| e.message_id).collect();
    shared::store::mark_published(&db.pool, &ids)
        .await
        .expect("mark");
}

/// The steps of one invocation timed one by one, on a batch of `size`: the set-based
/// transaction, sending its events, then (in production overlapped with the next batch)
/// awaiting their confirms and marking the outbox rows.
async fn steps(size: usize) -> (Duration, Duration, Duration) {
    let (db, orders, warm_up) = orders(size).await;
    let broker = TestBroker::without_observer().await;
    let publisher = Publisher::new(broker.broker());
    one_by_one(&db, &publisher, warm_up).await;
    let commands = commands(&orders);
    let start = Instant::now();
    let batch = apply_order_commands(&db.pool, &commands, &SentMessages::none())
        .await
        .expect("apply");
    let apply = start.elapsed();
    let start = Instant::now();
    publisher.publish_committed(&batch.events).await;
    let send = start.elapsed();
    let start = Instant::now();
    publisher
        .mark_confirmed(&db.pool)
        .await
        .expect("confirm and mark");
    (apply, send, start.elapsed())
}

pub async fn run(settings: &Settings, monitor: &ForeignCpu, quiet_wait: Duration) -> Section {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "process-orders, order.created messages over 1,000 products (msg/s; median of {} runs, per-message 1 run)",
        settings.repeats
    );
    let _ = writeln!(
        table,
        "{:>8} | {:>15} | {:>17} | {:>7} | {:>15} | {:>5}",
        "batch", "set-based msg/s", "per-message msg/s", "ratio", "db-only msg/s", "fgn%"
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut foreigns = Vec::new();
    for &size in &settings.batch_sizes {
        let label = format!("process-orders {size}");
        let mut best: Option<(Vec<f64>, Vec<f64>, f64, f64)> = None;
        for attempt in 1..=crate::machine::ATTEMPTS {
            wait_until_quiet(&label, 15.0, quiet_wait).await;
            let mark = monitor.mark();
            let mut set_runs = Vec::new();
            let mut db_runs = Vec::new();
            for _ in 0..settings.repeats {
                set_runs.push(set_based(size, monitor).await.0);
                db_runs.push(size as f64 / database_only(size).await.as_secs_f64());
            }
            let single_rate = size as f64 / per_message(size).await.as_secs_f64();
            let foreign = monitor.since(mark);
            if best.as_ref().is_none_or(|b| foreign < b.3) {
                best = Some((set_runs, db_runs, single_rate, foreign));
            }
            if !crate::machine::remeasure(&label, foreign, attempt) {
                break;
            }
        }
        let (mut set_runs, mut db_runs, single_rate, foreign) = best.expect("at least one attempt");
        foreigns.push(foreign);
        let set_rate = median(&mut set_runs);
        let db_rate = median(&mut db_runs);
        let ratio = set_rate / single_rate;
        let line = format!(
            "{:>8} | {:>15} | {:>17} | {:>6.1}x | {:>15} | {:>5.0}",
            thousands(size as f64),
            thousands(set_rate),
            thousands(single_rate),
            ratio,
            thousands(db_rate),
            foreign
        );
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
        if size == 1_000 {
            targets.push(Target::new(
                "process-orders at batch 1,000, events published >= 20,000 msg/s (issue 14)",
                format!("{} msg/s", thousands(set_rate)),
                ">= 20,000",
                set_rate >= 20_000.0,
            ));
            targets.push(Target::new(
                "process-orders at batch 1,000, database part alone >= 25,000 msg/s",
                format!("{} msg/s", thousands(db_rate)),
                ">= 25,000",
                db_rate >= 25_000.0,
            ));
            targets.push(Target::new(
                "process-orders at batch 1,000 >= 10x per-message",
                format!("{ratio:.1}x"),
                ">= 10x",
                ratio >= 10.0,
            ));
        }
        rows.push(json!({
            "batch": size,
            "setBased": {"messagesPerSecond": round(set_rate, 1), "runs": set_runs},
            "databaseOnly": {"messagesPerSecond": round(db_rate, 1), "runs": db_runs},
            "perMessage": {"messagesPerSecond": round(single_rate, 1)},
            "ratio": round(ratio, 2),
            "foreignCpuPercent": round(foreign, 1),
        }));
    }
    // Where the time of a 1,000-message invocation goes.
    let size = 1_000;
    wait_until_quiet("process-orders steps", 15.0, quiet_wait).await;
    let mut whole = Vec::new();
    let mut parts = Vec::new();
    let mut cpu_per_invocation = Vec::new();
    for _ in 0..settings.repeats {
        let (rate, cpu) = set_based(size, monitor).await;
        whole.push(size as f64 / rate * 1000.0);
        cpu_per_invocation.push(cpu);
        let (apply, publish, mark) = steps(size).await;
        parts.push([apply, publish, mark].map(|d| d.as_secs_f64() * 1000.0));
    }
    let whole_ms = median(&mut whole);
    let part = |i: usize| median(&mut parts.iter().map(|p| p[i]).collect::<Vec<_>>());
    let (apply_ms, publish_ms, mark_ms) = (part(0), part(1), part(2));
    let rest_ms = whole_ms - apply_ms - publish_ms;
    let _ = writeln!(table);
    let _ = writeln!(
        table,
        "one invocation of {} messages, step by step (ms, median of {} runs)",
        thousands(size as f64),
        settings.repeats
    );
    for (label, ms) in [
        (
            "one invocation in a run of them (Processor::handle)",
            whole_ms,
        ),
        ("set-based transaction (apply_order_commands)", apply_ms),
        ("send the events (Publisher::publish_committed)", publish_ms),
        (
            "the rest, by difference: in a run the transaction is",
            rest_ms,
        ),
        ("overlapped: await confirms, mark (mark_confirmed)", mark_ms),
    ] {
        let line = format!("  {label:<52} {ms:>8.1}");
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
    }
    let _ = writeln!(
        table,
        "  (slower than alone, sharing the cores with the broker's work; decoding is ~3 ms)"
    );
    let _ = writeln!(
        table,
        "  sending alone runs at {} msg/s",
        thousands(size as f64 / (publish_ms / 1000.0))
    );
    // Where the machine's CPU goes per invocation in a run: on one machine the handler,
    // PostgreSQL and RabbitMQ share its cores; on AWS each has its own.
    let cpu = |i: usize| {
        median(
            &mut cpu_per_invocation
                .iter()
                .map(|c| [c.0, c.1, c.2][i])
                .collect::<Vec<_>>(),
        )
    };
    let (handler_cpu, postgres_cpu, rabbitmq_cpu) = (cpu(0), cpu(1), cpu(2));
    let cores = crate::machine::cpu_count();
    // The most these cores allow when every process keeps them busy: a run cannot go
    // faster than its CPU per invocation spread over all of them.
    let bound = |cpu_ms: f64| size as f64 * cores as f64 / (cpu_ms / 1000.0).max(f64::MIN_POSITIVE);
    for line in [
        format!(
            "  CPU per invocation in a run (ms, 10 ms ticks): handler {handler_cpu:.1}, PostgreSQL {postgres_cpu:.1}, RabbitMQ {rabbitmq_cpu:.1}; {cores} cores bound a run at {} msg/s",
            thousands(bound(handler_cpu + postgres_cpu + rabbitmq_cpu))
        ),
        format!(
            "  PostgreSQL and RabbitMQ alone would bound it at {} msg/s on these cores; the handler alone at {} msg/s per core",
            thousands(bound(postgres_cpu + rabbitmq_cpu)),
            thousands(bound(handler_cpu) / cores as f64)
        ),
    ] {
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
    }

    Section {
        name: "processOrders",
        table,
        json: json!({
            "rows": rows,
            "steps1000Ms": {
                "whole": round(whole_ms, 2),
                "apply": round(apply_ms, 2),
                "send": round(publish_ms, 2),
                "confirmAndMark": round(mark_ms, 2),
                "rest": round(rest_ms, 2),
            },
            "cpuPerInvocation1000Ms": {
                "cores": cores,
                "handler": round(handler_cpu, 2),
                "postgres": round(postgres_cpu, 2),
                "rabbitmq": round(rabbitmq_cpu, 2),
            },
        }),
        targets,
        foreign: foreigns,
    }
}
