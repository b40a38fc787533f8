//! The caller of a request, from what API Gateway's JWT authorizer put in the request
//! context (`requestContext.authorizer.jwt`): the authorizer has already checked the
//! token's signature, issuer, audience and lifetime, so the claims are trusted here.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};

use super::ApiError;
use crate::domain::{scopes_in_claim, Caller, Staff};

/// The authenticated caller, or 401 when the request carries no authorizer claims: on a
/// route with the authorizer, API Gateway never sends such a request, so one that arrives
/// was not authorized and is answered as API Gateway would answer it.
pub(super) fn authenticate(request: &Request) -> Result<Caller, ApiError> {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
        return Err(ApiError::Unauthorized);
    };
    let jwt = context
        .authorizer
        .as_ref()
        .and_then(|authorizer| authorizer.jwt.as_ref())
        .ok_or(ApiError::Unauthorized)?;
    let claims = &jwt.claims;
    // A route with `AuthorizationScopes` also lists the token's scopes; ours have none, so
    // the claims are what counts, in either of the two names OAuth providers use.
    let scopes = ["scope", "scp"]
        .into_iter()
        .filter_map(|name| claims.get(name))
        .flat_map(|value| scopes_in_claim(value))
        .chain(jwt.scopes.iter().flatten().map(String::as_str));
    Caller::from_token(claims.get("sub").map(String::as_str), scopes)
        .map_err(|e| ApiError::Forbidden(e.to_string()))
}

/// The caller, who must be staff: 403 for a customer.
pub(super) fn staff(request: &Request) -> Result<Staff, ApiError> {
    match authenticate(request)? {
        Caller::Staff(staff) => Ok(staff),
        Caller::Customer(_) => Err(ApiError::Forbidden(
            "only staff may do this; customers may place, read and cancel their own orders".into(),
        )),
    }
}
