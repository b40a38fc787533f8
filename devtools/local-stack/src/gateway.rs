//! The local API Gateway: an HTTP/1.1 server that checks the bearer token of every route
//! behind the JWT authorizer, turns each request into the HTTP API v2 event, invokes the
//! route's function through the emulator, and answers with the mapped response, or with the
//! error API Gateway itself would give.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Version;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::apigw::{self, RequestIds, Response, RouteTable};
use crate::auth::JwtAuthorizer;
use crate::invoke::{InvokeError, Invoker};
use crate::template::Route;

/// HTTP API's integration timeout: past it the client gets a 503 whatever the function does.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Gateway {
    routes: RouteTable,
    /// Every JWT authorizer of the template checks against the local issuer: their
    /// issuers and audiences are deployment parameters.
    authorizer: JwtAuthorizer,
    invoker: Invoker,
    port: u16,
}

impl Gateway {
    pub fn new(routes: &[Route], authorizer: JwtAuthorizer, invoker: Invoker, port: u16) -> Self {
        Self {
            routes: RouteTable::new(routes),
            authorizer,
            invoker,
            port,
        }
    }

    /// Serves connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let gateway = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let gateway = Arc::clone(&gateway);
                    async move { Ok::<_, Infallible>(gateway.handle(request, remote).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("connection from {remote} ended: {e}");
                }
            });
        }
    }

    async fn handle(
        &self,
        request: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> hyper::Response<Full<Bytes>> {
        let started = Instant::now();
        let ids = RequestIds::generate();
        let (parts, body) = request.into_parts();
        let method = parts.method.as_str();
        let raw_path = parts.uri.path();
        let (response, function) = match Limited::new(body, apigw::MAX_REQUEST_BODY).collect().await
        {
            Err(e) if e.is::<LengthLimitError>() => (Response::payload_too_large(), None),
            Err(e) => {
                // The client went away or sent a broken body: nobody to answer.
                tracing::debug!("reading the body of {method} {raw_path}: {e}");
                (Response::bad_request(), None)
            }
            Ok(body) => {
                let body = body.to_bytes();
                match self.routes.find(method, raw_path) {
                    None => (Response::not_found(method, raw_path), None),
                    Some(matched) => 'routed: {
                        // Before the function, as in AWS: a refused request never reaches it.
                        let claims = match &matched.route.authorizer {
                            None => None,
                            Some(authorizer) => match self.authorizer.authorize(
                                parts
                                    .headers
                                    .get(authorizer.identity_header.as_str())
                                    .map(|v| v.as_bytes()),
                            ) {
                                Ok(claims) => Some(claims),
                                Err(rejection) => {
                                    tracing::info!(
                                        "{method} {raw_path}: unauthorized, {rejection}"
                                    );
                                    break 'routed (Response::unauthorized(rejection), None);
                                }
                            },
                        };
                        let request = apigw::Request {
                            method,
                            raw_path,
                            raw_query: parts.uri.query().unwrap_or_default(),
                            headers: &parts.headers,
                            body: &body,
                            source_ip: remote.ip(),
                            protocol: protocol(parts.version),
                            port: self.port,
                        };
                        let event = apigw::build_event(&request, &matched, &ids, claims.as_ref());
                        let response = self.invoke(matched.route, event, &ids).await;
                        (response, Some(matched.route.function.binary.as_str()))
                    }
                }
            }
        };
        tracing::info!(
            "{method} {} -> {} {}({} ms)",
            parts.uri,
            response.status,
            function.map(|f| format!("{f} ")).unwrap_or_default(),
            started.elapsed().as_millis()
        );
        into_http(response, &ids.request_id)
    }

    async fn invoke(&self, route: &Route, event: serde_json::Value, ids: &RequestIds) -> Response {
        let function = &route.function;
        let timeout = function.timeout.min(INTEGRATION_TIMEOUT);
        let payload = Bytes::from(event.to_string());
        match self
            .invoker
            .invoke(&function.binary, payload, timeout)
            .await
        {
            Ok(answer) => apigw::map_response(&answer).unwrap_or_else(|e| {
                tracing::error!(
                    "{} answered {}: {e} (request {})",
                    function.binary,
                    route.key(),
                    ids.request_id
                );
                Response::internal_server_error()
            }),
            // The function ran past its own timeout: Lambda reports a function error.
            Err(InvokeError::Timeout { .. }) if function.timeout < INTEGRATION_TIMEOUT => {
                tracing::error!(
                    "{} timed out after {:?} (request {})",
                    function.binary,
                    function.timeout,
                    ids.request_id
                );
                Response::internal_server_error()
            }
            Err(e @ (InvokeError::Timeout { .. } | InvokeError::Unreachable { .. })) => {
                tracing::error!("{e} (request {})", ids.request_id);
                Response::service_unavailable()
            }
            Err(e) => {
                tracing::error!("{e} (request {})", ids.request_id);
                Response::internal_server_error()
            }
        }
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

fn into_http(response: Response, request_id: &str) -> hyper::Response<Full<Bytes>> {
    let mut http = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *http.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = http.headers_mut();
    for (name, value) in response.headers {
        headers.append(name, value);
    }
    // HTTP API names the request in every response.
    if let Ok(value) = hyper::header::HeaderValue::from_str(request_id) {
        headers.insert("apigw-requestid", value);
    }
    http
}
