//! The outbox relay judges every row on its own (issue 12, item 7): a row the broker
//! refuses stays for a later run with its failure counted, never holding back the others,
//! and published rows are pruned after their retention.

use std::time::Duration;

use lapin::types::FieldTable;
use shared::domain::{OrderId, OrderStatus};
use shared::messaging::{relay_once, relay_outbox, OrderEvent, OutboxRelay};
use system_tests::Harness;

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
    for queue in [&h.broker.topology.sink_queue, &h.broker.observer] {
        channel
            .queue_unbind(
                queue.as_str().into(),
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
