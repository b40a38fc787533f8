use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::sql::{changed_rows, execute, params, query, query_one, ClientLike};
use super::StoreError;
use crate::domain::OrderEvent;

/// Outbox messages the broker confirmed, handed to a transaction to be marked sent with its
/// own work, in the same round trip.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SentMessages {
    ids: Vec<Uuid>,
    oldest: Option<Instant>,
}

impl SentMessages {
    /// `oldest`: when the oldest of them was sent, right after its transaction committed.
    pub fn new(ids: Vec<Uuid>, oldest: Option<Instant>) -> Self {
        Self { ids, oldest }
    }

    pub fn none() -> Self {
        Self::default()
    }

    pub fn ids(&self) -> &[Uuid] {
        &self.ids
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What a write use case committed: its answer, the events it wrote to the outbox (to be
/// sent right after), and whether its transaction marked the [`SentMessages`] it was handed
/// (when it did not commit, or committed nothing, they are to be handed to the next one).
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub events: Vec<OrderEvent>,
    pub marked: bool,
}

impl<T> Written<T> {
    /// A committed transaction that marked what it was handed.
    pub fn committed(value: T, events: Vec<OrderEvent>) -> Self {
        Self {
            value,
            events,
            marked: true,
        }
    }
}

/// Marks `sent` within the caller's transaction. The caller hands over only messages sent
/// less than [`crate::messaging::MARK_WINDOW`] ago, rows the relay (which takes rows older
/// than its minimum age) never locks, so this never waits for the relay.
pub(super) async fn mark_sent(
    client: &(impl ClientLike + ?Sized),
    sent: &SentMessages,
) -> Result<(), StoreError> {
    mark_published_with(client, sent.ids()).await
}

/// Marks outbox messages as published once the broker confirmed them.
///
/// Every mark names its rows by id and keeps an earlier mark in `coalesce` rather than
/// filtering on `published_at IS NULL`: that filter would let PostgreSQL scan the
/// unpublished-rows index, which its statistics show nearly empty, for every mark, even
/// while rows pile up there because the broker is away.
///
/// The mark is only a hint to the relay, so it is committed without waiting for the WAL
/// flush (`synchronous_commit = off`), in one round trip: a mark lost in a crash means one
/// harmless duplicate publish, and an order no longer pays a second fsync. A multiplexed
/// session takes no `SET` (RDS Proxy would pin it): there the mark waits for its flush.
pub async fn mark_published(pool: &Pool, message_ids: &[Uuid]) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    if super::sql::multiplexed() {
        return mark_published_with(&client, message_ids).await;
    }
    // UUIDs render as hex and dashes only, so they are safe to put in the query text. Both
    // statements go in one simple query, which PostgreSQL runs as one implicit transaction
    // (rolled back whole on an error, never left open on the pooled connection).
    let ids = message_ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    client
        .batch_execute(&format!(
            "SET LOCAL synchronous_commit = off;
             UPDATE outbox SET published_at = coalesce(published_at, now())
             WHERE message_id IN ({ids});"
        ))
        .await?;
    Ok(())
}

pub async fn mark_published_with(
    client: &(impl ClientLike + ?Sized),
    message_ids: &[Uuid],
) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    execute(
        client,
        "UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id = ANY($1)",
        params![message_ids],
    )
    .await
}

/// Locks up to `limit` unsent messages older than `min_age` and due for an attempt, oldest
/// first, skipping rows another relay holds, so relays running side by side never publish
/// the same row at once. A row whose payload does not read as an event is left out and
/// named in the second list, to be counted as failed.
pub async fn lock_unpublished(
    client: &(impl ClientLike + ?Sized),
    min_age: Duration,
    limit: i64,
) -> Result<(Vec<OrderEvent>, Vec<(Uuid, String)>), StoreError> {
    let rows = query(
        client,
        "SELECT message_id, payload FROM outbox
         WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         ORDER BY created_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
        params![min_age.as_secs_f64(), limit],
    )
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in &rows {
        let id: Uuid = row.try_get("message_id")?;
        match row.try_get::<_, Json<OrderEvent>>("payload") {
            Ok(Json(event)) => events.push(event),
            Err(e) => unreadable.push((id, format!("payload is not an order event: {e}"))),
        }
    }
    Ok((events, unreadable))
}

