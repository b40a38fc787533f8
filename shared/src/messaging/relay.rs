use std::time::Duration;

use deadpool_postgres::Pool;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use super::{Broker, BrokerError, Publisher, Topology};
use crate::metrics::{record, record_by, Metric, SplitMetric};
use crate::store::{self, StockDrift, StoreError};
use crate::telemetry::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Rows are published in pages of this many.
const RELAY_PAGE: i64 = 500;

/// Published rows older than this are deleted (`OUTBOX_RETENTION_DAYS`, default 7).
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Orders unsettled for longer than this are announced again (`UNSETTLED_ORDER_SECONDS`):
/// far beyond the retry ladder's first steps, well before anyone waits in vain.
const DEFAULT_UNSETTLED_AFTER: Duration = Duration::from_secs(300);

/// At most this many published rows are deleted per run, so a run stays short after a long
/// pause; the next runs catch up.
const PRUNE_LIMIT: i64 = 20_000;

/// At most this many changed products are checked for stock drift per run; the next runs
/// carry on with the rest.
const STOCK_CHECK_PRODUCTS: i64 = 1_000;

/// How long asking the broker for a queue's depth may take.
const QUEUE_DEPTH_TIMEOUT: Duration = Duration::from_secs(3);

/// What one relay run did, returned by the function and logged.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// Rows published and marked.
    pub published: usize,
    /// Rows the broker refused (or that do not read as an event): kept, counted on the row,
    /// tried again later.
    pub failed: usize,
    /// Ids and reasons of the failed rows.
    pub failures: Vec<String>,
    /// Orders announced again because they did not settle in time.
    pub reannounced: usize,
    /// Published rows deleted after the retention.
    pub pruned: u64,
    /// Idempotency keys forgotten after their lifetime.
    pub purged_keys: u64,
    /// Products whose stock does not add up to their ledger, among those checked.
    pub stock_drift: Vec<StockDrift>,
}

/// Publishes every outbox message older than `min_age` that is not marked sent and is due,
/// and marks each one the broker confirmed. `min_age` leaves fresh rows to the function
/// that wrote them (it publishes right after its commit), so the two rarely publish the
/// same message; when they do, consumers treat the copy as the duplicate it is.
///
/// Every row has its own outcome: one the broker refuses is counted on the row and waits
/// ([`store::record_publish_failures`]) while the others go out. A broker that is away
/// fails the run with nothing counted against the rows: that is our outage, not theirs.
pub async fn relay_outbox(
    pool: &Pool,
    publisher: &Publisher,
    min_age: Duration,
) -> Result<RelayReport, RelayError> {
    let mut report = RelayReport::default();
    loop {
        let mut client = pool.get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let (events, unreadable) = store::lock_unpublished(&tx, min_age, RELAY_PAGE).await?;
        let locked = events.len() + unreadable.len();
        if locked == 0 {
            return Ok(report);
        }
        let messages: Vec<_> = events.iter().map(|e| publisher.outgoing(e)).collect();
        let outcomes = match publisher.broker().publish_each(&messages).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                record(Metric::PublishFailures, locked as f64);
                return Err(e.into());
            }
        };
        let mut confirmed = Vec::new();
        let mut refused = unreadable;
        let mut outage = None;
        let mut unconfirmed = 0;
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Ok(()) => confirmed.push(event.message_id),
                Err(e) if e.is_refusal_of_message() => {
                    refused.push((event.message_id, e.to_string()))
                }
                Err(e) => {
                    unconfirmed += 1;
                    outage = Some(e);
                }
            }
        }
        record(
            Metric::PublishFailures,
            (refused.len() + unconfirmed) as f64,
        );
        store::mark_published_with(&tx, &confirmed).await?;
        store::record_publish_failures(&tx, &refused).await?;
        tx.commit().await.map_err(StoreError::from)?;
        report.published += confirmed.len();
        report.failed += refused.len();
        for (id, reason) in &refused {
            tracing::warn!(message = %id, reason = %reason, "outbox row not published; kept for a later run");
            report.failures.push(format!("{id}: {reason}"));
        }
        if let Some(e) = outage {
            return Err(e.into());
        }
        if (locked as i64) < RELAY_PAGE {
            return Ok(report);
        }
    }
}

