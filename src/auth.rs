//! JWT (HS256) issuing and verification, shared by HTTP and the Socket.IO handshake.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use callrelay_signaling::{AuthFailure, Authenticator, Identity, Role};

/// Longest user id a token may carry, in characters (the longest id the events accept).
const MAX_USER_ID_CHARS: usize = 128;
/// Longest display name a token may carry, in characters (the HTTP API's limit on names).
const MAX_NAME_CHARS: usize = 200;

/// The claims of a callrelay token (contract section 2).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub name: String,
    pub role: String,
    pub exp: u64,
    pub iat: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} must be at most {1} characters without control characters")]
    Unprintable(&'static str, usize),
    #[error("unknown role {0:?}: expected patient, doctor, staff or admin")]
    UnknownRole(String),
    #[error("could not sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs and verifies tokens with one secret. The secret itself is never logged or displayed.
pub struct JwtAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    failures: IntCounterVec,
}

impl JwtAuth {
    /// `failures` is `callrelay_auth_failures_total{reason}`.
    pub fn new(secret: &[u8], failures: IntCounterVec) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            failures,
        }
    }

    /// Issues a token for `sub` valid for `ttl_secs`.
    pub fn issue(
        &self,
        sub: &str,
        name: &str,
        role: &str,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        if sub.trim().is_empty() {
            return Err(TokenError::Empty("sub"));
        }
        if name.trim().is_empty() {
            return Err(TokenError::Empty("name"));
        }
        if !printable(sub, MAX_USER_ID_CHARS) {
            return Err(TokenError::Unprintable("sub", MAX_USER_ID_CHARS));
        }
        if !printable(name, MAX_NAME_CHARS) {
            return Err(TokenError::Unprintable("name", MAX_NAME_CHARS));
        }
        if Role::parse(role).is_none() {
            return Err(TokenError::UnknownRole(role.to_owned()));
        }
        let iat = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            iat,
            exp: iat.saturating_add(ttl_secs),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    fn check(&self, token: Option<&str>) -> Result<Identity, AuthFailure> {
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthFailure::Algorithm
                }
                _ if header_names_none(token) => AuthFailure::Algorithm,
                _ => AuthFailure::Malformed,
            })?;
        let claims = data.claims;
        let role = Role::parse(&claims.role).ok_or(AuthFailure::UnknownRole)?;
        // The user id and name are relayed to other users and stored: a token from another
        // issuer sharing the secret must not smuggle control characters (a NUL fails on
        // PostgreSQL) or megabytes into every peer list.
        if claims.sub.is_empty()
            || !printable(&claims.sub, MAX_USER_ID_CHARS)
            || !printable(&claims.name, MAX_NAME_CHARS)
        {
            return Err(AuthFailure::Malformed);
        }
        Ok(Identity {
            user_id: claims.sub,
            name: claims.name,
            role,
        })
    }
}

fn printable(s: &str, max_chars: usize) -> bool {
    s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// `alg: none` tokens do not even parse as a jsonwebtoken header; label them for operators.
fn header_names_none(token: &str) -> bool {
    use base64::Engine;
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
        .is_some_and(|alg| alg.eq_ignore_ascii_case("none"))
}

impl Authenticator for JwtAuth {
    fn verify(&self, token: Option<&str>) -> Result<Identity, AuthFailure> {
        self.check(token).inspect_err(|failure| {
            self.failures.with_label_values(&[failure.label()]).inc();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn auth(secret: &[u8]) -> JwtAuth {
        let failures =
            IntCounterVec::new(Opts::new("test_auth_failures", "test"), &["reason"]).unwrap();
        JwtAuth::new(secret, failures)
    }

    #[test]
    fn issued_tokens_verify_to_their_identity() {
        let a = auth(b"secret");
        let token = a.issue("u1", "Dr Who", "doctor", 60).unwrap();
        let who = a.verify(Some(&token)).unwrap();
        assert_eq!(who.user_id, "u1");
        assert_eq!(who.name, "Dr Who");
        assert_eq!(who.role, Role::Doctor);
    }

    #[test]
    fn refusals_are_labelled_by_reason() {
        let a = auth(b"secret");
        let other = auth(b"other-secret");
        let foreign = other.issue("u1", "X", "patient", 60).unwrap();
        assert_eq!(a.verify(None), Err(AuthFailure::Missing));
        assert_eq!(a.verify(Some("abc")), Err(AuthFailure::Malformed));
        assert_eq!(a.verify(Some(&foreign)), Err(AuthFailure::BadSignature));

        let past = jsonwebtoken::get_current_timestamp() - 3600;
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "u1".into(),
                name: "X".into(),
                role: "patient".into(),
                iat: past - 60,
                exp: past,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(a.verify(Some(&expired)), Err(AuthFailure::Expired));

        let now = jsonwebtoken::get_current_timestamp();
        let odd_role = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "u1".into(),
                name: "X".into(),
                role: "janitor".into(),
                iat: now,
                exp: now + 60,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(a.verify(Some(&odd_role)), Err(AuthFailure::UnknownRole));

        // {"alg":"none","typ":"JWT"} . {"sub":"u1",...} . (no signature)
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiJ1MSIsIm5hbWUiOiJYIiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjF9"
        );
        assert_eq!(a.verify(Some(&none)), Err(AuthFailure::Algorithm));
        assert_eq!(
            a.failures.with_label_values(&["bad_signature"]).get(),
            1,
            "failures are counted"
        );
    }

    #[test]
    fn ids_and_names_with_control_characters_or_too_long_are_malformed() {
        let a = auth(b"secret");
        for (sub, name) in [
            ("u\0x", "X"),
            ("u1", "Dr\u{0}Who"),
            ("u1", "line\nbreak"),
            (&*"u".repeat(MAX_USER_ID_CHARS + 1), "X"),
            ("u1", &*"n".repeat(MAX_NAME_CHARS + 1)),
        ] {
            assert!(matches!(
                a.issue(sub, name, "patient", 60),
                Err(TokenError::Unprintable(..))
            ));
            let now = jsonwebtoken::get_current_timestamp();
            let claims = Claims {
                sub: sub.into(),
                name: name.into(),
                role: "patient".into(),
                iat: now,
                exp: now + 60,
            };
            let key = EncodingKey::from_secret(b"secret");
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            assert_eq!(
                a.verify(Some(&token)),
                Err(AuthFailure::Malformed),
                "{sub:?} {name:?}"
            );
        }
        let token = a.issue("user-1", "Dr Zoë Ångström", "doctor", 60).unwrap();
        assert!(a.verify(Some(&token)).is_ok());
        // The limits count characters, not bytes: 200 two-byte characters are a fine name.
        let long = "é".repeat(MAX_NAME_CHARS);
        let token = a.issue("user-1", &long, "doctor", 60).unwrap();
        assert_eq!(a.verify(Some(&token)).unwrap().name, long);
    }

    #[test]
    fn issuing_refuses_unknown_roles_and_empty_names() {
        let a = auth(b"secret");
        assert!(matches!(
            a.issue("u", "n", "root", 60),
            Err(TokenError::UnknownRole(_))
        ));
        assert!(matches!(
            a.issue("", "n", "admin", 60),
            Err(TokenError::Empty("sub"))
        ));
    }
}
