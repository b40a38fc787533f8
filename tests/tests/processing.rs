//! `process-orders` fed with real-shaped Amazon MQ events, against real PostgreSQL and
//! RabbitMQ (an exchange and queues of each test's own).

use std::time::Duration;

use serde_json::json;
use shared::messaging::{relay_outbox, Processor, Publisher};
use system_tests::{header_int, header_string, EventMessage, Harness};

fn id(response: &system_tests::TestResponse) -> String {
    response.body["id"].as_str().unwrap().to_owned()
}

/// How many outbox rows of `order` are marked sent.
/// Makes every update of `order` fail, as a message that breaks its transaction would.
async fn refuse_updates_of(h: &Harness, order: &str) {
    h.db.client()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id = '{order}' THEN RAISE EXCEPTION 'this order breaks'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_one BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION refuse_one();"
        ))
        .await
        .unwrap();
}

async fn outbox_marked(h: &Harness, order: &str) -> i64 {
    h.db.scalar(&format!(
        "SELECT count(*) FROM outbox WHERE payload->>'orderId' = '{order}' AND published_at IS NOT NULL"
    ))
    .await
}

/// Requests send their events without waiting for the broker's confirms; what the broker
/// confirmed is marked sent by the environment's next transaction, and a transaction that
/// fails hands its marks on to the one after.
#[tokio::test]
async fn confirmed_events_are_marked_sent_by_the_next_transaction() {
    let h = Harness::new().await;
    let product = h.api.product("4.00", 10).await;
    let first = id(&h.api.order(&[(&product, 1)]).await);
    let arrived = h
        .broker
        .wait_for(&h.broker.topology.queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(arrived.len(), 1, "sent before the response");
    assert_eq!(
        outbox_marked(&h, &first).await,
        0,
        "not marked by a transaction of its own"
    );
    // The confirm comes back within milliseconds; give it ample time.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused_change = h
        .api
        .patch(
            &format!("/orders/{first}/status"),
            json!({"status": "delivered"}),
        )
        .await;
    assert_eq!(refused_change.status, 409);
    assert_eq!(
        outbox_marked(&h, &first).await,
        0,
        "the refused change committed nothing"
    );

    // Order placement is one statement that commits its marks even when it refuses the
    // order; the marks are kept for the next transaction all the same (marking is idempotent).
    let refused = h.api.order(&[(&product, 11)]).await;
    assert_eq!(refused.status, 409);
    assert_eq!(
        outbox_marked(&h, &first).await,
        1,
        "marked by the refused order's statement"
    );

    let second = id(&h.api.order(&[(&product, 1)]).await);
    assert_eq!(outbox_marked(&h, &second).await, 0);

    h.mark_confirmed().await;
    assert_eq!(outbox_marked(&h, &second).await, 1);
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn created_orders_flow_through_rabbitmq_to_processed() {
    let h = Harness::new().await;
    let product = h.api.product("4.00", 10).await;
    let order = id(&h.api.order(&[(&product, 2)]).await);

    let summaries = h.settle().await;
    assert_eq!(summaries[0].applied, 1);
    assert_eq!(h.order_status(&order).await, "processed");
    let history = h.api.get(&format!("/orders/{order}")).await.body["statusHistory"].clone();
    assert_eq!(history.as_array().unwrap().len(), 2);
    // The processor's own event went out (an `order.#` consumer sees it), not back to its
    // queue.
    let audit = h.broker.drain(h.broker.observer()).await;
    let keys: Vec<String> = audit
        .iter()
        .map(|(data, _)| {
            serde_json::from_slice::<serde_json::Value>(data).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys, ["pending", "processed"]);
    assert!(h.broker.drain(&h.broker.topology.queue).await.is_empty());
    h.db.assert_always_invariants().await;
}

#[tokio::test]
async fn a_mixed_batch_applies_the_good_messages_once_and_parks_the_bad_with_reasons() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let good_a = id(&h.api.order(&[(&product, 1)]).await);
    let good_b = id(&h.api.order(&[(&product, 2)]).await);
    h.broker.drain(&h.broker.topology.queue).await;

    let ghost = uuid::Uuid::now_v7().to_string();
    let summary = h
        .handle(&[
            EventMessage::order_event("order.created", &good_a, "pending"),
            EventMessage::new("{not json"),
            EventMessage::order_event("order.exploded", &good_a, "pending"),
            EventMessage::order_event("order.created", &ghost, "pending").with_attempts(4),
            EventMessage::order_event("order.created", &ghost, "pending"),
            EventMessage::order_event("order.created", &good_b, "pending"),
        ])
        .await;
    assert_eq!(
        (
            summary.received,
            summary.applied,
            summary.parked,
            summary.retried
        ),
        (6, 2, 3, 1)
    );
    assert_eq!(summary.failed_message_ids.len(), 4);
    assert_eq!(h.order_status(&good_a).await, "processed");
    assert_eq!(h.order_status(&good_b).await, "processed");

    let parked = h.broker.drain(&h.broker.topology.dead_letter_queue).await;
    let mut reasons: Vec<String> = parked
        .iter()
        .map(|(_, p)| header_string(p, "x-dlq-reason").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3);
    assert!(reasons[0].starts_with("malformed: not JSON"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("unknown message type"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("unknown order (after 5 attempts)"),
        "{reasons:?}"
    );
    assert!(
        parked.iter().any(|(data, _)| data == b"{not json"),
        "the original body is kept"
    );
    assert!(parked
        .iter()
        .all(|(_, p)| header_int(p, "x-attempts").is_some()));

    // The unknown order on its first attempt waits in the 1-second delay queue, then comes
    // back to the processor's queue with its attempt counted.
    let back = h
        .broker
        .wait_for(&h.broker.topology.queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(back.len(), 1);
    assert_eq!(header_int(&back[0].1, "x-attempts"), Some(1));
    assert_eq!(
        header_string(&back[0].1, "x-last-error").as_deref(),
        Some("unknown order")
    );
    h.db.assert_always_invariants().await;
}

#[tokio::test]
async fn every_message_twice_and_the_whole_batch_again_apply_each_effect_once() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 100).await;
    let to_ship = id(&h.api.order(&[(&product, 5)]).await);
    let to_cancel = id(&h.api.order(&[(&product, 7)]).await);
    h.settle().await;
    assert_eq!(
        h.api
            .patch(
                &format!("/orders/{to_ship}/status"),
                json!({"status": "shipped"})
            )
            .await
            .status,
        200
    );
    assert_eq!(
        h.api
            .patch(
                &format!("/orders/{to_cancel}/status"),
                json!({"status": "cancelled"})
            )
            .await
            .status,
        200
    );
    h.broker.drain(&h.broker.topology.queue).await;

    let ship = EventMessage::order_event("order.status_changed", &to_ship, "shipped");
    let cancel = EventMessage::order_event("order.status_changed", &to_cancel, "cancelled");
    let created = EventMessage::order_event("order.created", &to_ship, "pending");
    // A copy re-published under a new message id is a duplicate too.
    let copy = EventMessage::order_event("order.status_changed", &to_ship, "shipped");
    let batch = vec![
        ship.clone(),
        ship.clone(),
        cancel.clone(),
        cancel.clone(),
        created.clone(),
        copy,
    ];
    let first = h.handle(&batch).await;
    assert_eq!(
        (first.applied, first.unchanged, first.parked, first.retried),
        (2, 4, 0, 0),
        "{first:?}"
    );
    let redelivered: Vec<EventMessage> = batch.into_iter().map(EventMessage::redelivered).collect();
    let second = h.handle(&redelivered).await;
    assert_eq!((second.applied, second.unchanged), (0, 6));

    assert_eq!(
        h.api.stock(&product).await,
        (95, 0),
        "shipped 5 committed once, cancelled 7 released once"
    );
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM inventory_ledger WHERE reason IN ('commit', 'release')")
            .await,
        2
    );
    h.db.assert_always_invariants().await;
    h.db.assert_reserved_matches_open_orders().await;
}

#[tokio::test]
async fn a_cancel_before_processing_keeps_the_order_cancelled_and_releases_once() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let order = id(&h.api.order(&[(&product, 3)]).await);
    assert_eq!(
        h.api
            .patch(
                &format!("/orders/{order}/status"),
                json!({"status": "cancelled"})
            )
            .await
            .status,
        200
    );
    // The cancel's message arrives first, then order.created, then the cancel again.
    let cancel = EventMessage::order_event("order.status_changed", &order, "cancelled");
    h.handle(std::slice::from_ref(&cancel)).await;
    h.handle(&[
        EventMessage::order_event("order.created", &order, "pending"),
        cancel,
    ])
    .await;
    h.broker.drain(&h.broker.topology.queue).await;
    assert_eq!(h.order_status(&order).await, "cancelled");
    assert_eq!(h.api.stock(&product).await, (10, 0));
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM inventory_ledger WHERE reason = 'release'")
            .await,
        1
    );
    h.db.assert_always_invariants().await;
}

