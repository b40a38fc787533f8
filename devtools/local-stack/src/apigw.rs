//! API Gateway HTTP API, payload format 2.0: route matching, the event AWS builds for a
//! request, and how AWS turns the function's answer into the HTTP response. Pure functions,
//! so they are tested against AWS's fixtures without a server.

use std::net::IpAddr;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE};
use base64::Engine;
use chrono::{DateTime, Utc};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use crate::auth::{Claims, Rejection};
use crate::template::Route;

/// Placeholders for what only a deployed API has. `apiId` has AWS's length (10).
pub const ACCOUNT_ID: &str = "123456789012";
pub const API_ID: &str = "localstack";

/// HTTP API's request payload limit.
pub const MAX_REQUEST_BODY: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// `{name+}`: the rest of the path, last segment only.
    Greedy(String),
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    route: Route,
    segments: Vec<Segment>,
}

/// The routes of the API, matched the way HTTP API does.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
}

/// A route a request matched, with its decoded path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'r> {
    pub route: &'r Route,
    pub path_parameters: Vec<(String, String)>,
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let routes = routes
            .iter()
            .map(|route| CompiledRoute {
                segments: segments(&route.path)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => match name.strip_suffix('+') {
                                Some(name) => Segment::Greedy(name.to_owned()),
                                None => Segment::Param(name.to_owned()),
                            },
                            None => Segment::Literal(s.to_owned()),
                        },
                    )
                    .collect(),
                route: route.clone(),
            })
            .collect();
        Self { routes }
    }

    /// The route for a method and raw path. Like HTTP API, the most specific wins: literal
    /// segments over parameters, parameters over a greedy tail, a method over `ANY`.
    pub fn find(&self, method: &str, raw_path: &str) -> Option<RouteMatch<'_>> {
        let request: Vec<&str> = segments(raw_path).collect();
        self.routes
            .iter()
            .filter(|r| r.route.method == method || r.route.method == "ANY")
            .filter_map(|r| {
                let params = match_segments(&r.segments, &request)?;
                let greedy = matches!(r.segments.last(), Some(Segment::Greedy(_)));
                let rank = (greedy, params.len(), r.route.method == "ANY");
                Some((
                    rank,
                    RouteMatch {
                        route: &r.route,
                        path_parameters: params,
                    },
                ))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, found)| found)
    }
}

fn match_segments(pattern: &[Segment], request: &[&str]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Greedy(name) => {
                let rest = request.get(i..)?.join("/");
                if rest.is_empty() {
                    return None;
                }
                params.push((name.clone(), decode(&rest)));
                return Some(params);
            }
            Segment::Literal(literal) => {
                if request.get(i) != Some(&literal.as_str()) {
                    return None;
                }
            }
            Segment::Param(name) => {
                let value = request.get(i).filter(|v| !v.is_empty())?;
                params.push((name.clone(), decode(value)));
            }
        }
    }
    (pattern.len() == request.len()).then_some(params)
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A request as the gateway received it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: IpAddr,
    pub protocol: &'a str,
    /// The port the gateway listens on, for `x-forwarded-port`.
    pub port: u16,
}

/// Per-request values AWS generates.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
    pub time: DateTime<Utc>,
}

impl RequestIds {
    pub fn generate() -> Self {
        let time = Utc::now();
        let random = uuid::Uuid::now_v7();
        let bytes = random.as_bytes();
        Self {
            // AWS's look: 11 bytes, URL-safe base64, e.g. `LV7fzho-PHcEJPw=`.
            request_id: URL_SAFE.encode(&bytes[5..16]),
            // X-Ray's format: version, epoch seconds in hex, 96 random bits.
            trace_id: format!(
                "Root=1-{:08x}-{}",
                time.timestamp(),
                &random.simple().to_string()[8..]
            ),
            time,
        }
    }
}

/// Whether HTTP API hands the body over as text. Measured on AWS: only `text/*`,
/// `application/json`, `application/xml` and `application/javascript` are text; every other
/// type, a missing `Content-Type` and even `application/x-www-form-urlencoded` arrive
/// base64-encoded with `isBase64Encoded: true`.
pub fn is_text_media_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json" | "application/xml" | "application/javascript"
        )
}

