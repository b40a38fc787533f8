use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{prepared, StoreError};
use crate::messaging::OrderEvent;

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

/// Marks `sent` within the caller's transaction. The caller hands over only messages sent
/// less than [`crate::messaging::MARK_WINDOW`] ago, rows the relay (which takes rows older
/// than its minimum age) never locks, so this never waits for the relay.
pub(super) async fn mark_sent(
    client: &impl GenericClient,
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
/// harmless duplicate publish, and an order no longer pays a second fsync.
pub async fn mark_published(pool: &Pool, message_ids: &[Uuid]) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
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
    client: &impl GenericClient,
    message_ids: &[Uuid],
) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    let statement = prepared(
        client,
        "UPDATE outbox SET published_at = coalesce(published_at, now())
         WHERE message_id = ANY($1)",
    )
    .await?;
    client.execute(&statement, &[&message_ids]).await?;
    Ok(())
}

/// Locks up to `limit` unsent messages older than `min_age`, oldest first, skipping rows
/// another relay holds, so relays running side by side never publish the same row at once.
pub async fn lock_unpublished(
    client: &impl GenericClient,
    min_age: Duration,
    limit: i64,
) -> Result<Vec<OrderEvent>, StoreError> {
    let rows = client
        .query(
            "SELECT payload FROM outbox
             WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
            &[&min_age.as_secs_f64(), &limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let Json(event) = row.try_get::<_, Json<OrderEvent>>("payload")?;
            Ok(event)
        })
        .collect()
}

/// How many outbox messages wait to be published.
pub async fn unpublished_count(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Forgets idempotency keys after their promised lifetime (API.md: at least 24 hours).
pub async fn purge_idempotency_keys(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - interval '25 hours'",
            &[],
        )
        .await?)
}
