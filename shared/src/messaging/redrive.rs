//! `redrive-parked`: puts parked messages back on the processor's queue, on demand, once an
//! operator has fixed what parked them (API.md, Messages).

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};

use super::processor::{
    ATTEMPTS_HEADER, DLQ_REASON_HEADER, LAST_ERROR_HEADER, OUTAGE_WAITS_HEADER,
};
use super::{Broker, BrokerError, Outgoing, Topology};

/// What to redrive: `{}` for everything parked, or only messages whose `x-dlq-reason`
/// contains `reason`, and at most `max` of them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub max: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Messages put back on the processor's queue, attempts reset.
    pub moved: usize,
    /// Parked messages looked at and left parked (another reason, or beyond `max`).
    pub kept: usize,
}

/// Moves parked messages back to the processor's queue with their attempts reset.
///
/// Only the messages parked when the call starts are looked at (the queue's depth then), so
/// a message parked again meanwhile is not moved twice and the call always ends. Each is
/// taken unacknowledged; the moved ones are acknowledged only once the broker confirmed
/// their copies, and every other one is handed back, so a failure half-way loses nothing
/// (at worst a message is both back and still parked: the processor applies it once).
pub async fn redrive_parked(
    broker: &Broker,
    topology: &Topology,
    request: &RedriveRequest,
) -> Result<RedriveReport, BrokerError> {
    let channel = broker.channel().await?;
    let parked = channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Refused)?
        .message_count() as usize;
    let max = request.max.unwrap_or(usize::MAX);
    let mut moving: Vec<Delivery> = Vec::new();
    let mut keeping: Vec<Delivery> = Vec::new();
    for _ in 0..parked {
        let Some(message) = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(BrokerError::Unreachable)?
        else {
            break;
        };
        let delivery = message.delivery;
        let matches = request
            .reason
            .as_deref()
            .is_none_or(|wanted| parked_reason(&delivery).is_some_and(|r| r.contains(wanted)));
        if matches && moving.len() < max {
            moving.push(delivery);
        } else {
            keeping.push(delivery);
        }
    }
    let copies: Vec<Outgoing> = moving
        .iter()
        .map(|delivery| Outgoing {
            // Straight to the processor's queue through the default exchange.
            exchange: String::new(),
            routing_key: topology.queue.clone(),
            body: delivery.data.clone(),
            properties: with_attempts_reset(&delivery.properties),
        })
        .collect();
    let published = broker.publish(&copies).await;
    let hand_back = |delivery: Delivery| async move {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
    };
    if let Err(e) = published {
        for delivery in moving.into_iter().chain(keeping) {
            let _ = hand_back(delivery).await;
        }
        return Err(e);
    }
    let report = RedriveReport {
        moved: moving.len(),
        kept: keeping.len(),
    };
    for delivery in moving {
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::Unreachable)?;
    }
    for delivery in keeping {
        hand_back(delivery)
            .await
            .map_err(BrokerError::Unreachable)?;
    }
    tracing::info!(moved = report.moved, kept = report.kept, reason = ?request.reason, "parked messages redriven");
    Ok(report)
}

fn parked_reason(delivery: &Delivery) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(DLQ_REASON_HEADER)?
    {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// The parked message's properties without the processor's bookkeeping: it comes back as
/// a first attempt.
fn with_attempts_reset(properties: &lapin::BasicProperties) -> lapin::BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in properties.headers().iter().flat_map(|h| h.inner().iter()) {
        if ![
            ATTEMPTS_HEADER,
            OUTAGE_WAITS_HEADER,
            DLQ_REASON_HEADER,
            LAST_ERROR_HEADER,
        ]
        .contains(&name.as_str())
        {
            headers.insert(ShortString::from(name.as_str()), value.clone());
        }
    }
    properties.clone().with_headers(headers)
}
