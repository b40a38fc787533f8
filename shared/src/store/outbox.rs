use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::messaging::OrderEvent;

/// Marks outbox messages as published once the broker confirmed them.
pub async fn mark_published(pool: &Pool, message_ids: &[Uuid]) -> Result<(), StoreError> {
    let client = pool.get().await?;
    mark_published_with(&client, message_ids).await
}

pub async fn mark_published_with(
    client: &impl GenericClient,
    message_ids: &[Uuid],
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE outbox SET published_at = now()
             WHERE message_id = ANY($1) AND published_at IS NULL",
            &[&message_ids],
        )
        .await?;
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
