//! The JWT authorizer of HTTP API, as AWS documents its workflow ("Controlling access to
//! HTTP APIs with JWT authorizers"): take the token from the identity source, bare or after
//! `Bearer`; decode it; check its algorithm (RSA only) and its signature with the key of the
//! issuer's JWK set its `kid` names; then `iss` equal to the issuer, `aud` — or `client_id`
//! only when there is no `aud` — one of the audiences, `exp` after now, `nbf` and `iat` not
//! after now. Any failure is a 401 and the function is not invoked. What passes reaches the
//! function as `requestContext.authorizer.jwt`, every claim turned into a string.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};

use super::keys::{KeyError, LocalKey, JWKS_FILE};
use super::{LOCAL_AUDIENCE, LOCAL_ISSUER};

/// Why a request was refused. The client only ever sees `{"message":"Unauthorized"}`; the
/// reason goes to the log and, as AWS does, to `www-authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no token")]
    Missing,
    #[error("the token is not a valid JWT")]
    Malformed,
    #[error("the token is not signed with an accepted algorithm")]
    Algorithm,
    #[error("the token's key id is not in the issuer's key set")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has no expiry")]
    NoExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token does not have a valid issuer")]
    Issuer,
    #[error("the token does not have a valid audience")]
    Audience,
}

/// The verified claims of a token, as the token carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(Map<String, Value>);

impl From<Map<String, Value>> for Claims {
    fn from(claims: Map<String, Value>) -> Self {
        Self(claims)
    }
}

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// `requestContext.authorizer` as the JWT authorizer fills it. `scopes` lists the
    /// route's `AuthorizationScopes` the token matched; no route here has any, so it is null,
    /// as in AWS, and the token's own `scope` stays among the claims.
    pub fn authorizer_context(&self) -> Value {
        let claims: Map<String, Value> = self
            .0
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(claim_text(value))))
            .collect();
        json!({"jwt": {"claims": claims, "scopes": null}})
    }
}

/// A claim as API Gateway passes it on: strings as they are, numbers as their literal text
/// (`"exp": "1612061676"`), arrays as `[a b]` (measured on AWS). AWS's authorizer renders
/// values the way Go's `fmt` does, and objects, booleans and null follow that same rule.
pub fn claim_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "<nil>".to_owned(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(claim_text).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(fields) => {
            let mut fields: Vec<(&String, &Value)> = fields.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = fields
                .into_iter()
                .map(|(name, value)| format!("{name}:{}", claim_text(value)))
                .collect();
            format!("map[{}]", fields.join(" "))
        }
    }
}

#[derive(Clone)]
struct VerifyingKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

type KeySet = HashMap<String, VerifyingKey>;

/// HTTP API accepts only RSA-based algorithms.
const RSA_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

fn key_set(jwks: &JwkSet) -> KeySet {
    jwks.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
                return None;
            }
            if !matches!(
                jwk.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            ) {
                return None;
            }
            let algorithms = match jwk.common.key_algorithm {
                None => RSA_ALGORITHMS.to_vec(),
                Some(KeyAlgorithm::RS256) => vec![Algorithm::RS256],
                Some(KeyAlgorithm::RS384) => vec![Algorithm::RS384],
                Some(KeyAlgorithm::RS512) => vec![Algorithm::RS512],
                Some(_) => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, VerifyingKey { key, algorithms }))
        })
        .collect()
}

