//! API Gateway HTTP API (payload v2) glue: route → typed command → store → response, and
//! every error as exactly one problem type of API.md.

mod body;
mod caller;
mod orders;
mod problem;
mod products;

pub use body::{Json, JsonObject};
pub use problem::ApiError;

use deadpool_postgres::Pool;
use lambda_http::http::header::{CONTENT_TYPE, LOCATION};
use lambda_http::http::{HeaderValue, Method};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

use crate::messaging::Publisher;

/// What an HTTP function needs, built once per execution environment.
pub struct ApiState {
    pub pool: Pool,
    /// Publishes outbox messages right after their transaction commits; `None` leaves
    /// them to the outbox relay.
    pub publisher: Option<Publisher>,
}

/// The routes of API.md. A function serves a subset; `template.yaml` sends it only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreateProduct,
    ListProducts,
    GetProduct,
    UpdateProduct,
    AdjustInventory,
    ListStockMovements,
    CreateOrder,
    ListOrders,
    GetOrder,
    UpdateOrderStatus,
}

impl Endpoint {
    pub const ALL: [Endpoint; 10] = [
        Endpoint::CreateProduct,
        Endpoint::ListProducts,
        Endpoint::GetProduct,
        Endpoint::UpdateProduct,
        Endpoint::AdjustInventory,
        Endpoint::ListStockMovements,
        Endpoint::CreateOrder,
        Endpoint::ListOrders,
        Endpoint::GetOrder,
        Endpoint::UpdateOrderStatus,
    ];

    /// The API Gateway route key, as written in `template.yaml`.
    pub fn route_key(self) -> &'static str {
        match self {
            Endpoint::CreateProduct => "POST /products",
            Endpoint::ListProducts => "GET /products",
            Endpoint::GetProduct => "GET /products/{id}",
            Endpoint::UpdateProduct => "PATCH /products/{id}",
            Endpoint::AdjustInventory => "POST /products/{id}/inventory-adjustments",
            Endpoint::ListStockMovements => "GET /products/{id}/stock-movements",
            Endpoint::CreateOrder => "POST /orders",
            Endpoint::ListOrders => "GET /orders",
            Endpoint::GetOrder => "GET /orders/{id}",
            Endpoint::UpdateOrderStatus => "PATCH /orders/{id}/status",
        }
    }

    /// Matches a method and path against this route, returning the `{id}` segment if any.
    fn match_path<'p>(self, method: &Method, path: &'p str) -> Option<Option<&'p str>> {
        let (route_method, route_path) = self.route_key().split_once(' ')?;
        if method.as_str() != route_method {
            return None;
        }
        let mut id = None;
        let mut pattern = route_path.trim_matches('/').split('/');
        let mut segments = path.trim_matches('/').split('/');
        loop {
            match (pattern.next(), segments.next()) {
                (None, None) => return Some(id),
                (Some("{id}"), Some(segment)) if !segment.is_empty() => id = Some(segment),
                (Some(p), Some(s)) if p == s => {}
                _ => return None,
            }
        }
    }
}

/// Finds the endpoint and path id of a request: by the route key API Gateway matched, or,
/// for callers that send none, by method and path.
fn resolve(request: &Request) -> Option<(Endpoint, Option<String>)> {
    if let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() {
        if let Some(route_key) = context.route_key.as_deref() {
            if let Some(endpoint) = Endpoint::ALL
                .into_iter()
                .find(|e| e.route_key() == route_key)
            {
                let id = request
                    .path_parameters_ref()
                    .and_then(|params| params.first("id"))
                    .map(str::to_owned);
                return Some((endpoint, id));
            }
        }
    }
    let path = request.uri().path();
    Endpoint::ALL.into_iter().find_map(|endpoint| {
        endpoint
            .match_path(request.method(), path)
            .map(|id| (endpoint, id.map(str::to_owned)))
    })
}

/// Handles one request for a function that serves `endpoints`. Never fails and never
/// panics on client input: every outcome is a response.
pub async fn handle(state: &ApiState, endpoints: &[Endpoint], request: Request) -> Response<Body> {
    let outcome = match resolve(&request) {
        Some((endpoint, id)) if endpoints.contains(&endpoint) => {
            let outcome = dispatch(state, endpoint, id.as_deref(), &request).await;
            record_refusal(endpoint, &outcome);
            outcome
        }
        _ => Err(ApiError::NotFound),
    };
    outcome.unwrap_or_else(ApiError::into_response)
}

/// `OrdersRefused` by reason: every client error that answers `POST /orders`, named by its
/// problem type. (Placed orders are counted by the events they commit, in the unit of
/// work; server errors are API Gateway's 5xx metric.)
fn record_refusal(endpoint: Endpoint, outcome: &Result<Response<Body>, ApiError>) {
    if let (Endpoint::CreateOrder, Err(error)) = (endpoint, outcome) {
        let (status, kind) = error.problem_type();
        if (400..500).contains(&status) {
            crate::metrics::record_by(crate::metrics::SplitMetric::OrdersRefused, kind, 1.0);
        }
    }
}

