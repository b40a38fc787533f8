//! The order system's benchmark, in one step, against the local PostgreSQL and RabbitMQ:
//!
//! 1. `POST /orders` through the real handler, in-process (p50/p99 at concurrency 1,
//!    throughput at 8/32/64, over 1,000 products and on one hot product), side by side with
//!    the database's own limit for the same transaction (pgbench), and the ratios;
//! 2. `process-orders` batches of 100/1,000/10,000: set-based, per-message, database alone;
//! 3. every function binary, release build: stripped size, cold start, peak RSS under load;
//! 4. order search (issue 11): `GET /orders` through the real handler, in-process, over
//!    1,000,000 orders of 10,000 customers, p50/p99 of a 50-item page per filter (a
//!    customer's own list, staff's status, customer and creation-time filters), first and
//!    deep pages, with the plan PostgreSQL ran each with.
//!
//! Prints the tables and the targets of issues 5 and 11 with pass/fail, and writes everything to
//! `target/bench-results.json`. See BENCHMARKS.md.
//!
//! ```sh
//! cargo run --profile bench -p bench                 # everything (~10 min plus the build)
//! cargo run --profile bench -p bench -- --quick      # a short smoke run
//! TEST_POOLER_URL=postgres://oms_app@127.0.0.1:6432/postgres?sslmode=disable \
//!   cargo run --profile bench -p bench -- --only orders   # the functions through PgBouncer
//! cargo run --profile bench -p bench -- --only processor,functions --no-build
//! cargo run --profile bench -p bench -- --only search   # ~5 min, 2 of them seeding
//! ```

mod create_order;
mod functions;
mod machine;
mod processor;
mod runtime_api;
mod search;
mod seed;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::stats::Target;

/// What a part of the benchmark hands back: its table, its figures and its targets.
pub struct Section {
    pub name: &'static str,
    pub table: String,
    pub json: Value,
    pub targets: Vec<Target>,
    /// Foreign CPU (% of the machine) during each measured point.
    pub foreign: Vec<f64>,
}

struct Options {
    quick: bool,
    build: bool,
    only: Vec<String>,
    out: PathBuf,
    quiet_wait: Duration,
    concurrencies: Vec<usize>,
}

const PARTS: [&str; 5] = ["orders", "flash-sale", "processor", "functions", "search"];

const USAGE: &str = "usage: bench [--quick] [--no-build] [--only orders,flash-sale,processor,functions,search] [--out FILE] [--quiet-wait SECONDS]

  --quick          short points (smoke run; figures are rough)
  --no-build       use the function binaries already in target/release
  --only PARTS     run some parts: orders (create-order vs pgbench), flash-sale (one product
                   in 1-32 buckets vs the single-row limit), processor, functions,
                   search (GET /orders over 1,000,000 orders, first and deep pages)
  --concurrency L  create-order concurrencies (default 1,8,32,64)
  --out FILE       where to write the JSON (default target/bench-results.json)
  --quiet-wait S   wait at most S seconds for a quiet machine before each point (default 300)";

fn options() -> Options {
    let mut options = Options {
        quick: false,
        build: true,
        only: PARTS.iter().map(|p| (*p).to_owned()).collect(),
        out: std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
                target.canonicalize().unwrap_or(target)
            })
            .join("bench-results.json"),
        quiet_wait: Duration::from_secs(300),
        concurrencies: vec![1, 8, 32, 64],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-build" => options.build = false,
            "--only" => {
                let parts = args.next().unwrap_or_default();
                options.only = parts.split(',').map(|p| p.trim().to_owned()).collect();
                if let Some(bad) = options.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    eprintln!("unknown part {bad:?}\n{USAGE}");
                    std::process::exit(2);
                }
            }
            "--concurrency" => {
                let list = args.next().unwrap_or_default();
                options.concurrencies = list
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .filter(|c| *c > 0)
                    .collect();
                if options.concurrencies.is_empty() {
                    eprintln!("--concurrency takes a list like 1,32\n{USAGE}");
                    std::process::exit(2);
                }
            }
            "--out" => options.out = PathBuf::from(args.next().unwrap_or_default()),
            "--quiet-wait" => {
                let seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
                options.quiet_wait = Duration::from_secs(seconds);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    options
}

#[tokio::main]
async fn main() {
    let options = options();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    // Interrupted, the run is dropped: its databases, queues and child processes go with it.
    let code = tokio::select! {
        _ = run(options) => 0,
        _ = tokio::signal::ctrl_c() => 130,
        _ = terminate.recv() => 143,
    };
    // Past the select, the run is dropped: cleaned up.
    if code != 0 {
        eprintln!("interrupted: databases, queues and child processes cleaned up");
        std::process::exit(code);
    }
}

