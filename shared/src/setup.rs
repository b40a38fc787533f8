//! Setting up what the functions need: the schema and the broker topology. One function
//! used by `migrate` (locally, in CI and on deploy) so every environment is set up alike.

use serde::Serialize;

use crate::config::{AppRoleConfig, BrokerConfig, ConfigError, DatabaseConfig};
use crate::db::{build_pool, migrate, set_up_app_role, Migrated, MigrationError};
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
    /// Set when the database is ahead of this code (a newer deploy's rollback): the newest
    /// migration applied, which this code does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_ahead: Option<String>,
    /// The role the functions connect as, when one is managed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_role: Option<String>,
    pub queue: String,
    pub dead_letter_queue: String,
}

/// Applies pending migrations, brings the application role up to date, then declares the
/// exchange and queues. It connects directly, as the database's owner (never through a
/// proxy), and its session has no statement bound: migrations may build indexes on large
/// tables.
pub async fn set_up() -> Result<SetupReport, SetupError> {
    let mut config = DatabaseConfig::load().await?;
    config.multiplexed = false;
    let pool = build_pool(&config)?;
    let (applied_migrations, schema_ahead) = match migrate(&pool).await? {
        Migrated::Applied(applied) => (applied, None),
        Migrated::Ahead { newest_applied } => {
            tracing::warn!(
                newest_applied,
                "the database has migrations this code does not know; leaving the schema as it is"
            );
            (Vec::new(), Some(newest_applied))
        }
    };
    let app_role = AppRoleConfig::load().await?;
    if let Some(role) = &app_role {
        set_up_app_role(&pool, role).await?;
    }
    let broker = Broker::new(BrokerConfig::load().await?);
    let topology = Topology::new(broker.config());
    topology.declare(&broker).await?;
    broker.reset().await;
    Ok(SetupReport {
        applied_migrations,
        schema_ahead,
        app_role: app_role.map(|role| role.name),
        queue: topology.queue,
        dead_letter_queue: topology.dead_letter_queue,
    })
}

/// The stable id of the migration custom resource: the same on every update, so
/// CloudFormation never replaces (and then deletes) it.
const PHYSICAL_RESOURCE_ID: &str = "order-system-schema-and-topology";

/// The fields of a CloudFormation custom resource request that the answer needs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomResourceRequest {
    pub request_type: RequestType,
    #[serde(rename = "ResponseURL")]
    pub response_url: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    #[serde(default)]
    pub resource_properties: serde_json::Value,
    #[serde(default)]
    pub old_resource_properties: serde_json::Value,
}

