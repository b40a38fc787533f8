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
    #[error("cannot read secret {name}")]
    Secret {
        name: &'static str,
        #[source]
        source: crate::aws::AwsError,
    },
    #[error("secret {secret} has no field {field}")]
    SecretField {
        secret: &'static str,
        field: &'static str,
    },
}

/// A string field of a secret, or of the environment when the variable is set and not empty
/// (host, port and database name are not secret and may be given beside it).
fn secret_field(
    secret: &serde_json::Map<String, serde_json::Value>,
    secret_name: &'static str,
    field: &'static str,
    override_variable: Option<&'static str>,
) -> Result<String, ConfigError> {
    if let Some(value) = override_variable.and_then(|name| std::env::var(name).ok()) {
        if !value.trim().is_empty() {
            return Ok(value.trim().to_owned());
        }
    }
    match secret.get(field) {
        Some(serde_json::Value::String(value)) => Ok(value.clone()),
        Some(serde_json::Value::Number(value)) => Ok(value.to_string()),
        _ => Err(ConfigError::SecretField {
            secret: secret_name,
            field,
        }),
    }
}

/// The connection settings of an RDS-style secret, over TLS.
fn postgres_from_secret(
    secret: &serde_json::Map<String, serde_json::Value>,
) -> Result<tokio_postgres::Config, ConfigError> {
    let field = |name, variable| secret_field(secret, "DATABASE_SECRET_ARN", name, variable);
    let port: u16 =
        field("port", Some("DATABASE_PORT"))?
            .parse()
            .map_err(|e: std::num::ParseIntError| ConfigError::Malformed {
                name: "DATABASE_PORT",
                reason: e.to_string(),
            })?;
    let mut connect = tokio_postgres::Config::new();
    connect
        .host(&field("host", Some("DATABASE_HOST"))?)
        .port(port)
        .dbname(&field("dbname", Some("DATABASE_NAME"))?)
        .user(&field("username", None)?)
        .password(field("password", None)?)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    Ok(connect)
}

/// The `amqps://` URL for an Amazon MQ endpoint, virtual host and BASIC_AUTH secret.
fn amqp_url_from_secret(
    secret: &serde_json::Map<String, serde_json::Value>,
    endpoint: &str,
    vhost: &str,
) -> Result<String, ConfigError> {
    let field = |name| secret_field(secret, "BROKER_SECRET_ARN", name, None);
    let host = endpoint
        .trim()
        .trim_start_matches("amqps://")
        .trim_start_matches("amqp://")
        .trim_end_matches('/');
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    Ok(format!(
        "amqps://{}:{}@{host}/{}",
        encode(&field("username")?),
        encode(&field("password")?),
        encode(vhost)
    ))
}

async fn read_secret(
    name: &'static str,
    arn: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    crate::aws::read_secret(arn)
        .await
        .map_err(|source| ConfigError::Secret { name, source })
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
    /// `DATABASE_CA_FILE`: PEM certificates to trust besides the embedded roots (the web
    /// roots and every region's RDS CAs, `db/tls.rs`), for a server signed by neither.
    pub ca_file: Option<PathBuf>,
    /// `DATABASE_TIMEOUT_MS`, default 3000: how long to wait to connect or for a pooled
    /// connection before answering 503 rather than hanging until Lambda's timeout.
    pub timeout: Duration,
    /// `DATABASE_MULTIPLEXED`, default false: the sessions go through a proxy that hands
    /// each transaction to any server connection (RDS Proxy, PgBouncer in transaction
    /// mode), so statements run unnamed and nothing sets session state.
    pub multiplexed: bool,
    /// Where the credentials are read again when the database refuses them (RDS rotates
    /// the password it manages): the secret, when they came from one.
    pub credentials: Option<CredentialSource>,
}

/// A user name and password, as a secret holds them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

type CredentialsFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Credentials, ConfigError>> + Send>>;

/// Reads the current credentials: built once, called on every authentication failure.
pub type CredentialSource = std::sync::Arc<dyn Fn() -> CredentialsFuture + Send + Sync>;