/// The relay's scheduled run: publish what is left, announce again the orders that did not
/// settle (their event may be lost), prune published rows past the retention and forget
/// expired idempotency keys; then measure the system's health (metrics): the outbox
/// backlog, unsettled orders, the depths of `orders` and `orders.dlq`, and stock drift.
///
/// The health is measured whatever became of the work, since a backlog matters most when
/// publishing fails; only a dependency the work found away is not asked again.
pub async fn relay_once(relay: &OutboxRelay) -> Result<RelayReport, RelayError> {
    let work = publish_and_tidy(relay).await;
    let database_away = matches!(&work, Err(RelayError::Store(e)) if e.is_unavailable());
    let broker_away = matches!(&work, Err(RelayError::Broker(e)) if e.is_outage());
    if !broker_away {
        measure_queues(relay.publisher.broker()).await;
    }
    let stock_drift = if database_away {
        Vec::new()
    } else {
        measure_database(relay).await
    };
    let mut report = work?;
    report.stock_drift = stock_drift;
    Ok(report)
}

/// `QueueDepth` of `orders` and `orders.dlq`, and `ParkedMessages`.
async fn measure_queues(broker: &Broker) {
    let topology = Topology::new(broker.config());
    for (name, queue) in [
        ("orders", &topology.queue),
        ("orders.dlq", &topology.dead_letter_queue),
    ] {
        match queue_depth(broker, queue).await {
            Ok(depth) => {
                record_by(SplitMetric::QueueDepth, name, f64::from(depth));
                if queue == &topology.dead_letter_queue {
                    record(Metric::ParkedMessages, f64::from(depth));
                }
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %error_chain(&e), "queue depth not measured")
            }
        }
    }
}

/// Messages ready in `queue`, by a passive declare (which changes nothing).
async fn queue_depth(broker: &Broker, queue: &str) -> Result<u32, BrokerError> {
    let channel = broker.channel().await?;
    let declared = tokio::time::timeout(
        QUEUE_DEPTH_TIMEOUT,
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|_| BrokerError::Timeout(QUEUE_DEPTH_TIMEOUT))?
    .map_err(BrokerError::Refused)?;
    Ok(declared.message_count())
}

/// `OldestUnpublishedAge`, `UnsettledOrders` and `StockDrift`; the drifting products are
/// logged, each with its ledger and stored figures, and returned.
async fn measure_database(relay: &OutboxRelay) -> Vec<StockDrift> {
    match store::backlog(&relay.pool, relay.unsettled_after).await {
        Ok(backlog) => {
            record(Metric::OldestUnpublishedAge, backlog.oldest_unpublished_age);
            record(Metric::UnsettledOrders, backlog.unsettled_orders as f64);
        }
        Err(e) => tracing::warn!(error = %error_chain(&e), "outbox backlog not measured"),
    }
    match store::check_stock(&relay.pool, STOCK_CHECK_PRODUCTS).await {
        Ok(Some(check)) => {
            for drift in &check.drifting {
                tracing::error!(
                    product = %drift.product_id,
                    ledger_inventory = drift.ledger_inventory,
                    ledger_reserved = drift.ledger_reserved,
                    stored_inventory = drift.stored_inventory,
                    stored_reserved = drift.stored_reserved,
                    "stock does not add up to its ledger"
                );
            }
            record(Metric::StockDrift, check.drifting.len() as f64);
            tracing::info!(
                checked = check.checked,
                drifting = check.drifting.len(),
                watermark = check.watermark,
                "stock checked"
            );
            check.drifting
        }
        Ok(None) => {
            tracing::info!("another relay run is checking the stock");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "stock not checked");
            Vec::new()
        }
    }
}