impl CustomResourceRequest {
    /// An Update that goes back to an older version of `migrate`: CloudFormation rolling back
    /// a failed update (it sends the old properties again). The template passes the
    /// function's published version, whose number only grows, as `MigrateVersion`.
    pub fn is_rollback(&self) -> bool {
        let version = |properties: &serde_json::Value| {
            properties
                .get("MigrateVersion")
                .and_then(serde_json::Value::as_str)
                .and_then(|arn| arn.rsplit(':').next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        self.request_type == RequestType::Update
            && matches!(
                (version(&self.resource_properties), version(&self.old_resource_properties)),
                (Some(to), Some(from)) if to < from
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum RequestType {
    Create,
    Update,
    Delete,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupInvocationError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("the event is not a CloudFormation custom resource request")]
    Event(#[source] serde_json::Error),
    #[error("could not answer CloudFormation")]
    Answer(#[from] crate::aws::AwsError),
}

/// What `migrate` does when invoked as a Lambda function. As the template's custom resource
/// (an event with a `ResponseURL`) it sets up on Create and Update, leaves everything in
/// place on Delete (data outlives the stack's functions), and always answers CloudFormation,
/// which otherwise waits out its timeout. Invoked directly, it sets up and returns the report.
///
/// A rollback's Update always answers success: the older code finds the schema ahead of it
/// (or as it was, when the newer migrations failed and were undone whole) and runs on it.
/// Failing there would leave the stack in `UPDATE_ROLLBACK_FAILED`, where only an operator
/// can move it.
pub async fn handle_invocation(
    event: serde_json::Value,
) -> Result<serde_json::Value, SetupInvocationError> {
    if event.get("ResponseURL").is_none() {
        let report = set_up().await?;
        return Ok(serde_json::to_value(report).unwrap_or_default());
    }
    let request: CustomResourceRequest =
        serde_json::from_value(event).map_err(SetupInvocationError::Event)?;
    let mut outcome = match request.request_type {
        RequestType::Create | RequestType::Update => set_up().await.map(Some),
        RequestType::Delete => Ok(None),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %crate::telemetry::error_chain(e), "set-up failed");
        if request.is_rollback() {
            tracing::warn!("rolling back: answering success so that the rollback completes");
            outcome = Ok(None);
        }
    }
    let document = custom_resource_response(&request, &outcome);
    crate::aws::answer_custom_resource(&request.response_url, &document).await?;
    Ok(document)
}

/// The response document CloudFormation expects for a custom resource request.
pub fn custom_resource_response(
    request: &CustomResourceRequest,
    outcome: &Result<Option<SetupReport>, SetupError>,
) -> serde_json::Value {
    let mut document = serde_json::json!({
        "PhysicalResourceId": PHYSICAL_RESOURCE_ID,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
        "NoEcho": false,
    });
    match outcome {
        Ok(report) => {
            document["Status"] = "SUCCESS".into();
            document["Reason"] = "schema and topology are up to date".into();
            if let Some(report) = report {
                document["Data"] = serde_json::json!({
                    "AppliedMigrations": report.applied_migrations.len().to_string(),
                });
            }
        }
        Err(e) => {
            // CloudFormation shows the reason in the console; it limits the document to 4 KB.
            let reason: String = crate::telemetry::error_chain(e)
                .chars()
                .take(1000)
                .collect();
            document["Status"] = "FAILED".into();
            document["Reason"] = reason.into();
        }
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str) -> CustomResourceRequest {
        serde_json::from_value(serde_json::json!({
            "RequestType": kind,
            "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:migrate",
            "ResponseURL": "https://cloudformation-custom-resource-response-euwest1.s3.amazonaws.com/x",
            "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/orders/guid",
            "RequestId": "unique-id",
            "ResourceType": "Custom::Migration",
            "LogicalResourceId": "Migration",
            "PhysicalResourceId": PHYSICAL_RESOURCE_ID,
            "ResourceProperties": {"MigrateVersion": "arn:aws:lambda:eu-west-1:123456789012:function:migrate:8"},
            "OldResourceProperties": {"MigrateVersion": "arn:aws:lambda:eu-west-1:123456789012:function:migrate:7"}
        }))
        .unwrap()
    }

    #[test]
    fn a_successful_set_up_answers_success_with_a_stable_id() {
        let report = SetupReport {
            applied_migrations: vec!["V1__orders_schema".into()],
            schema_ahead: None,
            app_role: None,
            queue: "orders".into(),
            dead_letter_queue: "orders.dlq".into(),
        };
        let document = custom_resource_response(&request("Update"), &Ok(Some(report)));
        assert_eq!(document["Status"], "SUCCESS");
        assert_eq!(document["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
        assert_eq!(document["RequestId"], "unique-id");
        assert_eq!(document["LogicalResourceId"], "Migration");
        assert_eq!(document["Data"]["AppliedMigrations"], "1");
    }

    #[test]
    fn a_failed_set_up_answers_failed_with_the_reason() {
        let failure = Err(SetupError::Config(ConfigError::Missing("DATABASE_URL")));
        let document = custom_resource_response(&request("Create"), &failure);
        assert_eq!(document["Status"], "FAILED");
        assert!(document["Reason"]
            .as_str()
            .unwrap()
            .contains("DATABASE_URL"));
    }

    #[test]
    fn an_update_to_an_older_migrate_version_is_a_rollback() {
        assert!(!request("Update").is_rollback());
        let mut back = request("Update");
        std::mem::swap(
            &mut back.resource_properties,
            &mut back.old_resource_properties,
        );
        assert!(back.is_rollback());
        let mut create = request("Create");
        create.resource_properties = back.resource_properties.clone();
        create.old_resource_properties = back.old_resource_properties.clone();
        assert!(!create.is_rollback());
    }
}
