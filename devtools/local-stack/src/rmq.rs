//! The event the Amazon MQ (RabbitMQ) event source mapping sends, built from deliveries.
//!
//! The mapping is a Java service: it serialises the RabbitMQ Java client's `BasicProperties`
//! with Gson, nulls included. Hence the odd encodings copied here: a string header is the
//! client's `LongString` object, `{"bytes": [...]}` with Java's *signed* bytes; a timestamp
//! is Gson's default `Date` format in UTC (`Jan 1, 1970, 12:33:41 AM`); an absent property
//! is `null` (also `deliveryMode` and `priority`, which some event libraries wrongly declare
//! as plain integers).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::DateTime;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Map, Value};

/// Lambda's limit on a synchronous invocation's payload; the mapping fills batches up to it.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// `eventSourceArn` when none is configured: the shape of an Amazon MQ broker ARN.
pub const DEFAULT_BROKER_ARN: &str =
    "arn:aws:mq:us-east-1:123456789012:broker:local-stack:b-00000000-0000-4000-8000-000000000000";

/// The key of a queue's messages in `rmqMessagesByQueue`: `<queue>::<virtual host>`.
pub fn queue_key(queue: &str, vhost: &str) -> String {
    format!("{queue}::{vhost}")
}

/// One entry of `rmqMessagesByQueue`.
pub fn message(properties: &BasicProperties, body: &[u8], redelivered: bool) -> Value {
    let text = |v: &Option<lapin::types::ShortString>| {
        v.as_ref()
            .map_or(Value::Null, |s| Value::String(s.as_str().to_owned()))
    };
    json!({
        "basicProperties": {
            "contentType": text(properties.content_type()),
            "contentEncoding": text(properties.content_encoding()),
            // An absent headers table is an empty object, as in events captured on AWS.
            "headers": properties.headers().as_ref().map_or_else(|| json!({}), table),
            "deliveryMode": properties.delivery_mode().map_or(Value::Null, Value::from),
            "priority": properties.priority().map_or(Value::Null, Value::from),
            "correlationId": text(properties.correlation_id()),
            "replyTo": text(properties.reply_to()),
            "expiration": text(properties.expiration()),
            "messageId": text(properties.message_id()),
            "timestamp": properties.timestamp().map_or(Value::Null, |t| java_date(t as i64)),
            "type": text(properties.kind()),
            "userId": text(properties.user_id()),
            "appId": text(properties.app_id()),
            "clusterId": text(properties.cluster_id()),
            "bodySize": body.len(),
        },
        "redelivered": redelivered,
        "data": BASE64.encode(body),
    })
}

/// The whole event for one queue's batch.
pub fn event(event_source_arn: &str, queue_key: &str, messages: Vec<Value>) -> Value {
    let mut by_queue = Map::new();
    by_queue.insert(queue_key.to_owned(), Value::Array(messages));
    json!({
        "eventSource": "aws:rmq",
        "eventSourceArn": event_source_arn,
        "rmqMessagesByQueue": by_queue,
    })
}

/// The event's size without its messages, for keeping batches under the payload limit.
pub fn envelope_size(event_source_arn: &str, queue_key: &str) -> usize {
    event(event_source_arn, queue_key, Vec::new())
        .to_string()
        .len()
}

fn table(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), amqp_value(value)))
            .collect(),
    )
}

fn java_bytes(bytes: &[u8]) -> Value {
    json!({ "bytes": bytes.iter().map(|b| *b as i8).collect::<Vec<i8>>() })
}

fn amqp_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => java_bytes(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => java_bytes(s.as_bytes()),
        AMQPValue::ByteArray(b) => java_bytes(b.as_slice()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_value).collect())
        }
        AMQPValue::Timestamp(t) => java_date(*t as i64),
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::Void => Value::Null,
    }
}