async fn publish_and_tidy(relay: &OutboxRelay) -> Result<RelayReport, RelayError> {
    let mut report = relay_outbox(&relay.pool, &relay.publisher, relay.min_age).await?;
    let announced =
        store::reannounce_unsettled(&relay.pool, relay.unsettled_after, RELAY_PAGE).await?;
    if !announced.is_empty() {
        tracing::warn!(
            orders = announced.len(),
            "orders unsettled for too long: announced again"
        );
        // Published now, by the run that wrote them; what is not confirmed stays in the
        // outbox for the next run.
        let messages: Vec<_> = announced
            .iter()
            .map(|e| relay.publisher.outgoing(e))
            .collect();
        let outcomes = match relay.publisher.broker().publish_each(&messages).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                record(Metric::PublishFailures, messages.len() as f64);
                return Err(e.into());
            }
        };
        let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
        record(Metric::PublishFailures, failed as f64);
        let confirmed: Vec<uuid::Uuid> = announced
            .iter()
            .zip(outcomes)
            .filter_map(|(event, outcome)| outcome.is_ok().then_some(event.message_id))
            .collect();
        store::mark_published(&relay.pool, &confirmed).await?;
        report.reannounced = announced.len();
    }
    report.pruned = store::prune_published(&relay.pool, relay.retention, PRUNE_LIMIT).await?;
    report.purged_keys = store::purge_idempotency_keys(&relay.pool).await?;
    store::prune_delivery_counts(&relay.pool).await?;
    tracing::info!(
        published = report.published,
        failed = report.failed,
        reannounced = report.reannounced,
        pruned = report.pruned,
        purged_keys = report.purged_keys,
        "relay run"
    );
    Ok(report)
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

/// A positive number of `unit`-second units from the variable `name`, or `default`.
fn positive_duration(
    name: &'static str,
    unit: f64,
    default: Duration,
) -> Result<Duration, crate::config::ConfigError> {
    let Ok(raw) = std::env::var(name) else {
        return Ok(default);
    };
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * unit).ok())
        .ok_or_else(|| crate::config::ConfigError::Malformed {
            name,
            reason: "must be a positive number".into(),
        })
}

/// What the relay function needs, built once per execution environment.
pub struct OutboxRelay {
    pub pool: Pool,
    pub publisher: Publisher,
    /// `OUTBOX_RELAY_MIN_AGE_SECONDS`, default 30: rows younger than this are left to the
    /// function that wrote them.
    pub min_age: Duration,
    /// `OUTBOX_RETENTION_DAYS`, default 7: published rows are kept this long, then deleted.
    pub retention: Duration,
    /// `UNSETTLED_ORDER_SECONDS`, default 300: an order pending (or with its stock effect
    /// not applied) for longer is announced again.
    pub unsettled_after: Duration,
}

impl OutboxRelay {
    pub async fn load() -> Result<Self, crate::config::ConfigError> {
        let pool = crate::db::build_pool(&crate::config::DatabaseConfig::load().await?)?;
        let broker = super::Broker::new(crate::config::BrokerConfig::load().await?);
        let min_age = match std::env::var("OUTBOX_RELAY_MIN_AGE_SECONDS") {
            Ok(raw) => parse_min_age(&raw)?,
            Err(_) => DEFAULT_MIN_AGE,
        };
        let retention = positive_duration("OUTBOX_RETENTION_DAYS", 86_400.0, DEFAULT_RETENTION)?;
        let unsettled_after =
            positive_duration("UNSETTLED_ORDER_SECONDS", 1.0, DEFAULT_UNSETTLED_AFTER)?;
        Ok(Self {
            pool,
            publisher: Publisher::new(broker),
            min_age,
            retention,
            unsettled_after,
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
