//! The PostgreSQL pool and the schema migrations.

use std::sync::{Arc, RwLock};

use deadpool_postgres::{
    Connect, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use crate::config::{AppRoleConfig, ConfigError, CredentialSource, Credentials, DatabaseConfig};
use crate::store::is_refused_credentials;
use crate::telemetry::error_chain;

mod tls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Builds the pool once per execution environment. Building never connects, so a cold start
/// does not fail when the database is briefly away: the first request gets a 503 and a
/// later one a fresh connection. `Fast` recycling drops connections the server closed, so
/// the pool heals by itself after a database restart (and sends nothing, unlike `Clean`'s
/// `DISCARD ALL`, which a proxy would take for session state). No startup options either:
/// RDS Proxy refuses them, so the bounds on statements are the role's ([`set_up_app_role`]).
pub fn build_pool(config: &DatabaseConfig) -> Result<Pool, ConfigError> {
    let mut connect = config.connect.clone();
    connect.connect_timeout(config.timeout);
    if config.multiplexed {
        crate::store::sessions_are_multiplexed();
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let source = config.credentials.clone();
    let manager = match connect.get_ssl_mode() {
        SslMode::Disable => {
            Manager::from_connect(connect, RotatingConnect::new(NoTls, source), manager_config)
        }
        _ => Manager::from_connect(
            connect,
            RotatingConnect::new(tls::connector(config.ca_file.as_deref())?, source),
            manager_config,
        ),
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        })
        .build()
        .map_err(|e| ConfigError::Malformed {
            name: "DATABASE_URL",
            reason: e.to_string(),
        })
}

/// Opens the pool's connections with the latest credentials. When the database refuses
/// them (`28P01`: RDS rotated the password), it reads them again from their source and tries
/// once more; until the source has the new ones, connecting fails and requests get 503.
/// Connections already open stay valid: a password change ends no session.
struct RotatingConnect<T> {
    tls: T,
    source: Option<CredentialSource>,
    /// Set once credentials were read again; `None` while the configured ones hold.
    current: Arc<RwLock<Option<Credentials>>>,
    /// One re-read at a time: connections failing together wait for the same read.
    reading: tokio::sync::Mutex<()>,
}

impl<T> RotatingConnect<T> {
    fn new(tls: T, source: Option<CredentialSource>) -> Self {
        Self {
            tls,
            source,
            current: Arc::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Credentials> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn with_credentials(
    config: &tokio_postgres::Config,
    credentials: Option<&Credentials>,
) -> tokio_postgres::Config {
    let mut config = config.clone();
    if let Some(credentials) = credentials {
        config
            .user(&credentials.user)
            .password(&credentials.password);
    }
    config
}

impl<T> Connect for RotatingConnect<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let used = self.current();
            let first = with_credentials(&pg_config, used.as_ref())
                .connect(self.tls.clone())
                .await;
            let (client, connection) = match (first, &self.source) {
                (Err(e), Some(source)) if is_refused_credentials(&e) => {
                    let _reading = self.reading.lock().await;
                    // Another connection may have read them while this one waited.
                    let fresh = match self.current() {
                        newer if newer != used => newer,
                        _ => match source().await {
                            Ok(read) => {
                                tracing::warn!(
                                    "the database refused its credentials; read them again"
                                );
                                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                                    Some(read.clone());
                                Some(read)
                            }
                            Err(read_error) => {
                                tracing::error!(error = %error_chain(&read_error), "cannot read the database credentials again");
                                return Err(e);
                            }
                        },
                    };
                    with_credentials(&pg_config, fresh.as_ref())
                        .connect(self.tls.clone())
                        .await?
                }
                (result, _) => result?,
            };
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "database connection ended");
                }
            });
            Ok((client, task))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot get a database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migration failed")]
    Migration(#[from] refinery::Error),
    #[error("reading the schema or setting up the application role failed")]
    AppRole(#[source] tokio_postgres::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// These migrations were applied (perhaps none: the schema was up to date).
    Applied(Vec<String>),
    /// The database has migrations this code does not know: a newer deploy applied them and
    /// is being rolled back. Newer migrations only add what older code can ignore, so the
    /// older code runs on them; nothing is changed.
    Ahead { newest_applied: String },
}

/// Applies every migration in `migrations/` not yet applied, all in one transaction: one
/// that fails leaves the schema as it was, so a failed deploy's rollback finds the schema
/// its code knows. Local runs, tests and the deployment all call this one function
/// (through the `migrate` binary or directly).
pub async fn migrate(pool: &Pool) -> Result<Migrated, MigrationError> {
    let mut client = pool.get().await?;
    let runner = embedded::migrations::runner().set_grouped(true);
    let known = runner
        .get_migrations()
        .iter()
        .map(refinery::Migration::version)
        .max()
        .unwrap_or_default();
    let has_history = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|row| row.try_get::<_, bool>(0))
        .map_err(MigrationError::AppRole)?;
    let applied = if has_history {
        runner.get_applied_migrations_async(&mut **client).await?
    } else {
        Vec::new()
    };
    if let Some(newest) = applied.iter().filter(|m| m.version() > known).max() {
        return Ok(Migrated::Ahead {
            newest_applied: newest.to_string(),
        });
    }
    let report = runner.run_async(&mut **client).await?;
    Ok(Migrated::Applied(
        report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect(),
    ))
}

