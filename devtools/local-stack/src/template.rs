//! What the local stack takes from `template.yaml`, the one source of truth for routes and
//! which of them need a token, function binaries, timeouts and the event source mapping's
//! batching.
//!
//! Only literal values are read: intrinsic functions (`!Ref`, `!If`, …) resolve against a
//! deployed stack, so where one stands the AWS default applies locally.

use std::path::Path;
use std::time::Duration;

use serde_norway::Value;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML: {source}")]
    Yaml {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("template: {0}")]
    Invalid(String),
}

/// Lambda's own default when a function sets no timeout.
const LAMBDA_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Amazon MQ event source mapping defaults (Lambda's CreateEventSourceMapping reference).
const MQ_DEFAULT_BATCH_SIZE: usize = 100;
const MQ_DEFAULT_WINDOW: Duration = Duration::from_millis(500);

/// One `AWS::Serverless::Function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub logical_id: String,
    /// The cargo binary, which is also the function's name in `cargo lambda watch`.
    pub binary: String,
    pub timeout: Duration,
}

/// The JWT authorizer a route is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuthorizer {
    /// Its name under the API's `Auth.Authorizers`.
    pub name: String,
    /// The lower-case request header that carries the token (its `IdentitySource`).
    pub identity_header: String,
}

/// One `HttpApi` event: a route of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Upper-case method, or `ANY`.
    pub method: String,
    /// As written, e.g. `/orders/{id}/status`.
    pub path: String,
    pub function: Function,
    /// `None` for a public route (`Auth: {Authorizer: NONE}`, or an API without one).
    pub authorizer: Option<RouteAuthorizer>,
}

impl Route {
    /// The route key API Gateway puts in the event, e.g. `GET /orders/{id}`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// One `MQ` event: an Amazon MQ event source mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqSource {
    pub function: Function,
    pub queues: Vec<String>,
    pub batch_size: usize,
    pub batching_window: Duration,
}

/// One `Schedule`/`ScheduleV2` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub function: Function,
    pub expression: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Template {
    pub functions: Vec<Function>,
    pub routes: Vec<Route>,
    pub mq_sources: Vec<MqSource>,
    pub schedules: Vec<Schedule>,
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            TemplateError::Yaml { source, .. } => TemplateError::Yaml {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let root: Value = serde_norway::from_str(text).map_err(|source| TemplateError::Yaml {
            path: "template".into(),
            source,
        })?;
        let global_timeout = seconds(field(&root, &["Globals", "Function", "Timeout"]));
        let resources = field(&root, &["Resources"])
            .and_then(Value::as_mapping)
            .ok_or_else(|| TemplateError::Invalid("no Resources".into()))?;
        let apis = http_apis(&root, resources);
        let mut template = Template::default();
        for (id, resource) in resources {
            if field(resource, &["Type"]).and_then(Value::as_str)
                != Some("AWS::Serverless::Function")
            {
                continue;
            }
            let logical_id = id.as_str().unwrap_or_default().to_owned();
            let binary = field(resource, &["Metadata", "BuildProperties", "Binary"])
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TemplateError::Invalid(format!(
                        "{logical_id} has no Metadata.BuildProperties.Binary (the cargo binary to run)"
                    ))
                })?
                .to_owned();
            let timeout = seconds(field(resource, &["Properties", "Timeout"]))
                .or(global_timeout)
                .unwrap_or(LAMBDA_DEFAULT_TIMEOUT);
            let function = Function {
                logical_id,
                binary,
                timeout,
            };
            template.functions.push(function.clone());
            let Some(events) =
                field(resource, &["Properties", "Events"]).and_then(Value::as_mapping)
            else {
                continue;
            };
            for (name, event) in events {
                let properties = field(event, &["Properties"]);
                let get = |key: &str| properties.and_then(|p| field(p, &[key]));
                match field(event, &["Type"]).and_then(Value::as_str) {
                    Some("HttpApi") => {
                        let (Some(path), Some(method)) = (
                            get("Path").and_then(Value::as_str),
                            get("Method").and_then(Value::as_str),
                        ) else {
                            // An HttpApi event without Path and Method is the `$default`
                            // catch-all route, which this API does not use.
                            return Err(TemplateError::Invalid(format!(
                                "event {} of {} has no literal Path and Method",
                                name.as_str().unwrap_or_default(),
                                function.logical_id
                            )));
                        };
                        let method = method.to_ascii_uppercase();
                        let event_name = name.as_str().unwrap_or_default();
                        let authorizer = route_authorizer(&apis, properties, || {
                            format!("event {event_name} of {}", function.logical_id)
                        })?;
                        template.routes.push(Route {
                            method: if method == "*" { "ANY".into() } else { method },
                            path: path.to_owned(),
                            function: function.clone(),
                            authorizer,
                        });
                    }
                    Some("MQ") => template.mq_sources.push(MqSource {
                        function: function.clone(),
                        queues: get("Queues")
                            .and_then(Value::as_sequence)
                            .map(|queues| {
                                queues
                                    .iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_owned)
                                    .collect()
                            })
                            .unwrap_or_default(),
                        batch_size: get("BatchSize")
                            .and_then(Value::as_u64)
                            .map(|n| n as usize)
                            .unwrap_or(MQ_DEFAULT_BATCH_SIZE),
                        batching_window: seconds(get("MaximumBatchingWindowInSeconds"))
                            .unwrap_or(MQ_DEFAULT_WINDOW),
                    }),
                    Some("Schedule" | "ScheduleV2") => template.schedules.push(Schedule {
                        function: function.clone(),
                        expression: get("ScheduleExpression")
                            .or_else(|| get("Schedule"))
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    }),
                    _ => {}
                }
            }
        }
        if template.routes.is_empty() {
            return Err(TemplateError::Invalid("no HttpApi routes".into()));
        }
        Ok(template)
    }

    /// The function an `MQ` event feeds, if there is one.
    pub fn mq_source(&self) -> Option<&MqSource> {
        self.mq_sources.first()
    }

    /// The function invoked on a schedule, if there is one.
    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedules.first()
    }

    /// Every binary the stack invokes: route targets, the MQ consumer, the scheduled function.
    pub fn invoked_binaries(&self) -> Vec<String> {
        let mut binaries: Vec<String> = self
            .routes
            .iter()
            .map(|r| &r.function)
            .chain(self.mq_sources.iter().map(|m| &m.function))
            .chain(self.schedules.iter().map(|s| &s.function))
            .map(|f| f.binary.clone())
            .collect();
        binaries.sort();
        binaries.dedup();
        binaries
    }
}