async fn run(options: Options) {
    let monitor = machine::ForeignCpu::start();
    let (admin, connection) =
        tokio_postgres::connect(&system_tests::admin_database_url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (or TEST_DATABASE_URL)");
    tokio::spawn(connection);
    let machine = machine::describe(&admin).await;
    eprintln!("machine: {machine}");
    let started = std::time::Instant::now();
    let whole = monitor.mark();

    let mut sections = Vec::new();
    if options.only.iter().any(|p| p == "orders") {
        let settings = if options.quick {
            create_order::Settings {
                duration: Duration::from_secs(2),
                warmup: Duration::from_millis(300),
                concurrencies: options.concurrencies.clone(),
            }
        } else {
            create_order::Settings {
                duration: Duration::from_secs(8),
                warmup: Duration::from_secs(1),
                concurrencies: options.concurrencies.clone(),
            }
        };
        sections.push(create_order::run(&settings, &monitor, options.quiet_wait).await);
    }
    if options.only.iter().any(|p| p == "flash-sale") {
        let settings = create_order::Settings {
            duration: Duration::from_secs(if options.quick { 2 } else { 8 }),
            warmup: Duration::from_millis(if options.quick { 300 } else { 1000 }),
            concurrencies: Vec::new(),
        };
        sections.push(create_order::flash_sale(&settings, &monitor, options.quiet_wait).await);
    }
    if options.only.iter().any(|p| p == "processor") {
        let settings = if options.quick {
            processor::Settings {
                batch_sizes: vec![100, 1_000],
                repeats: 1,
            }
        } else {
            processor::Settings {
                batch_sizes: vec![100, 1_000, 10_000],
                repeats: 3,
            }
        };
        sections.push(processor::run(&settings, &monitor, options.quiet_wait).await);
    }
    if options.only.iter().any(|p| p == "functions") {
        let settings = functions::Settings {
            build: options.build,
            cold_runs: if options.quick { 3 } else { 11 },
            load: Duration::from_secs(if options.quick { 2 } else { 5 }),
        };
        sections.push(functions::run(&settings, &monitor, options.quiet_wait).await);
    }
    if options.only.iter().any(|p| p == "search") {
        let settings = if options.quick {
            search::Settings {
                samples: 60,
                warmup: 10,
            }
        } else {
            search::Settings {
                samples: 500,
                warmup: 30,
            }
        };
        sections.push(search::run(&settings, &monitor, options.quiet_wait).await);
    }

    let foreign = monitor.since(whole);
    let targets: Vec<&Target> = sections.iter().flat_map(|s| &s.targets).collect();
    let mut out = String::new();
    out.push_str(&format!(
        "order system benchmark, {} ({}, {} cores, {} GiB; {}){}\n",
        machine["date"].as_str().unwrap_or_default(),
        machine["cpu"].as_str().unwrap_or_default(),
        machine["cores"],
        machine["memoryGiB"],
        machine["postgres"]
            .as_str()
            .unwrap_or_default()
            .split(" on ")
            .next()
            .unwrap_or_default(),
        if options.quick {
            " - QUICK RUN, rough figures"
        } else {
            ""
        }
    ));
    let points: Vec<f64> = sections.iter().flat_map(|s| s.foreign.clone()).collect();
    let mean = points.iter().sum::<f64>() / points.len().max(1) as f64;
    let worst = points.iter().copied().fold(0.0, f64::max);
    let noisy = points
        .iter()
        .filter(|f| **f > machine::REMEASURE_ABOVE_PERCENT)
        .count();
    out.push_str(&format!(
        "quietness: other processes (not the bench, PostgreSQL, RabbitMQ) used {mean:.1}% of the machine on average during the {} measured points, {worst:.0}% at worst; {noisy} point(s) above {:.0}% (fgn% columns); {foreign:.0}% over the whole {:.0} s run, waits included\n\n",
        points.len(),
        machine::REMEASURE_ABOVE_PERCENT,
        started.elapsed().as_secs_f64()
    ));
    for section in &sections {
        out.push_str(&section.table);
        out.push('\n');
    }
    out.push_str("targets of issues 5 (create-order) and 11 (search)\n");
    for target in &targets {
        out.push_str(&format!(
            "  {:<4}  {:<68} {:<38} (required {})\n",
            target.verdict(),
            target.name,
            target.measured,
            target.required
        ));
    }
    println!("\n{out}");

    let mut report = json!({
        "machine": machine,
        "quick": options.quick,
        "seconds": stats::round(started.elapsed().as_secs_f64(), 1),
        "foreignCpuPercent": stats::round(foreign, 1),
        "foreignCpuPercentDuringPoints": {"mean": stats::round(mean, 1), "worst": stats::round(worst, 1), "pointsAboveThreshold": noisy},
        "targets": targets.iter().map(|t| t.to_json()).collect::<Vec<_>>(),
        "table": out,
    });
    for section in &sections {
        report[section.name] = section.json.clone();
    }
    if let Some(dir) = options.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report).expect("serialise the report"),
    )
    .expect("write the JSON report");
    println!("written to {}", options.out.display());
}
