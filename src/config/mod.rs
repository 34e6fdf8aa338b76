//! Layered configuration.
//!
//! Layers, later ones win key by key:
//! 1. the built-in defaults, the committed `config/default.toml` embedded at build time;
//! 2. an optional TOML file (`--config PATH`);
//! 3. environment variables `CALLRELAY_<SECTION>__<KEY>` (list values comma-separated).
//!
//! The typed sections below are the schema: serde reads each layer into them (through figment,
//! which remembers the layer of every value), unknown keys refused, each field's range or format
//! on its `deserialize_with` helper (`values.rs`). Unknown keys, values of the wrong TOML type
//! and invalid values are errors naming the key and the layer (file path or environment
//! variable) the value came from. After merging, cross-key checks name the layer of the winning
//! value (`layers.rs`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

mod layers;
mod values;

use layers::{Layer, Origin, env_target};

/// The built-in defaults (the first layer).
const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");
/// How the built-in defaults are named in error messages.
const DEFAULTS_LABEL: &str = "config/default.toml";
/// Prefix of the configuration environment variables.
const ENV_PREFIX: &str = "CALLRELAY_";
/// Separator between section and key in environment variable names.
const ENV_SEPARATOR: &str = "__";

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The complete, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "values::table")]
    pub server: ServerConfig,
    #[serde(deserialize_with = "values::table")]
    pub database: DatabaseConfig,
    #[serde(deserialize_with = "values::table")]
    pub auth: AuthConfig,
    #[serde(deserialize_with = "values::table")]
    pub media: MediaConfig,
    #[serde(deserialize_with = "values::table")]
    pub calls: CallsConfig,
    #[serde(deserialize_with = "values::table")]
    pub consult: ConsultConfig,
    #[serde(deserialize_with = "values::table")]
    pub limits: LimitsConfig,
    #[serde(deserialize_with = "values::table")]
    pub webhooks: WebhooksConfig,
    #[serde(deserialize_with = "values::table")]
    pub cluster: ClusterConfig,
}

/// `[server]`: listeners, logging, shutdown, static files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "values::socket_addr")]
    pub bind: SocketAddr,
    /// `""` in TOML (or the environment) is `None`.
    #[serde(deserialize_with = "values::opt_socket_addr")]
    pub metrics_bind: Option<SocketAddr>,
    #[serde(deserialize_with = "values::log_format")]
    pub log_format: LogFormat,
    /// After the first SIGTERM/SIGINT: how long rooms and calls in progress may go on before
    /// they are ended (`server-restart`).
    #[serde(deserialize_with = "values::int::<0, 86_400, _, _>")]
    pub drain_timeout_secs: u64,
    #[serde(deserialize_with = "values::string")]
    pub web_dir: String,
    /// Where the server keeps its own files (the generated JWT signing secret); relative to the
    /// working directory unless absolute.
    #[serde(deserialize_with = "values::dir_path")]
    pub data_dir: PathBuf,
}

/// `server.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// `"text"`
    Text,
    /// `"json"`
    Json,
}

/// `[database]`.
///
/// `Debug` hides a password in the URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Starts with `sqlite:`, `postgres://` or `postgresql://`.
    #[serde(deserialize_with = "values::url")]
    pub url: String,
    #[serde(deserialize_with = "values::int::<1, 10_000, _, _>")]
    pub max_connections: u32,
}

/// `[auth]`.
///
/// `Debug` prints the secret as `<redacted>` (or `<empty>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Empty: the secret generated once and kept in `server.data_dir` (`crate::secret_file`).
    #[serde(deserialize_with = "values::secret")]
    pub jwt_secret: String,
    #[serde(deserialize_with = "values::boolean")]
    pub dev_tokens: bool,
    #[serde(deserialize_with = "values::int::<1, 315_360_000, _, _>")]
    pub token_ttl_secs: u64,
}