/// SAM's name for the API it makes for `HttpApi` events that name none (`Globals.HttpApi`
/// configures it).
const IMPLICIT_API: &str = "ServerlessHttpApi";

/// What the local stack needs of one `AWS::Serverless::HttpApi`: its default authorizer and
/// the JWT authorizers it defines, by name, with the header each reads the token from.
#[derive(Debug, Default)]
struct HttpApi {
    default_authorizer: Option<String>,
    jwt_authorizers: Vec<RouteAuthorizer>,
    /// Authorizers of another kind (Lambda, IAM): the local gateway cannot run them.
    other_authorizers: Vec<String>,
}

fn http_api(auth: Option<&Value>) -> HttpApi {
    let mut api = HttpApi {
        default_authorizer: auth
            .and_then(|a| field(a, &["DefaultAuthorizer"]))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..HttpApi::default()
    };
    let authorizers = auth
        .and_then(|a| field(a, &["Authorizers"]))
        .and_then(Value::as_mapping);
    for (name, authorizer) in authorizers.into_iter().flatten() {
        let name = name.as_str().unwrap_or_default().to_owned();
        if field(authorizer, &["JwtConfiguration"]).is_none() {
            api.other_authorizers.push(name);
            continue;
        }
        // `$request.header.Authorization` is the default and the only form a JWT
        // authorizer takes; a `!Sub` or the like falls back to it.
        let identity_header = field(authorizer, &["IdentitySource"])
            .and_then(Value::as_str)
            .and_then(|source| source.strip_prefix("$request.header."))
            .unwrap_or("Authorization")
            .to_ascii_lowercase();
        api.jwt_authorizers.push(RouteAuthorizer {
            name,
            identity_header,
        });
    }
    api
}

/// Every `AWS::Serverless::HttpApi` by logical id, and the implicit one.
fn http_apis(root: &Value, resources: &serde_norway::Mapping) -> Vec<(String, HttpApi)> {
    let mut apis = vec![(
        IMPLICIT_API.to_owned(),
        http_api(field(root, &["Globals", "HttpApi", "Auth"])),
    )];
    for (id, resource) in resources {
        if field(resource, &["Type"]).and_then(Value::as_str) == Some("AWS::Serverless::HttpApi") {
            let id = id.as_str().unwrap_or_default().to_owned();
            apis.push((id, http_api(field(resource, &["Properties", "Auth"]))));
        }
    }
    apis
}

