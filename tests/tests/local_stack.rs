//! End to end through the local stack, as a client and the broker see the system: HTTP to the
//! gateway, real function binaries under the Lambda emulator, orders flowing through
//! RabbitMQ into process-orders by the event source mapping.
//!
//! The first run builds every function (minutes on two cores); later runs reuse the build.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use system_tests::header_string;
use system_tests::stack::{HttpResponse, LocalStack};

/// Polls `probe` until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, stack: &LocalStack, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}\n{}",
            stack.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn order(stack: &LocalStack, product: &str, quantity: u32) -> String {
    let response = stack
        .post(
            "/orders",
            json!({"items": [{"productId": product, "quantity": quantity}]}),
        )
        .await;
    assert_eq!(response.status, 201, "{:?}", response.body);
    assert_eq!(response.body["status"], "pending");
    response.body["id"].as_str().expect("order id").to_owned()
}

async fn wait_status(stack: &LocalStack, order: &str, status: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("order {order} {status}"),
        stack,
        || async {
            let response = stack.get(&format!("/orders/{order}")).await;
            (response.body["status"] == status).then_some(())
        },
    )
    .await;
}

fn stock(product: &HttpResponse) -> (i64, i64) {
    (
        product.body["inventory"].as_i64().unwrap_or(-1),
        product.body["reserved"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_the_local_stack_as_in_aws() {
    let mut stack = LocalStack::start().await;

    // The gateway: unknown routes are a 404 problem; known ones reach their function.
    let missing = stack.get("/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(missing.body["type"], "/problems/not-found");
    assert!(missing.header("apigw-requestid").is_some());

    let created = stack
        .post(
            "/products",
            json!({"name": "Local stack widget", "price": "12.50", "inventory": 20}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let product = created.body["id"].as_str().expect("product id").to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/products/{product}").as_str())
    );

    // Orders reserve at once and reach `processed` through RabbitMQ and process-orders.
    let shipped = order(&stack, &product, 2).await;
    let cancelled = order(&stack, &product, 3).await;
    let open = order(&stack, &product, 1).await;
    assert_eq!(
        stock(&stack.get(&format!("/products/{product}")).await),
        (20, 6)
    );
    for id in [&shipped, &cancelled, &open] {
        wait_status(&stack, id, "processed").await;
    }

    // Shipping commits the stock, cancelling releases it (API.md's lifecycle, steps 3-4).
    let response = stack
        .patch(
            &format!("/orders/{shipped}/status"),
            json!({"status": "shipped"}),
        )
        .await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let response = stack
        .patch(
            &format!("/orders/{cancelled}/status"),
            json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let settled = eventually(
        Duration::from_secs(60),
        "stock after ship and cancel",
        &stack,
        || async {
            let product = stack.get(&format!("/products/{product}")).await;
            let stock = stock(&product);
            (stock == (18, 1)).then_some(stock)
        },
    )
    .await;
    assert_eq!(settled, (18, 1), "inventory 20-2, reserved 6-2-3");

    // The mapping survives the broker dropping its connection, as in a broker restart:
    // it reconnects and orders placed meanwhile are processed.
    if stack.force_close_mapping_connection() {
        let during = order(&stack, &product, 1).await;
        wait_status(&stack, &during, "processed").await;
        let response = stack
            .patch(
                &format!("/orders/{during}/status"),
                json!({"status": "cancelled"}),
            )
            .await;
        assert_eq!(response.status, 200, "{:?}", response.body);
    } else {
        eprintln!(
            "rabbitmqctl cannot close the mapping's connection here: reconnection not tested"
        );
    }

    // A malformed message published to the exchange is parked in the dead-letter queue with
    // its reason, while good orders keep flowing past it.
    let connection = Connection::connect(&stack.broker.config.url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            stack.broker.config.exchange.as_str().into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            b"this is not JSON",
            BasicProperties::default().with_message_id("malformed-1".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    let after = order(&stack, &product, 4).await;
    wait_status(&stack, &after, "processed").await;

    let dlq = stack.broker.topology.dead_letter_queue.clone();
    let (body, properties) = eventually(
        Duration::from_secs(60),
        "malformed message in the DLQ",
        &stack,
        || async {
            let message = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions::default())
                .await
                .expect("basic.get")?;
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            Some((
                message.delivery.data.clone(),
                message.delivery.properties.clone(),
            ))
        },
    )
    .await;
    assert_eq!(body, b"this is not JSON");
    let reason = header_string(&properties, "x-dlq-reason").unwrap_or_default();
    assert!(!reason.is_empty(), "x-dlq-reason is set: {properties:?}");
    let _ = connection.close(200, "done".into()).await;

    // Nothing else is stuck or parked, and the stored state adds up.
    let settled = eventually(Duration::from_secs(60), "final stock", &stack, || async {
        let stock = stock(&stack.get(&format!("/products/{product}")).await);
        (stock == (18, 5)).then_some(stock)
    })
    .await;
    assert_eq!(settled, (18, 5), "open orders hold 1 + 4");
    stack.db.assert_always_invariants().await;
    stack.db.assert_reserved_matches_open_orders().await;

    // Ctrl-C (SIGTERM here) stops everything: the stack exits cleanly and its functions
    // with it, so the invoke port is free again.
    let status = stack.stop(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "local-stack stops cleanly on SIGTERM: {status:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", stack.invoke_port)).is_err(),
        "the emulator is gone"
    );
}
