//! The PostgreSQL pool and the schema migrations.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use crate::config::{ConfigError, DatabaseConfig};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Builds the pool once per execution environment. Building never connects, so a cold start
/// does not fail when the database is briefly away: the first request gets a 503 and a
/// later one a fresh connection. `Fast` recycling drops connections the server closed, so
/// the pool heals by itself after a database restart.
pub fn build_pool(config: &DatabaseConfig) -> Result<Pool, ConfigError> {
    let mut connect = config.connect.clone();
    connect.connect_timeout(config.timeout);
    if let Some(limit) = config.statement_timeout {
        // Startup parameters, not `SET`: every session starts bounded and no statement
        // changes session state. A lock wait is bounded by the same limit.
        let ms = limit.as_millis();
        let bounded = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
            ms * 2
        );
        let options = match connect.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {bounded}"),
            _ => bounded,
        };
        connect.options(&options);
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match connect.get_ssl_mode() {
        SslMode::Disable => Manager::from_config(connect, NoTls, manager_config),
        _ => Manager::from_config(connect, tls_connector(config)?, manager_config),
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

fn tls_connector(
    config: &DatabaseConfig,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.ca_file {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| ConfigError::Malformed {
            name: "DATABASE_CA_FILE",
            reason: e.to_string(),
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| ConfigError::Malformed {
                name: "DATABASE_CA_FILE",
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| ConfigError::Malformed {
                name: "DATABASE_CA_FILE",
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Malformed {
            name: "DATABASE_URL",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot get a database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migration failed")]
    Migration(#[from] refinery::Error),
}

/// Applies every migration in `migrations/` not yet applied. Local runs, tests and the
/// deployment all call this one function (through the `migrate` binary or directly).
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, MigrationError> {
    let mut client = pool.get().await?;
    let report = embedded::migrations::runner()
        .run_async(&mut **client)
        .await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
