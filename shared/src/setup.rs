//! Setting up what the functions need: the schema and the broker topology. One function
//! used by `migrate` (locally, in CI and on deploy) so every environment is set up alike.

use serde::Serialize;

use crate::config::{BrokerConfig, ConfigError, DatabaseConfig};
use crate::db::{build_pool, migrate, MigrationError};
use crate::messaging::{Broker, BrokerError, Topology};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("declaring the broker topology failed")]
    Broker(#[from] BrokerError),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupReport {
    pub applied_migrations: Vec<String>,
    pub queue: String,
    pub dead_letter_queue: String,
}

/// Applies pending migrations, then declares the exchange and queues.
pub async fn set_up() -> Result<SetupReport, SetupError> {
    let pool = build_pool(&DatabaseConfig::from_env()?)?;
    let applied_migrations = migrate(&pool).await?;
    let broker = Broker::new(BrokerConfig::from_env()?);
    let topology = Topology::new(broker.config());
    topology.declare(&broker).await?;
    broker.reset().await;
    Ok(SetupReport {
        applied_migrations,
        queue: topology.queue,
        dead_letter_queue: topology.dead_letter_queue,
    })
}
