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

const DEFAULT_MIN_AGE: Duration = Duration::from_secs(30);

/// `OUTBOX_RELAY_MIN_AGE_SECONDS`: seconds, above the publishers' mark window so the relay
/// never takes a row a request is about to mark.
fn parse_min_age(raw: &str) -> Result<Duration, crate::config::ConfigError> {
    let malformed = |reason: String| crate::config::ConfigError::Malformed {
        name: "OUTBOX_RELAY_MIN_AGE_SECONDS",
        reason,
    };
    let seconds: f64 = raw.trim().parse().map_err(|e| malformed(format!("{e}")))?;
    let min_age = Duration::try_from_secs_f64(seconds).map_err(|e| malformed(format!("{e}")))?;
    if min_age <= super::MARK_WINDOW {
        return Err(malformed(format!(
            "must be more than {} seconds, the window in which functions mark their own messages sent",
            super::MARK_WINDOW.as_secs()
        )));
    }
    Ok(min_age)
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
        let min_age = match std::env::var("OUTBOX_RELAY_MIN_AGE_SECONDS") {
            Ok(raw) => parse_min_age(&raw)?,
            Err(_) => DEFAULT_MIN_AGE,
        };
        Ok(Self {
            pool,
            publisher: Publisher::new(broker),
            min_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_age_is_seconds_beyond_the_mark_window() {
        assert_eq!(parse_min_age(" 45 ").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_min_age("20.5").unwrap(),
            Duration::from_secs_f64(20.5)
        );
        for bad in ["", "soon", "-1", "5", "20", "NaN", "inf"] {
            assert!(parse_min_age(bad).is_err(), "{bad:?} accepted");
        }
    }
}
