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
    let mut config = DatabaseConfig::load().await?;
    // Migrations may build indexes on large tables: they run as long as they need.
    config.statement_timeout = None;
    let pool = build_pool(&config)?;
    let applied_migrations = migrate(&pool).await?;
    let broker = Broker::new(BrokerConfig::load().await?);
    let topology = Topology::new(broker.config());
    topology.declare(&broker).await?;
    broker.reset().await;
    Ok(SetupReport {
        applied_migrations,
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
pub async fn handle_invocation(
    event: serde_json::Value,
) -> Result<serde_json::Value, SetupInvocationError> {
    if event.get("ResponseURL").is_none() {
        let report = set_up().await?;
        return Ok(serde_json::to_value(report).unwrap_or_default());
    }
    let request: CustomResourceRequest =
        serde_json::from_value(event).map_err(SetupInvocationError::Event)?;
    let outcome = match request.request_type {
        RequestType::Create | RequestType::Update => set_up().await.map(Some),
        RequestType::Delete => Ok(None),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %crate::telemetry::error_chain(e), "set-up failed");
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
            "ResourceProperties": {"DeployVersion": "2"},
            "OldResourceProperties": {"DeployVersion": "1"}
        }))
        .unwrap()
    }

    #[test]
    fn a_successful_set_up_answers_success_with_a_stable_id() {
        let report = SetupReport {
            applied_migrations: vec!["V1__orders_schema".into()],
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
}
