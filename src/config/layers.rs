//! The layers' engine: the schema of every key (type, range, how it is shown in errors), and
//! the merge of defaults, file and environment into one checked value per key, with the
//! cross-key checks and the build of the typed [`Config`](super::Config).

use super::*;

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// What a key holds; decides how TOML and environment values are checked and parsed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    SocketAddr,
    /// A socket address, or `""` for none.
    OptSocketAddr,
    Ip,
    IpList,
    StrList,
    /// A string, one of these.
    Enum(&'static [&'static str]),
}

/// How a value may be shown in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Plain,
    /// Never shown.
    Secret,
    /// Shown with the password removed.
    Url,
}

#[derive(Debug)]
pub(super) struct Field {
    pub(super) section: &'static str,
    pub(super) key: &'static str,
    kind: Kind,
    shown: Shown,
}

impl Field {
    pub(super) fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// `CALLRELAY_<SECTION>__<KEY>`.
    #[cfg(test)]
    pub(super) fn env_name(&self) -> String {
        format!(
            "{ENV_PREFIX}{}{ENV_SEPARATOR}{}",
            self.section.to_ascii_uppercase(),
            self.key.to_ascii_uppercase()
        )
    }
}

const fn field(section: &'static str, key: &'static str, kind: Kind) -> Field {
    Field {
        section,
        key,
        kind,
        shown: Shown::Plain,
    }
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

const BYTES: Kind = int(1, 1 << 30);
const RATE: Kind = int(1, 1_000_000);

/// Every key callrelay understands. `config/default.toml` must define each of them.
pub(super) static SCHEMA: &[Field] = &[
    field("server", "bind", Kind::SocketAddr),
    field("server", "metrics_bind", Kind::OptSocketAddr),
    field("server", "log_format", Kind::Enum(LogFormat::NAMES)),
    field("server", "drain_timeout_secs", int(0, 86_400)),
    field("server", "web_dir", Kind::Str),
    Field {
        shown: Shown::Url,
        ..field("database", "url", Kind::Str)
    },
    field("database", "max_connections", int(1, 10_000)),
    Field {
        shown: Shown::Secret,
        ..field("auth", "jwt_secret", Kind::Str)
    },
    field("auth", "dev_tokens", Kind::Bool),
    field("auth", "token_ttl_secs", int(1, 315_360_000)),
    field("media", "bind_ip", Kind::Ip),
    field("media", "udp_port", int(0, 65_535)),
    field("media", "ice_tcp", Kind::Bool),
    field("media", "tcp_port", int(0, 65_535)),
    field("media", "public_ips", Kind::IpList),
    field("media", "workers", int(0, 256)),
    field("media", "mode", Kind::Enum(MediaMode::NAMES)),
    field("media", "p2p_timeout_ms", int(1, 600_000)),
    field("media", "ice_urls", Kind::StrList),
    field("media", "ice_username", Kind::Str),
    Field {
        shown: Shown::Secret,
        ..field("media", "ice_credential", Kind::Str)
    },
    Field {
        shown: Shown::Secret,
        ..field("media", "ice_secret", Kind::Str)
    },
    field("media", "ice_ttl_secs", int(60, 604_800)),
    field("calls", "ring_timeout_secs", int(1, 3600)),
    field("limits", "max_chat_chars", int(1, 1_000_000)),
    field("limits", "max_sdp_bytes", BYTES),
    field("limits", "max_candidate_bytes", BYTES),
    field("limits", "max_http_body_bytes", BYTES),
    field("limits", "max_socket_message_bytes", BYTES),
    field("limits", "signal_rate_per_sec", RATE),
    field("limits", "signal_burst", RATE),
    field("limits", "chat_rate_per_sec", RATE),
    field("limits", "chat_burst", RATE),
    field("webhooks", "urls", Kind::StrList),
    Field {
        shown: Shown::Secret,
        ..field("webhooks", "secret", Kind::Str)
    },
];

fn lookup(section: &str, key: &str) -> Option<usize> {
    SCHEMA
        .iter()
        .position(|f| f.section == section && f.key == key)
}

fn is_section(section: &str) -> bool {
    SCHEMA.iter().any(|f| f.section == section)
}

/// A key callrelay once had and the key that replaced it.
struct Replaced {
    section: &'static str,
    key: &'static str,
    by: &'static str,
    /// What the new key means, for whoever still sets the old one.
    note: &'static str,
}

static REPLACED: &[Replaced] = &[Replaced {
    section: "server",
    key: "shutdown_grace_secs",
    by: "drain_timeout_secs",
    note: "how long rooms and calls in progress may go on after SIGTERM, default 300",
}];

/// The error for `section.key`, which the schema does not have: unknown, or replaced by another
/// key, named the way the old one was given (in a file by its key, in the environment by its
/// variable).
fn unknown_key(section: &str, key: &str, origin: &Origin) -> ConfigError {
    let replaced = REPLACED
        .iter()
        .find(|r| r.section == section && r.key == key);
    let key = format!("{section}.{key}");
    let origin_text = origin.to_string();
    let Some(replaced) = replaced else {
        return ConfigError::UnknownKey {
            key,
            origin: origin_text,
        };
    };
    let replacement = match origin {
        Origin::Env(_) => format!(
            "{ENV_PREFIX}{}{ENV_SEPARATOR}{}",
            replaced.section.to_ascii_uppercase(),
            replaced.by.to_ascii_uppercase()
        ),
        Origin::Defaults | Origin::File(_) => format!("\"{}.{}\"", replaced.section, replaced.by),
    };
    ConfigError::ReplacedKey {
        key,
        replacement,
        note: replaced.note,
        origin: origin_text,
    }
}

/// The `(section, key)` a variable name addresses, or `None` if the variable is not
/// configuration (no `CALLRELAY_` prefix, or no `__` separator).
pub(super) fn env_target(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let (section, key) = rest.split_once(ENV_SEPARATOR)?;
    Some((section.to_ascii_lowercase(), key.to_ascii_lowercase()))
}

fn expected(kind: Kind, from_env: bool) -> String {
    match kind {
        Kind::Str => "a string".to_owned(),
        Kind::Int { min, max } => format!("an integer {min}-{max}"),
        Kind::Bool if from_env => "true, false, 1 or 0".to_owned(),
        Kind::Bool => "true or false".to_owned(),
        Kind::SocketAddr => "an IP address and port such as \"127.0.0.1:3000\"".to_owned(),
        Kind::OptSocketAddr => {
            "an IP address and port such as \"127.0.0.1:9100\", or \"\" for none".to_owned()
        }
        Kind::Ip => "an IP address such as \"0.0.0.0\" or \"::\"".to_owned(),
        Kind::IpList if from_env => {
            "a comma-separated list of IP addresses such as 203.0.113.5,198.51.100.7".to_owned()
        }
        Kind::IpList => "a list of IP addresses such as [\"203.0.113.5\"]".to_owned(),
        Kind::StrList => "a list of strings".to_owned(),
        Kind::Enum(names) => {
            let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!("one of {}", names.join(", "))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------------------------

/// Where a value came from.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    Defaults,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str(DEFAULTS_LABEL),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// A checked value.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    Addr(SocketAddr),
    OptAddr(Option<SocketAddr>),
    Ip(IpAddr),
    IpList(Vec<IpAddr>),
    StrList(Vec<String>),
}

#[derive(Debug)]
struct Slot {
    val: Val,
    origin: Origin,
}

/// The winning value and its origin for each schema key.
pub(super) struct Merged {
    slots: Vec<Option<Slot>>,
}

/// How a value is shown in an error message.
fn show_text(field: &Field, text: &str) -> String {
    match field.shown {
        Shown::Plain => format!("{text:?}"),
        Shown::Secret => "<redacted>".to_owned(),
        Shown::Url => format!("{:?}", redact_url(text)),
    }
}

fn show_toml(field: &Field, value: &toml::Value) -> String {
    if field.shown == Shown::Secret {
        return "<redacted>".to_owned();
    }
    match value {
        toml::Value::String(s) => show_text(field, s),
        other => render_toml(other),
    }
}

/// A short rendering of a TOML value for error messages.
fn render_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) => "(a list)".to_owned(),
        toml::Value::Table(_) => "(a table)".to_owned(),
    }
}

