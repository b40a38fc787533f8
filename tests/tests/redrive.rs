//! Operators redrive parked messages (issue 12, item 8; API.md, Messages): a parked but
//! valid message is applied once redriven, with its attempts reset; others stay parked.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use shared::messaging::{redrive_parked, Outgoing, RedriveRequest, DLQ_REASON_HEADER};
use system_tests::{header_int, EventMessage, Harness};

fn parked(body: Vec<u8>, reason: &str, queue: &str) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(DLQ_REASON_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(ShortString::from("x-attempts"), AMQPValue::LongLongInt(5));
    Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        body,
        properties: BasicProperties::default()
            .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()))
            .with_delivery_mode(2)
            .with_headers(headers),
    }
}

#[tokio::test]
async fn a_parked_valid_message_is_applied_after_redrive_and_the_rest_stay_parked() {
    let h = Harness::new().await;
    let product = h.api.product("1.00", 10).await;
    let order = h.api.order(&[(&product, 2)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its event was parked (say the order's row was restored from a backup only later),
    // beside one that can never succeed.
    h.broker.drain(&h.broker.topology.queue).await;
    let valid = EventMessage::order_event("order.created", &order, "pending").body;
    let dlq = h.broker.topology.dead_letter_queue.clone();
    h.publisher()
        .broker()
        .publish(&[
            parked(valid, "unknown order (after 5 attempts)", &dlq),
            parked(b"not json".to_vec(), "malformed: not JSON", &dlq),
        ])
        .await
        .unwrap();

    let request = RedriveRequest {
        reason: Some("unknown order".into()),
        max: None,
    };
    let broker = h.broker.broker();
    let report = redrive_parked(&broker, &h.broker.topology, &request)
        .await
        .unwrap();
    assert_eq!((report.moved, report.kept), (1, 1));
    let back = h
        .broker
        .wait_for(
            &h.broker.topology.queue,
            1,
            std::time::Duration::from_secs(5),
        )
        .await;
    assert_eq!(back.len(), 1);
    assert_eq!(header_int(&back[0].1, "x-attempts"), None, "attempts reset");
    let messages: Vec<EventMessage> = back
        .iter()
        .map(|(data, properties)| EventMessage::from_delivery(data, properties))
        .collect();
    let summary = h.handle(&messages).await;
    assert_eq!(summary.applied, 1);
    assert_eq!(h.order_status(&order).await, "processed");

    // The malformed one is still parked; `max` bounds how many move.
    let none = RedriveRequest {
        reason: Some("unknown order".into()),
        max: None,
    };
    assert_eq!(
        redrive_parked(&broker, &h.broker.topology, &none)
            .await
            .unwrap()
            .moved,
        0
    );
    // A handed-back message is requeued by the broker shortly after: counted from then on.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let all_but_none = RedriveRequest {
        reason: None,
        max: Some(0),
    };
    let report = redrive_parked(&broker, &h.broker.topology, &all_but_none)
        .await
        .unwrap();
    assert_eq!((report.moved, report.kept), (0, 1));
    let parked_now = h.broker.drain(&dlq).await;
    assert_eq!(parked_now.len(), 1);
    assert_eq!(parked_now[0].0, b"not json");
}

#[test]
fn the_request_is_all_or_a_reason_and_a_bound() {
    let all: RedriveRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(all, RedriveRequest::default());
    let some: RedriveRequest =
        serde_json::from_str(r#"{"reason": "unknown order", "max": 10}"#).unwrap();
    assert_eq!(some.max, Some(10));
    assert!(serde_json::from_str::<RedriveRequest>(r#"{"reasons": "x"}"#).is_err());
}
