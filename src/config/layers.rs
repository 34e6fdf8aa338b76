//! The layers on figment: each one a provider whose metadata says where its values came from
//! (`config/default.toml`, the `--config` file, one environment variable each), merged in
//! order and extracted into the typed [`Config`](super::Config) after each, so that a bad value
//! is reported with its layer even when a later one overrides it; figment's errors turned into
//! [`ConfigError`]s; the replaced keys; the cross-key checks on the winning values.
//!
//! figment's own `Toml` and `Env` providers are not used: the first parses with an older `toml`
//! than the crate's, and the second reads only the process environment, names a variable
//! `SERVER.BIND`, and types its text on its own (`12345` is then no string, `1` no boolean).

use std::fmt;
use std::path::PathBuf;

use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::values::{ENV_TEXT, TOML_DATETIME, render};
use super::{Config, ConfigError, DEFAULTS_LABEL, ENV_PREFIX, ENV_SEPARATOR, redact_url};

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

impl Origin {
    /// The origin a layer's metadata records (its source: the file, or the variable's name).
    fn of(metadata: Option<&Metadata>) -> Origin {
        match metadata.and_then(|m| m.source.as_ref()) {
            Some(Source::File(path)) => Origin::File(path.clone()),
            Some(Source::Custom(name)) => Origin::Env(name.clone()),
            _ => Origin::Defaults,
        }
    }
}