/// Gson's default rendering of a `java.util.Date` (en_US, medium style) in UTC, which the
/// mapping uses for AMQP timestamps (seconds since the epoch).
fn java_date(seconds: i64) -> Value {
    DateTime::from_timestamp(seconds, 0).map_or(Value::Null, |time| {
        json!(time.format("%b %-d, %Y, %-I:%M:%S %p").to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
    use lapin::types::{LongString, ShortString};

    const FIXTURE: &str = include_str!("../tests/fixtures/rabbitmq-event.json");

    fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    // Queue names and header names are data, not shape.
                    let key = if prefix == ".rmqMessagesByQueue" {
                        "<queue>"
                    } else if prefix.ends_with(".headers") {
                        "<header>"
                    } else {
                        key
                    };
                    let path = format!("{prefix}.{key}");
                    out.push(path.clone());
                    key_paths(value, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
        out.sort();
        out.dedup();
    }

    /// The fixture's message, rebuilt from the same AMQP properties.
    fn fixture_message() -> Value {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("header1"),
            AMQPValue::LongString(LongString::from("value1")),
        );
        headers.insert(
            ShortString::from("header2"),
            AMQPValue::LongString(LongString::from("value2")),
        );
        headers.insert(ShortString::from("numberInHeader"), AMQPValue::LongInt(10));
        let properties = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers)
            .with_delivery_mode(1)
            .with_priority(34)
            .with_expiration("60000".into())
            .with_timestamp(2021)
            .with_user_id("AIDACKCEVSQ6C2EXAMPLE".into());
        let body = BASE64
            .decode("eyJ0aW1lb3V0IjowLCJkYXRhIjoiQ1pybWYwR3c4T3Y0YnFMUXhENEUifQ==")
            .unwrap();
        let mut message = message(&properties, &body, false);
        // The fixture's bodySize (80) is not its data's length (43): AWS's documented example
        // was edited by hand. Everything else is compared as is.
        message["basicProperties"]["bodySize"] = json!(80);
        message
    }

    #[test]
    fn the_event_is_the_fixture_for_the_same_message() {
        let aws: Value = serde_json::from_str(FIXTURE).unwrap();
        let ours = event(
            aws["eventSourceArn"].as_str().unwrap(),
            &queue_key("test", "/"),
            vec![fixture_message()],
        );
        assert_eq!(ours, aws);
    }

    #[test]
    fn the_event_has_the_fixtures_shape_and_deserializes() {
        let aws: Value = serde_json::from_str(FIXTURE).unwrap();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-last-error"),
            AMQPValue::LongString(LongString::from("timeout")),
        );
        headers.insert(ShortString::from("x-attempts"), AMQPValue::LongLongInt(2));
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(0)
            .with_message_id("m1".into())
            .with_type("order.created".into())
            .with_timestamp(1_700_000_000)
            .with_correlation_id("c1".into());
        let ours = event(
            DEFAULT_BROKER_ARN,
            &queue_key("orders", "/"),
            vec![message(&properties, br#"{"a":1}"#, true)],
        );
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        key_paths(&aws, "", &mut expected);
        key_paths(&ours, "", &mut actual);
        assert_eq!(actual, expected);
        let parsed: RabbitMqEvent = serde_json::from_value(ours).unwrap();
        let messages = &parsed.messages_by_queue["orders::/"];
        assert_eq!(messages.len(), 1);
        assert!(messages[0].redelivered);
        assert_eq!(
            messages[0].basic_properties.timestamp.as_deref(),
            Some("Nov 14, 2023, 10:13:20 PM")
        );
        assert_eq!(messages[0].data.as_deref(), Some("eyJhIjoxfQ=="));
    }

    #[test]
    fn absent_properties_are_null_as_aws_sends_them() {
        let message = message(&BasicProperties::default(), b"hello", false);
        let properties = &message["basicProperties"];
        for name in [
            "contentType",
            "deliveryMode",
            "priority",
            "timestamp",
            "messageId",
        ] {
            assert_eq!(properties[name], Value::Null, "{name}");
        }
        assert_eq!(properties["headers"], json!({}));
        assert_eq!(properties["bodySize"], 5);
    }

    #[test]
    fn header_strings_are_java_signed_bytes() {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-dlq-reason"),
            AMQPValue::LongString(LongString::from("é")),
        );
        headers.insert(ShortString::from("x-attempts"), AMQPValue::LongLongInt(3));
        headers.insert(ShortString::from("flag"), AMQPValue::Boolean(true));
        let message = message(
            &BasicProperties::default().with_headers(headers),
            b"",
            false,
        );
        let headers = &message["basicProperties"]["headers"];
        assert_eq!(headers["x-dlq-reason"], json!({"bytes": [-61, -87]}));
        assert_eq!(headers["x-attempts"], 3);
        assert_eq!(headers["flag"], true);
    }

    #[test]
    fn queue_keys_name_the_virtual_host() {
        assert_eq!(queue_key("orders", "/"), "orders::/");
        assert_eq!(queue_key("t.orders", "dev"), "t.orders::dev");
    }
}