/// `[media]`.
///
/// `Debug` prints the TURN credential as `<redacted>` (or `<empty>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    #[serde(deserialize_with = "values::ip")]
    pub bind_ip: IpAddr,
    #[serde(deserialize_with = "values::int::<0, 65_535, _, _>")]
    pub udp_port: u16,
    /// ICE-TCP passive candidates on `tcp_port` (RFC 6544); false = UDP only.
    #[serde(deserialize_with = "values::boolean")]
    pub ice_tcp: bool,
    /// 0 = the UDP port's number (a free port when that is 0 too).
    #[serde(deserialize_with = "values::int::<0, 65_535, _, _>")]
    pub tcp_port: u16,
    #[serde(deserialize_with = "values::ip_list")]
    pub public_ips: Vec<IpAddr>,
    /// Media worker threads (SFU shards); 0 = one per core (the SFU resolves it).
    #[serde(deserialize_with = "values::int::<0, 256, _, _>")]
    pub workers: usize,
    #[serde(deserialize_with = "values::media_mode")]
    pub mode: MediaMode,
    #[serde(deserialize_with = "values::int::<1, 600_000, _, _>")]
    pub p2p_timeout_ms: u64,
    #[serde(deserialize_with = "values::string_list")]
    pub ice_urls: Vec<String>,
    #[serde(deserialize_with = "values::string")]
    pub ice_username: String,
    #[serde(deserialize_with = "values::secret")]
    pub ice_credential: String,
    /// Shared secret for TURN REST credentials minted per user ("" = use the static ones).
    #[serde(deserialize_with = "values::secret")]
    pub ice_secret: String,
    /// Lifetime of a minted TURN credential.
    #[serde(deserialize_with = "values::int::<60, 604_800, _, _>")]
    pub ice_ttl_secs: u64,
}

/// `media.mode`: owned by signaling, which applies it.
pub use callrelay_signaling::MediaMode;

/// `[calls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    #[serde(deserialize_with = "values::int::<1, 3600, _, _>")]
    pub ring_timeout_secs: u64,
}

/// `[consult]`: consultation rooms.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsultConfig {
    /// Patients wait to be admitted by the doctor (or an administrator); false: they enter at
    /// once.
    #[serde(deserialize_with = "values::boolean")]
    pub waiting_room: bool,
}

/// `[webhooks]`: where room and call events are POSTed, signed with the secret.
///
/// `Debug` prints the secret as `<redacted>` (or `<empty>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// `http://` or `https://` URLs; empty = no webhooks.
    #[serde(deserialize_with = "values::string_list")]
    pub urls: Vec<String>,
    /// HMAC-SHA256 key of the signature header; required when `urls` is not empty.
    #[serde(deserialize_with = "values::secret")]
    pub secret: String,
}

/// `[cluster]`: several nodes sharing a Redis and a PostgreSQL database.
///
/// `Debug` redacts the password of the Redis URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://`; empty = a single node, no Redis.
    #[serde(deserialize_with = "values::url")]
    pub redis_url: String,
    /// This node's name in the cluster; empty = the host name and the process id.
    #[serde(deserialize_with = "values::string")]
    pub node_id: String,
    /// How long a node, and the rooms pinned to it, stay registered without a heartbeat.
    #[serde(deserialize_with = "values::int::<2, 300, _, _>")]
    pub lease_secs: u64,
}