/// The payload-2.0 event API Gateway sends the function for `request`; `claims` are those
/// of the token the route's JWT authorizer accepted (none on a public route).
pub fn build_event(
    request: &Request<'_>,
    matched: &RouteMatch<'_>,
    ids: &RequestIds,
    claims: Option<&Claims>,
) -> Value {
    let route_key = matched.route.key();
    let mut headers = Map::new();
    let mut cookies: Vec<Value> = Vec::new();
    for name in request.headers.keys() {
        let values = request
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if name == hyper::header::COOKIE {
            // Payload 2.0 moves cookies out of the headers into their own array.
            for value in values {
                cookies.extend(
                    value
                        .split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| Value::String(c.to_owned())),
                );
            }
            continue;
        }
        // Names arrive lower-cased; repeated headers are joined with commas.
        headers.insert(
            name.as_str().to_owned(),
            Value::String(values.collect::<Vec<_>>().join(",")),
        );
    }
    let user_agent = header_text(request.headers, "user-agent").unwrap_or_default();
    let host = header_text(request.headers, "host").unwrap_or("localhost");
    let domain_name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host, |(name, _)| name);
    let domain_prefix = if domain_name.parse::<IpAddr>().is_ok() {
        domain_name
    } else {
        domain_name.split('.').next().unwrap_or(domain_name)
    };
    let forwarded_for = match header_text(request.headers, "x-forwarded-for") {
        Some(previous) => format!("{previous}, {}", request.source_ip),
        None => request.source_ip.to_string(),
    };
    headers.insert("x-forwarded-for".into(), json!(forwarded_for));
    headers.insert("x-forwarded-port".into(), json!(request.port.to_string()));
    headers.insert("x-forwarded-proto".into(), json!("http"));
    headers
        .entry("x-amzn-trace-id")
        .or_insert_with(|| json!(ids.trace_id));
    // AWS always states the length, `0` for a request without a body.
    headers.insert(
        "content-length".into(),
        json!(request.body.len().to_string()),
    );

    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": domain_name,
            "domainPrefix": domain_prefix,
            "http": {
                "method": request.method,
                "path": request.raw_path,
                "protocol": request.protocol,
                "sourceIp": request.source_ip.to_string(),
                "userAgent": user_agent,
            },
            "requestId": ids.request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": ids.time.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": ids.time.timestamp_millis(),
        },
        "isBase64Encoded": false,
    });
    let Some(fields) = event.as_object_mut() else {
        return event;
    };
    if let (Some(claims), Some(context)) = (
        claims,
        fields
            .get_mut("requestContext")
            .and_then(Value::as_object_mut),
    ) {
        context.insert("authorizer".into(), claims.authorizer_context());
    }
    if !cookies.is_empty() {
        fields.insert("cookies".into(), Value::Array(cookies));
    }
    let query = query_parameters(request.raw_query);
    if !query.is_empty() {
        fields.insert("queryStringParameters".into(), Value::Object(query));
    }
    if !matched.path_parameters.is_empty() {
        let params: Map<String, Value> = matched
            .path_parameters
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect();
        fields.insert("pathParameters".into(), Value::Object(params));
    }
    if !request.body.is_empty() {
        let text = is_text_media_type(header_text(request.headers, "content-type"))
            .then(|| std::str::from_utf8(request.body).ok())
            .flatten();
        let (body, encoded) = match text {
            Some(text) => (text.to_owned(), false),
            // Not valid UTF-8 cannot travel as a JSON string either.
            None => (BASE64.encode(request.body), true),
        };
        fields.insert("body".into(), json!(body));
        fields.insert("isBase64Encoded".into(), json!(encoded));
    }
    event
}

/// An event on no route (`$default`, path `/__local-stack/warm-up`): a function answers it
/// with a 404 without touching the database, which makes it a harmless way to start one.
pub fn warm_up_event() -> Value {
    let route = Route {
        method: "GET".into(),
        path: "/__local-stack/warm-up".into(),
        function: crate::template::Function {
            logical_id: String::new(),
            binary: String::new(),
            timeout: std::time::Duration::ZERO,
        },
        authorizer: None,
    };
    let headers = HeaderMap::new();
    let request = Request {
        method: "GET",
        raw_path: &route.path,
        raw_query: "",
        headers: &headers,
        body: b"",
        source_ip: IpAddr::from([127, 0, 0, 1]),
        protocol: "HTTP/1.1",
        port: 0,
    };
    let matched = RouteMatch {
        route: &route,
        path_parameters: Vec::new(),
    };
    let mut event = build_event(&request, &matched, &RequestIds::generate(), None);
    event["routeKey"] = json!("$default");
    event["requestContext"]["routeKey"] = json!("$default");
    event
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `queryStringParameters`: decoded, repeated names joined with commas. `+` stays a `+`:
/// HTTP API decodes percent escapes only.
fn query_parameters(raw_query: &str) -> Map<String, Value> {
    let mut parameters: Map<String, Value> = Map::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name), decode(value));
        match parameters.get_mut(&name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => {
                parameters.insert(name, Value::String(value));
            }
        }
    }
    parameters
}