fn invalid(field: &Field, value: String, from_env: bool, origin: &Origin) -> ConfigError {
    ConfigError::InvalidValue {
        key: field.name(),
        value,
        expected: expected(field.kind, from_env),
        origin: origin.to_string(),
    }
}

/// Parses the text form of a scalar (a TOML string or an environment value).
fn parse_scalar(kind: Kind, text: &str) -> Option<Val> {
    match kind {
        Kind::Str => Some(Val::Str(text.to_owned())),
        Kind::Int { min, max } => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|i| (min..=max).contains(i))
            .map(Val::Int),
        Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Val::Bool(true)),
            "false" | "0" => Some(Val::Bool(false)),
            _ => None,
        },
        Kind::SocketAddr => text.trim().parse().ok().map(Val::Addr),
        Kind::OptSocketAddr => match text.trim() {
            "" => Some(Val::OptAddr(None)),
            t => t.parse().ok().map(|a| Val::OptAddr(Some(a))),
        },
        Kind::Ip => text.trim().parse().ok().map(Val::Ip),
        Kind::Enum(names) => names
            .contains(&text.trim())
            .then(|| Val::Str(text.trim().to_owned())),
        Kind::IpList | Kind::StrList => None,
    }
}

impl Merged {
    pub(super) fn new() -> Self {
        Merged {
            slots: SCHEMA.iter().map(|_| None).collect(),
        }
    }