#[tokio::test]
async fn orders_created_while_the_broker_is_down_are_processed_once_it_is_back() {
    let h = Harness::new().await;
    // The HTTP functions' broker is unreachable: writes still succeed, messages wait.
    let api = system_tests::Api::with_state(shared::http::ApiState {
        pool: h.db.pool.clone(),
        publisher: Some(Publisher::new(h.unreachable_broker())),
    });
    let product = api.product("1.00", 10).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let response = api.order(&[(&product, 1)]).await;
        assert_eq!(response.status, 201);
        orders.push(id(&response));
    }
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        3
    );

    // The relay, with the broker back, publishes what was left; nothing is lost.
    let report = relay_outbox(&h.db.pool, &h.publisher(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((report.published, report.failed), (3, 0));
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
    h.settle().await;
    for order in &orders {
        assert_eq!(h.order_status(order).await, "processed");
    }
}

#[tokio::test]
async fn a_database_failure_mid_batch_applies_nothing_and_sends_the_batch_to_retry() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let a = id(&h.api.order(&[(&product, 1)]).await);
    let b = id(&h.api.order(&[(&product, 1)]).await);
    h.broker.drain(&h.broker.topology.queue).await;
    // The connection is lost in the middle of the batch's write statement.
    h.db.client()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION fail_mid_batch() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id = '{b}' THEN RAISE EXCEPTION 'terminating connection' USING ERRCODE = '57P01'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER fail_mid_batch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION fail_mid_batch();"
        ))
        .await
        .unwrap();
    let batch = [
        EventMessage::order_event("order.created", &a, "pending"),
        EventMessage::order_event("order.created", &b, "pending"),
    ];
    let summary = h.handle(&batch).await;
    // A lost connection is our outage: the messages wait, their attempts untouched.
    assert_eq!(
        (summary.applied, summary.retried, summary.waiting),
        (0, 0, 2)
    );
    assert_eq!(h.order_status(&a).await, "pending", "nothing half-applied");
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE payload->>'status' = 'processed'")
            .await,
        0
    );

    // The database is back; the retried batch returns from its delay queue and applies.
    h.db.client()
        .await
        .batch_execute("DROP TRIGGER fail_mid_batch ON orders")
        .await
        .unwrap();
    let back = h
        .broker
        .wait_for(&h.broker.topology.queue, 2, Duration::from_secs(5))
        .await;
    assert_eq!(back.len(), 2);
    let messages: Vec<EventMessage> = back
        .iter()
        .map(|(d, p)| EventMessage::from_delivery(d, p))
        .collect();
    for (_, properties) in &back {
        assert_eq!(
            system_tests::header_int(properties, "x-attempts"),
            Some(0),
            "an outage is no attempt"
        );
        assert_eq!(
            system_tests::header_int(properties, "x-outage-waits"),
            Some(1)
        );
    }
    let retried = h.handle(&messages).await;
    assert_eq!(retried.applied, 2);
    assert_eq!(h.order_status(&a).await, "processed");
    assert_eq!(h.order_status(&b).await, "processed");
}