/// The HTTP response the gateway sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Response {
    fn json(status: u16, content_type: &'static str, body: &Value) -> Self {
        Self {
            status,
            headers: vec![(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            )],
            body: body.to_string().into_bytes(),
        }
    }

    /// What HTTP API answers when the function failed or answered something it cannot use.
    pub fn internal_server_error() -> Self {
        Self::json(
            500,
            "application/json",
            &json!({"message": "Internal Server Error"}),
        )
    }

    /// What HTTP API answers when the integration did not answer within its timeout.
    pub fn service_unavailable() -> Self {
        Self::json(
            503,
            "application/json",
            &json!({"message": "Service Unavailable"}),
        )
    }

    /// What the JWT authorizer answers for a missing or bad token. AWS names the reason in
    /// `www-authenticate` (its troubleshooting guide shows the form), never in the body.
    pub fn unauthorized(rejection: Rejection) -> Self {
        let mut response = Self::json(401, "application/json", &json!({"message": "Unauthorized"}));
        if rejection != Rejection::Missing {
            let challenge =
                format!(r#"Bearer scope="" error="invalid_token" error_description="{rejection}""#);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers
                    .push((hyper::header::WWW_AUTHENTICATE, value));
            }
        }
        response
    }

    pub fn bad_request() -> Self {
        Self::json(400, "application/json", &json!({"message": "Bad Request"}))
    }

    pub fn payload_too_large() -> Self {
        Self::json(
            413,
            "application/json",
            &json!({"message": "Request Entity Too Large"}),
        )
    }

    /// No route: a problem document, like every other error of this API (API.md).
    pub fn not_found(method: &str, path: &str) -> Self {
        Self::json(
            404,
            "application/problem+json",
            &json!({
                "type": "/problems/not-found",
                "title": "Not found",
                "status": 404,
                "detail": format!("no route matches {method} {path}"),
            }),
        )
    }
}

/// Why a function's answer could not be turned into a response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedResponse {
    #[error("the function's response is not JSON")]
    NotJson,
    #[error("statusCode is not an HTTP status")]
    Status,
    #[error("body is not a string")]
    Body,
    #[error("isBase64Encoded is set but the body is not base64")]
    Base64,
    #[error("header {0} is not a valid HTTP header")]
    Header(String),
}

