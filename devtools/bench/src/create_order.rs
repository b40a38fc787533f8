//! `POST /orders` through the real handler, in-process, against the database's own limit for
//! the same work measured in the same run.
//!
//! Ours: a real API Gateway v2 event parsed by `lambda_http` and handled by
//! `shared::http::handle`, the code the `create-order` binary runs, with the publisher on (the
//! `order.created` event is published and confirmed after commit, then its outbox row marked
//! sent), tasks sharing a pool sized to the concurrency.
//!
//! The limit: the minimal correct order transaction (reserve one unit while stock lasts,
//! insert the order, insert its outbox row with a ~200-byte jsonb) on the same schema, through
//! pgbench in prepared mode, or an equivalent tokio-postgres loop when pgbench is absent.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shared::domain::{ProductId, StockBuckets};
use shared::http::{handle, ApiState, Endpoint};
use shared::messaging::{OrderEvent, Publisher};
use shared::store::{update_product, ProductPatch};
use system_tests::{TestBroker, TestDb};
use uuid::Uuid;

use crate::machine::{settle, wait_until_quiet, ForeignCpu};
use crate::seed::{self, product_id, product_id_sql, HOT_PRODUCT, SPREAD_PRODUCTS};
use crate::stats::{round, thousands, Measured, Rng, Target};
use crate::Section;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// Each order for one of 1,000 products, picked at random.
    Spread,
    /// Every order for the same product.
    Hot,
}

impl Products {
    fn label(self) -> &'static str {
        match self {
            Products::Spread => "1,000 products",
            Products::Hot => "1 hot product",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Products::Spread => "spread",
            Products::Hot => "hot",
        }
    }

    fn pick(self, rng: &mut Rng) -> i64 {
        match self {
            Products::Spread => rng.below(SPREAD_PRODUCTS as u64) as i64 + 1,
            Products::Hot => HOT_PRODUCT,
        }
    }
}

/// Slices each point is measured in, ours and the limit alternating.
const SLICES: u32 = 4;

pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrencies: Vec<usize>,
}

// Slots in the event template, as long as the UUIDs that replace them so `content-length`
// stays right.
const PRODUCT_SLOT: &str = "pppppppp-pppp-4ppp-8ppp-pppppppppppp";
const REQUEST_SLOT: &str = "rrrrrrrr-rrrr-4rrr-8rrr-rrrrrrrrrrrr";
const KEY_SLOT: &str = "kkkkkkkk-kkkk-4kkk-8kkk-kkkkkkkkkkkk";

/// API Gateway's part: the v2 event of `POST /orders`, built once from AWS's fixture by the
/// tests' own builder, then filled in per request (product, request id, idempotency key).
struct OrderEvents {
    template: String,
    keyed: bool,
}

impl OrderEvents {
    fn new(keyed: bool) -> Self {
        let body = json!({"items": [{"productId": PRODUCT_SLOT, "quantity": 1}]}).to_string();
        let mut headers = vec![("content-type", "application/json")];
        if keyed {
            headers.push(("idempotency-key", KEY_SLOT));
        }
        let mut event =
            system_tests::api::apigw_event("POST", "/orders", &headers, Some(body.as_bytes()));
        event["requestContext"]["requestId"] = json!(REQUEST_SLOT);
        // A signed-in customer ordering for itself, as a shop's load is.
        event["requestContext"]["authorizer"] =
            system_tests::Identity::Customer("bench-customer".into())
                .authorizer()
                .expect("a customer has an authorizer context");
        Self {
            template: event.to_string(),
            keyed,
        }
    }

    fn event(&self, product: &str) -> String {
        let mut event = self
            .template
            .replace(PRODUCT_SLOT, product)
            .replace(REQUEST_SLOT, &Uuid::now_v7().to_string());
        if self.keyed {
            event = event.replace(KEY_SLOT, &Uuid::now_v7().to_string());
        }
        event
    }
}

/// One invocation as the `create-order` binary runs it: event JSON in, response out.
async fn invoke(state: &ApiState, event: &str) -> lambda_http::Response<lambda_http::Body> {
    let request = lambda_http::request::from_str(event).expect("lambda_http parses the event");
    handle(state, &[Endpoint::CreateOrder], request).await
}