#[tokio::test]
async fn one_message_that_breaks_the_batch_fails_alone() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let good = id(&h.api.order(&[(&product, 1)]).await);
    let bad = id(&h.api.order(&[(&product, 1)]).await);
    h.broker.drain(&h.broker.topology.queue).await;
    refuse_updates_of(&h, &bad).await;
    let summary = h
        .handle(&[
            EventMessage::order_event("order.created", &good, "pending"),
            EventMessage::order_event("order.created", &bad, "pending"),
        ])
        .await;
    assert_eq!((summary.applied, summary.retried), (1, 1));
    assert_eq!(h.order_status(&good).await, "processed");
    assert_eq!(h.order_status(&bad).await, "pending");
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_invocation_so_the_batch_is_redelivered() {
    let h = Harness::new().await;
    let processor = Processor::new(h.db.pool.clone(), Publisher::new(h.unreachable_broker()));
    let event =
        system_tests::rabbitmq_event(&h.broker.topology.queue, &[EventMessage::new("not json")]);
    assert!(processor.handle(&event).await.is_err());
}

#[tokio::test]
async fn an_order_that_cannot_be_fulfilled_is_rejected_and_its_stock_released() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let order = id(&h.api.order(&[(&product, 4)]).await);
    h.broker.drain(&h.broker.topology.queue).await;
    // Its reservation is gone from the ledger (damaged data): it must not be fulfilled.
    h.db.client()
        .await
        .batch_execute(&format!(
            "DELETE FROM inventory_ledger WHERE order_id = '{order}'"
        ))
        .await
        .unwrap();
    let summary = h
        .handle(&[EventMessage::order_event(
            "order.created",
            &order,
            "pending",
        )])
        .await;
    assert_eq!(summary.applied, 1);
    assert_eq!(h.order_status(&order).await, "rejected");
    assert_eq!(h.api.stock(&product).await, (10, 0));
    // Nobody asked for the rejection or its release: both are the processor's own.
    let read = h.api.get(&format!("/orders/{order}")).await.body;
    assert_eq!(read["statusHistory"][1]["status"], "rejected");
    assert_eq!(read["statusHistory"][1]["by"], "system");
    let actor: String =
        h.db.client()
            .await
            .query_one(
                "SELECT actor FROM inventory_ledger WHERE reason = 'release'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(actor, "system");
}

