use std::time::Duration;

use deadpool_postgres::Pool;

use super::{BrokerError, Publisher};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Rows are published in pages of this many.
const RELAY_PAGE: i64 = 500;

/// Publishes every outbox message older than `min_age` that is not marked sent, and marks
/// it. `min_age` leaves fresh rows to the function that wrote them (it publishes right after
/// its commit), so the two rarely publish the same message; when they do, consumers treat
/// the copy as the duplicate it is. Returns how many messages went out.
pub async fn relay_outbox(
    pool: &Pool,
    publisher: &Publisher,
    min_age: Duration,
) -> Result<usize, RelayError> {
    let mut total = 0;
    loop {
        let mut client = pool.get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let events = store::lock_unpublished(&tx, min_age, RELAY_PAGE).await?;
        if events.is_empty() {
            return Ok(total);
        }
        publisher.publish(&events).await?;
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.message_id).collect();
        store::mark_published_with(&tx, &ids).await?;
        tx.commit().await.map_err(StoreError::from)?;
        total += events.len();
        if (events.len() as i64) < RELAY_PAGE {
            return Ok(total);
        }
    }
}

/// The relay's scheduled run: publish what is left, then forget expired idempotency keys.
pub async fn relay_once(
    pool: &Pool,
    publisher: &Publisher,
    min_age: Duration,
) -> Result<usize, RelayError> {
    let published = relay_outbox(pool, publisher, min_age).await?;
    store::purge_idempotency_keys(pool).await?;
    Ok(published)
}

/// What the relay function needs, built once per execution environment.
pub struct OutboxRelay {
    pub pool: Pool,
    pub publisher: Publisher,
    /// `OUTBOX_RELAY_MIN_AGE_SECONDS`, default 30: rows younger than this are left to the
    /// function that wrote them.
    pub min_age: Duration,
}

impl OutboxRelay {
    pub async fn load() -> Result<Self, crate::config::ConfigError> {
        let pool = crate::db::build_pool(&crate::config::DatabaseConfig::load().await?)?;
        let broker = super::Broker::new(crate::config::BrokerConfig::load().await?);
        let min_age =
            match std::env::var("OUTBOX_RELAY_MIN_AGE_SECONDS") {
                Ok(raw) => raw.trim().parse::<f64>().map_err(|e| {
                    crate::config::ConfigError::Malformed {
                        name: "OUTBOX_RELAY_MIN_AGE_SECONDS",
                        reason: e.to_string(),
                    }
                })?,
                Err(_) => 30.0,
            };
        Ok(Self {
            pool,
            publisher: Publisher::new(broker),
            min_age: Duration::from_secs_f64(min_age.max(0.0)),
        })
    }
}
