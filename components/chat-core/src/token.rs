//! Checks the bearer tokens clients carry: HS256 JWTs with `sub` (the user)
//! and `exp` (seconds since the Unix epoch), as host-gateway issues them.
//!
//! host-gateway checks tokens itself before any component runs. This is for
//! the HTTP components when they run on Spin, where nothing in front of them
//! did: there they take the caller from the token, never from a header.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token is not signed with HS256")]
    Algorithm,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token names an invalid user id")]
    BadUserId,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// The user `token` speaks for, if it is signed with `secret` and has not
/// expired at `now_secs` (no leeway, as the gateway).
pub fn verify_hs256(token: &str, secret: &[u8], now_secs: i64) -> Result<String, TokenError> {
    let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if claims.contains('.') {
        return Err(TokenError::Malformed);
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    // The signature is checked before the claims are trusted for anything.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| TokenError::Signature)?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&decode(signature)?)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(claims)?).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    if !crate::valid_user_id(&claims.sub) {
        return Err(TokenError::BadUserId);
    }
    Ok(claims.sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret of reasonable length";

    fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signed.as_bytes());
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn token(sub: &str, exp: i64) -> String {
        sign(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#),
            SECRET,
        )
    }

    /// A well-signed, unexpired token names its user.
    #[test]
    fn accepts_a_valid_token() {
        assert_eq!(
            verify_hs256(&token("alice", 1000), SECRET, 999),
            Ok("alice".into())
        );
    }

    /// Expired (at exp itself, too), forged, re-signed with another secret,
    /// tampered claims, another algorithm, and garbage are all refused.
    #[test]
    fn refuses_every_bad_token() {
        assert_eq!(
            verify_hs256(&token("alice", 1000), SECRET, 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_hs256(&token("alice", 1000), b"another secret", 0),
            Err(TokenError::Signature)
        );
        // Claims swapped for bob's under alice's signature.
        let alice = token("alice", 1000);
        let bob = token("bob", 1000);
        let parts: Vec<&str> = alice.split('.').collect();
        let bobs_claims = bob.split('.').nth(1).unwrap();
        let forged = format!("{}.{bobs_claims}.{}", parts[0], parts[2]);
        assert_eq!(verify_hs256(&forged, SECRET, 0), Err(TokenError::Signature));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":1000}"#)
        );
        assert_eq!(verify_hs256(&none, SECRET, 0), Err(TokenError::Algorithm));
        for garbage in ["", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(verify_hs256(garbage, SECRET, 0).is_err(), "{garbage}");
        }
        let bad_user = sign(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"not a user id","exp":1000}"#,
            SECRET,
        );
        assert_eq!(
            verify_hs256(&bad_user, SECRET, 0),
            Err(TokenError::BadUserId)
        );
    }
}
