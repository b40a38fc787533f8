//! Bearer tokens, checked locally as API Gateway's JWT authorizer checks them in AWS.
//!
//! In AWS the authorizer trusts an OIDC issuer (a Cognito user pool) and reads its keys from
//! the issuer's `jwks_uri`. Locally the issuer is this checkout: one RSA key pair made on
//! first use and kept in `.local-auth/` at the workspace root (ignored by git), its public
//! half as a JWK set the gateway verifies through, its private half signing the tokens
//! `scripts/dev-token.sh` prints. The template's issuer and audience are parameters of a
//! deployment (`!Ref`), so the local stack uses values of its own with the same semantics.

pub mod authorizer;
pub mod keys;
pub mod token;

pub use authorizer::{Claims, JwtAuthorizer, Rejection};
pub use keys::{KeyError, LocalKey};
pub use token::{TokenError, TokenRequest};

/// The `iss` of local tokens: the "issuer URL" the local authorizer is configured with. The
/// `.invalid` top-level domain (RFC 2606) can never resolve, so it names nothing real.
pub const LOCAL_ISSUER: &str = "https://auth.local-stack.invalid";

/// The audience the local authorizer accepts: a token's `aud`, or, when it has none (Cognito
/// access tokens), its `client_id`. Local tokens carry it as `client_id`, as Cognito does.
pub const LOCAL_AUDIENCE: &str = "oms-local";

/// The scope that makes a caller staff (API.md, "Authorization").
pub const STAFF_SCOPE: &str = "oms/staff";

/// The key folder, relative to the workspace root.
pub const KEY_DIR: &str = ".local-auth";