/// `concurrency` tasks sending orders for `duration`; latencies of the 201s.
async fn drive(
    state: Arc<ApiState>,
    events: Arc<OrderEvents>,
    products: Products,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let ids: Arc<Vec<String>> = Arc::new(
        (0..=SPREAD_PRODUCTS)
            .map(|k| product_id(k).to_string())
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (state, events, ids) = (state.clone(), events.clone(), ids.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(task as u64 + 1 + start.elapsed().as_nanos() as u64);
                let mut micros = Vec::with_capacity(4096);
                let mut failures = 0u64;
                let mut first_failure = None;
                while Instant::now() < deadline {
                    let event = events.event(&ids[products.pick(&mut rng) as usize]);
                    let began = Instant::now();
                    let response = invoke(&state, &event).await;
                    let took = began.elapsed();
                    if response.status().as_u16() == 201 {
                        micros.push(took.as_micros() as u64);
                    } else {
                        failures += 1;
                        first_failure.get_or_insert_with(|| {
                            let body: &[u8] = response.body().as_ref();
                            format!(
                                "{} {}",
                                response.status(),
                                String::from_utf8_lossy(body)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            )
                        });
                    }
                }
                (micros, failures, first_failure)
            })
        })
        .collect();
    let mut micros = Vec::new();
    let mut failures = 0;
    let mut first_failure = None;
    for task in tasks {
        let (m, f, first) = task.await.expect("load task");
        micros.extend(m);
        failures += f;
        first_failure = first_failure.or(first);
    }
    let mut measured = Measured::from_micros(micros, start.elapsed().as_secs_f64(), failures);
    measured.first_failure = first_failure;
    measured
}

/// One point of ours: a fresh pool of `concurrency` connections, warmed, then measured.
#[allow(clippy::too_many_arguments)]
async fn ours(
    monitor: &ForeignCpu,
    db: &TestDb,
    broker: &TestBroker,
    products: Products,
    concurrency: usize,
    publish: bool,
    keyed: bool,
    settings: &Settings,
) -> Measured {
    let state = Arc::new(ApiState {
        pool: seed::function_pool(db, concurrency),
        publisher: publish.then(|| Publisher::new(broker.broker())),
    });
    let events = Arc::new(OrderEvents::new(keyed));
    // The processor and the audit consumers keep the queues short in production; a backlog
    // of every earlier slice's events would have RabbitMQ paging it to disk during this one.
    broker.purge().await;
    // Every connection opened and the broker channel up, as in warm Lambdas.
    drive(
        state.clone(),
        events.clone(),
        products,
        concurrency,
        settings.warmup,
    )
    .await;
    let mark = monitor.mark();
    let mut measured = drive(state, events, products, concurrency, settings.duration).await;
    measured.cpu = settle(monitor, mark).await;
    measured
}

/// The minimal correct order transaction, as SQL the limit runs.
fn payload() -> String {
    // The size of a real `order.created` body.
    json!({
        "messageId": Uuid::now_v7(), "type": "order.created", "orderId": Uuid::now_v7(),
        "status": "pending", "occurredAt": "2026-11-27T10:00:00.123456Z", "correlationId": Uuid::now_v7(),
    })
    .to_string()
}

fn pgbench_script(products: Products) -> String {
    let pick = match products {
        Products::Spread => format!("\\set k random(1, {SPREAD_PRODUCTS})"),
        Products::Hot => format!("\\set k {HOT_PRODUCT}"),
    };
    format!(
        "{pick}
BEGIN;
UPDATE stock_buckets SET reserved = reserved + 1 WHERE product_id = {id} AND bucket = 0 AND inventory - reserved >= 1;
INSERT INTO orders (id, status, currency) VALUES (gen_random_uuid(), 'pending', 'USD');
INSERT INTO outbox (message_id, routing_key, payload) VALUES (gen_random_uuid(), 'order.created', '{payload}'::jsonb);
END;
",
        id = product_id_sql(":k"),
        payload = payload(),
    )
}

/// Where the limit comes from.
enum Limit {
    Pgbench { program: PathBuf, dir: PathBuf },
    Loop,
}

fn find_pgbench() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pgbench"))
        .find(|candidate| candidate.is_file())
}

