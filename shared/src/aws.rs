//! The two AWS calls the functions make themselves: reading a secret from Secrets Manager
//! (signed with SigV4 by the official `aws-sigv4` crate) and answering a CloudFormation
//! custom resource. Both go over one small HTTPS client (hyper + rustls) rather than the AWS
//! SDK: a smaller binary and a faster cold start.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lambda_http::http::{Method, Request};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("environment variable {0} is not set (is this running on Lambda?)")]
    MissingEnvironment(&'static str),
    #[error("request to {endpoint} failed")]
    Transport {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{endpoint} answered {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("secret {0} is not a JSON object of strings")]
    MalformedSecret(String),
}

/// How long any AWS call may take before the cold start gives up with a clear error.
const AWS_TIMEOUT: Duration = Duration::from_secs(5);

fn https_client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send(request: Request<Full<Bytes>>) -> Result<(u16, Bytes), AwsError> {
    let endpoint = request.uri().host().unwrap_or_default().to_owned();
    let transport = |source: Box<dyn std::error::Error + Send + Sync>| AwsError::Transport {
        endpoint: endpoint.clone(),
        source,
    };
    let call = async {
        let response = https_client()
            .request(request)
            .await
            .map_err(|e| transport(e.into()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.into()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(AWS_TIMEOUT, call)
        .await
        .map_err(|e| transport(e.into()))?
}

fn env(name: &'static str) -> Result<String, AwsError> {
    std::env::var(name).map_err(|_| AwsError::MissingEnvironment(name))
}

/// Reads a Secrets Manager secret holding a JSON object (as RDS and Amazon MQ secrets do),
/// with the execution role's credentials that Lambda puts in the environment.
pub async fn read_secret(secret_id: &str) -> Result<Map<String, Value>, AwsError> {
    let region = env("AWS_REGION")?;
    let identity = Credentials::new(
        env("AWS_ACCESS_KEY_ID")?,
        env("AWS_SECRET_ACCESS_KEY")?,
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "lambda-environment",
    )
    .into();
    let endpoint = format!("https://secretsmanager.{region}.amazonaws.com/");
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ];
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("secretsmanager")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| AwsError::Transport {
            endpoint: endpoint.clone(),
            source: e.into(),
        })?
        .into();
    let signable = SignableRequest::new(
        "POST",
        &endpoint,
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| AwsError::Transport {
        endpoint: endpoint.clone(),
        source: e.into(),
    })?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| AwsError::Transport {
            endpoint: endpoint.clone(),
            source: e.into(),
        })?
        .into_parts();
    let mut builder = Request::builder().method(Method::POST).uri(&endpoint);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let mut request =
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AwsError::Transport {
                endpoint: endpoint.clone(),
                source: e.into(),
            })?;
    instructions.apply_to_request_http1x(&mut request);

    let (status, body) = send(request).await?;
    if status != 200 {
        return Err(AwsError::Status {
            endpoint,
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let malformed = || AwsError::MalformedSecret(secret_id.to_owned());
    let response: Value = serde_json::from_slice(&body).map_err(|_| malformed())?;
    let secret = response
        .get("SecretString")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?;
    match serde_json::from_str(secret) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(malformed()),
    }
}

/// Answers a CloudFormation custom resource by `PUT`ting the response document to the
/// pre-signed S3 URL the request carried; until then CloudFormation waits.
pub async fn answer_custom_resource(response_url: &str, document: &Value) -> Result<(), AwsError> {
    let body = document.to_string();
    let request = Request::builder()
        .method(Method::PUT)
        .uri(response_url)
        // S3 pre-signed URLs for custom resources are signed with an empty content type.
        .header("content-type", "")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| AwsError::Transport {
            endpoint: "custom resource response URL".into(),
            source: e.into(),
        })?;
    let (status, body) = send(request).await?;
    if !(200..300).contains(&status) {
        return Err(AwsError::Status {
            endpoint: "custom resource response URL".into(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(())
}
