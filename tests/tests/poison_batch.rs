//! A message that makes the processor crash or run out of time gets its whole batch
//! redelivered (issue 12, item 6): after a few redeliveries it is found and parked with its
//! reason, and the rest of the batch is applied.

use std::time::Duration;

use system_tests::{rabbitmq_event, EventMessage, Harness};

fn id(response: &system_tests::TestResponse) -> String {
    response.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_message_that_keeps_killing_its_batch_is_parked_and_the_rest_applied() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let first = id(&h.api.order(&[(&product, 1)]).await);
    let poison = id(&h.api.order(&[(&product, 1)]).await);
    let last = id(&h.api.order(&[(&product, 1)]).await);
    h.broker.drain(&h.broker.topology.queue).await;
    // Touching the poison order stalls far past the invocation's time, every time.
    h.db.client()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id = '{poison}' THEN PERFORM pg_sleep(2); END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER stall BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION stall();"
        ))
        .await
        .unwrap();
    let batch: Vec<EventMessage> = [&first, &poison, &last]
        .iter()
        .map(|order| EventMessage::order_event("order.created", order, "pending"))
        .collect();
    // The invocation's time, as Lambda would end it.
    let invocation = Duration::from_millis(700);
    let mut deliveries = 0;
    let summary = loop {
        deliveries += 1;
        let messages: Vec<EventMessage> = batch
            .iter()
            .cloned()
            .map(|m| if deliveries > 1 { m.redelivered() } else { m })
            .collect();
        let event = rabbitmq_event(&h.broker.topology.queue, &messages);
        match tokio::time::timeout(invocation, h.processor.handle(&event)).await {
            Ok(summary) => break summary.expect("the batch is handled"),
            // Timed out: the mapping redelivers the whole batch.
            Err(_) => assert!(deliveries < 10, "the batch never went through"),
        }
        // Let the stalled statement finish and its transaction roll back.
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    println!("went through on delivery {deliveries}: {summary:?}");
    assert_eq!(summary.parked, 1, "{summary:?}");
    assert_eq!(summary.failed_message_ids.len(), 1);
    assert_eq!(h.order_status(&first).await, "processed");
    assert_eq!(h.order_status(&last).await, "processed");
    assert_eq!(h.order_status(&poison).await, "pending");
    let parked = h.broker.drain(&h.broker.topology.dead_letter_queue).await;
    assert_eq!(parked.len(), 1);
    let reason = system_tests::header_string(&parked[0].1, "x-dlq-reason").unwrap_or_default();
    assert!(reason.contains("crashed or timed out"), "{reason}");
    let body: serde_json::Value = serde_json::from_slice(&parked[0].0).unwrap();
    assert_eq!(body["orderId"], poison.as_str());
}
