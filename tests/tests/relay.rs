//! The outbox relay judges every row on its own (issue 12, item 7): a row the broker
//! refuses stays for a later run with its failure counted, never holding back the others,
//! and published rows are pruned after their retention.

use std::time::Duration;

use lapin::types::FieldTable;
use shared::domain::{OrderId, OrderStatus};
use shared::messaging::{relay_once, relay_outbox, OrderEvent, OutboxRelay};
use system_tests::{EventMessage, Harness};

#[tokio::test]
async fn a_row_the_broker_refuses_stays_counted_and_the_others_go_out() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let placed = h.api.order(&[(&product, 1)]).await;
        orders.push(placed.body["id"].as_str().unwrap().to_owned());
    }
    // Their events wait in the outbox, as if the functions' own sends had failed.
    h.mark_confirmed().await;
    h.broker.drain(&h.broker.topology.queue).await;
    h.db.client()
        .await
        .batch_execute("UPDATE outbox SET published_at = NULL")
        .await
        .unwrap();
    // With nothing bound to `order.#`, the processor's own `processed` events have no queue.
    let broker = h.broker.broker();
    let channel = broker.channel().await.unwrap();
    for queue in [h.broker.topology.sink_queue.as_str(), h.broker.observer()] {
        channel
            .queue_unbind(
                queue.into(),
                h.broker.config.exchange.as_str().into(),
                "order.#".into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    // Two bad rows older than all the others, so first in every page: one unroutable, one
    // whose payload is not an event at all.
    let unroutable = OrderEvent::status_changed(
        OrderId::generate(),
        OrderStatus::Processed,
        chrono::Utc::now(),
        "relay-test",
    );
    h.db.client()
        .await
        .execute(
            "INSERT INTO outbox (message_id, routing_key, payload, created_at) VALUES
             ($1, $2, $3, now() - interval '1 hour'),
             (gen_random_uuid(), 'order.created', '{\"not\": \"an event\"}', now() - interval '1 hour')",
            &[
                &unroutable.message_id,
                &unroutable.routing_key(),
                &tokio_postgres::types::Json(unroutable.to_json()),
            ],
        )
        .await
        .unwrap();

    let report = relay_outbox(&h.db.pool, &h.publisher(), Duration::ZERO)
        .await
        .expect("a refused row does not fail the run");
    assert_eq!(
        (report.published, report.failed),
        (3, 2),
        "{:?}",
        report.failures
    );
    assert_eq!(
        h.db.scalar(
            "SELECT count(*) FROM outbox
             WHERE published_at IS NULL AND publish_failures = 1 AND last_error IS NOT NULL
               AND next_attempt_at > now()"
        )
        .await,
        2
    );
    // The next run does not stumble on them: they wait for their next attempt.
    let again = relay_outbox(&h.db.pool, &h.publisher(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((again.published, again.failed), (0, 0));
    h.settle().await;
    for order in &orders {
        assert_eq!(h.order_status(order).await, "processed");
    }
}

#[tokio::test]
async fn published_rows_are_pruned_after_their_retention() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    h.api.order(&[(&product, 1)]).await;
    h.mark_confirmed().await;
    // Eight days ago: published rows from then, and one never published.
    h.db.client()
        .await
        .batch_execute(
            "INSERT INTO outbox (message_id, routing_key, payload, created_at, published_at)
             SELECT ('01' || lpad(to_hex(k), 6, '0') || '-0000-7000-8000-000000000000')::uuid,
                    'order.created', '{}', now() - interval '8 days', now() - interval '8 days'
             FROM generate_series(1, 5) k;
             INSERT INTO outbox (message_id, routing_key, payload, created_at)
             VALUES ('01000000-0000-7000-8000-00000000ffff', 'order.created', '{}', now() - interval '8 days');",
        )
        .await
        .unwrap();
    let relay = OutboxRelay {
        pool: h.db.pool.clone(),
        publisher: h.publisher(),
        min_age: Duration::from_secs(3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        unsettled_after: Duration::from_secs(300),
    };
    let report = relay_once(&relay).await.unwrap();
    assert_eq!(report.pruned, 5);
    // What is recent, and what was never published, stays.
    assert_eq!(
        h.db.scalar(
            "SELECT count(*) FROM outbox WHERE message_id = '01000000-0000-7000-8000-00000000ffff'"
        )
        .await,
        1
    );
    assert!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE created_at > now() - interval '1 hour'")
            .await
            >= 1
    );
}

#[tokio::test]
async fn orders_whose_events_the_broker_lost_are_announced_again_and_settle() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let lost_creation = h.api.order(&[(&product, 2)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shipped = h.api.order(&[(&product, 3)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.mark_confirmed().await;
    // The broker confirmed the creation, then lost it (a queue deleted by hand, a node
    // lost): nothing waits in the processor's queue.
    h.broker.drain(&h.broker.topology.queue).await;
    // The other order was processed and shipped, and the shipment's event lost too.
    let processed = h
        .handle(&[EventMessage::order_event(
            "order.created",
            &shipped,
            "pending",
        )])
        .await;
    assert_eq!(processed.applied, 1);
    let ship = h
        .api
        .patch(
            &format!("/orders/{shipped}/status"),
            serde_json::json!({"status": "shipped"}),
        )
        .await;
    assert_eq!(ship.status, 200);
    h.mark_confirmed().await;
    h.broker.drain(&h.broker.topology.queue).await;
    assert_eq!(h.api.stock(&product).await, (10, 5));

    let relay = OutboxRelay {
        pool: h.db.pool.clone(),
        publisher: h.publisher(),
        min_age: Duration::from_secs(3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        unsettled_after: Duration::from_secs(3),
    };
    // Not yet: they are younger than the period.
    assert_eq!(relay_once(&relay).await.unwrap().reannounced, 0);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(relay_once(&relay).await.unwrap().reannounced, 2);
    // Once per period, not on every run.
    assert_eq!(relay_once(&relay).await.unwrap().reannounced, 0);
    h.settle().await;
    assert_eq!(h.order_status(&lost_creation).await, "processed");
    assert_eq!(h.order_status(&shipped).await, "shipped");
    // The shipment committed its stock, once.
    assert_eq!(h.api.stock(&product).await, (7, 2));
    h.db.assert_always_invariants().await;
    h.mark_confirmed().await;
    assert_eq!(
        h.db.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
}