impl ClusterConfig {
    pub fn is_on(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

/// `[limits]`: sizes in bytes are 1 to 1 GiB, rates and bursts 1 to a million.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(deserialize_with = "values::int::<1, 1_000_000, _, _>")]
    pub max_chat_chars: usize,
    #[serde(deserialize_with = "values::int::<1, 1_073_741_824, _, _>")]
    pub max_sdp_bytes: usize,
    #[serde(deserialize_with = "values::int::<1, 1_073_741_824, _, _>")]
    pub max_candidate_bytes: usize,
    #[serde(deserialize_with = "values::int::<1, 1_073_741_824, _, _>")]
    pub max_http_body_bytes: usize,
    #[serde(deserialize_with = "values::int::<1, 1_073_741_824, _, _>")]
    pub max_socket_message_bytes: usize,
    #[serde(deserialize_with = "values::int::<1, 1_000_000, _, _>")]
    pub signal_rate_per_sec: u32,
    #[serde(deserialize_with = "values::int::<1, 1_000_000, _, _>")]
    pub signal_burst: u32,
    #[serde(deserialize_with = "values::int::<1, 1_000_000, _, _>")]
    pub chat_rate_per_sec: u32,
    #[serde(deserialize_with = "values::int::<1, 1_000_000, _, _>")]
    pub chat_burst: u32,
}

/// Why the configuration could not be loaded. Every message names the key and the layer
/// (`config/default.toml`, the file path, or `environment variable CALLRELAY_...`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A layer is not valid TOML.
    #[error("invalid TOML in {origin}: {message}")]
    Syntax { origin: String, message: String },
    /// A key (or section) that callrelay does not know.
    #[error("unknown key \"{key}\" in {origin}")]
    UnknownKey { key: String, origin: String },
    /// A key callrelay no longer has because another one replaced it.
    #[error("unknown key \"{key}\" in {origin}: it was replaced by {replacement} ({note})")]
    ReplacedKey {
        key: String,
        /// The new key (quoted), or its environment variable when the old one came from the
        /// environment.
        replacement: String,
        note: &'static str,
        origin: String,
    },
    /// A value of the wrong type or out of range. `value` is already quoted / redacted.
    #[error("{key}: invalid value {value} (expected {expected}), from {origin}")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
        origin: String,
    },
    /// A `CALLRELAY_<SECTION>__<KEY>` variable whose value is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode { var: String },
    /// The built-in defaults lack a key or disagree with the typed sections (a bug in callrelay).
    #[error(
        "config key {key} is missing from {DEFAULTS_LABEL} or has the wrong kind (a bug): {message}"
    )]
    Schema { key: String, message: String },
}

impl Config {
    /// Loads the defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 cannot be one of ours.
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => env.push((name, value)),
                Err(_) if env_target(&name).is_some() => {
                    return Err(ConfigError::NotUnicode { var: name });
                }
                Err(_) => {}
            }
        }
        Self::load_from(file, env)
    }

    /// Loads the defaults, then `file` (if any), then the given environment variables
    /// (`(name, value)` pairs; names not starting with `CALLRELAY_` or without `__` are ignored).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut layers = vec![Layer::toml(DEFAULTS_TOML, Origin::Defaults)?];
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_path_buf(),
                error,
            })?;
            layers.push(Layer::toml(&text, Origin::File(path.to_path_buf()))?);
        }
        layers.extend(Layer::env(env));
        layers::load(layers)
    }
}

impl Default for Config {
    /// The built-in defaults (`config/default.toml`). A unit test proves they load.
    fn default() -> Self {
        match Config::load_from(None, std::iter::empty()) {
            Ok(config) => config,
            Err(e) => unreachable!("built-in {DEFAULTS_LABEL} is invalid: {e}"),
        }
    }
}

impl LogFormat {
    const NAMES: &[&str] = &["text", "json"];

    pub fn as_str(&self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shows whether a secret is set, never the secret itself.
fn secret_marker(secret: &str) -> fmt::Arguments<'static> {
    if secret.is_empty() {
        format_args!("<empty>")
    } else {
        format_args!("<redacted>")
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &secret_marker(&self.jwt_secret))
            .field("dev_tokens", &self.dev_tokens)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .finish()
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl fmt::Debug for MediaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaConfig")
            .field("bind_ip", &self.bind_ip)
            .field("udp_port", &self.udp_port)
            .field("ice_tcp", &self.ice_tcp)
            .field("tcp_port", &self.tcp_port)
            .field("public_ips", &self.public_ips)
            .field("workers", &self.workers)
            .field("mode", &self.mode)
            .field("p2p_timeout_ms", &self.p2p_timeout_ms)
            .field("ice_urls", &self.ice_urls)
            .field("ice_username", &self.ice_username)
            .field("ice_credential", &secret_marker(&self.ice_credential))
            .field("ice_secret", &secret_marker(&self.ice_secret))
            .field("ice_ttl_secs", &self.ice_ttl_secs)
            .finish()
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("node_id", &self.node_id)
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

impl fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("urls", &self.urls)
            .field("secret", &secret_marker(&self.secret))
            .finish()
    }
}

