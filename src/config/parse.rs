//! Typed value parsers for the settings. Each one checks a value and, when
//! it is wrong, says what is wrong; [`SettingParser`] adds the variable and
//! flag it came from (read off the clap argument, so each name is written
//! once, on the field).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, Command};

use super::{LogFormat, Secret};

/// A setting that failed validation, named by its variable and flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {env} (--{flag}): {message}")]
pub struct ConfigError {
    env: String,
    flag: String,
    message: String,
}

impl ConfigError {
    pub(super) fn new(env: &str, flag: &str, message: impl Into<String>) -> Self {
        Self {
            env: env.to_owned(),
            flag: flag.to_owned(),
            message: message.into(),
        }
    }
}

/// The message of a command-line error that is a refused setting (as
/// opposed to a usage mistake such as an unknown flag), e.g.
/// `invalid setting OPSCORE_BIND (--bind): …`.
pub fn invalid_setting(e: &clap::Error) -> Option<&str> {
    match e.get(ContextKind::Custom) {
        Some(ContextValue::String(message)) if e.kind() == ErrorKind::ValueValidation => {
            Some(message.as_str())
        }
        _ => None,
    }
}

type Check<T> = dyn Fn(&str) -> Result<T, String> + Send + Sync;

/// A clap value parser made of a check that says what is wrong with a
/// value; its errors name the setting (see [`ConfigError`]).
#[derive(Clone)]
pub struct SettingParser<T>(Arc<Check<T>>);

impl<T> SettingParser<T> {
    fn new(check: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }

    /// This parser's value passed through `f`.
    fn then<U>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> SettingParser<U>
    where
        T: 'static,
    {
        SettingParser::new(move |raw| (self.0)(raw).map(&f))
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for SettingParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let checked = match value.to_str() {
            Some(raw) => (self.0)(raw),
            None => Err("is not valid UTF-8".to_owned()),
        };
        checked.map_err(|message| {
            let env = arg
                .and_then(Arg::get_env)
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            let flag = arg.and_then(Arg::get_long).unwrap_or_default();
            let text = ConfigError::new(&env, flag, message).to_string();
            let mut e = clap::Error::raw(ErrorKind::ValueValidation, format!("{text}\n"));
            e.insert(ContextKind::Custom, ContextValue::String(text));
            e
        })
    }
}

/// A value that may be given empty to mean "unset" (for settings that
/// docker-compose.yml passes through even when `.env` leaves them out).
#[derive(Debug, Clone, PartialEq)]
pub struct OrUnset<T>(pub Option<T>);

/// `parser`, except that an empty value (or only spaces) reads as unset.
pub fn or_unset<T: 'static>(parser: SettingParser<T>) -> SettingParser<OrUnset<T>> {
    SettingParser::new(move |raw| {
        if raw.trim().is_empty() {
            Ok(OrUnset(None))
        } else {
            (parser.0)(raw).map(|v| OrUnset(Some(v)))
        }
    })
}

/// A whole number from `min` to `max` (spaces around it are allowed).
pub fn whole(min: u64, max: u64) -> SettingParser<u64> {
    SettingParser::new(move |raw| {
        let n: u64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("'{raw}' is not a whole number"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is not between {min} and {max}"))
        }
    })
}

/// [`whole`], as a `u32` (`max` fits one).
pub fn whole_u32(min: u32, max: u32) -> SettingParser<u32> {
    whole(u64::from(min), u64::from(max)).then(|n| n as u32)
}

/// [`whole`], as a `usize` (`max` fits one).
pub fn whole_usize(min: u32, max: u32) -> SettingParser<usize> {
    whole(u64::from(min), u64::from(max)).then(|n| n as usize)
}

/// [`whole`], as an `i64` (`max` fits one).
pub fn whole_i64(min: u32, max: u32) -> SettingParser<i64> {
    whole(u64::from(min), u64::from(max)).then(|n| n as i64)
}

/// A whole number of seconds from `min` to `max`.
pub fn secs(min: u64, max: u64) -> SettingParser<Duration> {
    whole(min, max).then(Duration::from_secs)
}

