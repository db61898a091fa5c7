//! `opscore context`: named servers in the client's config file, so a
//! command needs no `--url`/`--api-key` (see [`crate::client::contexts`]).

use std::path::PathBuf;

use clap::Subcommand;

use super::output::{out, CliError};
use super::table::Table;
use crate::client::contexts::{config_path, ClientConfig, Context};

/// `opscore context …`.
#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// Add a context, or replace one of the same name.
    Add {
        /// Its name.
        name: String,
        /// The server's base URL.
        #[arg(long)]
        url: String,
        /// A file whose first line is the key (the config keeps only its path).
        #[arg(long, conflicts_with = "key_command")]
        key_file: Option<PathBuf>,
        /// A command that prints the key, run with `sh -c` each time (e.g.
        /// `pass show opscore/prod`).
        #[arg(long)]
        key_command: Option<String>,
        /// A PEM file of CA certificates to trust for https:// URLs.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Also make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one.
    Use {
        /// Its name.
        name: String,
    },
    /// List the contexts; `*` marks the current one.
    List,
    /// Remove a context.
    Remove {
        /// Its name.
        name: String,
    },
}

fn path() -> Result<PathBuf, CliError> {
    config_path().ok_or_else(|| {
        CliError::Usage("no place for the client config: set OPSCORE_CONFIG or HOME".into())
    })
}

fn load() -> Result<(PathBuf, ClientConfig), CliError> {
    let path = path()?;
    let config = ClientConfig::load(&path).map_err(CliError::Usage)?;
    Ok((path, config))
}

fn known(config: &ClientConfig, name: &str) -> Result<(), CliError> {
    if config.contexts.contains_key(name) {
        return Ok(());
    }
    Err(CliError::Usage(format!("no context named '{name}'")))
}

/// Run `opscore context …`.
pub fn run(cmd: ContextCmd) -> Result<(), CliError> {
    let (path, mut config) = load()?;
    match cmd {
        ContextCmd::Add {
            name,
            url,
            key_file,
            key_command,
            ca_file,
            make_current,
        } => {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(CliError::Usage(format!("'{name}' is not a context name")));
            }
            match url::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                _ => {
                    return Err(CliError::Usage(format!(
                        "--url must be an http:// or https:// URL, got '{url}'"
                    )))
                }
            }
            // Paths are kept absolute: the context works from any directory.
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            config.contexts.insert(
                name.clone(),
                Context {
                    url,
                    key_file: key_file.map(absolute),
                    key_command,
                    ca_file: ca_file.map(absolute),
                },
            );
            if make_current || config.current.is_none() {
                config.current = Some(name.clone());
            }
            config.save(&path).map_err(CliError::Usage)?;
            out(&format!("context '{name}' saved in {}\n", path.display()))
        }
        ContextCmd::Use { name } => {
            known(&config, &name)?;
            config.current = Some(name.clone());
            config.save(&path).map_err(CliError::Usage)?;
            out(&format!("now using context '{name}'\n"))
        }
        ContextCmd::Remove { name } => {
            known(&config, &name)?;
            config.contexts.remove(&name);
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            config.save(&path).map_err(CliError::Usage)?;
            out(&format!("context '{name}' removed\n"))
        }
        ContextCmd::List => {
            let mut t = Table::new(&["CURRENT", "NAME", "URL", "KEY", "CA"]);
            for (name, c) in &config.contexts {
                let key = match (&c.key_file, &c.key_command) {
                    (Some(f), _) => format!("file {}", f.display()),
                    (None, Some(cmd)) => format!("command {cmd}"),
                    (None, None) => "-".to_owned(),
                };
                let ca = c
                    .ca_file
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
                let current = if config.current.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    ""
                };
                t.row(vec![
                    current.to_owned(),
                    name.clone(),
                    c.url.clone(),
                    key,
                    ca,
                ]);
            }
            out(&t.render())
        }
    }
}
