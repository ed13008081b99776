//! Authentication: HS256 JWTs whose `sub` is the user id.
//!
//! The gateway authenticates; components authorise (membership) from the
//! user id it hands them. Tokens are never logged.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused. Deliberately coarse: the client learns that the
/// token is bad, not which check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid or expired token")]
    Invalid,
    #[error("token subject does not match userId")]
    WrongSubject,
    #[error("invalid user id")]
    BadUserId,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

/// The components' user-id rule, shared so the gateway never admits an id
/// the components would refuse.
pub use chat_core::valid_user_id;

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies `token`; when `expected_user` is given the subject must equal it.
    pub fn verify(&self, token: &str, expected_user: Option<&str>) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let claims = data.claims;
        if !valid_user_id(&claims.sub) {
            return Err(AuthError::BadUserId);
        }
        if expected_user.is_some_and(|u| u != claims.sub) {
            return Err(AuthError::WrongSubject);
        }
        Ok(Identity {
            user_id: claims.sub,
            expires_at: claims.exp,
        })
    }

    /// Issues a token for `user` valid for `ttl_secs`.
    pub fn issue(&self, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
        anyhow::ensure!(
            valid_user_id(user),
            "user ids are 1-64 characters of [A-Za-z0-9_.-]"
        );
        let claims = Claims {
            sub: user.to_owned(),
            exp: crate::ids::now_ms() / 1000 + ttl_secs as i64,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }
}

/// The secret from configuration, or the one kept in `data_dir` (generated
/// on first use), so a newcomer's tokens keep working across restarts.
pub fn load_or_create_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        anyhow::ensure!(
            secret.len() >= 16,
            "SWITCHBOARD_JWT_SECRET must be at least 16 bytes"
        );
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(existing) => Ok(existing.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let secret = hex::encode(rand::random::<[u8; 32]>());
            write_private(&path, &secret)?;
            Ok(secret.into_bytes())
        }
        Err(e) => Err(e.into()),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(b"0123456789abcdef0123456789abcdef")
    }

    /// A token issued for alice verifies as alice, and only as alice.
    #[test]
    fn issued_token_verifies_for_its_subject() {
        let token = auth().issue("alice", 60).unwrap();
        assert_eq!(
            auth().verify(&token, Some("alice")).unwrap().user_id,
            "alice"
        );
        assert_eq!(
            auth().verify(&token, Some("bob")),
            Err(AuthError::WrongSubject)
        );
    }

    /// Tokens signed with another secret, or garbage, are refused.
    #[test]
    fn foreign_and_garbage_tokens_are_refused() {
        let other = Authenticator::new(b"another-secret-of-32-bytes-long!")
            .issue("alice", 60)
            .unwrap();
        assert_eq!(auth().verify(&other, None), Err(AuthError::Invalid));
        assert_eq!(auth().verify("not.a.jwt", None), Err(AuthError::Invalid));
    }

    /// An expired token is refused.
    #[test]
    fn expired_token_is_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: crate::ids::now_ms() / 1000 - 10,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(auth().verify(&token, None), Err(AuthError::Invalid));
    }

    /// The generated secret is kept: a second load returns the same one.
    #[test]
    fn generated_secret_is_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(None, dir.path()).unwrap(), first);
    }
}
