//! The `iceServers` handed to clients (the `join-room` ack, `GET /api/ice-servers`), per user.
//!
//! With a shared secret, each user gets TURN credentials of their own in the TURN REST API
//! scheme that coturn's `use-auth-secret` accepts: the username is `"<unix expiry>:<userId>"`
//! and the credential is base64(HMAC-SHA1(secret, username)). They are attached to the `turn:`
//! and `turns:` URLs only; `stun:` URLs never carry credentials.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

/// How the TURN URLs are authenticated.
#[derive(Clone, Default)]
pub enum IceAuth {
    /// No credentials at all (STUN only, or an open TURN server).
    #[default]
    None,
    /// One username and credential for everyone (`media.ice_username` / `ice_credential`).
    Static {
        username: String,
        credential: String,
    },
    /// Credentials minted per user with the shared secret, valid for `ttl`.
    Minted { secret: String, ttl: Duration },
}

/// The STUN/TURN servers and how their credentials are made.
#[derive(Clone, Default)]
pub struct IceServers {
    urls: Vec<String>,
    auth: IceAuth,
}

// Secrets and credentials never reach logs, not even through `{:?}` of the configuration.
impl fmt::Debug for IceServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            IceAuth::None => "none".to_owned(),
            IceAuth::Static { username, .. } => format!("static (username {username:?})"),
            IceAuth::Minted { ttl, .. } => format!("minted per user, ttl {}s", ttl.as_secs()),
        };
        f.debug_struct("IceServers")
            .field("urls", &self.urls)
            .field("auth", &auth)
            .finish()
    }
}

fn is_turn(url: &str) -> bool {
    let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("turn:") || lower.starts_with("turns:")
}

/// The TURN REST API credential for `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_rest_credential(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

impl IceServers {
    pub fn new(urls: Vec<String>, auth: IceAuth) -> Self {
        Self { urls, auth }
    }

    /// Whether credentials are minted per user (the caller should not cache the result).
    pub fn mints(&self) -> bool {
        matches!(self.auth, IceAuth::Minted { .. })
    }

    /// RTCIceServer[] for `user_id`, with credentials minted now when a secret is set.
    pub fn for_user(&self, user_id: &str) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.for_user_at(user_id, now)
    }

    /// RTCIceServer[] for `user_id` as of `now` (seconds since the Unix epoch).
    pub fn for_user_at(&self, user_id: &str, now: u64) -> Value {
        if self.urls.is_empty() {
            return json!([]);
        }
        match &self.auth {
            IceAuth::None => json!([{"urls": self.urls}]),
            IceAuth::Static {
                username,
                credential,
            } => {
                if username.is_empty() {
                    json!([{"urls": self.urls}])
                } else {
                    json!([{"urls": self.urls, "username": username, "credential": credential}])
                }
            }
            IceAuth::Minted { secret, ttl } => {
                let (turn, stun): (Vec<&String>, Vec<&String>) =
                    self.urls.iter().partition(|u| is_turn(u));
                let mut servers = Vec::new();
                if !stun.is_empty() {
                    servers.push(json!({"urls": stun}));
                }
                if !turn.is_empty() {
                    let expiry = now.saturating_add(ttl.as_secs());
                    let username = format!("{expiry}:{user_id}");
                    let credential = turn_rest_credential(secret, &username);
                    servers.push(
                        json!({"urls": turn, "username": username, "credential": credential}),
                    );
                }
                Value::Array(servers)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with Python's hmac/hashlib/base64:
    //   base64.b64encode(hmac.new(b"callrelay-turn-secret", b"1767225600:doctor-42",
    //                             hashlib.sha1).digest())
    const SECRET: &str = "callrelay-turn-secret";
    const CREDENTIAL: &str = "KKua+r9W6WT/1kq2d07e7rk1k1Q=";

    #[test]
    fn credential_matches_an_independent_hmac_sha1() {
        assert_eq!(
            turn_rest_credential(SECRET, "1767225600:doctor-42"),
            CREDENTIAL
        );
    }

    #[test]
    fn minted_credentials_go_on_turn_urls_only() {
        let ice = IceServers::new(
            vec![
                "stun:stun.example.org:3478".into(),
                "turn:turn.example.org:3478?transport=udp".into(),
                "TURNS:turn.example.org:443?transport=tcp".into(),
            ],
            IceAuth::Minted {
                secret: SECRET.into(),
                ttl: Duration::from_secs(86_400),
            },
        );
        assert!(ice.mints());
        let got = ice.for_user_at("doctor-42", 1_767_225_600 - 86_400);
        assert_eq!(
            got,
            json!([
                {"urls": ["stun:stun.example.org:3478"]},
                {
                    "urls": ["turn:turn.example.org:3478?transport=udp",
                             "TURNS:turn.example.org:443?transport=tcp"],
                    "username": "1767225600:doctor-42",
                    "credential": CREDENTIAL,
                }
            ])
        );
    }

    #[test]
    fn each_user_gets_their_own_credentials() {
        let ice = IceServers::new(
            vec!["turn:t:3478".into()],
            IceAuth::Minted {
                secret: SECRET.into(),
                ttl: Duration::from_secs(60),
            },
        );
        let a = ice.for_user_at("a", 1000);
        let b = ice.for_user_at("b", 1000);
        assert_eq!(a[0]["username"], "1060:a");
        assert_eq!(b[0]["username"], "1060:b");
        assert_ne!(a[0]["credential"], b[0]["credential"]);
        // Only STUN: nothing to mint.
        let stun = IceServers::new(
            vec!["stun:s:3478".into()],
            IceAuth::Minted {
                secret: SECRET.into(),
                ttl: Duration::from_secs(60),
            },
        );
        assert_eq!(
            stun.for_user_at("a", 1000),
            json!([{"urls": ["stun:s:3478"]}])
        );
    }

    #[test]
    fn without_a_secret_the_static_settings_apply() {
        let urls = vec!["stun:s:3478".to_owned(), "turn:t:3478".to_owned()];
        assert_eq!(
            IceServers::new(vec![], IceAuth::None).for_user_at("a", 0),
            json!([])
        );
        assert_eq!(
            IceServers::new(urls.clone(), IceAuth::None).for_user_at("a", 0),
            json!([{"urls": urls}])
        );
        let fixed = IceServers::new(
            urls.clone(),
            IceAuth::Static {
                username: "u".into(),
                credential: "p".into(),
            },
        );
        assert!(!fixed.mints());
        assert_eq!(
            fixed.for_user_at("a", 0),
            json!([{"urls": urls, "username": "u", "credential": "p"}])
        );
    }

    #[test]
    fn debug_shows_no_secret_or_credential() {
        let minted = IceServers::new(
            vec!["turn:t:3478".into()],
            IceAuth::Minted {
                secret: "s3cr3t-value".into(),
                ttl: Duration::from_secs(60),
            },
        );
        let fixed = IceServers::new(
            vec!["turn:t:3478".into()],
            IceAuth::Static {
                username: "u".into(),
                credential: "p4ssw0rd-value".into(),
            },
        );
        let text = format!("{minted:?} {fixed:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(!text.contains("p4ssw0rd-value"), "{text}");
    }
}