/// The authorizer of a route, as SAM decides it: the event's `Auth.Authorizer` (`NONE`
/// makes it public), else its API's `DefaultAuthorizer`, else none.
fn route_authorizer(
    apis: &[(String, HttpApi)],
    properties: Option<&Value>,
    event: impl Fn() -> String,
) -> Result<Option<RouteAuthorizer>, TemplateError> {
    let get = |path: &[&str]| properties.and_then(|p| field(p, path));
    let api_id = match get(&["ApiId"]) {
        None => IMPLICIT_API.to_owned(),
        Some(reference) => reference_target(reference).ok_or_else(|| {
            TemplateError::Invalid(format!(
                "{}: ApiId must be a !Ref to an AWS::Serverless::HttpApi of the template",
                event()
            ))
        })?,
    };
    let api = apis
        .iter()
        .find(|(id, _)| *id == api_id)
        .map(|(_, api)| api)
        .ok_or_else(|| {
            TemplateError::Invalid(format!(
                "{}: ApiId {api_id} is not an AWS::Serverless::HttpApi of the template",
                event()
            ))
        })?;
    let name = match get(&["Auth", "Authorizer"]) {
        Some(name) => name.as_str().ok_or_else(|| {
            TemplateError::Invalid(format!("{}: Auth.Authorizer is not a literal", event()))
        })?,
        None => match &api.default_authorizer {
            Some(name) => name.as_str(),
            None => return Ok(None),
        },
    };
    if name == "NONE" {
        return Ok(None);
    }
    if let Some(authorizer) = api.jwt_authorizers.iter().find(|a| a.name == name) {
        return Ok(Some(authorizer.clone()));
    }
    // Never serve a route open that AWS would guard.
    Err(TemplateError::Invalid(
        if api.other_authorizers.iter().any(|a| a == name) {
            format!(
                "{}: authorizer {name} is not a JWT authorizer; the local gateway checks only JWTs",
                event()
            )
        } else {
            format!("{}: authorizer {name} is not defined on {api_id}", event())
        },
    ))
}