impl Limit {
    fn name(&self) -> &'static str {
        match self {
            Limit::Pgbench { .. } => "pgbench -M prepared",
            Limit::Loop => "tokio-postgres loop, prepared (no pgbench found)",
        }
    }

    async fn measure(
        &self,
        db: &TestDb,
        products: Products,
        clients: usize,
        duration: Duration,
    ) -> Measured {
        match self {
            Limit::Pgbench { program, dir } => {
                pgbench(program, dir, db, products, clients, duration).await
            }
            Limit::Loop => raw_loop(&db.url, products, clients, duration).await,
        }
    }
}

async fn pgbench(
    program: &Path,
    dir: &Path,
    db: &TestDb,
    products: Products,
    clients: usize,
    duration: Duration,
) -> Measured {
    let config: tokio_postgres::Config = db.url.parse().expect("database url");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let run_dir = dir.join(format!("{}-{clients}", products.key()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).expect("pgbench log directory");
    let script = run_dir.join("order.sql");
    std::fs::write(&script, pgbench_script(products)).expect("pgbench script");
    let mut command = tokio::process::Command::new(program);
    command
        .kill_on_drop(true)
        .arg("-n")
        .args(["-M", "prepared"])
        .arg("-f")
        .arg(&script)
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(crate::machine::cpu_count()).to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-l")
        .arg(format!("--log-prefix={}", run_dir.join("log").display()))
        .args(["-h", &host, "-p", &port.to_string()])
        .args(["-U", config.get_user().unwrap_or("postgres")])
        .arg(config.get_dbname().unwrap_or("postgres"));
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    let output = command.output().await.expect("run pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "pgbench failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let tps = field("tps = ").unwrap_or(0.0);
    let failed = field("number of failed transactions: ").unwrap_or(0.0) as u64;
    // Per-transaction log lines: client, transaction, latency (µs), script, epoch s, µs.
    let mut micros = Vec::new();
    for entry in std::fs::read_dir(&run_dir).expect("pgbench logs").flatten() {
        if !entry.file_name().to_string_lossy().starts_with("log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        micros.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    let count = micros.len() as f64;
    let mut measured = Measured::from_micros(micros, 0.0, failed);
    // pgbench's own rate excludes connecting; keep it, with the logged count.
    measured.seconds = if tps > 0.0 { count / tps } else { 0.0 };
    measured
}

/// The same transaction without pgbench: one connection per client, statements prepared
/// once, five round trips a transaction as pgbench makes them.
async fn raw_loop(url: &str, products: Products, clients: usize, duration: Duration) -> Measured {
    let payload: Value = serde_json::from_str(&payload()).expect("payload");
    let mut connections = Vec::new();
    for _ in 0..clients {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect for the limit loop");
        tokio::spawn(connection);
        connections.push(client);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(task, client)| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let begin = client.prepare("BEGIN").await.expect("prepare");
                let reserve = client
                    .prepare("UPDATE stock_buckets SET reserved = reserved + 1 WHERE product_id = $1 AND bucket = 0 AND inventory - reserved >= 1")
                    .await
                    .expect("prepare");
                let order = client
                    .prepare("INSERT INTO orders (id, status, currency) VALUES (gen_random_uuid(), 'pending', 'USD')")
                    .await
                    .expect("prepare");
                let outbox = client
                    .prepare("INSERT INTO outbox (message_id, routing_key, payload) VALUES (gen_random_uuid(), 'order.created', $1)")
                    .await
                    .expect("prepare");
                let commit = client.prepare("COMMIT").await.expect("prepare");
                let mut rng = Rng::new(task as u64 + 7);
                let mut micros = Vec::new();
                let json = tokio_postgres::types::Json(&payload);
                while Instant::now() < deadline {
                    let id = product_id(products.pick(&mut rng));
                    let began = Instant::now();
                    client.execute(&begin, &[]).await.expect("begin");
                    client.execute(&reserve, &[&id]).await.expect("reserve");
                    client.execute(&order, &[]).await.expect("order");
                    client.execute(&outbox, &[&json]).await.expect("outbox");
                    client.execute(&commit, &[]).await.expect("commit");
                    micros.push(began.elapsed().as_micros() as u64);
                }
                micros
            })
        })
        .collect();
    let mut micros = Vec::new();
    for task in tasks {
        micros.extend(task.await.expect("limit task"));
    }
    Measured::from_micros(micros, start.elapsed().as_secs_f64(), 0)
}

/// An `order.created` event for an order that does not exist: publishing alone.
fn bench_event() -> OrderEvent {
    OrderEvent::created(
        shared::domain::OrderId::generate(),
        chrono::Utc::now(),
        "bench",
    )
}

/// p50 of a repeated async operation, for the breakdown of one invocation.
async fn time_each<F, Fut>(duration: Duration, mut op: F) -> Measured
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut micros = Vec::new();
    let mut i = 0;
    while start.elapsed() < duration {
        let began = Instant::now();
        op(i).await;
        micros.push(began.elapsed().as_micros() as u64);
        i += 1;
    }
    Measured::from_micros(micros, start.elapsed().as_secs_f64(), 0)
}