#[tokio::test]
async fn a_broker_that_just_failed_is_left_alone_for_a_while() {
    let h = Harness::new().await;
    let broker = h.unreachable_broker();
    let publisher = Publisher::new(broker);
    let event = shared::messaging::OrderEvent::created(
        shared::domain::OrderId::generate(),
        chrono::Utc::now(),
        "test",
    );
    let first = publisher
        .publish(std::slice::from_ref(&event))
        .await
        .unwrap_err();
    assert!(first.is_connection_failure(), "{first}");
    let second = publisher
        .publish(std::slice::from_ref(&event))
        .await
        .unwrap_err();
    assert!(
        matches!(second, shared::messaging::BrokerError::CoolingDown(_)),
        "{second}"
    );
}

#[tokio::test]
async fn amazon_mq_nulls_and_unreadable_messages_never_fail_the_good_ones() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let good = id(&h.api.order(&[(&product, 1)]).await);
    h.broker.drain(&h.broker.topology.queue).await;
    let mut event = system_tests::rabbitmq_event_json(
        &h.broker.topology.queue,
        &[EventMessage::order_event("order.created", &good, "pending")],
    );
    let key = format!("{}::/", h.broker.topology.queue);
    let messages = event["rmqMessagesByQueue"][&key].as_array_mut().unwrap();
    // What Amazon MQ sends for properties nobody set, and a message of no known shape.
    messages[0]["basicProperties"]["deliveryMode"] = serde_json::Value::Null;
    messages.push(json!("not a message"));
    // AWS's own example event, whose body is not an order event.
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/rabbitmq-event.json")).unwrap();
    messages.push(fixture["rmqMessagesByQueue"]["test::/"][0].clone());
    let event: shared::messaging::AmazonMqEvent = serde_json::from_str(&event.to_string()).unwrap();

    let summary = h.processor.handle(&event).await.unwrap();
    assert_eq!((summary.applied, summary.parked), (1, 2), "{summary:?}");
    assert_eq!(h.order_status(&good).await, "processed");
    let parked = h.broker.drain(&h.broker.topology.dead_letter_queue).await;
    let reasons: Vec<String> = parked
        .iter()
        .map(|(_, p)| header_string(p, "x-dlq-reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("Amazon MQ shape")),
        "{reasons:?}"
    );
    // The fixture's own string headers (Java signed bytes) travel with the parked copy.
    assert!(parked
        .iter()
        .any(|(_, p)| header_string(p, "header1").as_deref() == Some("value1")));
}

