//! A client of the Lambda Invoke API (`POST /2015-03-31/functions/<name>/invocations`) that
//! `cargo lambda watch` serves, the same call API Gateway and the event source mappings make.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("cannot reach the Lambda emulator at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{function} did not answer within {timeout:?}")]
    Timeout { function: String, timeout: Duration },
    #[error("{function} failed: {body}")]
    FunctionError { function: String, body: String },
    #[error("the emulator has no function {function}: {body}")]
    NoSuchFunction { function: String, body: String },
    #[error("the emulator answered {status} for {function}: {body}")]
    Emulator {
        function: String,
        status: u16,
        body: String,
    },
    #[error("reading the answer of {function}: {source}")]
    Body {
        function: String,
        #[source]
        source: hyper::Error,
    },
    #[error("invalid invoke request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Invokes functions by name through the emulator.
#[derive(Clone)]
pub struct Invoker {
    client: Client<HttpConnector, Full<Bytes>>,
    base_url: String,
}

impl Invoker {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base_url: base_url.into(),
        }
    }

    /// A synchronous (`RequestResponse`) invocation; the function's answer on success.
    pub async fn invoke(
        &self,
        function: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, InvokeError> {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.base_url
        );
        let request = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-amz-invocation-type", "RequestResponse")
            .body(Full::new(payload))?;
        let call =
            async {
                let response = self.client.request(request).await.map_err(|source| {
                    InvokeError::Unreachable {
                        url: url.clone(),
                        source,
                    }
                })?;
                let status = response.status().as_u16();
                // Lambda answers 200 and flags a function error with this header;
                // `cargo lambda watch` answers 500 with the error document instead.
                let function_error = response.headers().contains_key("x-amz-function-error");
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|source| InvokeError::Body {
                        function: function.to_owned(),
                        source,
                    })?
                    .to_bytes();
                let text = || String::from_utf8_lossy(&body).into_owned();
                match status {
                    200 if !function_error => Ok(body),
                    200 | 500 => Err(InvokeError::FunctionError {
                        function: function.to_owned(),
                        body: text(),
                    }),
                    404 => Err(InvokeError::NoSuchFunction {
                        function: function.to_owned(),
                        body: text(),
                    }),
                    status => Err(InvokeError::Emulator {
                        function: function.to_owned(),
                        status,
                        body: text(),
                    }),
                }
            };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(InvokeError::Timeout {
                    function: function.to_owned(),
                    timeout,
                })
            })
    }
}