    pub(super) fn apply_toml(&mut self, text: &str, origin: &Origin) -> Result<(), ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_string(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        for (section, value) in table {
            if !is_section(&section) {
                return Err(ConfigError::UnknownKey {
                    key: section,
                    origin: origin.to_string(),
                });
            }
            let toml::Value::Table(keys) = value else {
                return Err(ConfigError::InvalidValue {
                    key: section.clone(),
                    value: render_toml(&value),
                    expected: format!("a table [{section}]"),
                    origin: origin.to_string(),
                });
            };
            for (key, value) in keys {
                let Some(index) = lookup(&section, &key) else {
                    return Err(unknown_key(&section, &key, origin));
                };
                let val = from_toml(&SCHEMA[index], &value, origin)?;
                self.slots[index] = Some(Slot {
                    val,
                    origin: origin.clone(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut vars: Vec<((String, String), String, String)> = env
            .into_iter()
            .filter_map(|(name, value)| Some((env_target(&name)?, name, value)))
            .collect();
        // Deterministic order (the first error reported does not depend on the environment's
        // order); the sort is stable, so of two equal names the later one wins.
        vars.sort_by(|a, b| a.1.cmp(&b.1));
        for ((section, key), name, value) in vars {
            let origin = Origin::Env(name);
            let Some(index) = lookup(&section, &key) else {
                return Err(unknown_key(&section, &key, &origin));
            };
            let val = from_env(&SCHEMA[index], &value, &origin)?;
            self.slots[index] = Some(Slot { val, origin });
        }
        Ok(())
    }

    /// Checks that involve more than the type and range of one value.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (field, slot) = self.slot("database", "url")?;
        if let Val::Str(url) = &slot.val {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !ok {
                return Err(ConfigError::InvalidValue {
                    key: field.name(),
                    value: show_text(field, url),
                    expected: "a URL starting with sqlite:, postgres:// or postgresql://"
                        .to_owned(),
                    origin: slot.origin.to_string(),
                });
            }
        }

        let (field, slot) = self.slot("media", "ice_urls")?;
        if let Val::StrList(urls) = &slot.val {
            for url in urls {
                let ok = ["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
                if !ok {
                    return Err(ConfigError::InvalidValue {
                        key: field.name(),
                        value: show_text(field, url),
                        expected: "STUN/TURN URLs starting with stun:, stuns:, turn: or turns:"
                            .to_owned(),
                        origin: slot.origin.to_string(),
                    });
                }
            }
        }

        let (field, slot) = self.slot("webhooks", "urls")?;
        if let Val::StrList(urls) = &slot.val {
            for url in urls {
                let ok = reqwest::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                if !ok {
                    return Err(ConfigError::InvalidValue {
                        key: field.name(),
                        value: show_text(field, url),
                        expected: "http:// or https:// URLs".to_owned(),
                        origin: slot.origin.to_string(),
                    });
                }
            }
            let (secret_field, secret) = self.slot("webhooks", "secret")?;
            if !urls.is_empty() && matches!(&secret.val, Val::Str(s) if s.is_empty()) {
                return Err(ConfigError::InvalidValue {
                    key: secret_field.name(),
                    value: "\"\"".to_owned(),
                    expected: format!(
                        "a secret to sign webhooks with, since webhooks.urls is set (in {})",
                        slot.origin
                    ),
                    origin: secret.origin.to_string(),
                });
            }
        }

        let (_, bind) = self.slot("server", "bind")?;
        let (field, metrics) = self.slot("server", "metrics_bind")?;
        if let (Val::Addr(bind), Val::OptAddr(Some(metrics_addr))) = (&bind.val, &metrics.val)
            && metrics_addr == bind
            && bind.port() != 0
        {
            return Err(ConfigError::InvalidValue {
                key: field.name(),
                value: format!("\"{metrics_addr}\""),
                expected: "an address other than server.bind, or \"\" to serve /metrics on \
                           server.bind"
                    .to_owned(),
                origin: metrics.origin.to_string(),
            });
        }
        Ok(())
    }

    fn slot(&self, section: &str, key: &str) -> Result<(&'static Field, &Slot), ConfigError> {
        lookup(section, key)
            .and_then(|i| Some((&SCHEMA[i], self.slots[i].as_ref()?)))
            .ok_or_else(|| ConfigError::Schema {
                key: format!("{section}.{key}"),
            })
    }

    fn get(&self, section: &str, key: &str) -> Result<&Val, ConfigError> {
        Ok(&self.slot(section, key)?.1.val)
    }

    fn schema_error(section: &str, key: &str) -> ConfigError {
        ConfigError::Schema {
            key: format!("{section}.{key}"),
        }
    }

    fn string(&self, section: &str, key: &str) -> Result<String, ConfigError> {
        match self.get(section, key)? {
            Val::Str(s) => Ok(s.clone()),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn int<T: TryFrom<i64>>(&self, section: &str, key: &str) -> Result<T, ConfigError> {
        let (field, slot) = self.slot(section, key)?;
        match slot.val {
            Val::Int(i) => {
                T::try_from(i).map_err(|_| invalid(field, i.to_string(), false, &slot.origin))
            }
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn bool(&self, section: &str, key: &str) -> Result<bool, ConfigError> {
        match self.get(section, key)? {
            Val::Bool(b) => Ok(*b),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn addr(&self, section: &str, key: &str) -> Result<SocketAddr, ConfigError> {
        match self.get(section, key)? {
            Val::Addr(a) => Ok(*a),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn opt_addr(&self, section: &str, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match self.get(section, key)? {
            Val::OptAddr(a) => Ok(*a),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn ip(&self, section: &str, key: &str) -> Result<IpAddr, ConfigError> {
        match self.get(section, key)? {
            Val::Ip(a) => Ok(*a),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn ip_list(&self, section: &str, key: &str) -> Result<Vec<IpAddr>, ConfigError> {
        match self.get(section, key)? {
            Val::IpList(l) => Ok(l.clone()),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn str_list(&self, section: &str, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(section, key)? {
            Val::StrList(l) => Ok(l.clone()),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    fn choice<T: FromStr>(&self, section: &str, key: &str) -> Result<T, ConfigError> {
        match self.get(section, key)? {
            Val::Str(s) => s.parse().map_err(|_| Self::schema_error(section, key)),
            _ => Err(Self::schema_error(section, key)),
        }
    }

    pub(super) fn build(&self) -> Result<Config, ConfigError> {
        Ok(Config {
            server: ServerConfig {
                bind: self.addr("server", "bind")?,
                metrics_bind: self.opt_addr("server", "metrics_bind")?,
                log_format: self.choice("server", "log_format")?,
                drain_timeout_secs: self.int("server", "drain_timeout_secs")?,
                web_dir: self.string("server", "web_dir")?,
            },
            database: DatabaseConfig {
                url: self.string("database", "url")?,
                max_connections: self.int("database", "max_connections")?,
            },
            auth: AuthConfig {
                jwt_secret: self.string("auth", "jwt_secret")?,
                dev_tokens: self.bool("auth", "dev_tokens")?,
                token_ttl_secs: self.int("auth", "token_ttl_secs")?,
            },
            media: MediaConfig {
                bind_ip: self.ip("media", "bind_ip")?,
                udp_port: self.int("media", "udp_port")?,
                ice_tcp: self.bool("media", "ice_tcp")?,
                tcp_port: self.int("media", "tcp_port")?,
                public_ips: self.ip_list("media", "public_ips")?,
                workers: self.int("media", "workers")?,
                mode: self.choice("media", "mode")?,
                p2p_timeout_ms: self.int("media", "p2p_timeout_ms")?,
                ice_urls: self.str_list("media", "ice_urls")?,
                ice_username: self.string("media", "ice_username")?,
                ice_credential: self.string("media", "ice_credential")?,
                ice_secret: self.string("media", "ice_secret")?,
                ice_ttl_secs: self.int("media", "ice_ttl_secs")?,
            },
            calls: CallsConfig {
                ring_timeout_secs: self.int("calls", "ring_timeout_secs")?,
            },
            limits: LimitsConfig {
                max_chat_chars: self.int("limits", "max_chat_chars")?,
                max_sdp_bytes: self.int("limits", "max_sdp_bytes")?,
                max_candidate_bytes: self.int("limits", "max_candidate_bytes")?,
                max_http_body_bytes: self.int("limits", "max_http_body_bytes")?,
                max_socket_message_bytes: self.int("limits", "max_socket_message_bytes")?,
                signal_rate_per_sec: self.int("limits", "signal_rate_per_sec")?,
                signal_burst: self.int("limits", "signal_burst")?,
                chat_rate_per_sec: self.int("limits", "chat_rate_per_sec")?,
                chat_burst: self.int("limits", "chat_burst")?,
            },
            webhooks: WebhooksConfig {
                urls: self.str_list("webhooks", "urls")?,
                secret: self.string("webhooks", "secret")?,
            },
        })
    }
}

/// Checks a TOML value: it must have the TOML type of the key's kind.
fn from_toml(field: &Field, value: &toml::Value, origin: &Origin) -> Result<Val, ConfigError> {
    let bad = |shown: String| invalid(field, shown, false, origin);
    match (field.kind, value) {
        (Kind::Int { min, max }, toml::Value::Integer(i)) if (min..=max).contains(i) => {
            Ok(Val::Int(*i))
        }
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(Val::Bool(*b)),
        (
            kind @ (Kind::Str | Kind::SocketAddr | Kind::OptSocketAddr | Kind::Ip | Kind::Enum(_)),
            toml::Value::String(s),
        ) => parse_scalar(kind, s).ok_or_else(|| bad(show_text(field, s))),
        (Kind::IpList, toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => s.trim().parse().map_err(|_| bad(show_text(field, s))),
                other => Err(bad(show_toml(field, other))),
            })
            .collect::<Result<_, _>>()
            .map(Val::IpList),
        (Kind::StrList, toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(bad(show_toml(field, other))),
            })
            .collect::<Result<_, _>>()
            .map(Val::StrList),
        _ => Err(bad(show_toml(field, value))),
    }
}

/// Parses an environment value as text; lists are comma-separated (items trimmed, empty items
/// skipped, so `""` is an empty list).
fn from_env(field: &Field, text: &str, origin: &Origin) -> Result<Val, ConfigError> {
    let bad = |shown: String| invalid(field, shown, true, origin);
    let items = || text.split(',').map(str::trim).filter(|s| !s.is_empty());
    match field.kind {
        Kind::IpList => items()
            .map(|item| item.parse().map_err(|_| bad(show_text(field, item))))
            .collect::<Result<_, _>>()
            .map(Val::IpList),
        Kind::StrList => Ok(Val::StrList(items().map(str::to_owned).collect())),
        kind => parse_scalar(kind, text).ok_or_else(|| bad(show_text(field, text))),
    }
}
