//! Which server a client talks to, and with what key: flags and
//! environment first, then a named *context* from the client's config file
//! (`opscore context add/use/list`), then the defaults.
//!
//! The config file (`OPSCORE_CONFIG`, else `$XDG_CONFIG_HOME/opscore/config.yaml`,
//! else `~/.config/opscore/config.yaml`) never holds a key itself: a context
//! names a key file or a command that prints the key (a password manager).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default server URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";
/// The client's key variable. `OPSCORE_API_KEY` is the server's bootstrap
/// key; clients still read it when this one is unset, with a notice.
pub const CLIENT_KEY_ENV: &str = "OPSCORE_CLIENT_KEY";
const LEGACY_KEY_ENV: &str = "OPSCORE_API_KEY";

/// One named server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    /// Base URL.
    pub url: String,
    /// A file holding the key (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A command (run with `sh -c`) that prints the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_command: Option<String>,
    /// A PEM file of CA certificates to trust for `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The client's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the config file is.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPSCORE_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("opscore").join("config.yaml"))
}

impl ClientConfig {
    /// Read it; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_norway::from_str(&text)
                .map_err(|e| format!("{}: not a valid opscore config: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Write it whole, private to its owner (0600 in a 0700 directory), by
    /// replacing the file so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_norway::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("yaml.tmp");
        write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// What a client command resolved to: a usable URL and a key.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Base URL (http or https, with a host).
    pub url: String,
    /// The key.
    pub api_key: String,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<Vec<u8>>,
}

/// What the command line and environment said.
#[derive(Debug, Clone, Default)]
pub struct Given<'a> {
    /// `--url` / `OPSCORE_URL`.
    pub url: Option<&'a str>,
    /// `--api-key` / `OPSCORE_CLIENT_KEY`.
    pub api_key: Option<&'a str>,
    /// `--context` / `OPSCORE_CONTEXT`.
    pub context: Option<&'a str>,
    /// `--ca-file` / `OPSCORE_CA_FILE`.
    pub ca_file: Option<&'a Path>,
}

/// Resolve flags and environment over the context (named, else the
/// config's current one) over the defaults. `legacy_key` is the value of
/// `OPSCORE_API_KEY`, used (with a notice on stderr) when nothing else
/// gives a key.
pub fn resolve(
    given: &Given<'_>,
    config: &ClientConfig,
    legacy_key: Option<String>,
) -> Result<Target, String> {
    let name = given
        .context
        .map(str::to_owned)
        .or_else(|| config.current.clone());
    let context = match &name {
        Some(n) => Some(config.contexts.get(n).ok_or_else(|| {
            let known: Vec<_> = config.contexts.keys().map(String::as_str).collect();
            format!(
                "no context named '{n}' (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?),
        None => None,
    };
    let url = given
        .url
        .map(str::to_owned)
        .or_else(|| context.map(|c| c.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
        _ => {
            return Err(format!(
                "--url (OPSCORE_URL) must be an http:// or https:// URL, got '{url}'"
            ))
        }
    }
    let api_key = match (given.api_key, context) {
        (Some(k), _) => Some(k.to_owned()),
        (None, Some(c)) if c.key_file.is_some() || c.key_command.is_some() => {
            Some(context_key(c, name.as_deref().unwrap_or_default())?)
        }
        _ => legacy_key.inspect(|_| {
            eprintln!(
                "note: using {LEGACY_KEY_ENV} as the client's key; set {CLIENT_KEY_ENV} instead \
                 ({LEGACY_KEY_ENV} is the server's bootstrap key)"
            );
        }),
    };
    let api_key = api_key.ok_or_else(|| {
        format!(
            "no API key: pass --api-key, set {CLIENT_KEY_ENV}, or add a context with a key \
             (opscore context add --help)"
        )
    })?;
    let ca_file = given
        .ca_file
        .map(Path::to_path_buf)
        .or_else(|| context.and_then(|c| c.ca_file.clone()));
    let ca_pem = match ca_file {
        Some(p) => Some(
            std::fs::read(&p).map_err(|e| format!("cannot read CA file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    Ok(Target {
        url,
        api_key,
        ca_pem,
    })
}

/// The key a context names: its key file's first line, or what its key
/// command prints.
fn context_key(c: &Context, name: &str) -> Result<String, String> {
    let key = if let Some(path) = &c.key_file {
        let path = expand_home(path);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "context '{name}': cannot read key file {}: {e}",
                path.display()
            )
        })?
    } else if let Some(cmd) = &c.key_command {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("context '{name}': cannot run key command: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "context '{name}': key command failed ({})",
                out.status
            ));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| format!("context '{name}': key command printed non-UTF-8"))?
    } else {
        return Err(format!("context '{name}' names no key"));
    };
    let key = key.lines().next().unwrap_or_default().trim().to_owned();
    if key.is_empty() {
        return Err(format!("context '{name}': the key is empty"));
    }
    Ok(key)
}

/// `~/x` as `$HOME/x`.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ClientConfig {
        let key = dir.join("key");
        std::fs::write(&key, "file-key-0123456789\n").unwrap();
        let mut c = ClientConfig::default();
        c.contexts.insert(
            "prod".into(),
            Context {
                url: "https://prod.example".into(),
                key_file: Some(key),
                ..Default::default()
            },
        );
        c.contexts.insert(
            "lab".into(),
            Context {
                url: "http://lab:8000".into(),
                key_command: Some("echo cmd-key-0123456789".into()),
                ..Default::default()
            },
        );
        c.current = Some("lab".into());
        c
    }

    #[test]
    fn flags_and_environment_win_over_the_context_and_defaults_come_last() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let t = resolve(&Given::default(), &c, None).unwrap();
        assert_eq!(
            (t.url.as_str(), Some(t.api_key.as_str())),
            ("http://lab:8000", Some("cmd-key-0123456789"))
        );
        let named = Given {
            context: Some("prod"),
            ..Default::default()
        };
        let t = resolve(&named, &c, None).unwrap();
        assert_eq!(
            (t.url.as_str(), Some(t.api_key.as_str())),
            ("https://prod.example", Some("file-key-0123456789"))
        );
        let flags = Given {
            url: Some("http://x:1"),
            api_key: Some("flag-key"),
            ..named
        };
        let t = resolve(&flags, &c, Some("legacy".into())).unwrap();
        assert_eq!(
            (t.url.as_str(), Some(t.api_key.as_str())),
            ("http://x:1", Some("flag-key"))
        );
        let t = resolve(
            &Given::default(),
            &ClientConfig::default(),
            Some("legacy".into()),
        )
        .unwrap();
        assert_eq!(
            (t.url.as_str(), Some(t.api_key.as_str())),
            (DEFAULT_URL, Some("legacy"))
        );
        let err = resolve(
            &Given {
                context: Some("nope"),
                ..Default::default()
            },
            &c,
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("no context named 'nope' (known: lab, prod)"),
            "{err}"
        );
    }

    #[test]
    fn the_file_round_trips_and_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.yaml");
        assert_eq!(ClientConfig::load(&path).unwrap(), ClientConfig::default());
        let c = config(dir.path());
        c.save(&path).unwrap();
        assert_eq!(ClientConfig::load(&path).unwrap(), c);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "contexts: {a: {url: x, key: inline}}").unwrap();
        assert!(ClientConfig::load(&path)
            .unwrap_err()
            .contains("unknown field `key`"));
    }
}