/// Replaces the password of a URL's user info (`scheme://user:PASSWORD@host`) and any
/// `password=` query parameter with `<redacted>`; everything else is kept.
fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo_end = auth_start + at;
            if let Some(colon) = out[auth_start..userinfo_end].find(':') {
                out.replace_range(auth_start + colon + 1..userinfo_end, "<redacted>");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                    format!("{name}=<redacted>")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file under the temp dir, removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(contents: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "callrelay-config-test-{}-{n}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).expect("write temp config");
            TempToml(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(None, env(vars))
    }

    fn err_env(vars: &[(&str, &str)]) -> String {
        load_env(vars).expect_err("should fail").to_string()
    }

    fn err_file(contents: &str) -> (String, String) {
        let file = TempToml::new(contents);
        let e = Config::load_from(Some(file.path()), Vec::new()).expect_err("should fail");
        (e.to_string(), file.path().display().to_string())
    }

    #[test]
    fn embedded_defaults_parse_and_match_documented_values() {
        let c = Config::load_from(None, Vec::new()).expect("built-in defaults load");
        assert_eq!(c, Config::default());

        assert_eq!(
            c.server.bind,
            "127.0.0.1:3000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.server.metrics_bind, None);
        assert_eq!(c.server.log_format, LogFormat::Text);
        assert_eq!(c.server.drain_timeout_secs, 300);
        assert_eq!(c.server.web_dir, "web");
        assert_eq!(c.server.data_dir, Path::new("data"));

        assert_eq!(c.database.url, "sqlite://data/callrelay.db?mode=rwc");
        assert_eq!(c.database.max_connections, 10);

        assert_eq!(c.auth.jwt_secret, "");
        assert!(c.auth.dev_tokens);
        assert_eq!(c.auth.token_ttl_secs, 86400);

        assert_eq!(c.media.bind_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.media.udp_port, 50000);
        assert!(c.media.public_ips.is_empty());
        assert_eq!(c.media.workers, 0, "the default: one per core");
        assert_eq!(c.media.mode, MediaMode::P2pFirst);
        assert_eq!(c.media.p2p_timeout_ms, 5000);
        assert!(c.media.ice_urls.is_empty());
        assert_eq!(c.media.ice_username, "");
        assert_eq!(c.media.ice_credential, "");

        assert_eq!(c.calls.ring_timeout_secs, 30);
        assert!(c.consult.waiting_room, "on unless turned off");

        assert_eq!(c.limits.max_chat_chars, 2000);
        assert_eq!(c.limits.max_sdp_bytes, 65536);
        assert_eq!(c.limits.max_candidate_bytes, 2048);
        assert_eq!(c.limits.max_http_body_bytes, 65536);
        assert_eq!(c.limits.max_socket_message_bytes, 131072);
        assert_eq!(c.limits.signal_rate_per_sec, 50);
        assert_eq!(c.limits.signal_burst, 200);
        assert_eq!(c.limits.chat_rate_per_sec, 5);
        assert_eq!(c.limits.chat_burst, 10);

        assert!(!c.cluster.is_on(), "a single node unless a Redis is named");
        assert_eq!(c.cluster.node_id, "");
        assert_eq!(c.cluster.lease_secs, 10);
    }

    #[test]
    fn defaults_file_defines_and_documents_every_key() {
        // The defaults load on their own (above): every field of the typed sections has a value
        // there and nothing else is there (unknown keys are refused). Each is documented.
        let table: toml::Table = DEFAULTS_TOML.parse().unwrap();
        let mut keys = 0;
        for (section, fields) in &table {
            for key in fields.as_table().expect("a section").keys() {
                let var = format!("CALLRELAY_{section}__{key}").to_ascii_uppercase();
                assert!(
                    DEFAULTS_TOML.contains(&format!("# Env: {var}")),
                    "config/default.toml does not document {var}"
                );
                keys += 1;
            }
        }
        assert_eq!(keys, 40);
    }

    #[test]
    fn file_overrides_defaults() {
        let file = TempToml::new(
            r#"
            [server]
            bind = "0.0.0.0:3900"
            metrics_bind = "127.0.0.1:9100"
            log_format = "json"

            [media]
            udp_port = 0
            public_ips = ["203.0.113.5", "2001:db8::5"]
            mode = "sfu-only"
            ice_urls = ["stun:stun.example.org:3478"]

            [calls]
            ring_timeout_secs = 2
            "#,
        );
        let c = Config::load_from(Some(file.path()), Vec::new()).unwrap();
        assert_eq!(c.server.bind, "0.0.0.0:3900".parse::<SocketAddr>().unwrap());
        assert_eq!(
            c.server.metrics_bind,
            Some("127.0.0.1:9100".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.media.udp_port, 0);
        assert_eq!(
            c.media.public_ips,
            vec![
                "203.0.113.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(c.media.mode, MediaMode::SfuOnly);
        assert_eq!(c.media.ice_urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(c.calls.ring_timeout_secs, 2);
        // Untouched keys keep their defaults.
        assert_eq!(c.server.web_dir, "web");
        assert_eq!(c.limits, Config::default().limits);
    }

    #[test]
    fn env_overrides_file() {
        let file = TempToml::new("[media]\nudp_port = 40000\nmode = \"sfu-only\"\n");
        let c = Config::load_from(
            Some(file.path()),
            env(&[
                ("CALLRELAY_MEDIA__UDP_PORT", "41000"),
                ("CALLRELAY_SERVER__BIND", "127.0.0.1:3900"),
                (
                    "CALLRELAY_DATABASE__URL",
                    "postgres://u:p@localhost/callrelay",
                ),
                ("CALLRELAY_AUTH__JWT_SECRET", "s3cret"),
                ("CALLRELAY_AUTH__DEV_TOKENS", "0"),
                ("CALLRELAY_CALLS__RING_TIMEOUT_SECS", "2"),
                ("CALLRELAY_SERVER__METRICS_BIND", ""),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.media.udp_port, 41000);
        assert_eq!(c.media.mode, MediaMode::SfuOnly); // from the file
        assert_eq!(
            c.server.bind,
            "127.0.0.1:3900".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.database.url, "postgres://u:p@localhost/callrelay");
        assert_eq!(c.auth.jwt_secret, "s3cret");
        assert!(!c.auth.dev_tokens);
        assert_eq!(c.calls.ring_timeout_secs, 2);
        assert_eq!(c.server.metrics_bind, None);

        let c = load_env(&[("CALLRELAY_MEDIA__MODE", "p2p-only")]).unwrap();
        assert_eq!(c.media.mode, MediaMode::P2pOnly);
        assert_eq!(c.media.mode.as_str(), "p2p-only");
    }

    #[test]
    fn the_waiting_room_is_turned_off_by_file_or_variable_and_takes_booleans_only() {
        let file = TempToml::new("[consult]\nwaiting_room = false\n");
        let c = Config::load_from(Some(file.path()), Vec::new()).unwrap();
        assert!(!c.consult.waiting_room);
        assert!(
            !load_env(&[("CALLRELAY_CONSULT__WAITING_ROOM", "false")])
                .unwrap()
                .consult
                .waiting_room
        );
        assert!(
            load_env(&[("CALLRELAY_CONSULT__WAITING_ROOM", "1")])
                .unwrap()
                .consult
                .waiting_room
        );
        let e = err_env(&[("CALLRELAY_CONSULT__WAITING_ROOM", "maybe")]);
        assert!(e.contains("consult.waiting_room"), "{e}");
        assert!(e.contains("CALLRELAY_CONSULT__WAITING_ROOM"), "{e}");
        let (e, path) = err_file("[consult]\nwaiting_room = \"no\"\n");
        assert!(
            e.contains("consult.waiting_room") && e.contains(&path),
            "{e}"
        );
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let c = load_env(&[
            (
                "CALLRELAY_MEDIA__PUBLIC_IPS",
                "203.0.113.5, 198.51.100.7 ,::1",
            ),
            (
                "CALLRELAY_MEDIA__ICE_URLS",
                " stun:stun.example.org:3478 ,turn:turn.example.org?transport=udp",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.media.public_ips,
            vec![
                "203.0.113.5".parse::<IpAddr>().unwrap(),
                "198.51.100.7".parse().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            c.media.ice_urls,
            vec![
                "stun:stun.example.org:3478",
                "turn:turn.example.org?transport=udp"
            ]
        );

        // An empty value is an empty list, also over a non-empty file value.
        let file = TempToml::new("[media]\npublic_ips = [\"203.0.113.5\"]\n");
        let c = Config::load_from(
            Some(file.path()),
            env(&[("CALLRELAY_MEDIA__PUBLIC_IPS", "")]),
        )
        .unwrap();
        assert!(c.media.public_ips.is_empty());
    }

    #[test]
    fn unknown_key_in_file_names_key_and_path() {
        let (msg, path) = err_file("[server]\nbnd = \"127.0.0.1:1\"\n");
        assert_eq!(msg, format!("unknown key \"server.bnd\" in {path}"));

        let (msg, path) = err_file("[srever]\nbind = \"127.0.0.1:1\"\n");
        assert_eq!(msg, format!("unknown key \"srever\" in {path}"));

        let (msg, path) = err_file("bind = \"127.0.0.1:1\"\n");
        assert_eq!(msg, format!("unknown key \"bind\" in {path}"));
    }

    #[test]
    fn unknown_env_key_names_variable() {
        let msg = err_env(&[("CALLRELAY_MEDIA__UDP_PROT", "1")]);
        assert_eq!(
            msg,
            "unknown key \"media.udp_prot\" in environment variable CALLRELAY_MEDIA__UDP_PROT"
        );
        let msg = err_env(&[("CALLRELAY_X__Y", "1")]);
        assert!(msg.contains("CALLRELAY_X__Y"), "{msg}");
    }

    #[test]
    fn replaced_key_names_its_replacement() {
        let (msg, path) = err_file("[server]\nshutdown_grace_secs = 10\n");
        assert_eq!(
            msg,
            format!(
                "unknown key \"server.shutdown_grace_secs\" in {path}: it was replaced by \
                 \"server.drain_timeout_secs\" (how long rooms and calls in progress may go on \
                 after SIGTERM, default 300)"
            )
        );
        let msg = err_env(&[("CALLRELAY_SERVER__SHUTDOWN_GRACE_SECS", "10")]);
        assert!(
            msg.starts_with(
                "unknown key \"server.shutdown_grace_secs\" in environment variable \
                 CALLRELAY_SERVER__SHUTDOWN_GRACE_SECS: it was replaced by \
                 CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS ("
            ),
            "{msg}"
        );
        let c = load_env(&[("CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS", "2")]).unwrap();
        assert_eq!(c.server.drain_timeout_secs, 2);
        let msg = err_env(&[("CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS", "86401")]);
        assert_eq!(
            msg,
            "server.drain_timeout_secs: invalid value \"86401\" (expected an integer 0-86400), \
             from environment variable CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS"
        );
    }

    #[test]
    fn every_layer_is_checked_and_named_as_given() {
        // A bad value in the file is reported even though the environment overrides it.
        let file = TempToml::new("[media]\nudp_port = \"x\"\n");
        let msg = Config::load_from(
            Some(file.path()),
            env(&[("CALLRELAY_MEDIA__UDP_PORT", "5")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.ends_with(&file.path().display().to_string()), "{msg}");

        // A section given as a list is not read by position.
        let (msg, path) = err_file("calls = [5]\n");
        assert_eq!(
            msg,
            format!("calls: invalid value (a list) (expected a table [calls]), from {path}")
        );
        let (msg, path) = err_file("calls = 1979-05-27\n");
        assert_eq!(
            msg,
            format!("calls: invalid value 1979-05-27 (expected a table [calls]), from {path}")
        );

        // A variable is named as it was spelled, and its text is read as its key's type.
        let msg = err_env(&[("CALLRELAY_media__udp_port", "x")]);
        assert!(
            msg.ends_with("from environment variable CALLRELAY_media__udp_port"),
            "{msg}"
        );
        let c = load_env(&[
            ("CALLRELAY_AUTH__JWT_SECRET", "12345"),
            ("CALLRELAY_MEDIA__ICE_USERNAME", "true"),
            ("CALLRELAY_SERVER__WEB_DIR", "[a,b]"),
        ])
        .unwrap();
        assert_eq!(c.auth.jwt_secret, "12345");
        assert_eq!(c.media.ice_username, "true");
        assert_eq!(c.server.web_dir, "[a,b]");
    }

    #[test]
    fn env_without_separator_is_ignored() {
        let c = load_env(&[
            ("CALLRELAY_TEST_POSTGRES_URL", "postgres://x@localhost/test"),
            ("CALLRELAY_ANYTHING", "whatever"),
            ("OTHER__THING", "x"),
        ])
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_env_value_names_key_and_variable() {
        let msg = err_env(&[("CALLRELAY_MEDIA__UDP_PORT", "abc")]);
        assert_eq!(
            msg,
            "media.udp_port: invalid value \"abc\" (expected an integer 0-65535), \
             from environment variable CALLRELAY_MEDIA__UDP_PORT"
        );
        let msg = err_env(&[("CALLRELAY_MEDIA__UDP_PORT", "70000")]);
        assert!(msg.contains("0-65535"), "{msg}");

        let msg = err_env(&[("CALLRELAY_AUTH__DEV_TOKENS", "maybe")]);
        assert!(
            msg.starts_with("auth.dev_tokens: invalid value \"maybe\""),
            "{msg}"
        );
        assert!(msg.ends_with("CALLRELAY_AUTH__DEV_TOKENS"), "{msg}");

        let msg = err_env(&[("CALLRELAY_SERVER__BIND", "localhost")]);
        assert!(
            msg.starts_with("server.bind: invalid value \"localhost\""),
            "{msg}"
        );

        let msg = err_env(&[("CALLRELAY_MEDIA__PUBLIC_IPS", "203.0.113.5,1.2.3")]);
        assert!(
            msg.starts_with("media.public_ips: invalid value \"1.2.3\""),
            "{msg}"
        );
        assert!(
            msg.ends_with("environment variable CALLRELAY_MEDIA__PUBLIC_IPS"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_toml_type_is_an_error() {
        let (msg, path) = err_file("[media]\nudp_port = \"50000\"\n");
        assert_eq!(
            msg,
            format!(
                "media.udp_port: invalid value \"50000\" (expected an integer 0-65535), from {path}"
            )
        );
        let (msg, _) = err_file("[auth]\ndev_tokens = \"yes\"\n");
        assert!(msg.starts_with("auth.dev_tokens: invalid value"), "{msg}");
        let (msg, _) = err_file("[media]\npublic_ips = \"203.0.113.5\"\n");
        assert!(msg.starts_with("media.public_ips: invalid value"), "{msg}");
        let (msg, _) = err_file("[media]\nice_urls = [\"stun:a\", 3]\n");
        assert!(msg.starts_with("media.ice_urls: invalid value 3"), "{msg}");
        let (msg, path) = err_file("server = 5\n");
        assert_eq!(
            msg,
            format!("server: invalid value 5 (expected a table [server]), from {path}")
        );
        let (msg, path) = err_file("[server\n");
        assert!(
            msg.starts_with(&format!("invalid TOML in {path}: ")),
            "{msg}"
        );
    }

    #[test]
    fn validation_errors_name_key_and_source() {
        let msg = err_env(&[("CALLRELAY_DATABASE__URL", "mysql://u:hunter2@db/x")]);
        assert!(msg.starts_with("database.url: invalid value"), "{msg}");
        assert!(
            msg.ends_with("environment variable CALLRELAY_DATABASE__URL"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");

        let (msg, path) = err_file("[calls]\nring_timeout_secs = 0\n");
        assert_eq!(
            msg,
            format!(
                "calls.ring_timeout_secs: invalid value 0 (expected an integer 1-3600), from {path}"
            )
        );
        let msg = err_env(&[("CALLRELAY_CALLS__RING_TIMEOUT_SECS", "0")]);
        assert!(
            msg.starts_with("calls.ring_timeout_secs: invalid value \"0\""),
            "{msg}"
        );

        let msg = err_env(&[("CALLRELAY_LIMITS__MAX_CHAT_CHARS", "0")]);
        assert!(
            msg.starts_with("limits.max_chat_chars: invalid value"),
            "{msg}"
        );

        let (msg, path) = err_file("[media]\nmode = \"p2p\"\n");
        assert_eq!(
            msg,
            format!(
                "media.mode: invalid value \"p2p\" (expected one of \"p2p-first\", \"sfu-only\", \
                 \"p2p-only\"), from {path}"
            )
        );

        let msg = err_env(&[("CALLRELAY_MEDIA__ICE_URLS", "stun:ok.example,http://bad")]);
        assert!(
            msg.starts_with("media.ice_urls: invalid value \"http://bad\""),
            "{msg}"
        );

        let file = TempToml::new("[server]\nmetrics_bind = \"127.0.0.1:3000\"\n");
        let msg = Config::load_from(Some(file.path()), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("server.metrics_bind: invalid value"),
            "{msg}"
        );
        assert!(msg.ends_with(&file.path().display().to_string()), "{msg}");

        // The winning value's source is named: the file's bad URL is overridden, the env's wins.
        let file = TempToml::new("[database]\nurl = \"sqlite::memory:\"\n");
        let msg = Config::load_from(
            Some(file.path()),
            env(&[("CALLRELAY_DATABASE__URL", "file.db")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.ends_with("CALLRELAY_DATABASE__URL"), "{msg}");

        // All accepted URL forms.
        for url in [
            "sqlite::memory:",
            "sqlite://x.db",
            "postgres://u@h/d",
            "postgresql://u@h/d",
        ] {
            let c = load_env(&[("CALLRELAY_DATABASE__URL", url)]).unwrap();
            assert_eq!(c.database.url, url);
        }
    }

    #[test]
    fn a_cluster_needs_redis_postgresql_and_one_signing_secret() {
        let cluster = [
            (
                "CALLRELAY_CLUSTER__REDIS_URL",
                "redis://:hunter2@127.0.0.1:6379/0",
            ),
            ("CALLRELAY_DATABASE__URL", "postgres://db/callrelay"),
            ("CALLRELAY_AUTH__JWT_SECRET", "shared by every node"),
            ("CALLRELAY_CLUSTER__NODE_ID", "node-1.eu_west"),
        ];
        let c = load_env(&cluster).unwrap();
        assert!(c.cluster.is_on());
        assert_eq!(c.cluster.node_id, "node-1.eu_west");
        assert!(!format!("{:?}", c.cluster).contains("hunter2"));

        // The embedded SQLite belongs to one node.
        let msg = err_env(&cluster[..1]);
        assert!(msg.starts_with("database.url: invalid value"), "{msg}");
        assert!(
            msg.contains(
                "since cluster.redis_url is set (in environment variable \
                 CALLRELAY_CLUSTER__REDIS_URL)"
            ),
            "{msg}"
        );
        // A secret generated per node would make every other node's tokens invalid.
        let msg = err_env(&cluster[..2]);
        assert!(msg.starts_with("auth.jwt_secret: invalid value"), "{msg}");

        let mut bad = cluster;
        bad[0].1 = "http://127.0.0.1:6379";
        let msg = err_env(&bad);
        assert!(msg.starts_with("cluster.redis_url: invalid value"), "{msg}");
        let mut bad = cluster;
        bad[3].1 = "node 1";
        let msg = err_env(&bad);
        assert!(msg.starts_with("cluster.node_id: invalid value"), "{msg}");
        let msg = err_env(&[("CALLRELAY_CLUSTER__LEASE_SECS", "1")]);
        assert!(
            msg.starts_with("cluster.lease_secs: invalid value"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let path = std::env::temp_dir().join("callrelay-config-test-does-not-exist.toml");
        let e = Config::load(Some(&path)).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn secrets_do_not_reach_debug_or_errors() {
        let c = load_env(&[
            ("CALLRELAY_AUTH__JWT_SECRET", "super-secret-value"),
            ("CALLRELAY_MEDIA__ICE_CREDENTIAL", "turn-password"),
            ("CALLRELAY_DATABASE__URL", "postgres://app:db-password@db/x"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("super-secret-value"), "{debug}");
        assert!(!debug.contains("turn-password"), "{debug}");
        assert!(!debug.contains("db-password"), "{debug}");
        assert!(debug.contains("jwt_secret: <redacted>"), "{debug}");
        assert!(debug.contains("postgres://app:<redacted>@db/x"), "{debug}");

        let auth = format!("{:?}", Config::default().auth);
        assert!(auth.contains("jwt_secret: <empty>"), "{auth}");

        let (msg, _) = err_file("[auth]\njwt_secret = 12345\n");
        assert!(!msg.contains("12345"), "{msg}");
    }

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/d?sslmode=require"),
            "postgres://u:<redacted>@h:5432/d?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u@h/d?password=pw&x=1"),
            "postgres://u@h/d?password=<redacted>&x=1"
        );
        assert_eq!(
            redact_url("sqlite://data/callrelay.db?mode=rwc"),
            "sqlite://data/callrelay.db?mode=rwc"
        );
    }
}
