//! Structured logs. `lambda_runtime` opens a span per invocation carrying the request id;
//! with `AWS_LAMBDA_LOG_FORMAT=JSON` (set by the template) every line is JSON with that span.

pub fn init() {
    lambda_runtime::tracing::init_default_subscriber();
}

/// Logs an error with its whole cause chain: the chain goes to logs, never to clients.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