pub struct JwtAuthorizer {
    issuer: String,
    audiences: Vec<String>,
    keys: RwLock<KeySet>,
    /// The JWK set file, read again when a token names a key not seen yet: the key folder
    /// may have been made anew while the gateway runs. AWS likewise fetches the issuer's
    /// `jwks_uri` again for a key it has not cached.
    source: Option<PathBuf>,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl JwtAuthorizer {
    pub fn new(issuer: &str, audiences: &[&str], jwks: &JwkSet) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            keys: RwLock::new(key_set(jwks)),
            source: None,
        }
    }

    /// An authorizer verifying through the JWK set in `path`.
    pub fn from_jwks_file(issuer: &str, audiences: &[&str], path: &Path) -> Result<Self, KeyError> {
        let jwks = read_jwks(path)?;
        Ok(Self {
            source: Some(path.to_path_buf()),
            ..Self::new(issuer, audiences, &jwks)
        })
    }

    /// The local stack's authorizer: the local issuer and audience, the checkout's key pair
    /// in `dir` (made now if it is missing).
    pub fn local(dir: &Path) -> Result<Self, KeyError> {
        LocalKey::load_or_create(dir)?;
        Self::from_jwks_file(LOCAL_ISSUER, &[LOCAL_AUDIENCE], &dir.join(JWKS_FILE))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Checks the identity source's value (the `Authorization` header, if sent).
    pub fn authorize(&self, identity: Option<&[u8]>) -> Result<Claims, Rejection> {
        let text = std::str::from_utf8(identity.ok_or(Rejection::Missing)?)
            .map_err(|_| Rejection::Malformed)?
            .trim();
        if text.is_empty() {
            return Err(Rejection::Missing);
        }
        let token = match text.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => text[7..].trim_start(),
            _ => text,
        };
        if token.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let kid = header.kid.as_deref().ok_or(Rejection::UnknownKey)?;
        let key = self.key(kid).ok_or(Rejection::UnknownKey)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        // The local clock is the issuer's clock: no skew to allow for.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Rejection::Signature,
                ErrorKind::ExpiredSignature => Rejection::Expired,
                ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                ErrorKind::MissingRequiredClaim(_) => Rejection::NoExpiry,
                ErrorKind::InvalidAlgorithm => Rejection::Algorithm,
                _ => Rejection::Malformed,
            })?;
        let claims = data.claims;
        self.check_claims(&claims)?;
        Ok(Claims(claims))
    }

    /// What `jsonwebtoken` leaves to the caller, or checks only when the claim parses.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), Rejection> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Rejection::Issuer);
        }
        let accepted = |value: &Value| {
            value
                .as_str()
                .is_some_and(|v| self.audiences.iter().any(|a| a == v))
        };
        // `client_id` counts only when there is no `aud` at all.
        let audience_ok = match claims.get("aud") {
            Some(Value::Array(audiences)) => audiences.iter().any(accepted),
            Some(aud) => accepted(aud),
            None => claims.get("client_id").is_some_and(accepted),
        };
        if !audience_ok {
            return Err(Rejection::Audience);
        }
        let now = chrono::Utc::now().timestamp() as f64;
        for (claim, rejection) in [
            ("nbf", Rejection::NotYetValid),
            ("iat", Rejection::IssuedInFuture),
        ] {
            match claims.get(claim) {
                None => {}
                Some(value) => match value.as_f64() {
                    Some(at) if at <= now => {}
                    Some(_) => return Err(rejection),
                    None => return Err(Rejection::Malformed),
                },
            }
        }
        Ok(())
    }

    fn key(&self, kid: &str) -> Option<VerifyingKey> {
        let known = self
            .keys
            .read()
            .ok()
            .and_then(|keys| keys.get(kid).cloned());
        if known.is_some() {
            return known;
        }
        let jwks = read_jwks(self.source.as_deref()?).ok()?;
        let keys = key_set(&jwks);
        let found = keys.get(kid).cloned();
        if let Ok(mut current) = self.keys.write() {
            *current = keys;
        }
        found
    }
}