#[tokio::test]
async fn every_routing_key_reaches_a_queue_and_nothing_piles_up_unread() {
    use lapin::options::QueueDeclareOptions;
    let h = Harness::new().await;
    // An event no consumer binds (the processor's own `processed`): routed, so confirmed.
    let event = shared::messaging::OrderEvent::status_changed(
        shared::domain::OrderId::generate(),
        shared::domain::OrderStatus::Processed,
        chrono::Utc::now(),
        "sink-test",
    );
    h.publisher()
        .publish(&[event])
        .await
        .expect("a routed publish is confirmed");
    let broker = h.broker.broker();
    let channel = broker.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let sink = channel
        .queue_declare(
            h.broker.topology.sink_queue.as_str().into(),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the sink exists");
    assert_eq!(sink.message_count(), 0, "the sink keeps nothing");
    // The retained tail it replaces, left by an earlier version, is gone once the topology
    // is declared again (as every deploy does).
    let legacy = format!("{}.audit", h.broker.topology.queue);
    channel
        .queue_declare(
            legacy.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    h.broker.topology.declare(&broker).await.unwrap();
    let gone = channel
        .queue_declare(
            legacy.as_str().into(),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "{legacy} still exists");
}

/// A clustered broker's topology: every queue a quorum queue (`AMQP_QUEUE_TYPE=quorum`),
/// which one node serves as well. Orders flow, and a message that can never apply is parked.
#[tokio::test]
async fn orders_flow_through_a_topology_of_quorum_queues() {
    let h = Harness::with_broker(system_tests::TestBroker::quorum().await).await;
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
        .output();
    if let Some(listed) = listed.ok().filter(|o| o.status.success()) {
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ours: Vec<&str> = listed
            .lines()
            .filter(|line| line.starts_with(h.broker.config.queue_prefix.as_str()))
            .filter(|line| !line.contains("observer"))
            .collect();
        assert!(ours.len() >= 3, "{listed}");
        assert!(ours.iter().all(|line| line.ends_with("quorum")), "{ours:?}");
    }
    let product = h.api.product("4.00", 10).await;
    let order = id(&h.api.order(&[(&product, 2)]).await);
    let summaries = h.settle().await;
    assert_eq!(summaries[0].applied, 1);
    assert_eq!(h.order_status(&order).await, "processed");

    let unreadable = EventMessage::new(b"not an event".to_vec());
    h.handle(&[unreadable]).await;
    let parked = h
        .broker
        .wait_for(
            &h.broker.topology.dead_letter_queue,
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(parked.len(), 1);
    h.db.assert_always_invariants().await;
}

/// A batch large enough to be applied as several transactions at once (one per connection,
/// each on its own orders): copies of a message land in the same part, a part that fails is
/// applied message by message without holding the others back, and every effect happens once.
#[tokio::test]
async fn a_large_batch_applied_in_parts_applies_each_effect_once() {
    let h = Harness::new().await;
    let products = [
        h.api.product("1.00", 1_000).await,
        h.api.product("2.00", 1_000).await,
    ];
    let mut orders = Vec::new();
    for i in 0..250 {
        orders.push(id(&h
            .api
            .order(&[(&products[i % 2], 1 + i as u32 % 3)])
            .await));
    }
    h.broker.drain(&h.broker.topology.queue).await;
    let bad = orders[137].clone();
    refuse_updates_of(&h, &bad).await;
    // Every order's event twice, the copies far apart in the batch.
    let once: Vec<EventMessage> = orders
        .iter()
        .map(|order| EventMessage::order_event("order.created", order, "pending"))
        .collect();
    let batch: Vec<EventMessage> = once.iter().chain(once.iter().rev()).cloned().collect();
    let summary = h.handle(&batch).await;
    assert_eq!(
        (
            summary.applied,
            summary.unchanged,
            summary.retried,
            summary.parked
        ),
        (249, 249, 2, 0),
        "{summary:?}"
    );
    assert_eq!(h.order_status(&bad).await, "pending");
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM orders WHERE status = 'processed'")
            .await,
        249
    );
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM order_status_history WHERE status = 'processed'")
            .await,
        249,
        "one status change each"
    );

    h.db.client()
        .await
        .batch_execute("DROP TRIGGER refuse_one ON orders")
        .await
        .unwrap();
    let again = h.handle(&batch).await;
    assert_eq!(
        (again.applied, again.unchanged, again.retried),
        (1, 499, 0),
        "{again:?}"
    );
    assert_eq!(
        h.db.scalar(
            "SELECT count(*) FROM outbox WHERE routing_key = 'order.status_changed.processed'"
        )
        .await,
        250,
        "one event per order"
    );
    h.db.assert_always_invariants().await;
    h.db.assert_reserved_matches_open_orders().await;
}