/// Creates the application role if it does not exist and brings it up to date in the
/// database `pool` reaches: login with its password, no other attribute; rows of every
/// table to read and write but nothing to own, create or alter (and not the migration
/// history); and its sessions bounded in this database by role settings, which every
/// session picks up at login, pooled or not. A lock wait ends first (at three quarters of
/// the statement bound), so that a wait for an idempotency key someone else holds is told
/// apart (409 request-in-progress) from a statement that ran out of time (503).
pub async fn set_up_app_role(pool: &Pool, role: &AppRoleConfig) -> Result<(), MigrationError> {
    let client = pool.get().await?;
    let statements = client
        .query_one(
            "SELECT format('DO $do$ BEGIN CREATE ROLE %1$I LOGIN;
                            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $do$;', $1::text),
                    CASE WHEN $2::text IS NOT NULL
                         THEN format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text)
                    END,
                    format('REVOKE ALL ON DATABASE %1$I FROM PUBLIC;
                            GRANT CONNECT ON DATABASE %1$I TO %2$I;
                            REVOKE CREATE ON SCHEMA public FROM PUBLIC;
                            GRANT USAGE ON SCHEMA public TO %2$I;
                            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %2$I;
                            REVOKE ALL ON refinery_schema_history FROM %2$I;
                            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %2$I;
                            GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO %2$I;
                            ALTER ROLE %2$I IN DATABASE %1$I SET statement_timeout = %3$L;
                            ALTER ROLE %2$I IN DATABASE %1$I SET lock_timeout = %5$L;
                            ALTER ROLE %2$I IN DATABASE %1$I SET idle_in_transaction_session_timeout = %4$L;',
                           current_database(), $1::text, $3::text, $4::text, $5::text)",
            &[
                &role.name,
                &role.password,
                &format!("{}ms", role.statement_timeout.as_millis()),
                &format!("{}ms", role.statement_timeout.as_millis() * 2),
                &format!("{}ms", role.statement_timeout.as_millis() * 3 / 4),
            ],
        )
        .await
        .map_err(MigrationError::AppRole)?;
    for index in 0..statements.len() {
        let statement: Option<String> =
            statements.try_get(index).map_err(MigrationError::AppRole)?;
        if let Some(statement) = statement {
            client
                .batch_execute(&statement)
                .await
                .map_err(MigrationError::AppRole)?;
        }
    }
    Ok(())
}
