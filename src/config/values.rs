//! How one key's value is read: the `deserialize_with` helpers named on the fields of the typed
//! sections, each with its range or format. A value comes either from a TOML layer, where it
//! must have the TOML type (`udp_port = "50000"` is an error), or from an environment
//! variable, whose text is parsed (`"50000"`, `1` for true, lists comma-separated). A bad value
//! is reported as serde's `invalid_value` with the value already shown the way an error may
//! show it (quoted, redacted); figment adds the key and the layer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use figment::value::Value;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Unexpected, Visitor};

use super::{LogFormat, MediaMode, redact_url};

/// An environment variable's text reaches the helpers as the one-key table `{ENV_TEXT = text}`
/// (see `layers`), which no TOML layer has a reason to write.
pub(super) const ENV_TEXT: &str = "\0environment variable";
/// The one key of the table a TOML datetime is serialized as.
pub(super) const TOML_DATETIME: &str = "$__toml_private_datetime";

/// What a layer gave for a key.
enum Given {
    Toml(Value),
    Env(String),
}

fn given<'de, D: Deserializer<'de>>(d: D) -> Result<Given, D::Error> {
    let value = <Value as Deserialize>::deserialize(d)?;
    if let Value::Dict(_, dict) = &value
        && dict.len() == 1
        && let Some(Value::String(_, text)) = dict.get(ENV_TEXT)
    {
        return Ok(Given::Env(text.clone()));
    }
    Ok(Given::Toml(value))
}

/// How a value may be shown in error messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    Plain,
    /// Never shown.
    Secret,
    /// Shown with the password removed.
    Url,
}

fn show_text(shown: Shown, text: &str) -> String {
    match shown {
        Shown::Plain => format!("{text:?}"),
        Shown::Secret => "<redacted>".to_owned(),
        Shown::Url => format!("{:?}", redact_url(text)),
    }
}

fn show_value(shown: Shown, value: &Value) -> String {
    match value {
        _ if shown == Shown::Secret => "<redacted>".to_owned(),
        Value::String(_, s) => show_text(shown, s),
        other => render(other),
    }
}

/// A short rendering of a TOML value for error messages.
pub(super) fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_i128(), n.to_u128(), n.to_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(x)) => x.to_string(),
            _ => "(a number)".to_owned(),
        },
        Value::Array(..) => "(a list)".to_owned(),
        Value::Dict(_, dict) => match dict.get(TOML_DATETIME) {
            Some(Value::String(_, datetime)) if dict.len() == 1 => datetime.clone(),
            _ => "(a table)".to_owned(),
        },
        Value::Empty(..) => "(nothing)".to_owned(),
    }
}

/// Reads a value with `toml` or `env`; their error is the value as shown, reported with
/// `expected` (`expected_env` for an environment variable).
fn check<'de, D: Deserializer<'de>, T>(
    d: D,
    expected: &str,
    expected_env: &str,
    toml: impl FnOnce(&Value) -> Result<T, String>,
    env: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let (result, expected) = match given(d)? {
        Given::Toml(value) => (toml(&value), expected),
        Given::Env(text) => (env(&text), expected_env),
    };
    result.map_err(|shown| D::Error::invalid_value(Unexpected::Other(&shown), &expected))
}

/// A value written as a string in TOML too: the TOML string or the variable's text, parsed alike.
fn text<'de, D: Deserializer<'de>, T>(
    d: D,
    shown: Shown,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let parse_shown = |text: &str| parse(text).ok_or_else(|| show_text(shown, text));
    check(
        d,
        expected,
        expected,
        |value| match value {
            Value::String(_, s) => parse_shown(s),
            other => Err(show_value(shown, other)),
        },
        parse_shown,
    )
}

/// Any string.
pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d, Shown::Plain, "a string", |s| Some(s.to_owned()))
}

/// Any string, never shown in errors.
pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d, Shown::Secret, "a string", |s| Some(s.to_owned()))
}