/// Runs the endpoint's use case for its caller. Who may call what is decided here, once:
/// the public catalogue needs no caller, staff routes a [`crate::domain::Staff`], and the
/// order routes any caller, whose ownership the use case applies in its own statement.
async fn dispatch(
    state: &ApiState,
    endpoint: Endpoint,
    id: Option<&str>,
    request: &Request,
) -> Result<Response<Body>, ApiError> {
    use caller::{authenticate, staff};
    let id = id.unwrap_or_default();
    match endpoint {
        Endpoint::ListProducts => products::list(state, request).await,
        Endpoint::GetProduct => products::get(state, id).await,
        Endpoint::CreateProduct => products::create(state, &staff(request)?, request).await,
        Endpoint::UpdateProduct => products::update(state, &staff(request)?, id, request).await,
        Endpoint::AdjustInventory => {
            products::adjust_inventory(state, &staff(request)?, id, request).await
        }
        Endpoint::ListStockMovements => {
            products::stock_movements(state, &staff(request)?, id, request).await
        }
        Endpoint::CreateOrder => orders::create(state, &authenticate(request)?, request).await,
        Endpoint::ListOrders => orders::list(state, &authenticate(request)?, request).await,
        Endpoint::GetOrder => orders::get(state, &authenticate(request)?, id).await,
        Endpoint::UpdateOrderStatus => {
            orders::update_status(state, &authenticate(request)?, id, request).await
        }
    }
}

/// Largest body API.md accepts.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body of a request as a JSON object, after the size and media-type rules.
fn json_body(request: &Request) -> Result<JsonObject<'_>, ApiError> {
    let body: &[u8] = request.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
        let media = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let is_json = media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(media));
        }
    }
    JsonObject::parse_body(body)
}

/// A query string parameter; API Gateway joins repeated ones, the last one wins here.
fn query<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request
        .query_string_parameters_ref()
        .and_then(|params| params.all(name))
        .and_then(|values| values.last().copied())
}

/// The `limit` and `cursor` query parameters of a listing, every bad one named.
fn page_request(
    request: &Request,
    listing: crate::store::Listing,
) -> Result<crate::store::PageRequest, Vec<crate::domain::FieldError>> {
    crate::store::PageRequest::parse(listing, query(request, "limit"), query(request, "cursor"))
}

/// The id API Gateway's request context gives a request, to correlate logs and messages.
fn request_id(request: &Request) -> String {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) if context.request_id.is_some() => {
            context.request_id.clone().unwrap_or_default()
        }
        _ => request
            .lambda_context_ref()
            .map(|c| c.request_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
    }
}

fn json_response(status: u16, value: &impl Serialize) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_string(value)
        .map_err(|e| ApiError::Internal(crate::store::StoreError::Corrupt(e.to_string())))?;
    Ok(raw_json_response(status, body))
}

fn raw_json_response(status: u16, body: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() = lambda_http::http::StatusCode::from_u16(status)
        .unwrap_or(lambda_http::http::StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn with_location(mut response: Response<Body>, location: String) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

impl ApiState {
    /// Builds the state from the environment: the pool always; the publisher when
    /// a broker is configured (without one, the outbox relay publishes everything).
    pub async fn load() -> Result<Self, crate::config::ConfigError> {
        let pool = crate::db::build_pool(&crate::config::DatabaseConfig::load().await?)?;
        let publisher = match crate::config::BrokerConfig::load().await {
            Ok(config) => Some(Publisher::new(crate::messaging::Broker::new(config))),
            Err(crate::config::ConfigError::Missing(_)) => {
                tracing::info!("no broker configured: events wait in the outbox for the relay");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Self { pool, publisher })
    }

    /// Runs a write use case with the publisher's unit of work ([`Publisher::write`]);
    /// without a broker, its events wait in the outbox for the relay.
    pub(crate) async fn write<T, F, Fut>(&self, use_case: F) -> Result<T, ApiError>
    where
        F: FnOnce(crate::store::SentMessages) -> Fut,
        Fut: std::future::Future<
            Output = Result<crate::store::Written<T>, crate::store::StoreError>,
        >,
    {
        let value = match &self.publisher {
            Some(publisher) => publisher.write(use_case).await?,
            None => {
                let written = use_case(crate::store::SentMessages::none()).await?;
                crate::metrics::record_committed(&written.events);
                written.value
            }
        };
        Ok(value)
    }
}

/// Runs an HTTP function serving `endpoints` until the Lambda runtime stops it.
pub async fn serve(endpoints: &'static [Endpoint]) -> Result<(), lambda_http::Error> {
    crate::telemetry::init();
    let state = ApiState::load().await?;
    let state = &state;
    // Connect to the broker while the first request is on its way, so that sending its
    // events fits the send budget; a broker that is away only logs here.
    let warm_up = async {
        if let Some(publisher) = &state.publisher {
            if let Err(e) = publisher.broker().channel().await {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "broker not reachable yet");
            }
        }
    };
    let metrics = &crate::metrics::Emitter::from_env();
    let serve = lambda_http::run(lambda_http::service_fn(move |request| async move {
        let response = crate::metrics::invocation(metrics, handle(state, endpoints, request)).await;
        Ok::<_, std::convert::Infallible>(response)
    }));
    let ((), served) = tokio::join!(warm_up, serve);
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes_and_capture_the_id() {
        let get = Method::GET;
        assert_eq!(
            Endpoint::GetProduct.match_path(&get, "/products/abc"),
            Some(Some("abc"))
        );
        assert_eq!(
            Endpoint::ListProducts.match_path(&get, "/products"),
            Some(None)
        );
        assert_eq!(Endpoint::GetProduct.match_path(&get, "/products/"), None);
        assert_eq!(
            Endpoint::GetProduct.match_path(&Method::POST, "/products/abc"),
            None
        );
        assert_eq!(
            Endpoint::UpdateOrderStatus.match_path(&Method::PATCH, "/orders/x/status"),
            Some(Some("x"))
        );
    }
}