/// One layer: its origin and its values.
pub(super) struct Layer {
    origin: Origin,
    data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.origin.to_string());
        match &self.origin {
            Origin::Defaults => metadata,
            Origin::File(path) => metadata.source(path.as_path()),
            Origin::Env(name) => metadata.source(name.clone()),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

impl Layer {
    /// A TOML layer; a syntax error names the layer.
    pub(super) fn toml(text: &str, origin: Origin) -> Result<Layer, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_string(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        let data = Value::serialize(table).ok().and_then(Value::into_dict);
        let data = data.ok_or_else(|| ConfigError::Schema {
            key: String::new(),
            message: "a TOML table is not a figment dictionary".to_owned(),
        })?;
        Ok(Layer { origin, data })
    }

    /// One layer per `CALLRELAY_<SECTION>__<KEY>` variable, in name order (of two equal names
    /// the later one wins); the others are ignored. The text is read by the key's helper.
    pub(super) fn env(env: impl IntoIterator<Item = (String, String)>) -> Vec<Layer> {
        let mut vars: Vec<_> = env
            .into_iter()
            .filter_map(|(name, text)| Some((env_target(&name)?, name, text)))
            .collect();
        vars.sort_by(|a, b| a.1.cmp(&b.1));
        let nest = |key: String, value: Value| Dict::from([(key, value)]);
        vars.into_iter()
            .map(|((section, key), name, text)| {
                let text = nest(ENV_TEXT.to_owned(), text.into());
                let data = nest(section, nest(key, text.into()).into());
                Layer {
                    origin: Origin::Env(name),
                    data,
                }
            })
            .collect()
    }
}

/// The `(section, key)` a variable name addresses, or `None` if the variable is not
/// configuration (no `CALLRELAY_` prefix, or no `__` separator).
pub(super) fn env_target(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let (section, key) = rest.split_once(ENV_SEPARATOR)?;
    Some((section.to_ascii_lowercase(), key.to_ascii_lowercase()))
}

/// Merges the layers in order, each checked as it is laid on, then the cross-key checks.
pub(super) fn load(layers: Vec<Layer>) -> Result<Config, ConfigError> {
    let extract = |figment: &Figment| {
        figment
            .extract::<Config>()
            .map_err(|error| config_error(error, figment))
    };
    let mut figment = Figment::new();
    for layer in layers {
        figment = figment.merge(layer);
        extract(&figment)?;
    }
    let config = extract(&figment)?;
    validate(&config, &figment)?;
    Ok(config)
}

/// figment's error as a [`ConfigError`]: the key from its path, the layer from its metadata.
fn config_error(error: figment::Error, figment: &Figment) -> ConfigError {
    let origin = Origin::of(error.metadata.as_ref());
    let path = &error.path;
    // A section given as something else than a table: `server = 5`, or a datetime, which is a
    // table of one key to figment (merged into the section's table of the layers before).
    let not_a_table = |section: &str, shown: Option<String>| ConfigError::InvalidValue {
        key: section.to_owned(),
        value: shown.unwrap_or_default(),
        expected: format!("a table [{section}]"),
        origin: origin.to_string(),
    };
    match error.kind {
        Kind::UnknownField(field, _) if field == TOML_DATETIME && path.len() == 2 => {
            let datetime = figment.find_value(&format!("{}.{field}", path[0])).ok();
            not_a_table(
                &path[0],
                datetime.and_then(|v| Some(v.as_str()?.to_owned())),
            )
        }
        Kind::InvalidType(..) if path.len() == 1 => not_a_table(
            &path[0],
            figment.find_value(&path[0]).ok().map(|v| render(&v)),
        ),
        Kind::UnknownField(..) => {
            // A variable is named by its own key (`CALLRELAY_X__Y` is `x.y`, the path only `x`).
            let key = match &origin {
                Origin::Env(name) => env_target(name).map(|(s, k)| format!("{s}.{k}")),
                _ => None,
            };
            unknown_key(key.unwrap_or_else(|| path.join(".")), &origin)
        }
        Kind::InvalidValue(figment::error::Actual::Other(value), expected) => {
            ConfigError::InvalidValue {
                key: path.join("."),
                value,
                expected,
                origin: origin.to_string(),
            }
        }
        kind => ConfigError::Schema {
            key: path.join("."),
            message: kind.to_string(),
        },
    }
}

/// A key callrelay once had, the key that replaced it and what the new key means, for whoever
/// still sets the old one.
static REPLACED: &[(&str, &str, &str)] = &[(
    "server.shutdown_grace_secs",
    "server.drain_timeout_secs",
    "how long rooms and calls in progress may go on after SIGTERM, default 300",
)];

/// The error for a key callrelay does not have: unknown, or replaced by another key, named the
/// way the old one was given (in a file by its key, in the environment by its variable).
fn unknown_key(key: String, origin: &Origin) -> ConfigError {
    let origin_text = origin.to_string();
    let Some(&(_, by, note)) = REPLACED.iter().find(|r| r.0 == key) else {
        return ConfigError::UnknownKey {
            key,
            origin: origin_text,
        };
    };
    let replacement = match origin {
        Origin::Env(_) => {
            let (section, key) = by.split_once('.').unwrap_or(("", by));
            format!(
                "{ENV_PREFIX}{}{ENV_SEPARATOR}{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            )
        }
        Origin::Defaults | Origin::File(_) => format!("\"{by}\""),
    };
    ConfigError::ReplacedKey {
        key,
        replacement,
        note,
        origin: origin_text,
    }
}

/// Checks on the winning values: URL schemes, and those that involve more than one key.
fn validate(config: &Config, figment: &Figment) -> Result<(), ConfigError> {
    let origin = |key: &str| Origin::of(figment.find_metadata(key)).to_string();
    let invalid = |key: &str, value: String, expected: &str| ConfigError::InvalidValue {
        key: key.to_owned(),
        value,
        expected: expected.to_owned(),
        origin: origin(key),
    };

    let url = &config.database.url;
    if !["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(invalid(
            "database.url",
            format!("{:?}", redact_url(url)),
            "a URL starting with sqlite:, postgres:// or postgresql://",
        ));
    }

    for url in &config.media.ice_urls {
        let ok = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
        if !ok {
            return Err(invalid(
                "media.ice_urls",
                format!("{url:?}"),
                "STUN/TURN URLs starting with stun:, stuns:, turn: or turns:",
            ));
        }
    }

    let webhooks = &config.webhooks;
    for url in &webhooks.urls {
        let ok = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !ok {
            return Err(invalid(
                "webhooks.urls",
                format!("{url:?}"),
                "http:// or https:// URLs",
            ));
        }
    }
    if !webhooks.urls.is_empty() && webhooks.secret.is_empty() {
        return Err(invalid(
            "webhooks.secret",
            "\"\"".to_owned(),
            &format!(
                "a secret to sign webhooks with, since webhooks.urls is set (in {})",
                origin("webhooks.urls")
            ),
        ));
    }

    let cluster = &config.cluster;
    if cluster.is_on() {
        if !["redis://", "rediss://"]
            .iter()
            .any(|scheme| cluster.redis_url.starts_with(scheme))
        {
            return Err(invalid(
                "cluster.redis_url",
                format!("{:?}", redact_url(&cluster.redis_url)),
                "a URL starting with redis:// or rediss://, or \"\" for a single node",
            ));
        }
        if url.starts_with("sqlite:") {
            return Err(invalid(
                "database.url",
                format!("{:?}", redact_url(url)),
                &format!(
                    "a postgres:// URL shared by every node, since cluster.redis_url is set (in \
                     {}): an SQLite file belongs to one node",
                    origin("cluster.redis_url")
                ),
            ));
        }
        if config.auth.jwt_secret.is_empty() {
            return Err(invalid(
                "auth.jwt_secret",
                "\"\"".to_owned(),
                &format!(
                    "the signing secret shared by every node, since cluster.redis_url is set (in \
                     {}): a generated one would differ from node to node",
                    origin("cluster.redis_url")
                ),
            ));
        }
    }
    let node_id_ok = cluster.node_id.len() <= 64
        && cluster
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !node_id_ok {
        return Err(invalid(
            "cluster.node_id",
            format!("{:?}", cluster.node_id),
            "at most 64 letters, digits, '-', '_' or '.'",
        ));
    }

    let server = &config.server;
    if let Some(metrics) = server.metrics_bind
        && metrics == server.bind
        && server.bind.port() != 0
    {
        return Err(invalid(
            "server.metrics_bind",
            format!("\"{metrics}\""),
            "an address other than server.bind, or \"\" to serve /metrics on server.bind",
        ));
    }
    Ok(())
}