/// The credentials of the secret `DATABASE_SECRET_ARN`, read again on each call.
fn secret_credentials(arn: String) -> CredentialSource {
    std::sync::Arc::new(move || {
        let arn = arn.clone();
        Box::pin(async move {
            let secret = read_secret("DATABASE_SECRET_ARN", &arn).await?;
            Ok(Credentials {
                user: secret_field(&secret, "DATABASE_SECRET_ARN", "username", None)?,
                password: secret_field(&secret, "DATABASE_SECRET_ARN", "password", None)?
                    .into_bytes(),
            })
        })
    })
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
    /// `DATABASE_URL` when set (local runs, tests); otherwise, as deployed, the secret named
    /// by `DATABASE_SECRET_ARN` (username, password, and host, port, dbname unless
    /// `DATABASE_HOST`, `DATABASE_PORT`, `DATABASE_NAME` give them), always over TLS.
    pub async fn load() -> Result<Self, ConfigError> {
        let mut config = match required("DATABASE_URL") {
            Ok(url) => Self::from_url(&url)?,
            Err(missing) => {
                let Ok(arn) = required("DATABASE_SECRET_ARN") else {
                    return Err(missing);
                };
                let secret = read_secret("DATABASE_SECRET_ARN", &arn).await?;
                let connect = postgres_from_secret(&secret)?;
                Self {
                    connect,
                    credentials: Some(secret_credentials(arn)),
                    ..Self::from_url("postgres://localhost")?
                }
            }
        };
        config.pool_size = optional("DATABASE_POOL_SIZE", 1usize)?.max(1);
        config.ca_file = std::env::var("DATABASE_CA_FILE")
            .ok()
            .filter(|path| !path.trim().is_empty())
            .map(PathBuf::from);
        config.timeout = Duration::from_millis(optional("DATABASE_TIMEOUT_MS", 3000u64)?);
        config.multiplexed = optional("DATABASE_MULTIPLEXED", false)?;
        Ok(config)
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
            multiplexed: false,
            credentials: None,
        })
    }
}

