//! The HTTP layer's one error type and its problem responses (RFC 9457).

use lambda_http::http::header::{CONTENT_TYPE, RETRY_AFTER};
use lambda_http::{Body, Response};
use serde_json::{json, Map, Value};

use crate::domain::{FieldError, OrderStatus, ProductId};
use crate::store::{LimitExceeded, Shortage, StoreError};
use crate::telemetry::error_chain;

/// Everything a request can end in besides success. Each variant is exactly one problem
/// type of API.md.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unknown products")]
    UnknownProducts(Vec<ProductId>),
    #[error("not found")]
    NotFound,
    #[error("insufficient stock")]
    InsufficientStock(Vec<Shortage>),
    #[error("the customer's limit for a product would be exceeded")]
    LimitExceeded(LimitExceeded),
    #[error("invalid transition from {from} to {to}")]
    InvalidTransition {
        from: OrderStatus,
        to: OrderStatus,
        allowed: Vec<OrderStatus>,
    },
    #[error("duplicate sku")]
    DuplicateSku,
    #[error("idempotency key reused")]
    IdempotencyKeyReuse,
    #[error("request in progress")]
    RequestInProgress,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    /// No authenticated caller on a route that needs one. Answered with API Gateway's own
    /// body, so that clients see one 401 whichever of the two refused them.
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("dependency unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug of ours: logged with its cause chain, shown to nobody.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::UnknownProducts(ids) => ApiError::UnknownProducts(ids),
            StoreError::MixedCurrencies => ApiError::validation(
                "items",
                "all products of an order must be priced in one currency",
            ),
            StoreError::InsufficientStock(shortages) => ApiError::InsufficientStock(shortages),
            StoreError::LimitExceeded(limit) => ApiError::LimitExceeded(limit),
            StoreError::DuplicateSku => ApiError::DuplicateSku,
            StoreError::InvalidTransition { from, to, allowed } => {
                ApiError::InvalidTransition { from, to, allowed }
            }
            StoreError::IdempotencyKeyReuse => ApiError::IdempotencyKeyReuse,
            StoreError::RequestInProgress => ApiError::RequestInProgress,
            e @ StoreError::Unavailable(_) => ApiError::Unavailable(e),
            e @ (StoreError::Database(_) | StoreError::Corrupt(_)) => ApiError::Internal(e),
        }
    }
}

/// Most field errors one validation problem lists.
const MAX_LISTED_ERRORS: usize = 20;

/// Seconds a client should wait before retrying when the database is away.
const RETRY_AFTER_SECONDS: &str = "2";

impl ApiError {
    fn problem(&self) -> (u16, &'static str, &'static str, String, Map<String, Value>) {
        let mut extra = Map::new();
        let (status, kind, title, detail) = match self {
            ApiError::Malformed(detail) => (
                400,
                "malformed-request",
                "Malformed request",
                detail.clone(),
            ),
            ApiError::Validation(errors) => {
                // The answer stays small whatever the request held: the first errors by
                // name, and how many more there were.
                let listed = &errors[..errors.len().min(MAX_LISTED_ERRORS)];
                extra.insert("errors".into(), json!(listed));
                if errors.len() > listed.len() {
                    extra.insert("moreErrors".into(), json!(errors.len() - listed.len()));
                }
                let fields: Vec<&str> = listed.iter().map(|e| e.field.as_str()).collect();
                (
                    422,
                    "validation",
                    "Validation failed",
                    format!("invalid fields: {}", fields.join(", ")),
                )
            }
            ApiError::UnknownProducts(ids) => {
                extra.insert("productIds".into(), json!(ids));
                (
                    422,
                    "unknown-product",
                    "Unknown product",
                    "the order names products that do not exist".into(),
                )
            }
            ApiError::NotFound => (
                404,
                "not-found",
                "Not found",
                "no resource at this address".into(),
            ),
            ApiError::InsufficientStock(shortages) => {
                extra.insert("shortages".into(), json!(shortages));
                (
                    409,
                    "insufficient-stock",
                    "Insufficient stock",
                    "not enough stock is available".into(),
                )
            }
            ApiError::LimitExceeded(limit) => {
                extra.insert("productId".into(), json!(limit.product_id));
                extra.insert("limit".into(), json!(limit.limit));
                extra.insert("held".into(), json!(limit.held));
                (
                    409,
                    "limit-exceeded",
                    "Limit exceeded",
                    format!(
                        "at most {} units of this product per customer, {} already held",
                        limit.limit, limit.held
                    ),
                )
            }
            ApiError::InvalidTransition { from, to, allowed } => {
                extra.insert("from".into(), json!(from));
                extra.insert("to".into(), json!(to));
                extra.insert("allowed".into(), json!(allowed));
                (
                    409,
                    "invalid-transition",
                    "Invalid status transition",
                    format!("an order cannot go from {from} to {to}"),
                )
            }
            ApiError::DuplicateSku => (
                409,
                "duplicate-sku",
                "Duplicate SKU",
                "a product with this sku already exists".into(),
            ),
            ApiError::IdempotencyKeyReuse => (
                422,
                "idempotency-key-reuse",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request".into(),
            ),
            ApiError::RequestInProgress => (
                409,
                "request-in-progress",
                "Request in progress",
                "a request with this Idempotency-Key is still being handled; retry shortly".into(),
            ),
            ApiError::PayloadTooLarge => (
                413,
                "payload-too-large",
                "Payload too large",
                "the body must be at most 64 KiB".into(),
            ),
            ApiError::UnsupportedMediaType(media) => (
                415,
                "unsupported-media-type",
                "Unsupported media type",
                format!("the body must be application/json, not {media}"),
            ),
            ApiError::Forbidden(detail) => (403, "forbidden", "Forbidden", detail.clone()),
            // Rendered by `into_response` as API Gateway renders it; never a problem body.
            ApiError::Unauthorized => (401, "unauthorized", "Unauthorized", String::new()),
            ApiError::Unavailable(_) => (
                503,
                "unavailable",
                "Service unavailable",
                "a dependency is unavailable; retry later".into(),
            ),
            ApiError::Internal(_) => (
                500,
                "internal",
                "Internal error",
                "an unexpected error occurred".into(),
            ),
        };
        (status, kind, title, detail, extra)
    }

    /// The HTTP status and the problem type's last segment (`insufficient-stock`, …).
    pub(crate) fn problem_type(&self) -> (u16, &'static str) {
        let (status, kind, ..) = self.problem();
        (status, kind)
    }

    pub fn into_response(self) -> Response<Body> {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = %error_chain(e), "request failed"),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %error_chain(e), "dependency unavailable")
            }
            other => tracing::info!(problem = %other, "request refused"),
        }
        if let ApiError::Unauthorized = self {
            return Response::builder()
                .status(401)
                .header(CONTENT_TYPE, "application/json")
                .body(Body::Text(r#"{"message":"Unauthorized"}"#.into()))
                .unwrap_or_else(|_| Response::new(Body::Empty));
        }
        let (status, kind, title, detail, extra) = self.problem();
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("/problems/{kind}")));
        body.insert("title".into(), json!(title));
        body.insert("status".into(), json!(status));
        body.insert("detail".into(), json!(detail));
        body.extend(extra);
        let mut response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/problem+json");
        if status == 503 {
            response = response.header(RETRY_AFTER, RETRY_AFTER_SECONDS);
        }
        response
            .body(Body::Text(Value::Object(body).to_string()))
            .unwrap_or_else(|_| Response::new(Body::Empty))
    }
}
