//! Tokens of the local issuer, shaped like Cognito access tokens: `scope` a space-separated
//! string, `token_use: "access"`, the audience as `client_id` (access tokens have no `aud`).
//! `dev-token` prints them; the end-to-end tests sign theirs here too.

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

use super::{LocalKey, LOCAL_AUDIENCE, LOCAL_ISSUER, STAFF_SCOPE};

/// What a customer's token carries as `scope`: a scope every signed-in user has, and not
/// `oms/staff`.
pub const CUSTOMER_SCOPE: &str = "openid";

pub const DEFAULT_SUBJECT: &str = "dev-user";
pub const DEFAULT_LIFETIME_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Who the token is for and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub subject: String,
    pub staff: bool,
    /// From now; negative gives a token that has already expired.
    pub expires_in: i64,
}

impl Default for TokenRequest {
    fn default() -> Self {
        Self {
            subject: DEFAULT_SUBJECT.to_owned(),
            staff: false,
            expires_in: DEFAULT_LIFETIME_SECONDS,
        }
    }
}

impl TokenRequest {
    pub fn customer(subject: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            ..Self::default()
        }
    }

    pub fn staff(subject: &str) -> Self {
        Self {
            staff: true,
            ..Self::customer(subject)
        }
    }

    /// The claims of the token, issued at `now` (seconds since the epoch).
    pub fn claims(&self, now: i64) -> Value {
        json!({
            "iss": LOCAL_ISSUER,
            "client_id": LOCAL_AUDIENCE,
            "sub": self.subject,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(self.expires_in),
            "scope": if self.staff { STAFF_SCOPE } else { CUSTOMER_SCOPE },
            "token_use": "access",
            "jti": uuid::Uuid::now_v7().to_string(),
        })
    }

    /// The signed token, issued now.
    pub fn issue(&self, key: &LocalKey) -> Result<String, TokenError> {
        sign(key, &self.claims(chrono::Utc::now().timestamp()))
    }
}

/// Any claims, signed RS256 by `key` with its `kid` in the header.
pub fn sign(key: &LocalKey, claims: &Value) -> Result<String, TokenError> {
    let header = Header {
        kid: Some(key.kid.clone()),
        ..Header::new(Algorithm::RS256)
    };
    Ok(jsonwebtoken::encode(&header, claims, key.encoding_key())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_claims_of_a_cognito_access_token() {
        let claims = TokenRequest::staff("alice").claims(1_700_000_000);
        assert_eq!(claims["iss"], LOCAL_ISSUER);
        assert_eq!(claims["client_id"], LOCAL_AUDIENCE);
        assert!(claims.get("aud").is_none());
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "oms/staff");
        assert_eq!(claims["token_use"], "access");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_003_600);
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

        let customer = TokenRequest::default().claims(10);
        assert_eq!(customer["sub"], "dev-user");
        assert!(!customer["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == STAFF_SCOPE));
        let expired = TokenRequest {
            expires_in: -60,
            ..TokenRequest::default()
        };
        assert_eq!(expired.claims(100)["exp"], 40);
    }
}