/// Records that the broker refused these rows: each keeps its failure count and last error
/// and waits before its next attempt, longer after each failure (a minute doubling up to an
/// hour), so that it never takes the place of the rows behind it.
pub async fn record_publish_failures(
    client: &(impl ClientLike + ?Sized),
    failures: &[(Uuid, String)],
) -> Result<(), StoreError> {
    if failures.is_empty() {
        return Ok(());
    }
    let (ids, errors): (Vec<Uuid>, Vec<&str>) =
        failures.iter().map(|(id, e)| (*id, e.as_str())).unzip();
    execute(
        client,
        "UPDATE outbox o SET publish_failures = o.publish_failures + 1,
                             last_error = f.error,
                             next_attempt_at = now() + least(power(2, o.publish_failures), 60) * interval '1 minute'
         FROM unnest($1::uuid[], $2::text[]) AS f(id, error)
         WHERE o.message_id = f.id",
        params![ids, errors],
    )
    .await
}

/// Deletes up to `limit` published rows older than `retention`. Message ids are UUID v7,
/// so "older" is a range of the primary key and no other index is needed.
pub async fn prune_published(
    pool: &Pool,
    retention: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(retention)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    // The smallest v7 id of that millisecond: its timestamp, the version and variant bits,
    // nothing else.
    let millis = u64::try_from(cutoff.as_millis()).unwrap_or(u64::MAX);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    let bound = Uuid::from_bytes(bytes);
    let client = pool.get().await?;
    changed_rows(
        &client,
        "DELETE FROM outbox WHERE message_id IN (
             SELECT message_id FROM outbox
             WHERE message_id < $1 AND published_at IS NOT NULL
             ORDER BY message_id LIMIT $2)",
        params![bound, limit],
    )
    .await
}

/// How many outbox messages wait to be published.
pub async fn unpublished_count(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = query_one(
        &client,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        params![],
    )
    .await?;
    Ok(row.try_get(0)?)
}

/// Forgets idempotency keys after their promised lifetime (API.md: at least 24 hours).
pub async fn purge_idempotency_keys(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    changed_rows(
        &client,
        "DELETE FROM idempotency_keys WHERE created_at < now() - interval '25 hours'",
        params![],
    )
    .await
}

/// Orders that have not settled for longer than `older_than` (still `pending`, or asked to
/// ship or cancel while their stock is still reserved) and were not announced within it,
/// at most `limit`: each gets a fresh event in the outbox, to be published now, and is
/// stamped so the next runs leave it alone for another period. Processing is idempotent,
/// so an announcement that crosses a late original changes nothing.
pub async fn reannounce_unsettled(
    pool: &Pool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<OrderEvent>, StoreError> {
    use crate::domain::{OrderId, OrderStatus};
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = query(
        &tx,
        "WITH stale AS (
                 SELECT id FROM orders
                 WHERE (status = 'pending' OR (stock = 'reserved' AND status IN ('shipped', 'delivered', 'cancelled')))
                   AND coalesce(announced_at, updated_at) < now() - make_interval(secs => $1)
                 ORDER BY coalesce(announced_at, updated_at)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE orders o SET announced_at = now() FROM stale WHERE o.id = stale.id
             RETURNING o.id, o.status",
        params![older_than.as_secs_f64(), limit],
    )
    .await?;
    let now = chrono::Utc::now();
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = OrderId::from_uuid(row.try_get("id")?);
        let status: String = row.try_get("status")?;
        let event = match OrderStatus::parse(&status) {
            Some(OrderStatus::Pending) => OrderEvent::created(id, now, "reannounced"),
            // A delivered order was shipped: the shipment carries the stock commit.
            Some(OrderStatus::Shipped | OrderStatus::Delivered) => {
                OrderEvent::status_changed(id, OrderStatus::Shipped, now, "reannounced")
            }
            Some(OrderStatus::Cancelled) => {
                OrderEvent::status_changed(id, OrderStatus::Cancelled, now, "reannounced")
            }
            _ => return Err(super::corrupt("unsettled order status", status)),
        };
        events.push(event);
    }
    if !events.is_empty() {
        let ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
        let keys: Vec<String> = events.iter().map(OrderEvent::routing_key).collect();
        let payloads: Vec<Json<&OrderEvent>> = events.iter().map(Json).collect();
        execute(
            &tx,
            "INSERT INTO outbox (message_id, routing_key, payload)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])",
            params![ids, keys, payloads],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(events)
}
