//! The failure drill of issue 12, end to end through the local stack: a steady order load
//! while RabbitMQ and then PostgreSQL restart. Every answer is 201 or 503, every order that
//! got its 201 is processed, nothing is parked, and the stock adds up. Alone in its test
//! binary, since it restarts the machine's servers (and always starts them again).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::stack::LocalStack;

/// Starts RabbitMQ's app and PostgreSQL again when dropped, whatever happened.
struct Restorer;

impl Drop for Restorer {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("bash")
            .args([
                "-c",
                "source scripts/services.sh && ensure_postgres && ensure_rabbitmq",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}");
}

fn postgres_version() -> String {
    let out = Command::new("ls").arg("/etc/postgresql").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("15")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_keep_their_promises_while_the_broker_and_the_database_restart() {
    let stack = Arc::new(LocalStack::start().await);
    let _restorer = Restorer;
    let product = stack
        .post(
            "/products",
            json!({"name": "Drill", "price": "1.00", "inventory": 100000}),
        )
        .await;
    assert_eq!(product.status, 201, "{:?}", product.body);
    let product = product.body["id"].as_str().unwrap().to_owned();

    let running = Arc::new(AtomicBool::new(true));
    let placed: Arc<Mutex<Vec<String>>> = Arc::default();
    let answers: Arc<Mutex<Vec<u16>>> = Arc::default();
    let load = {
        let (stack, running, placed, answers, product) = (
            stack.clone(),
            running.clone(),
            placed.clone(),
            answers.clone(),
            product.clone(),
        );
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let response = tokio::time::timeout(
                    Duration::from_secs(15),
                    stack.post("/orders", json!({"productId": product, "quantity": 1})),
                )
                .await
                .expect("an answer within the function's time");
                answers.lock().unwrap().push(response.status);
                if response.status == 201 {
                    placed
                        .lock()
                        .unwrap()
                        .push(response.body["id"].as_str().unwrap().to_owned());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    // The broker goes away for a while and comes back.
    run("rabbitmqctl", &["stop_app"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    run("rabbitmqctl", &["start_app"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Then the database restarts.
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &postgres_version(),
            "main",
            "restart",
        ],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.store(false, Ordering::Relaxed);
    load.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let placed = placed.lock().unwrap().clone();
    let unavailable = answers.iter().filter(|s| **s == 503).count();
    println!(
        "{} requests: {} placed, {unavailable} answered 503",
        answers.len(),
        placed.len()
    );
    assert!(
        answers.iter().all(|s| *s == 201 || *s == 503),
        "answers other than 201 and 503: {answers:?}"
    );
    assert!(placed.len() > 20, "the load ran: {answers:?}");

    // Everything placed is processed: the relay publishes what the broker missed (after its
    // minimum age) and the mapping reconnects.
    let started = Instant::now();
    let mut left = placed.clone();
    while !left.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "{} orders still not processed, e.g. {}\n{}",
            left.len(),
            left[0],
            stack.log_tail()
        );
        let mut still = Vec::new();
        for order in left {
            let read = stack.get(&format!("/orders/{order}")).await;
            if read.body["status"] != "processed" {
                still.push(order);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Nothing parked; the stock adds up: one unit reserved per placed order, none taken.
    let parked = stack
        .broker
        .drain(&stack.broker.topology.dead_letter_queue)
        .await;
    assert!(parked.is_empty(), "{} messages parked", parked.len());
    let product = stack.get(&format!("/products/{product}")).await;
    assert_eq!(product.body["inventory"], 100000);
    assert_eq!(product.body["reserved"], placed.len());
    stack.db.assert_always_invariants().await;
}