/// The logical id a `!Ref X` (or `{Ref: X}`) names.
fn reference_target(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str().map(str::to_owned),
        Value::Mapping(_) => field(value, &["Ref"])
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

fn field<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

/// A literal number of seconds (integer or decimal); `None` for a tag such as `!Ref`.
fn seconds(value: Option<&Value>) -> Option<Duration> {
    let value = value?;
    value.as_u64().map(Duration::from_secs).or_else(|| {
        value
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/template.yaml");

    #[test]
    fn reads_routes_binaries_timeouts_and_the_mq_batching() {
        let template = Template::parse(FIXTURE).unwrap();
        let keys: Vec<(String, &str)> = template
            .routes
            .iter()
            .map(|r| (r.key(), r.function.binary.as_str()))
            .collect();
        assert!(keys.contains(&("POST /orders".into(), "create-order")));
        assert!(keys.contains(&("PATCH /orders/{id}/status".into(), "update-order-status")));
        assert!(keys.contains(&("GET /products/{id}".into(), "products-api")));
        let route = &template.routes[0];
        assert_eq!(
            route.authorizer,
            Some(RouteAuthorizer {
                name: "JwtAuthorizer".into(),
                identity_header: "authorization".into(),
            }),
            "the API's DefaultAuthorizer"
        );
        let catalogue = template
            .routes
            .iter()
            .find(|r| r.key() == "GET /products/{id}")
            .unwrap();
        assert_eq!(catalogue.authorizer, None, "Auth: {{Authorizer: NONE}}");
        assert_eq!(route.function.timeout, Duration::from_secs(10), "Globals");
        let mq = template.mq_source().unwrap();
        assert_eq!(mq.function.binary, "process-orders");
        assert_eq!(mq.function.timeout, Duration::from_secs(120));
        assert_eq!(mq.batch_size, 1000);
        assert_eq!(mq.batching_window, Duration::from_secs(1));
        assert_eq!(mq.queues, ["orders"]);
        let schedule = template.schedule().unwrap();
        assert_eq!(schedule.function.binary, "outbox-relay");
        assert_eq!(schedule.expression.as_deref(), Some("rate(1 minute)"));
        assert!(!template.invoked_binaries().contains(&"migrate".to_owned()));
    }

    #[test]
    fn the_project_template_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        if path.exists() {
            let template = Template::load(&path).unwrap();
            assert!(template.mq_source().is_some());
            // API.md: the catalogue reads are public, every other route needs a token.
            for route in &template.routes {
                let public = matches!(route.key().as_str(), "GET /products" | "GET /products/{id}");
                assert_eq!(route.authorizer.is_none(), public, "{}", route.key());
            }
        }
    }

    fn routes_of(text: &str) -> Result<Vec<(String, Option<String>)>, TemplateError> {
        Ok(Template::parse(text)?
            .routes
            .into_iter()
            .map(|r| (r.key(), r.authorizer.map(|a| a.name)))
            .collect())
    }

    const API_WITH_AUTH: &str = "Resources:\n  Api:\n    Type: AWS::Serverless::HttpApi\n    Properties:\n      Auth:\n        DefaultAuthorizer: Jwt\n        Authorizers:\n          Jwt: {IdentitySource: $request.header.X-Token, JwtConfiguration: {issuer: !Ref I, audience: [!Ref A]}}\n          Custom: {FunctionArn: !GetAtt F.Arn}\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n";

    #[test]
    fn a_route_is_behind_its_apis_default_authorizer_unless_it_says_none() {
        let routes = routes_of(&format!(
            "{API_WITH_AUTH}        A: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Path: /a, Method: get}}}}\n        B: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Path: /b, Method: get, Auth: {{Authorizer: NONE}}}}}}\n        C: {{Type: HttpApi, Properties: {{ApiId: {{Ref: Api}}, Path: /c, Method: get, Auth: {{Authorizer: Jwt}}}}}}\n"
        ))
        .unwrap();
        assert_eq!(
            routes,
            [
                ("GET /a".into(), Some("Jwt".into())),
                ("GET /b".into(), None),
                ("GET /c".into(), Some("Jwt".into())),
            ]
        );
        let template = Template::parse(&format!(
            "{API_WITH_AUTH}        A: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Path: /a, Method: get}}}}\n"
        ))
        .unwrap();
        let authorizer = template.routes[0].authorizer.clone().unwrap();
        assert_eq!(authorizer.identity_header, "x-token");
    }

    #[test]
    fn an_authorizer_the_local_gateway_cannot_check_is_an_error_not_an_open_route() {
        for (auth, expected) in [
            ("Auth: {Authorizer: Custom}", "not a JWT authorizer"),
            ("Auth: {Authorizer: Nobody}", "not defined on Api"),
        ] {
            let err = routes_of(&format!(
                "{API_WITH_AUTH}        A: {{Type: HttpApi, Properties: {{ApiId: !Ref Api, Path: /a, Method: get, {auth}}}}}\n"
            ))
            .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = routes_of(&format!(
            "{API_WITH_AUTH}        A: {{Type: HttpApi, Properties: {{ApiId: !Ref Elsewhere, Path: /a, Method: get}}}}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("Elsewhere"), "{err}");
    }

    #[test]
    fn events_without_an_api_use_the_implicit_one_of_globals() {
        let routes = routes_of(
            "Globals:\n  HttpApi:\n    Auth:\n      DefaultAuthorizer: J\n      Authorizers: {J: {JwtConfiguration: {issuer: x}}}\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n        A: {Type: HttpApi, Properties: {Path: /a, Method: get}}\n",
        )
        .unwrap();
        assert_eq!(routes, [("GET /a".into(), Some("J".into()))]);
    }

    #[test]
    fn mq_defaults_are_amazon_mqs() {
        let template = Template::parse(
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n        A: {Type: HttpApi, Properties: {Path: /a, Method: get}}\n        Q: {Type: MQ, Properties: {Broker: !Ref B, Queues: [q]}}\n",
        )
        .unwrap();
        let mq = template.mq_source().unwrap();
        assert_eq!(mq.batch_size, 100);
        assert_eq!(mq.batching_window, Duration::from_millis(500));
        assert_eq!(template.routes[0].method, "GET");
        assert_eq!(template.routes[0].function.timeout, Duration::from_secs(3));
        assert_eq!(
            template.routes[0].authorizer, None,
            "no authorizer anywhere"
        );
    }

    #[test]
    fn a_function_without_a_binary_is_named() {
        let err = Template::parse(
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties: {}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("F has no"), "{err}");
    }
}