/// Orders both databases hold before the first point (see [`seed::history`]).
const HISTORY_ORDERS: i64 = 100_000;

/// What both create-order parts measure on: a broker, our database and the limit's, both
/// seeded alike as a shop in use, and the limit's runner (its files under `name`).
async fn fixture(name: &str) -> (TestBroker, TestDb, TestDb, Limit) {
    let broker = TestBroker::without_observer().await;
    let ours_db = TestDb::with_pool_size(2).await;
    let limit_db = TestDb::with_pool_size(2).await;
    for db in [&ours_db, &limit_db] {
        seed::products(&db.owner).await;
        seed::history(&db.owner, HISTORY_ORDERS).await;
    }
    let limit = match find_pgbench() {
        Some(program) => {
            let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
            Limit::Pgbench { program, dir }
        }
        None => Limit::Loop,
    };
    (broker, ours_db, limit_db, limit)
}

pub async fn run(settings: &Settings, monitor: &ForeignCpu, quiet_wait: Duration) -> Section {
    wait_until_quiet("create-order", 15.0, quiet_wait).await;
    let (broker, ours_db, limit_db, limit) = fixture("bench-pgbench").await;
    eprintln!("[create-order] limit: {}", limit.name());

    let mut points = Vec::new();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "create-order through the real handler (in-process, publisher on) vs the limit ({}), same run",
        limit.name()
    );
    let _ = writeln!(
        table,
        "{:<15} {:>4} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>11} {:>11} | {:>6} {:>5}",
        "products",
        "conc",
        "ours/s",
        "p50 ms",
        "p99 ms",
        "limit/s",
        "p50 ms",
        "p99 ms",
        "tput ratio",
        "p50 ratio",
        "errors",
        "fgn%"
    );
    let mut cpu_table = String::new();
    let _ = writeln!(
        cpu_table,
        "CPU per order / per limit transaction (ms; sampled from /proc, 10 ms ticks)"
    );
    let _ = writeln!(
        cpu_table,
        "{:<15} {:>4} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>9}",
        "products", "conc", "handler", "postgres", "rabbitmq", "pgbench", "postgres", "pg ratio"
    );
    let mut targets = Vec::new();
    let mut foreigns = Vec::new();
    for products in [Products::Spread, Products::Hot] {
        for &concurrency in &settings.concurrencies {
            let label = format!("create-order {} c={concurrency}", products.key());
            let mut best: Option<(Measured, Measured, f64)> = None;
            for attempt in 1..=crate::machine::ATTEMPTS {
                wait_until_quiet(&label, 15.0, quiet_wait).await;
                // Ours and the limit in alternating slices, so both see the same machine:
                // this VM's fsync time drifts over minutes, and a ratio of two runs minutes
                // apart measures the drift.
                let slice = Settings {
                    duration: settings.duration / SLICES,
                    warmup: settings.warmup,
                    concurrencies: settings.concurrencies.clone(),
                };
                let mut ours_slices = Vec::new();
                let mut limit_slices = Vec::new();
                for _ in 0..SLICES {
                    ours_slices.push(
                        ours(
                            monitor,
                            &ours_db,
                            &broker,
                            products,
                            concurrency,
                            true,
                            false,
                            &slice,
                        )
                        .await,
                    );
                    let mark = monitor.mark();
                    let mut lim = limit
                        .measure(&limit_db, products, concurrency, slice.duration)
                        .await;
                    lim.cpu = settle(monitor, mark).await;
                    limit_slices.push(lim);
                }
                let ours = Measured::merge(ours_slices);
                let lim = Measured::merge(limit_slices);
                let foreign = ours.cpu.foreign_percent().max(lim.cpu.foreign_percent());
                if best.as_ref().is_none_or(|b| foreign < b.2) {
                    best = Some((ours, lim, foreign));
                }
                if !crate::machine::remeasure(&label, foreign, attempt) {
                    break;
                }
            }
            let (ours, lim, foreign) = best.expect("at least one attempt");
            foreigns.push(foreign);
            let throughput_ratio = ours.per_second() / lim.per_second().max(f64::MIN_POSITIVE);
            let latency_ratio = ours.p50_ms / lim.p50_ms.max(f64::MIN_POSITIVE);
            let line = format!(
                "{:<15} {:>4} | {:>9} {:>8.3} {:>8.3} | {:>9} {:>8.3} {:>8.3} | {:>10.2}x {:>10.2}x | {:>6} {:>5.0}",
                products.label(),
                concurrency,
                thousands(ours.per_second()),
                ours.p50_ms,
                ours.p99_ms,
                thousands(lim.per_second()),
                lim.p50_ms,
                lim.p99_ms,
                throughput_ratio,
                latency_ratio,
                ours.failures + lim.failures,
                foreign,
            );
            let (ours_bench, ours_pg, ours_mq) = ours.cpu_ms();
            let (lim_client, lim_pg, _) = lim.cpu_ms();
            let _ = writeln!(
                cpu_table,
                "{:<15} {:>4} | {:>8.3} {:>8.3} {:>8.3} | {:>8.3} {:>8.3} | {:>9.2}",
                products.label(),
                concurrency,
                ours_bench,
                ours_pg,
                ours_mq,
                lim_client,
                lim_pg,
                ours_pg / lim_pg.max(f64::MIN_POSITIVE),
            );
            eprintln!("{line}");
            if let Some(failure) = &ours.first_failure {
                eprintln!("  first failed request: {failure}");
            }
            let _ = writeln!(table, "{line}");
            if concurrency == 1 && products == Products::Spread {
                targets.push(Target::new(
                    "create-order p50 at concurrency 1 <= 2x limit p50",
                    format!(
                        "{:.3} ms vs {:.3} ms = {:.2}x",
                        ours.p50_ms, lim.p50_ms, latency_ratio
                    ),
                    "<= 2.00x",
                    latency_ratio <= 2.0 && ours.failures == 0,
                ));
            }
            if concurrency == 32 {
                let required = if products == Products::Spread {
                    0.6
                } else {
                    0.8
                };
                targets.push(Target::new(
                    format!(
                        "create-order throughput at 32, {} >= {required}x limit",
                        products.label()
                    ),
                    format!(
                        "{} vs {} /s = {:.2}x",
                        thousands(ours.per_second()),
                        thousands(lim.per_second()),
                        throughput_ratio
                    ),
                    format!(">= {required:.2}x"),
                    throughput_ratio >= required && ours.failures == 0,
                ));
            }
            points.push(json!({
                "products": products.key(),
                "concurrency": concurrency,
                "ours": ours.to_json(),
                "limit": lim.to_json(),
                "throughputRatio": round(throughput_ratio, 3),
                "p50Ratio": round(latency_ratio, 3),
            }));
        }
    }

    let _ = writeln!(table);
    table.push_str(&cpu_table);

    // Where one invocation's time goes, at concurrency 1.
    wait_until_quiet("create-order breakdown", 15.0, quiet_wait).await;
    let breakdown_time = settings.duration.min(Duration::from_secs(4));
    let short = Settings {
        duration: breakdown_time,
        warmup: settings.warmup,
        concurrencies: vec![1],
    };
    let full = ours(
        monitor,
        &ours_db,
        &broker,
        Products::Spread,
        1,
        true,
        false,
        &short,
    )
    .await;
    let no_publish = ours(
        monitor,
        &ours_db,
        &broker,
        Products::Spread,
        1,
        false,
        false,
        &short,
    )
    .await;
    let keyed = ours(
        monitor,
        &ours_db,
        &broker,
        Products::Spread,
        1,
        true,
        true,
        &short,
    )
    .await;
    let publisher = Publisher::new(broker.broker());
    publisher
        .publish(&[bench_event()])
        .await
        .expect("warm publish");
    let publish = time_each(breakdown_time, |_| {
        let publisher = &publisher;
        async move {
            publisher.publish(&[bench_event()]).await.expect("publish");
        }
    })
    .await;
    let send = time_each(breakdown_time, |_| {
        let publisher = &publisher;
        async move {
            publisher.publish_committed(&[bench_event()]).await;
        }
    })
    .await;
    // Mark rows the publisher-off run left unsent, one at a time as the handler does.
    let pool = seed::pool(&ours_db.url, 1);
    let unsent: Vec<Uuid> = pool
        .get()
        .await
        .expect("connection")
        .query(
            "SELECT message_id FROM outbox WHERE published_at IS NULL LIMIT 20000",
            &[],
        )
        .await
        .expect("unsent rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mark = time_each(breakdown_time, |i| {
        let pool = &pool;
        let id = unsent.get(i as usize).copied().unwrap_or_else(Uuid::now_v7);
        async move {
            shared::store::mark_published(pool, &[id])
                .await
                .expect("mark published");
        }
    })
    .await;
    let _ = writeln!(table);
    let _ = writeln!(
        table,
        "one create-order invocation at concurrency 1, 1,000 products (p50 / p99 ms)"
    );
    let rows = [
        ("whole handler, publisher on", &full),
        ("whole handler, with Idempotency-Key", &keyed),
        ("handler without publisher (transaction only)", &no_publish),
        ("send one event alone (what the handler waits for)", &send),
        (
            "publish + confirm one event alone (not waited for)",
            &publish,
        ),
        ("mark one row sent in its own transaction (ditto)", &mark),
    ];
    for (label, m) in rows {
        let line = format!("  {label:<52} {:>8.3} {:>8.3}", m.p50_ms, m.p99_ms);
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
    }

    Section {
        name: "createOrder",
        table,
        json: json!({
            "limit": limit.name(),
            "durationSeconds": settings.duration.as_secs_f64(),
            "points": points,
            "breakdownConcurrency1": {
                "wholeHandler": full.to_json(),
                "withIdempotencyKey": keyed.to_json(),
                "withoutPublisher": no_publish.to_json(),
                "sendOne": send.to_json(),
                "publishConfirmOne": publish.to_json(),
                "markPublishedOne": mark.to_json(),
            },
        }),
        targets,
        foreign: foreigns,
    }
}

