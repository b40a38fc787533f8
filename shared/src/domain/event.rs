//! The order event contract (API.md, Messages): a value, written to the outbox by the store
//! and published by messaging, so it lives below both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{OrderId, OrderStatus};

/// What happened to an order, as published on the `orders` exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "order.created")]
    Created,
    #[serde(rename = "order.status_changed")]
    StatusChanged,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "order.created",
            EventType::StatusChanged => "order.status_changed",
        }
    }
}

/// The message body of API.md: `{messageId, type, orderId, status, occurredAt, correlationId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub message_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
}

impl OrderEvent {
    pub fn created(order_id: OrderId, at: DateTime<Utc>, correlation_id: &str) -> Self {
        Self::new(
            EventType::Created,
            order_id,
            OrderStatus::Pending,
            at,
            correlation_id,
        )
    }

    pub fn status_changed(
        order_id: OrderId,
        status: OrderStatus,
        at: DateTime<Utc>,
        correlation_id: &str,
    ) -> Self {
        Self::new(
            EventType::StatusChanged,
            order_id,
            status,
            at,
            correlation_id,
        )
    }

    fn new(
        event_type: EventType,
        order_id: OrderId,
        status: OrderStatus,
        occurred_at: DateTime<Utc>,
        correlation_id: &str,
    ) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            event_type,
            order_id,
            status,
            occurred_at,
            correlation_id: correlation_id.to_owned(),
        }
    }

    /// `order.created`, or `order.status_changed.<status>` so consumers can bind to exactly
    /// the changes they act on (`order.#` sees everything).
    pub fn routing_key(&self) -> String {
        match self.event_type {
            EventType::Created => EventType::Created.as_str().to_owned(),
            EventType::StatusChanged => format!("order.status_changed.{}", self.status),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serialising plain strings, UUIDs and timestamps cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