fn read_jwks(path: &Path) -> Result<JwkSet, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| KeyError::Unreadable {
        path: path.to_path_buf(),
        message: format!("not a JWK set: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{sign, TokenRequest};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use std::sync::OnceLock;

    /// The issuer's key and another issuer's, made once for all tests (RSA key generation
    /// takes a moment).
    fn keys() -> &'static (LocalKey, LocalKey) {
        static KEYS: OnceLock<(LocalKey, LocalKey)> = OnceLock::new();
        KEYS.get_or_init(|| (LocalKey::generate().unwrap(), LocalKey::generate().unwrap()))
    }

    fn issuer_key() -> &'static LocalKey {
        &keys().0
    }

    fn authorizer() -> JwtAuthorizer {
        let jwks: JwkSet = serde_json::from_value(issuer_key().jwks()).unwrap();
        JwtAuthorizer::new(LOCAL_ISSUER, &[LOCAL_AUDIENCE], &jwks)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// A customer token's claims with some of them changed (`Null` removes one).
    fn claims_with(changes: &[(&str, Value)]) -> Value {
        let mut claims = TokenRequest::customer("alice").claims(now());
        for (name, value) in changes {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(*name),
                value => claims
                    .as_object_mut()
                    .unwrap()
                    .insert(name.to_string(), value.clone()),
            };
        }
        claims
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn check(header: &str) -> Result<Claims, Rejection> {
        authorizer().authorize(Some(header.as_bytes()))
    }

    fn check_claims(changes: &[(&str, Value)]) -> Result<Claims, Rejection> {
        check(&bearer(&sign(issuer_key(), &claims_with(changes)).unwrap()))
    }

    #[test]
    fn a_token_of_the_issuer_passes_with_its_claims() {
        let token = TokenRequest::staff("alice").issue(issuer_key()).unwrap();
        let claims = check(&bearer(&token)).unwrap();
        assert_eq!(claims.get("sub"), Some(&json!("alice")));
        assert_eq!(claims.get("scope"), Some(&json!("oms/staff")));
        // AWS takes the token bare too, and the scheme in any case.
        assert!(check(&token).is_ok());
        assert!(check(&format!("bearer {token}")).is_ok());
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let forger = keys().1.clone().with_kid(&issuer_key().kid);
        let token = TokenRequest::staff("mallory").issue(&forger).unwrap();
        assert_eq!(check(&bearer(&token)), Err(Rejection::Signature));
        // The issuer's own token with its payload swapped for another: the same.
        let genuine = TokenRequest::customer("mallory")
            .issue(issuer_key())
            .unwrap();
        let staff = TokenRequest::staff("mallory").issue(issuer_key()).unwrap();
        let parts: Vec<&str> = genuine.split('.').collect();
        let staff_payload = staff.split('.').nth(1).unwrap();
        let tampered = format!("{}.{staff_payload}.{}", parts[0], parts[2]);
        assert_eq!(check(&bearer(&tampered)), Err(Rejection::Signature));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let token = TokenRequest {
            expires_in: -1,
            ..TokenRequest::default()
        }
        .issue(issuer_key())
        .unwrap();
        assert_eq!(check(&bearer(&token)), Err(Rejection::Expired));
        assert_eq!(
            check_claims(&[("exp", Value::Null)]),
            Err(Rejection::NoExpiry)
        );
        assert_eq!(
            check_claims(&[("exp", json!("tomorrow"))]),
            Err(Rejection::NoExpiry)
        );
    }

    #[test]
    fn a_token_not_valid_yet_or_issued_in_the_future_is_refused() {
        let later = json!(now() + 600);
        assert_eq!(
            check_claims(&[("nbf", later.clone())]),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(
            check_claims(&[("nbf", json!("soon"))]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            check_claims(&[("iat", later)]),
            Err(Rejection::IssuedInFuture)
        );
        // Both are optional.
        assert!(check_claims(&[("nbf", Value::Null), ("iat", Value::Null)]).is_ok());
    }

    #[test]
    fn the_issuer_must_be_the_configured_one() {
        for iss in [
            json!("https://someone-else.invalid"),
            json!(format!("{LOCAL_ISSUER}/")),
            json!([LOCAL_ISSUER]),
            Value::Null,
        ] {
            assert_eq!(
                check_claims(&[("iss", iss.clone())]),
                Err(Rejection::Issuer),
                "{iss}"
            );
        }
    }

    #[test]
    fn the_audience_is_aud_or_else_client_id() {
        assert!(check_claims(&[("client_id", json!(LOCAL_AUDIENCE))]).is_ok());
        assert!(
            check_claims(&[("aud", json!(LOCAL_AUDIENCE)), ("client_id", Value::Null)]).is_ok()
        );
        assert!(check_claims(&[("aud", json!(["other", LOCAL_AUDIENCE]))]).is_ok());
        for changes in [
            vec![("aud", json!("other"))],
            // `aud` wins over a right `client_id`.
            vec![
                ("aud", json!(["other"])),
                ("client_id", json!(LOCAL_AUDIENCE)),
            ],
            vec![("client_id", json!("other"))],
            vec![("client_id", Value::Null)],
            vec![("aud", json!(7))],
        ] {
            assert_eq!(
                check_claims(&changes),
                Err(Rejection::Audience),
                "{changes:?}"
            );
        }
    }

    #[test]
    fn no_token_or_not_a_token_is_refused() {
        let authorizer = authorizer();
        assert_eq!(authorizer.authorize(None), Err(Rejection::Missing));
        assert_eq!(authorizer.authorize(Some(b"")), Err(Rejection::Missing));
        assert_eq!(
            authorizer.authorize(Some(b"Bearer ")),
            Err(Rejection::Missing)
        );
        assert_eq!(
            authorizer.authorize(Some(b"Bearer \xff\xfe")),
            Err(Rejection::Malformed)
        );
        let token = TokenRequest::staff("alice").issue(issuer_key()).unwrap();
        for header in [
            "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
            format!("Token {token}"),
            format!("Bearer{token}"),
            "Bearer not-a-jwt".to_owned(),
            "Bearer a.b.c".to_owned(),
            format!("Bearer {}", &token[..token.len() / 2]),
        ] {
            let outcome = check(&header);
            assert!(
                matches!(outcome, Err(Rejection::Malformed | Rejection::Signature)),
                "{header}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_key_the_issuer_does_not_publish_is_refused() {
        let stranger = TokenRequest::staff("alice").issue(&keys().1).unwrap();
        assert_eq!(check(&bearer(&stranger)), Err(Rejection::UnknownKey));
        let claims = TokenRequest::staff("alice").claims(now());
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            issuer_key().encoding_key(),
        )
        .unwrap();
        assert_eq!(check(&bearer(&no_kid)), Err(Rejection::UnknownKey));
    }

    #[test]
    fn unsigned_and_hmac_tokens_are_refused() {
        let claims = TokenRequest::staff("alice").claims(now());
        let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let kid = &issuer_key().kid;
        for alg in ["none", "None"] {
            let unsigned = format!(
                "{}.{}.",
                encode(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
                encode(&claims)
            );
            let outcome = check(&bearer(&unsigned));
            assert!(
                matches!(outcome, Err(Rejection::Malformed | Rejection::Algorithm)),
                "{alg}: {outcome:?}"
            );
        }
        // The classic confusion: HMAC keyed with what the verifier holds as public.
        let jwks = issuer_key().jwks();
        let secret = jwks["keys"][0]["n"].as_str().unwrap();
        let hmac = jsonwebtoken::encode(
            &Header {
                kid: Some(kid.clone()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&bearer(&hmac)), Err(Rejection::Algorithm));
    }

    #[test]
    fn a_key_set_written_after_start_is_read_when_a_token_names_its_key() {
        let dir = std::env::temp_dir().join(format!(
            "local-stack-authorizer-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(JWKS_FILE);
        std::fs::write(&path, issuer_key().jwks().to_string()).unwrap();
        let authorizer =
            JwtAuthorizer::from_jwks_file(LOCAL_ISSUER, &[LOCAL_AUDIENCE], &path).unwrap();
        let newer = TokenRequest::staff("alice").issue(&keys().1).unwrap();
        assert_eq!(
            authorizer.authorize(Some(bearer(&newer).as_bytes())),
            Err(Rejection::UnknownKey)
        );
        std::fs::write(&path, keys().1.jwks().to_string()).unwrap();
        assert!(authorizer
            .authorize(Some(bearer(&newer).as_bytes()))
            .is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn claims_reach_the_event_as_strings() {
        let claims = Claims::from(
            json!({
                "sub": "alice",
                "exp": 1612061676,
                "ratio": 1.5,
                "email_verified": true,
                "cognito:groups": ["admin", "users"],
                "nested": {"b": [1, 2], "a": "x"},
                "nothing": null,
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        assert_eq!(
            claims.authorizer_context(),
            json!({"jwt": {
                "claims": {
                    "sub": "alice",
                    "exp": "1612061676",
                    "ratio": "1.5",
                    "email_verified": "true",
                    "cognito:groups": "[admin users]",
                    "nested": "map[a:x b:[1 2]]",
                    "nothing": "<nil>",
                },
                "scopes": null,
            }})
        );
    }
}