/// Bucket counts the flash-sale part tries on the hot product.
const FLASH_SALE_BUCKETS: [u8; 6] = [1, 4, 8, 16, 32, 64];
/// Concurrencies of the flash-sale part (issue 14).
const FLASH_SALE_CONCURRENCY: [usize; 3] = [8, 32, 64];

/// A drop: every order for one product, spread over k buckets, at 8/32/64 clients, beside
/// the single-row limit (the limit's transaction on the hot product's one row) and our own
/// 1,000-product figure at 32, all in this run. The product holds a billion units, so any
/// refusal is a false one.
pub async fn flash_sale(
    settings: &Settings,
    monitor: &ForeignCpu,
    quiet_wait: Duration,
) -> Section {
    wait_until_quiet("flash-sale", 15.0, quiet_wait).await;
    let (broker, ours_db, limit_db, limit) = fixture("bench-flash").await;
    let point = Settings {
        duration: settings.duration / 2,
        warmup: settings.warmup,
        concurrencies: Vec::new(),
    };
    let mut foreigns = Vec::new();
    let mark = monitor.mark();
    let single_row = limit
        .measure(&limit_db, Products::Hot, 32, point.duration)
        .await;
    let spread = ours(
        monitor,
        &ours_db,
        &broker,
        Products::Spread,
        32,
        true,
        false,
        &point,
    )
    .await;
    foreigns.push(monitor.since(mark));

    let mut table = String::new();
    let _ = writeln!(
        table,
        "flash sale: create-order on one product in k buckets (in-process handler, publisher on), same run"
    );
    let _ = writeln!(
        table,
        "single-row limit ({}, 32 clients): {}/s, p50 {:.3} ms, p99 {:.3} ms; ours over 1,000 products at 32: {}/s, p99 {:.3} ms",
        limit.name(),
        thousands(single_row.per_second()),
        single_row.p50_ms,
        single_row.p99_ms,
        thousands(spread.per_second()),
        spread.p99_ms
    );
    let _ = writeln!(
        table,
        "{:>7} {:>4} | {:>9} {:>8} {:>8} | {:>12} {:>12} | {:>15} {:>5}",
        "buckets",
        "conc",
        "orders/s",
        "p50 ms",
        "p99 ms",
        "x single-row",
        "x 1,000-prod",
        "false refusals",
        "fgn%"
    );
    let hot = ProductId::parse(&product_id(HOT_PRODUCT).to_string()).expect("the hot product's id");
    let mut rows = Vec::new();
    let mut at_32: Vec<(u8, Measured)> = Vec::new();
    let mut false_refusals = 0;
    for buckets in FLASH_SALE_BUCKETS {
        let patch = ProductPatch {
            stock_buckets: Some(StockBuckets::try_from(i64::from(buckets)).expect("1 to 64")),
            ..ProductPatch::default()
        };
        update_product(&ours_db.pool, hot, &patch)
            .await
            .expect("rebucket the hot product");
        for concurrency in FLASH_SALE_CONCURRENCY {
            let mark = monitor.mark();
            let measured = ours(
                monitor,
                &ours_db,
                &broker,
                Products::Hot,
                concurrency,
                true,
                false,
                &point,
            )
            .await;
            let foreign = monitor.since(mark);
            foreigns.push(foreign);
            false_refusals += measured.failures;
            if let Some(first) = &measured.first_failure {
                eprintln!("[flash-sale] k={buckets} c={concurrency}: first refusal {first}");
            }
            let line = format!(
                "{:>7} {:>4} | {:>9} {:>8.3} {:>8.3} | {:>11.2}x {:>11.2}x | {:>15} {:>5.0}",
                buckets,
                concurrency,
                thousands(measured.per_second()),
                measured.p50_ms,
                measured.p99_ms,
                measured.per_second() / single_row.per_second().max(f64::MIN_POSITIVE),
                measured.per_second() / spread.per_second().max(f64::MIN_POSITIVE),
                measured.failures,
                foreign
            );
            eprintln!("{line}");
            let _ = writeln!(table, "{line}");
            rows.push(json!({
                "buckets": buckets,
                "concurrency": concurrency,
                "measured": measured.to_json(),
            }));
            if concurrency == 32 {
                at_32.push((buckets, measured));
            }
        }
    }
    let (best_buckets, best) = at_32
        .iter()
        .filter(|(buckets, _)| *buckets > 1)
        .max_by(|a, b| a.1.per_second().total_cmp(&b.1.per_second()))
        .expect("bucketed points at 32");
    let one_bucket = &at_32
        .iter()
        .find(|(buckets, _)| *buckets == 1)
        .expect("the one-bucket point")
        .1;
    let _ = writeln!(
        table,
        "best at 32 clients: {best_buckets} buckets ({}/s)",
        thousands(best.per_second())
    );
    let vs_limit = best.per_second() / single_row.per_second().max(f64::MIN_POSITIVE);
    let vs_spread = best.per_second() / spread.per_second().max(f64::MIN_POSITIVE);
    let targets = vec![
        Target::new(
            format!("flash sale at 32, {best_buckets} buckets >= 2.5x the single-row limit"),
            format!("{vs_limit:.2}x"),
            ">= 2.5x",
            vs_limit >= 2.5,
        ),
        Target::new(
            format!("flash sale at 32, {best_buckets} buckets >= 0.8x our 1,000-product figure"),
            format!("{vs_spread:.2}x"),
            ">= 0.8x",
            vs_spread >= 0.8,
        ),
        Target::new(
            "flash sale: no false refusal",
            false_refusals.to_string(),
            "0",
            false_refusals == 0,
        ),
        Target::new(
            format!("flash sale at 32, {best_buckets} buckets: p99 no worse than one row (ours, 1 bucket)"),
            format!("{:.3} vs {:.3} ms", best.p99_ms, one_bucket.p99_ms),
            "<=",
            best.p99_ms <= one_bucket.p99_ms,
        ),
    ];
    Section {
        name: "flashSale",
        table,
        json: json!({
            "singleRowLimit": single_row.to_json(),
            "spread32": spread.to_json(),
            "rows": rows,
            "bestBucketsAt32": best_buckets,
        }),
        targets,
        foreign: foreigns,
    }
}
