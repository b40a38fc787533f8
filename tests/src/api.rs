use std::collections::HashMap;
use std::sync::Arc;

use lambda_http::http::HeaderMap;
use serde_json::{json, Value};
use shared::http::{handle, ApiState, Endpoint};

const FIXTURE: &str = include_str!("../fixtures/apigw-v2-request.json");

/// Who a test request comes from, as the JWT authorizer would describe the token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No authorizer context: what a route without the authorizer receives.
    Anonymous,
    /// A token with the `oms/staff` scope.
    Staff(String),
    /// A token without it: a customer, identified by its `sub`.
    Customer(String),
}

impl Identity {
    /// `requestContext.authorizer` as API Gateway's JWT authorizer fills it: every claim as
    /// a string (numbers as their decimal text), `scopes` null when the route names none.
    pub fn authorizer(&self) -> Option<Value> {
        let (sub, scope) = match self {
            Identity::Anonymous => return None,
            Identity::Staff(sub) => (sub, "openid oms/staff"),
            Identity::Customer(sub) => (sub, "openid"),
        };
        let now = chrono::Utc::now().timestamp();
        Some(json!({
            "jwt": {
                "claims": {
                    "sub": sub,
                    "iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example",
                    "client_id": "5tt2examplec1ient1d",
                    "token_use": "access",
                    "scope": scope,
                    "auth_time": now.to_string(),
                    "iat": now.to_string(),
                    "exp": (now + 3600).to_string(),
                    "jti": uuid::Uuid::now_v7().to_string(),
                },
                "scopes": null
            }
        }))
    }
}

/// Builds the API Gateway HTTP API (payload v2) event AWS sends for a request, starting from
/// AWS's documented example and setting what API Gateway sets: route key, path parameters,
/// query string, headers, body and its base64 flag.
pub fn apigw_event(
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Value {
    let mut event: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let (route_key, path_parameters) = match_route(method, path);
    event["routeKey"] = json!(route_key);
    event["requestContext"]["routeKey"] = json!(route_key);
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["requestId"] = json!(uuid::Uuid::now_v7().to_string());
    event["rawQueryString"] = json!(query);
    match path_parameters {
        Some(params) => event["pathParameters"] = json!(params),
        None => {
            event.as_object_mut().unwrap().remove("pathParameters");
        }
    }
    let mut query_parameters: HashMap<String, String> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // API Gateway joins repeated parameters with commas.
        query_parameters
            .entry(name.to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    if !query_parameters.is_empty() {
        event["queryStringParameters"] = json!(query_parameters);
    }
    for (name, value) in headers {
        event["headers"][name.to_ascii_lowercase()] = json!(value);
    }
    if let Some(body) = body {
        event["headers"]["content-length"] = json!(body.len().to_string());
        match std::str::from_utf8(body) {
            Ok(text) => {
                event["body"] = json!(text);
                event["isBase64Encoded"] = json!(false);
            }
            Err(_) => {
                use base64::Engine;
                event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// Which route API Gateway would match, as `template.yaml` declares them; `$default` when
/// none does (the API answers 404 then).
fn match_route(method: &str, path: &str) -> (String, Option<HashMap<String, String>>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    for endpoint in Endpoint::ALL {
        let (route_method, route_path) = endpoint.route_key().split_once(' ').unwrap();
        let pattern: Vec<&str> = route_path.trim_matches('/').split('/').collect();
        if route_method != method || pattern.len() != segments.len() {
            continue;
        }
        let mut params = HashMap::new();
        let matched = pattern.iter().zip(&segments).all(|(p, s)| {
            if *p == "{id}" && !s.is_empty() {
                params.insert("id".to_owned(), (*s).to_owned());
                true
            } else {
                p == s
            }
        });
        if matched {
            return (
                endpoint.route_key().to_owned(),
                (!params.is_empty()).then_some(params),
            );
        }
    }
    ("$default".to_owned(), None)
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem `type` of an error response.
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    /// The fields named by a validation problem.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The HTTP functions in-process: every request goes through `lambda_http`'s own parsing of
/// a real API Gateway v2 event into the same handler the function binaries run.
///
/// Requests carry the authorizer context of `identity`: staff unless a test asks for
/// another caller with [`Api::as_customer`] and friends, which share the same state.
#[derive(Clone)]
pub struct Api {
    pub state: Arc<ApiState>,
    pub identity: Identity,
}

/// The subject of the staff member an [`Api`] acts as by default.
pub const TEST_STAFF: &str = "staff-test";

impl Api {
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self::with_state(ApiState {
            pool,
            publisher: None,
        })
    }

    pub fn with_state(state: ApiState) -> Self {
        Self {
            state: Arc::new(state),
            identity: Identity::Staff(TEST_STAFF.into()),
        }
    }

    /// The same API, called by `identity`.
    pub fn as_identity(&self, identity: Identity) -> Self {
        Self {
            state: Arc::clone(&self.state),
            identity,
        }
    }

    pub fn as_customer(&self, sub: &str) -> Self {
        self.as_identity(Identity::Customer(sub.into()))
    }

    pub fn as_staff(&self, sub: &str) -> Self {
        self.as_identity(Identity::Staff(sub.into()))
    }

    pub fn anonymous(&self) -> Self {
        self.as_identity(Identity::Anonymous)
    }

    pub async fn send_event(&self, event: &Value) -> TestResponse {
        let mut event = event.clone();
        if let Some(authorizer) = self.identity.authorizer() {
            event["requestContext"]["authorizer"] = authorizer;
        }
        let request = lambda_http::request::from_str(&event.to_string())
            .expect("lambda_http parses the event");
        let response = handle(&self.state, &Endpoint::ALL, request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body: &[u8] = response.body().as_ref();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).expect("every response body is JSON")
        };
        if status == 401 {
            // API Gateway's own answer, which the functions repeat.
            assert_eq!(body, json!({"message": "Unauthorized"}));
        } else if status >= 400 {
            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
            assert_eq!(content_type, Some("application/problem+json"), "{body}");
            assert_eq!(body["status"].as_u64(), Some(u64::from(status)), "{body}");
        }
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> TestResponse {
        self.send_event(&apigw_event(method, path, headers, body))
            .await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request("GET", path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        let body = body.to_string();
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> TestResponse {
        let body = body.to_string();
        self.request(
            "PATCH",
            path,
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
    }

    /// Changes a product's `stockBuckets` as staff would, asserting the 200 and the new
    /// count; returns the product as answered.
    pub async fn rebucket(&self, product_id: &str, buckets: u64) -> Value {
        let response = self
            .patch(
                &format!("/products/{product_id}"),
                json!({"stockBuckets": buckets}),
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.body["stockBuckets"], buckets);
        response.body
    }

    /// Creates a product with `inventory` units at `price`, returning its id.
    pub async fn product(&self, price: &str, inventory: i64) -> String {
        let response = self
            .post(
                "/products",
                json!({"name": "Test product", "price": price, "inventory": inventory}),
            )
            .await;
        assert_eq!(response.status, 201, "{}", response.body);
        response.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, lines: &[(&str, u32)]) -> TestResponse {
        let items: Vec<Value> = lines
            .iter()
            .map(|(id, q)| json!({"productId": id, "quantity": q}))
            .collect();
        self.post("/orders", json!({ "items": items })).await
    }

    pub async fn stock(&self, product_id: &str) -> (i64, i64) {
        let product = self.get(&format!("/products/{product_id}")).await.body;
        (
            product["inventory"].as_i64().unwrap(),
            product["reserved"].as_i64().unwrap(),
        )
    }
}