/// A whole number of milliseconds from `min` to `max`.
pub fn millis(min: u64, max: u64) -> SettingParser<Duration> {
    whole(min, max).then(Duration::from_millis)
}

/// A number (fractions allowed) from `min` to `max`.
pub fn number(min: f64, max: f64) -> SettingParser<f64> {
    SettingParser::new(move |raw| match raw.trim().parse::<f64>() {
        Ok(f) if (min..=max).contains(&f) => Ok(f),
        _ => Err(format!("'{raw}' is not a number from {min} to {max}")),
    })
}

/// `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`, in any case. An
/// empty value is a mistake, not "false": it must not silently turn the
/// dispatcher off.
pub fn boolean() -> SettingParser<bool> {
    SettingParser::new(|raw| match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{raw}' is not true or false")),
    })
}

/// One of `choices` (`(spelling, value)`, matched in any case); the error
/// lists `names`.
pub fn one_of<T: Clone + Send + Sync + 'static>(
    choices: &'static [(&'static str, T)],
    names: &'static str,
) -> SettingParser<T> {
    SettingParser::new(move |raw| {
        let lower = raw.to_ascii_lowercase();
        choices
            .iter()
            .find(|(spelling, _)| *spelling == lower)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("'{lower}' is not one of {names}"))
    })
}

/// How log lines are written: `json`, or `text` (also `pretty`).
pub fn log_format() -> SettingParser<LogFormat> {
    one_of(
        &[
            ("json", LogFormat::Json),
            ("text", LogFormat::Text),
            ("pretty", LogFormat::Text),
        ],
        "json, text",
    )
}

/// A log filter: a level or tracing directives.
pub fn log_filter() -> SettingParser<String> {
    SettingParser::new(|raw| {
        tracing_subscriber::EnvFilter::try_new(raw)
            .map(|_| raw.to_owned())
            .map_err(|e| format!("'{raw}': {e}"))
    })
}

/// A socket address to listen on, e.g. `127.0.0.1:8000`.
pub fn socket_addr() -> SettingParser<SocketAddr> {
    SettingParser::new(|raw| {
        raw.parse()
            .map_err(|e| format!("'{raw}' is not a socket address: {e}"))
    })
}

/// An `http` or `https` URL.
pub fn http_url() -> SettingParser<url::Url> {
    SettingParser::new(|raw| {
        let url = url::Url::parse(raw).map_err(|e| format!("'{raw}' is not a URL: {e}"))?;
        if matches!(url.scheme(), "http" | "https") {
            Ok(url)
        } else {
            Err("must be an http or https URL".to_owned())
        }
    })
}

/// A name: not empty, at most 255 characters, no control characters;
/// spaces around it are dropped.
pub fn name() -> SettingParser<String> {
    SettingParser::new(|raw| {
        let name = raw.trim();
        if name.is_empty() {
            Err("must not be empty".to_owned())
        } else if name.len() > 255 {
            Err("must be at most 255 characters".to_owned())
        } else if name.chars().any(char::is_control) {
            Err("must not contain control characters".to_owned())
        } else {
            Ok(name.to_owned())
        }
    })
}

/// A database URL, `sqlite:…` or `postgres:…` (it may hold a password,
/// so it is never repeated in an error).
pub fn database_url() -> SettingParser<Secret> {
    SettingParser::new(|raw| {
        if ["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|scheme| raw.starts_with(scheme))
        {
            Ok(Secret::new(raw))
        } else {
            Err("must start with sqlite:// or postgres://".to_owned())
        }
    })
}

/// A secret taken verbatim; it must not be empty.
pub fn secret() -> SettingParser<Secret> {
    SettingParser::new(|raw| {
        if raw.is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(Secret::new(raw))
        }
    })
}

/// Shortest API key accepted from configuration.
pub const MIN_KEY_LEN: usize = 16;

/// An API key: at least [`MIN_KEY_LEN`] characters, spaces around it dropped.
pub fn api_key() -> SettingParser<Secret> {
    SettingParser::new(|raw| {
        let key = raw.trim();
        if key.len() < MIN_KEY_LEN {
            Err(format!(
                "must be at least {MIN_KEY_LEN} characters (unset it to have one generated)"
            ))
        } else {
            Ok(Secret::new(key))
        }
    })
}