/// Turns the function's answer into the HTTP response, as HTTP API does for payload 2.0:
/// an object with `statusCode` is a structured response (`headers`, `cookies` as
/// `Set-Cookie`, `body`, `isBase64Encoded`); anything else valid JSON is a 200
/// `application/json` response whose body is that JSON. `multiValueHeaders` belongs to
/// payload 1.0 and is ignored by 2.0, so it is here too.
pub fn map_response(payload: &[u8]) -> Result<Response, MalformedResponse> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| MalformedResponse::NotJson)?;
    let Some(status) = value.get("statusCode") else {
        let body = match &value {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let mut response = Response::json(200, "application/json", &Value::Null);
        response.body = body;
        return Ok(response);
    };
    let status = status
        .as_u64()
        .or_else(|| status.as_str().and_then(|s| s.parse().ok()))
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or(MalformedResponse::Status)?;
    let mut headers = Vec::new();
    if let Some(map) = value.get("headers").and_then(Value::as_object) {
        for (name, value) in map {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            headers.push(header(name, &text)?);
        }
    }
    if let Some(cookies) = value.get("cookies").and_then(Value::as_array) {
        for cookie in cookies.iter().filter_map(Value::as_str) {
            headers.push(header("set-cookie", cookie)?);
        }
    }
    let body = match value.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(body)) => {
            if value.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
                BASE64.decode(body).map_err(|_| MalformedResponse::Base64)?
            } else {
                body.clone().into_bytes()
            }
        }
        Some(_) => return Err(MalformedResponse::Body),
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), MalformedResponse> {
    let parsed_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| MalformedResponse::Header(name.to_owned()))?;
    let parsed_value =
        HeaderValue::from_str(value).map_err(|_| MalformedResponse::Header(name.to_owned()))?;
    Ok((parsed_name, parsed_value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Function, Template};
    use std::time::Duration;

    fn route(method: &str, path: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            function: Function {
                logical_id: "F".into(),
                binary: format!("{method} {path}"),
                timeout: Duration::from_secs(3),
            },
            authorizer: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route("GET", "/products"),
            route("GET", "/products/{id}"),
            route("POST", "/products/{id}/inventory-adjustments"),
            route("GET", "/products/special"),
            route("ANY", "/files/{path+}"),
            route("GET", "/files/{path+}"),
        ])
    }

    #[test]
    fn routes_match_like_http_api() {
        let table = table();
        let found = table.find("GET", "/products/abc").unwrap();
        assert_eq!(found.route.path, "/products/{id}");
        assert_eq!(found.path_parameters, [("id".into(), "abc".into())]);
        assert_eq!(
            table.find("GET", "/products/special").unwrap().route.path,
            "/products/special",
            "a literal beats a parameter"
        );
        assert!(table.find("GET", "/products/").is_none());
        assert!(table.find("DELETE", "/products/abc").is_none());
        assert!(table.find("GET", "/products/abc/extra").is_none());
        let found = table.find("PUT", "/files/a/b%20c").unwrap();
        assert_eq!(found.route.method, "ANY");
        assert_eq!(found.path_parameters, [("path".into(), "a/b c".into())]);
        assert_eq!(table.find("GET", "/files/x").unwrap().route.method, "GET");
        assert!(table.find("GET", "/nothing").is_none());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ids() -> RequestIds {
        RequestIds {
            request_id: "LV7fzho-PHcEJPw=".into(),
            trace_id: "Root=1-5e9f0c65-1de4d666d4dd26aced652b6c".into(),
            time: DateTime::from_timestamp_millis(1_587_481_701_067).unwrap(),
        }
    }

    /// Recursively lists the JSON paths of a value ("a.b.c"), to compare shapes.
    fn paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                if !prefix.ends_with("headers") && key != "headers" {
                    paths(value, &path, out);
                }
            }
        }
    }

    const AWS_FIXTURE: &str = include_str!("../tests/fixtures/apigw-v2-request-no-authorizer.json");

    #[test]
    fn the_event_matches_what_aws_sends_for_the_same_request() {
        // AWS's own example (aws_lambda_events' fixture): `GET /` from curl. Its mTLS
        // `authentication` block exists only behind a custom domain with mutual TLS.
        let mut aws: Value = serde_json::from_str(AWS_FIXTURE).unwrap();
        aws["requestContext"]
            .as_object_mut()
            .unwrap()
            .remove("authentication");
        let table = RouteTable::new(&[route("GET", "/")]);
        let matched = table.find("GET", "/").unwrap();
        let request_headers = headers(&[
            ("accept", "*/*"),
            ("host", "aaaaaaaaaa.execute-api.us-west-2.amazonaws.com"),
            ("user-agent", "curl/7.58.0"),
        ]);
        let request = Request {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: &request_headers,
            body: b"",
            source_ip: "1.2.3.4".parse().unwrap(),
            protocol: "HTTP/1.1",
            port: 443,
        };
        let mut ours = build_event(&request, &matched, &ids(), None);
        // Only the route key differs: the fixture's API has a `$default` route.
        assert_eq!(ours["routeKey"], "GET /");
        ours["routeKey"] = json!("$default");
        ours["requestContext"]["routeKey"] = json!("$default");
        ours["headers"]["x-forwarded-proto"] = json!("https");
        ours["requestContext"]["apiId"] = aws["requestContext"]["apiId"].clone();
        assert_eq!(ours, aws);
    }

    #[test]
    fn query_cookies_path_parameters_and_repeated_headers_follow_payload_2() {
        // The shape of AWS's multi-value fixture: repeated query parameters and headers are
        // comma-joined, cookies have their own array, a body of JSON stays text.
        let aws: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/apigw-v2-request-multi-value-parameters.json"
        ))
        .unwrap();
        let table = RouteTable::new(&[route("POST", "/my/{proxy+}")]);
        let matched = table.find("POST", "/my/hello/world").unwrap();
        let request_headers = headers(&[
            ("Header2", "value1"),
            ("header2", "value2"),
            ("cookie", "cookie1; cookie2"),
            ("content-type", "application/json"),
        ]);
        let request = Request {
            method: "POST",
            raw_path: "/my/hello/world",
            raw_query: "Parameter1=value1&Parameter1=value2",
            headers: &request_headers,
            body: b"{\r\n\t\"a\": 1\r\n}",
            source_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            port: 3000,
        };
        let event = build_event(&request, &matched, &ids(), None);
        assert_eq!(event["cookies"], aws["cookies"]);
        assert_eq!(event["queryStringParameters"], aws["queryStringParameters"]);
        assert_eq!(event["pathParameters"], json!({"proxy": "hello/world"}));
        assert_eq!(event["headers"]["header2"], aws["headers"]["Header2"]);
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["body"], aws["body"]);
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["rawQueryString"], aws["rawQueryString"]);
        assert_eq!(event["routeKey"], "POST /my/{proxy+}");
        // Every field AWS sets is there (stageVariables need a deployed stage; the
        // authorizer only comes with a token, below).
        let mut expected = Vec::new();
        paths(&aws, "", &mut expected);
        let mut actual = Vec::new();
        paths(&event, "", &mut actual);
        for path in expected {
            if path.starts_with("stageVariables")
                || path.starts_with("requestContext.authorizer")
                || path.starts_with("requestContext.authentication")
            {
                continue;
            }
            assert!(actual.contains(&path), "missing {path}");
        }
    }

    #[test]
    fn lambda_http_reads_the_event_as_the_request_that_was_sent() {
        let template = Template::parse(include_str!("../tests/fixtures/template.yaml")).unwrap();
        let table = RouteTable::new(&template.routes);
        let matched = table.find("PATCH", "/orders/0190-x/status").unwrap();
        let request_headers = headers(&[
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
        ]);
        let request = Request {
            method: "PATCH",
            raw_path: "/orders/0190-x/status",
            raw_query: "a=1&b=x%20y&a=2",
            headers: &request_headers,
            body: br#"{"status":"shipped"}"#,
            source_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            port: 3000,
        };
        let event = build_event(&request, &matched, &RequestIds::generate(), None);
        let parsed: aws_lambda_events::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(event.clone()).unwrap();
        assert_eq!(
            parsed.route_key.as_deref(),
            Some("PATCH /orders/{id}/status")
        );
        assert_eq!(
            parsed.path_parameters.get("id").map(String::as_str),
            Some("0190-x")
        );
        assert_eq!(
            parsed.query_string_parameters.all("a"),
            Some(vec!["1", "2"])
        );
        assert_eq!(parsed.query_string_parameters.first("b"), Some("x y"));
        assert_eq!(parsed.body.as_deref(), Some(r#"{"status":"shipped"}"#));
        assert_eq!(parsed.request_context.http.method.as_str(), "PATCH");
        let request_id = event["requestContext"]["requestId"].as_str().unwrap();
        assert_eq!(request_id.len(), 16);
    }

    fn get_request<'a>(headers: &'a HeaderMap, path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            raw_path: path,
            raw_query: "",
            headers,
            body: b"",
            source_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            port: 3000,
        }
    }

    fn claims(value: Value) -> Claims {
        Claims::from(value.as_object().unwrap().clone())
    }

    #[test]
    fn the_claims_of_a_verified_token_are_where_aws_puts_them() {
        // AWS's own example of a request behind a JWT authorizer.
        let aws: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/apigw-v2-request-jwt-authorizer.json"
        ))
        .unwrap();
        let table = RouteTable::new(&[route("GET", "/my/path")]);
        let matched = table.find("GET", "/my/path").unwrap();
        let no_headers = HeaderMap::new();
        let token = claims(json!({"claim1": "value1", "claim2": "value2"}));
        let event = build_event(
            &get_request(&no_headers, "/my/path"),
            &matched,
            &ids(),
            Some(&token),
        );
        let ours = &event["requestContext"]["authorizer"];
        let theirs = &aws["requestContext"]["authorizer"];
        assert_eq!(ours["jwt"]["claims"], theirs["jwt"]["claims"]);
        // The fixture's route has AuthorizationScopes, which AWS lists there; no route of
        // this API has any, and AWS then sends null.
        assert!(theirs["jwt"]["scopes"].is_array());
        assert_eq!(ours["jwt"]["scopes"], Value::Null);
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        paths(theirs, "", &mut expected);
        paths(ours, "", &mut actual);
        assert_eq!(actual, expected);

        // A public route gets no authorizer block at all, token or not.
        let event = build_event(
            &get_request(&no_headers, "/my/path"),
            &matched,
            &ids(),
            None,
        );
        assert!(event["requestContext"].get("authorizer").is_none());
    }

    #[test]
    fn lambda_http_reads_the_claims_as_strings() {
        let template = Template::parse(include_str!("../tests/fixtures/template.yaml")).unwrap();
        let table = RouteTable::new(&template.routes);
        let matched = table.find("PATCH", "/orders/0190-x/status").unwrap();
        let request_headers = headers(&[("authorization", "Bearer x.y.z")]);
        let token = claims(json!({
            "sub": "alice",
            "scope": "openid oms/staff",
            "exp": 1612061676,
            "cognito:groups": ["a", "b"],
        }));
        let event = build_event(
            &get_request(&request_headers, "/orders/0190-x/status"),
            &matched,
            &ids(),
            Some(&token),
        );
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        use lambda_http::RequestExt;
        let jwt = request
            .request_context_ref()
            .and_then(|context| context.authorizer())
            .and_then(|authorizer| authorizer.jwt.as_ref())
            .expect("the JWT authorizer's context");
        assert_eq!(jwt.claims["sub"], "alice");
        assert_eq!(jwt.claims["scope"], "openid oms/staff");
        assert_eq!(jwt.claims["exp"], "1612061676");
        assert_eq!(jwt.claims["cognito:groups"], "[a b]");
        assert_eq!(jwt.scopes, None);
        // The header itself still reaches the function, as in AWS.
        assert_eq!(
            request.headers().get("authorization").unwrap(),
            "Bearer x.y.z"
        );
    }

    #[test]
    fn an_unauthorized_answer_is_api_gateways_own() {
        let missing = Response::unauthorized(Rejection::Missing);
        assert_eq!(missing.status, 401);
        assert_eq!(missing.body, br#"{"message":"Unauthorized"}"#);
        assert_eq!(
            missing.headers,
            [(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json")
            )]
        );
        let expired = Response::unauthorized(Rejection::Expired);
        assert_eq!(expired.body, br#"{"message":"Unauthorized"}"#);
        let challenge = expired
            .headers
            .iter()
            .find(|(name, _)| name == hyper::header::WWW_AUTHENTICATE)
            .map(|(_, value)| value.to_str().unwrap());
        assert_eq!(
            challenge,
            Some(
                r#"Bearer scope="" error="invalid_token" error_description="the token has expired""#
            )
        );
    }

    #[test]
    fn bodies_are_base64_unless_their_type_is_text() {
        for (content_type, text) in [
            (Some("application/json"), true),
            (Some("application/json; charset=utf-8"), true),
            (Some("text/plain"), true),
            (Some("application/xml"), true),
            (Some("application/javascript"), true),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("application/octet-stream"), false),
            (Some("image/png"), false),
            (None, false),
        ] {
            assert_eq!(is_text_media_type(content_type), text, "{content_type:?}");
        }
        let table = RouteTable::new(&[route("POST", "/products")]);
        let matched = table.find("POST", "/products").unwrap();
        let no_type = HeaderMap::new();
        let request = Request {
            method: "POST",
            raw_path: "/products",
            raw_query: "",
            headers: &no_type,
            body: b"{}",
            source_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            port: 3000,
        };
        let event = build_event(&request, &matched, &ids(), None);
        assert_eq!(event["body"], "e30=");
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["headers"]["content-length"], "2");
    }

    #[test]
    fn responses_map_like_payload_2() {
        let response = map_response(
            br#"{"statusCode":201,"headers":{"content-type":"application/json","location":"/orders/1"},"multiValueHeaders":{},"cookies":["a=1; Path=/"],"body":"{\"id\":1}","isBase64Encoded":false}"#,
        )
        .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, br#"{"id":1}"#);
        let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location", "set-cookie"]);

        let binary =
            map_response(br#"{"statusCode":200,"body":"AAE=","isBase64Encoded":true}"#).unwrap();
        assert_eq!(binary.body, [0, 1]);

        let inferred = map_response(br#"{"hello":"world"}"#).unwrap();
        assert_eq!(inferred.status, 200);
        assert_eq!(inferred.body, br#"{"hello":"world"}"#);

        assert_eq!(map_response(b"nope"), Err(MalformedResponse::NotJson));
        assert_eq!(
            map_response(br#"{"statusCode":"x"}"#),
            Err(MalformedResponse::Status)
        );
        assert_eq!(
            map_response(br#"{"statusCode":200,"body":"%%","isBase64Encoded":true}"#),
            Err(MalformedResponse::Base64)
        );
    }
}