/// The role the functions connect as, which `migrate` creates and keeps up to date in the
/// database it migrates: it reads and writes rows and owns nothing, so no function can
/// change the schema. Its sessions are bounded by settings of the role in that database
/// rather than by anything a session sets (a proxy refuses startup options and pins `SET`).
#[derive(Clone)]
pub struct AppRoleConfig {
    pub name: String,
    /// `None` leaves the password as it is (or unset: local trust authentication).
    pub password: Option<String>,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`, default 4000: the longest any one statement (and,
    /// at three quarters of it, any one lock wait) may run before PostgreSQL cancels it (and its transaction), so that
    /// nothing commits after the caller was answered: checkout, one long wait and the
    /// commit stay under the HTTP functions' 10 s. A transaction left idle is ended after
    /// twice that.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for AppRoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRoleConfig")
            .field("name", &self.name)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl AppRoleConfig {
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(4);

    /// As deployed, the secret `DATABASE_APP_SECRET_ARN` (username and password); locally
    /// `DATABASE_APP_ROLE` (and `DATABASE_APP_PASSWORD` if the server checks passwords).
    /// `None` when neither is set: the functions then connect as whoever their
    /// `DATABASE_URL` names, and nothing is managed.
    pub async fn load() -> Result<Option<Self>, ConfigError> {
        let (name, password) = match required("DATABASE_APP_SECRET_ARN") {
            Ok(arn) => {
                let secret = read_secret("DATABASE_APP_SECRET_ARN", &arn).await?;
                (
                    secret_field(&secret, "DATABASE_APP_SECRET_ARN", "username", None)?,
                    Some(secret_field(
                        &secret,
                        "DATABASE_APP_SECRET_ARN",
                        "password",
                        None,
                    )?),
                )
            }
            Err(_) => match required("DATABASE_APP_ROLE") {
                Ok(name) => (name, required("DATABASE_APP_PASSWORD").ok()),
                Err(_) => return Ok(None),
            },
        };
        let millis = optional("DATABASE_STATEMENT_TIMEOUT_MS", 4000u64)?;
        if millis == 0 {
            return Err(ConfigError::Malformed {
                name: "DATABASE_STATEMENT_TIMEOUT_MS",
                reason: "must be at least 1: a function's session is always bounded".into(),
            });
        }
        Ok(Some(Self {
            name,
            password,
            statement_timeout: Duration::from_millis(millis),
        }))
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
    /// `AMQP_RETRY_DELAYS`, seconds separated by commas, default `1,10,60,600`: the delays
    /// before a failed message's next attempts, one delay queue each. Tests shorten them.
    pub retry_delays: Vec<Duration>,
    /// `AMQP_QUEUE_TYPE`, `classic` (default) or `quorum`: a clustered broker replicates
    /// quorum queues across its nodes, so a node lost loses no message.
    pub queue_type: QueueType,
}

/// The kind of queue every queue of the topology is declared as (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("`{other}` is neither `classic` nor `quorum`")),
        }
    }
}

/// About a second growing to about ten minutes (API.md, Messages).
pub const DEFAULT_RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
];

/// Reads `AMQP_RETRY_DELAYS`: positive seconds, at least one, in growing order.
fn parse_retry_delays(raw: &str) -> Result<Vec<Duration>, ConfigError> {
    let malformed = |reason: &str| ConfigError::Malformed {
        name: "AMQP_RETRY_DELAYS",
        reason: reason.to_owned(),
    };
    let delays = raw
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| d.as_millis() >= 1)
                .ok_or_else(|| malformed("must be positive seconds separated by commas"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !delays.windows(2).all(|w| w[0] < w[1]) {
        return Err(malformed("delays must grow"));
    }
    Ok(delays)
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
    /// `AMQP_URL` when set; otherwise, as deployed, `amqps://` to `AMQP_ENDPOINT` on virtual
    /// host `AMQP_VHOST` with the username and password of the secret `BROKER_SECRET_ARN`.
    pub async fn load() -> Result<Self, ConfigError> {
        let url = match required("AMQP_URL") {
            Ok(url) => url,
            Err(missing) => {
                let Ok(arn) = required("BROKER_SECRET_ARN") else {
                    return Err(missing);
                };
                let secret = read_secret("BROKER_SECRET_ARN", &arn).await?;
                let endpoint = required("AMQP_ENDPOINT")?;
                amqp_url_from_secret(&secret, &endpoint, &optional("AMQP_VHOST", "/".to_owned())?)?
            }
        };
        let retry_delays = match std::env::var("AMQP_RETRY_DELAYS") {
            Ok(raw) if !raw.trim().is_empty() => parse_retry_delays(&raw)?,
            _ => DEFAULT_RETRY_DELAYS.to_vec(),
        };
        Ok(Self {
            url,
            exchange: optional("AMQP_EXCHANGE", "orders".to_owned())?,
            queue_prefix: optional("AMQP_QUEUE_PREFIX", String::new())?,
            retry_delays,
            queue_type: optional("AMQP_QUEUE_TYPE", QueueType::Classic)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_growing_positive_seconds() {
        assert_eq!(
            parse_retry_delays("0.05, 0.1,2").unwrap(),
            [
                Duration::from_millis(50),
                Duration::from_millis(100),
                Duration::from_secs(2)
            ]
        );
        for bad in ["", "0", "-1", "10,1", "1,,2", "soon"] {
            assert!(parse_retry_delays(bad).is_err(), "{bad:?}");
        }
    }

    fn secret(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn an_rds_secret_gives_a_tls_connection() {
        let config = postgres_from_secret(&secret(serde_json::json!({
            "username": "orders_admin", "password": "p@ss:word", "host": "db.example", "port": 5432, "dbname": "orders"
        })))
        .unwrap();
        assert_eq!(config.get_user(), Some("orders_admin"));
        assert_eq!(config.get_password(), Some(&b"p@ss:word"[..]));
        assert_eq!(config.get_ports(), [5432]);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let missing =
            postgres_from_secret(&secret(serde_json::json!({"username": "u"}))).unwrap_err();
        assert!(
            missing.to_string().contains("password") || missing.to_string().contains("port"),
            "{missing}"
        );
    }

    #[test]
    fn a_broker_secret_gives_an_amqps_url_with_encoded_credentials() {
        let url = amqp_url_from_secret(
            &secret(serde_json::json!({"username": "orders", "password": "a/b:c@d"})),
            "amqps://b-1.mq.eu-west-1.amazonaws.com:5671",
            "/",
        )
        .unwrap();
        assert_eq!(
            url,
            "amqps://orders:a%2Fb%3Ac%40d@b-1.mq.eu-west-1.amazonaws.com:5671/%2F"
        );
    }

    #[test]
    fn a_malformed_database_url_is_named() {
        let err = DatabaseConfig::from_url("postgres://x:y@host:notaport/db").unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}