/// Secrets given as one comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretList(pub Vec<Secret>);

/// Secrets separated by commas, spaces around each dropped; an empty entry
/// is a mistake (a stray comma), not a secret. Empty as a whole reads as no
/// secrets.
pub fn secret_list() -> SettingParser<SecretList> {
    SettingParser::new(|list| {
        if list.is_empty() {
            return Ok(SecretList(Vec::new()));
        }
        list.split(',')
            .enumerate()
            .map(|(i, s)| match s.trim() {
                "" => Err(format!(
                    "entry {} of the comma-separated list is empty",
                    i + 1
                )),
                s => Ok(Secret::new(s)),
            })
            .collect::<Result<_, _>>()
            .map(SecretList)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T>(p: &SettingParser<T>, raw: &str) -> Result<T, String> {
        (p.0)(raw)
    }

    #[test]
    fn numbers_say_what_is_wrong() {
        let p = whole(1, 10);
        assert_eq!(check(&p, " 7 "), Ok(7));
        assert_eq!(check(&p, "abc").unwrap_err(), "'abc' is not a whole number");
        assert_eq!(check(&p, "").unwrap_err(), "'' is not a whole number");
        assert_eq!(check(&p, "11").unwrap_err(), "11 is not between 1 and 10");
        assert!(check(&p, "-1").is_err());
        assert!(check(&p, "1.5").is_err());
        assert_eq!(check(&secs(0, 5), "5"), Ok(Duration::from_secs(5)));
        assert_eq!(check(&millis(1, 5), "5"), Ok(Duration::from_millis(5)));
        let f = number(1.0, 10.0);
        assert_eq!(check(&f, "1.5"), Ok(1.5));
        assert_eq!(
            check(&f, "11").unwrap_err(),
            "'11' is not a number from 1 to 10"
        );
        assert!(check(&f, "NaN").is_err());
    }

    #[test]
    fn booleans_take_four_spellings_and_refuse_empty() {
        let b = boolean();
        for t in ["true", "1", "YES", " on "] {
            assert_eq!(check(&b, t), Ok(true), "{t}");
        }
        for f in ["false", "0", "No", "off"] {
            assert_eq!(check(&b, f), Ok(false), "{f}");
        }
        // An empty value is a mistake, not "false": it must not silently
        // turn the dispatcher off.
        assert!(check(&b, "").is_err());
        assert_eq!(
            check(&b, "maybe").unwrap_err(),
            "'maybe' is not true or false"
        );
    }

    #[test]
    fn empty_reads_as_unset_only_where_asked() {
        let p = or_unset(whole(1, 10));
        assert_eq!(check(&p, ""), Ok(OrUnset(None)));
        assert_eq!(check(&p, "3"), Ok(OrUnset(Some(3))));
        assert!(check(&p, "0").is_err());
    }

    #[test]
    fn secrets_and_keys() {
        assert!(check(&api_key(), "short").is_err());
        assert_eq!(
            check(&api_key(), " supersecretkey-123456 ").map(|k| k.expose().to_owned()),
            Ok("supersecretkey-123456".to_owned())
        );
        assert_eq!(check(&secret(), "").unwrap_err(), "must not be empty");
        assert_eq!(
            check(&secret(), " a ").map(|s| s.expose().to_owned()),
            Ok(" a ".into())
        );
        let list = check(&secret_list(), " new-secret , old-secret").unwrap();
        assert_eq!(
            list.0,
            [Secret::new("new-secret"), Secret::new("old-secret")]
        );
        assert_eq!(check(&secret_list(), ""), Ok(SecretList(Vec::new())));
        let e = check(&secret_list(), "a,,b").unwrap_err();
        assert!(e.contains("entry 2"), "{e}");
        let e = check(&database_url(), "mysql://u:pw@h/db").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn choices_match_any_case() {
        assert_eq!(check(&log_format(), "PRETTY"), Ok(LogFormat::Text));
        assert_eq!(
            check(&log_format(), "XML").unwrap_err(),
            "'xml' is not one of json, text"
        );
    }
}
