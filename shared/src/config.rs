//! Configuration from the environment, read once per execution environment.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ConfigError::Missing(name)),
    }
}

fn optional<T: FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Malformed {
                    name,
                    reason: e.to_string(),
                })
        }
        _ => Ok(default),
    }
}

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Parsed `DATABASE_URL`; `sslmode=require` turns TLS on (rustls, no OpenSSL).
    pub connect: tokio_postgres::Config,
    /// `DATABASE_POOL_SIZE`, default 1: a Lambda execution environment serves one
    /// invocation at a time, and every extra connection costs the database memory.
    pub pool_size: usize,
    /// `DATABASE_CA_FILE`: PEM certificates to trust besides the public web roots
    /// (RDS certificates are signed by Amazon's own CAs).
    pub ca_file: Option<PathBuf>,
    /// `DATABASE_TIMEOUT_MS`, default 3000: how long to wait to connect or for a pooled
    /// connection before answering 503 rather than hanging until Lambda's timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    // The URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("hosts", &self.connect.get_hosts())
            .field("dbname", &self.connect.get_dbname())
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = required("DATABASE_URL")?;
        Self::from_url(&url).and_then(|mut config| {
            config.pool_size = optional("DATABASE_POOL_SIZE", 1usize)?.max(1);
            config.ca_file = std::env::var_os("DATABASE_CA_FILE").map(PathBuf::from);
            config.timeout = Duration::from_millis(optional("DATABASE_TIMEOUT_MS", 3000u64)?);
            Ok(config)
        })
    }

    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let connect = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ConfigError::Malformed {
                name: "DATABASE_URL",
                reason: e.to_string(),
            })?;
        Ok(Self {
            connect,
            pool_size: 1,
            ca_file: None,
            timeout: Duration::from_secs(3),
        })
    }
}

/// How to reach RabbitMQ (Amazon MQ in AWS).
#[derive(Clone)]
pub struct BrokerConfig {
    /// `AMQP_URL`, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`; `amqps://` in AWS.
    pub url: String,
    /// `AMQP_EXCHANGE`, default `orders`.
    pub exchange: String,
    /// `AMQP_QUEUE_PREFIX`, default empty: tests prefix every queue to own their names.
    pub queue_prefix: String,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("exchange", &self.exchange)
            .field("queue_prefix", &self.queue_prefix)
            .finish_non_exhaustive()
    }
}

impl BrokerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: required("AMQP_URL")?,
            exchange: optional("AMQP_EXCHANGE", "orders".to_owned())?,
            queue_prefix: optional("AMQP_QUEUE_PREFIX", String::new())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_database_url_is_named() {
        let err = DatabaseConfig::from_url("postgres://x:y@host:notaport/db").unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}
