//! The local issuer's key pair: made once per checkout by whichever process needs it first
//! (the gateway starting, `dev-token`, a test), then read by every other.
//!
//! The folder holds `private-key.pem` (PKCS#8) and `jwks.json`, the public key as a JWK set
//! (`kid`, `alg: RS256`, `use: sig`), which is what the gateway verifies through. The key id
//! is the key's RFC 7638 thumbprint, so the JWK set follows from the private key alone: any
//! process may (re)write it and all write the same bytes.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::EncodingKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

pub const PRIVATE_KEY_FILE: &str = "private-key.pem";
pub const JWKS_FILE: &str = "jwks.json";

/// What Cognito signs with, and the least NIST still accepts.
const KEY_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an RSA private key in PKCS#8 PEM ({message}); delete the folder to make a new key", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("cannot generate an RSA key: {0}")]
    Generate(String),
    #[error("cannot encode the RSA key: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The signing key of the local issuer, with the key id tokens name it by.
#[derive(Clone)]
pub struct LocalKey {
    /// The `kid` of its JWK and of every token it signs.
    pub kid: String,
    private: RsaPrivateKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key, not even in a test failure.
        f.debug_struct("LocalKey").field("kid", &self.kid).finish()
    }
}

impl LocalKey {
    /// A new key pair in memory only (the tests' "other issuer").
    pub fn generate() -> Result<Self, KeyError> {
        let private = RsaPrivateKey::new(&mut OsRng, KEY_BITS)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private(private)
    }

    /// The checkout's key pair in `dir`, created there if it is not yet. Safe when several
    /// processes start at once: each writes its candidate to a file of its own and hard-links
    /// it into place, which fails for all but the first; the others read the winner's.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let key_path = dir.join(PRIVATE_KEY_FILE);
        let pem = match fs::read_to_string(&key_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let candidate = Self::generate()?;
                let pem = candidate
                    .private
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| KeyError::Encode(e.to_string()))?;
                let temporary = temporary_path(dir, PRIVATE_KEY_FILE);
                write_new(&temporary, pem.as_bytes(), 0o600)?;
                let linked = fs::hard_link(&temporary, &key_path);
                let _ = fs::remove_file(&temporary);
                match linked {
                    Ok(()) => {}
                    // Another process was first: its key is the checkout's.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(&key_path)(e)),
                }
                fs::read_to_string(&key_path).map_err(io(&key_path))?
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let private = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Unreadable {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let key = Self::from_private(private)?;
        key.write_jwks(&dir.join(JWKS_FILE))?;
        Ok(key)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, KeyError> {
        // ring, which signs, reads RSA keys as PKCS#1 DER.
        let der = private
            .to_pkcs1_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let (n, e) = components(&private);
        let kid = thumbprint(&n, &e);
        Ok(Self {
            kid,
            private,
            encoding,
        })
    }

    /// The same key under another key id: a token it signs names a key the verifier knows
    /// but carries a signature that key did not make (the tests' forged token).
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = kid.to_owned();
        self
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public key as a JWK set, as an issuer publishes it at its `jwks_uri`.
    pub fn jwks(&self) -> Value {
        let (n, e) = components(&self.private);
        json!({
            "keys": [{
                "kty": "RSA",
                "kid": self.kid,
                "alg": "RS256",
                "use": "sig",
                "n": n,
                "e": e,
            }]
        })
    }

    /// Writes the JWK set unless the file already says the same: a temporary file renamed
    /// over it, so a reader never sees half a file.
    fn write_jwks(&self, path: &Path) -> Result<(), KeyError> {
        let text = format!("{:#}\n", self.jwks());
        match fs::read_to_string(path) {
            Ok(existing) if existing == text => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let temporary = temporary_path(dir, JWKS_FILE);
        write_new(&temporary, text.as_bytes(), 0o644)?;
        fs::rename(&temporary, path).map_err(|e| {
            let _ = fs::remove_file(&temporary);
            io(path)(e)
        })
    }
}

/// The modulus and exponent, base64url as JWKs carry them (RFC 7518, 6.3.1).
fn components(private: &RsaPrivateKey) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
        URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
    )
}

/// RFC 7638: SHA-256 over the required members in lexicographic order, without spaces.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// A name in `dir` no other process uses.
fn temporary_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    // Durable before it is linked into place: a crash must not leave an empty key.
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(path);
            io(path)(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "local-stack-keys-{}",
                uuid::Uuid::now_v7().simple()
            ));
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_key_is_made_once_and_read_back_after() {
        let dir = TempDir::new();
        let first = LocalKey::load_or_create(&dir.0).unwrap();
        let second = LocalKey::load_or_create(&dir.0).unwrap();
        assert_eq!(first.kid, second.kid);
        let jwks: Value =
            serde_json::from_str(&fs::read_to_string(dir.0.join(JWKS_FILE)).unwrap()).unwrap();
        assert_eq!(jwks, first.jwks());
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kid"], first.kid.as_str());
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["e"], "AQAB");
        // The parser that verifies reads it.
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
        assert!(set.find(&first.kid).is_some());
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(dir.0.join(name)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(
            mode(PRIVATE_KEY_FILE),
            0o600,
            "the private key is the owner's"
        );
        let leftovers: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn processes_starting_at_once_agree_on_one_key() {
        let dir = TempDir::new();
        let starting = Arc::new(Barrier::new(4));
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let path = dir.0.clone();
                let starting = Arc::clone(&starting);
                std::thread::spawn(move || {
                    starting.wait();
                    LocalKey::load_or_create(&path).unwrap().kid
                })
            })
            .collect();
        let kids: Vec<String> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
        let jwks = fs::read_to_string(dir.0.join(JWKS_FILE)).unwrap();
        assert!(jwks.contains(&kids[0]));
    }

    #[test]
    fn a_stale_key_set_is_rewritten_from_the_private_key() {
        let dir = TempDir::new();
        let key = LocalKey::load_or_create(&dir.0).unwrap();
        fs::write(dir.0.join(JWKS_FILE), r#"{"keys":[]}"#).unwrap();
        let again = LocalKey::load_or_create(&dir.0).unwrap();
        assert_eq!(again.kid, key.kid);
        let jwks = fs::read_to_string(dir.0.join(JWKS_FILE)).unwrap();
        assert!(jwks.contains(&key.kid));
    }

    #[test]
    fn a_damaged_key_is_named_not_replaced() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join(PRIVATE_KEY_FILE), "not a key").unwrap();
        let err = LocalKey::load_or_create(&dir.0).unwrap_err();
        assert!(err.to_string().contains(PRIVATE_KEY_FILE), "{err}");
        assert_eq!(
            fs::read_to_string(dir.0.join(PRIVATE_KEY_FILE)).unwrap(),
            "not a key"
        );
    }

    #[test]
    fn the_key_id_is_the_rfc_7638_thumbprint() {
        // RFC 7638, section 3.1: the example key and its thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
