//! A blocked broker stays off the request path (issue 12, item 1): during a RabbitMQ memory
//! alarm every publishing connection is blocked, yet writes answer at once and their events
//! are published, none lost, once the alarm clears. Alone in its test binary: the alarm
//! blocks every publisher on the broker while it lasts.

use std::process::Command;
use std::time::{Duration, Instant};

use shared::messaging::relay_outbox;
use system_tests::Harness;

/// Raises RabbitMQ's memory alarm; restores the watermark it found when dropped, also when
/// the test fails.
struct MemoryAlarm {
    watermark: String,
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs on this machine");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl MemoryAlarm {
    fn raise() -> Self {
        let watermark = rabbitmqctl(&[
            "-q",
            "eval",
            "vm_memory_monitor:get_vm_memory_high_watermark().",
        ]);
        let alarm = Self { watermark };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"]);
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // `0.4`, or `{absolute,Bytes}` when set in bytes.
        let restore: Vec<String> = match self.watermark.parse::<f64>() {
            Ok(_) => vec![self.watermark.clone()],
            Err(_) => {
                let bytes: String = self
                    .watermark
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                vec!["absolute".into(), bytes]
            }
        };
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(restore.iter().map(String::as_str));
        let _ = Command::new("rabbitmqctl").args(&args).status();
    }
}

#[tokio::test]
async fn writes_answer_at_once_during_a_broker_alarm_and_nothing_is_lost() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 100).await;
    // A warm environment: its connection to the broker is open.
    let first = h.api.order(&[(&product, 1)]).await;
    assert_eq!(first.status, 201);

    let alarm = MemoryAlarm::raise();
    // The broker notices its memory at its next check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut slowest = Duration::ZERO;
    let mut orders = vec![first.body["id"].as_str().unwrap().to_owned()];
    for _ in 0..10 {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(9), h.api.order(&[(&product, 1)]))
            .await
            .expect("an order answered before the function's timeout");
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status, 201, "{}", response.body);
        orders.push(response.body["id"].as_str().unwrap().to_owned());
    }
    println!("slowest order during the alarm: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "an order waited {slowest:?} on a blocked broker"
    );
    drop(alarm);

    // Once the alarm clears, the relay publishes what was left and every order is processed
    // exactly once.
    let mut published = 0;
    for _ in 0..40 {
        match relay_outbox(&h.db.pool, &h.publisher(), Duration::ZERO).await {
            Ok(n) => {
                published += n.published;
                if h.db
                    .scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .await
                    == 0
                {
                    break;
                }
            }
            Err(e) => println!("relay while the alarm clears: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        published >= 1,
        "the relay published what the requests could not"
    );
    h.settle().await;
    for order in &orders {
        assert_eq!(h.order_status(order).await, "processed");
    }
    assert_eq!(h.api.stock(&product).await, (100, 11));
    h.db.assert_always_invariants().await;
}