/// A string shown in errors with its password redacted (the scheme is a cross-key check's).
pub(super) fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    text(d, Shown::Url, "a string", |s| Some(s.to_owned()))
}

/// A directory: any path but an empty one.
pub(super) fn dir_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let expected = "a directory path such as \"data\" or \"/var/lib/callrelay\"";
    text(d, Shown::Plain, expected, |s| {
        (!s.trim().is_empty()).then(|| PathBuf::from(s))
    })
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let expected = "an IP address and port such as \"127.0.0.1:3000\"";
    text(d, Shown::Plain, expected, |s| s.trim().parse().ok())
}

/// A socket address, or `""` for none.
pub(super) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let expected = "an IP address and port such as \"127.0.0.1:9100\", or \"\" for none";
    text(d, Shown::Plain, expected, |s| match s.trim() {
        "" => Some(None),
        s => s.parse().ok().map(Some),
    })
}

pub(super) fn ip<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let expected = "an IP address such as \"0.0.0.0\" or \"::\"";
    text(d, Shown::Plain, expected, |s| s.trim().parse().ok())
}

/// One of `names`.
fn choice<'de, D: Deserializer<'de>, T: FromStr>(d: D, names: &[&str]) -> Result<T, D::Error> {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let expected = format!("one of {}", quoted.join(", "));
    text(d, Shown::Plain, &expected, |s| {
        names.contains(&s.trim()).then(|| s.trim().parse().ok())?
    })
}

pub(super) fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    choice(d, LogFormat::NAMES)
}

pub(super) fn media_mode<'de, D: Deserializer<'de>>(d: D) -> Result<MediaMode, D::Error> {
    choice(d, MediaMode::NAMES)
}

/// An integer `MIN`-`MAX`.
pub(super) fn int<'de, const MIN: i64, const MAX: i64, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let in_range = |i: i64| (MIN..=MAX).contains(&i).then(|| T::try_from(i).ok())?;
    let expected = format!("an integer {MIN}-{MAX}");
    check(
        d,
        &expected,
        &expected,
        |value| {
            let i = value.to_i128().and_then(|i| i64::try_from(i).ok());
            i.and_then(in_range).ok_or_else(|| render(value))
        },
        |text| {
            let i = text.trim().parse().ok();
            i.and_then(in_range).ok_or_else(|| format!("{text:?}"))
        },
    )
}

pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    check(
        d,
        "true or false",
        "true, false, 1 or 0",
        |value| match value {
            Value::Bool(_, b) => Ok(*b),
            other => Err(render(other)),
        },
        |text| match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{text:?}")),
        },
    )
}

/// A TOML list of strings, or comma-separated text (items trimmed, empty ones skipped, so `""`
/// is an empty list); each item parsed by `item`.
fn list<'de, D: Deserializer<'de>, T>(
    d: D,
    expected: &str,
    expected_env: &str,
    item: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, D::Error> {
    let item_shown = |s: &str| item(s).ok_or_else(|| format!("{s:?}"));
    check(
        d,
        expected,
        expected_env,
        |value| match value {
            Value::Array(_, items) => items
                .iter()
                .map(|value| match value {
                    Value::String(_, s) => item_shown(s),
                    other => Err(render(other)),
                })
                .collect(),
            other => Err(render(other)),
        },
        |text| {
            let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
            items.map(item_shown).collect()
        },
    )
}

pub(super) fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    list(
        d,
        "a list of IP addresses such as [\"203.0.113.5\"]",
        "a comma-separated list of IP addresses such as 203.0.113.5,198.51.100.7",
        |s| s.trim().parse().ok(),
    )
}

pub(super) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let expected = "a list of strings";
    list(d, expected, expected, |s| Some(s.to_owned()))
}

/// A section: a table only (serde's structs also take a list, read by position).
pub(super) fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(TableOnly(d))
}

struct TableOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TableOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(MapOnly(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, MapOnly(visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Passes a map on; anything else is an invalid type.
struct MapOnly<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for MapOnly<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }
}
