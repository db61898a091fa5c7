//! What every client command shares: the connection and output options,
//! how results are printed (a table, or the server's JSON or YAML with
//! `-o json|yaml`),
//! following cursors, and how a failure becomes a message and an exit code.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::client::{Call, Client, ClientError, Page, PageRequest, ServerArgs};

/// The server answered with an error (its `detail` and `code` are printed).
pub const EXIT_API: u8 = 1;
/// The command line was wrong: bad flags (as clap reports them), a JSON
/// argument that does not parse, a file that cannot be read or parsed.
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, the connection broke, or what answered
/// was not an Ops-Core server.
pub const EXIT_CONNECTION: u8 = 3;

/// Options of every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// The server and key.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output format: a table, the server's JSON as sent, or that JSON as
    /// YAML.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Shorthand for `-o json`.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

/// How a client command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, or `Field: value` lines.
    Table,
    /// The server's JSON, pretty-printed.
    Json,
    /// The server's JSON as YAML.
    Yaml,
}

impl ClientOpts {
    /// The machine-readable format asked for, if any (`None`: a table).
    pub fn machine(&self) -> Option<Format> {
        match (self.json, self.output) {
            (true, _) => Some(Format::Json),
            (false, Format::Table) => None,
            (false, f) => Some(f),
        }
    }

    /// A client for these options, once the URL is known to be usable.
    pub fn client(&self) -> Result<Client, CliError> {
        connect(&self.server)
    }
}

/// A client for `server` (flags, variables, then the context).
pub fn connect(server: &ServerArgs) -> Result<Client, CliError> {
    let target = server.resolve().map_err(CliError::Usage)?;
    Client::for_target(&target).map_err(CliError::Usage)
}

/// Paging options of a listing.
#[derive(Debug, Clone, clap::Args)]
pub struct PageOpts {
    /// Page size (1-1000; the server's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Start at this cursor (printed after a page that has more).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow cursors to the end of the listing.
    #[arg(long)]
    pub all: bool,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument, named in the message.
    #[error("{0}")]
    Usage(String),
    /// Talking to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed (a closed pipe ends quietly).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Print a failure as `error: …` on stderr and turn it into the exit code.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    let (code, message) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        // `opscore … | head`: the reader is gone, which is not an error.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS
        }
        Err(CliError::Output(e)) => (EXIT_API, format!("cannot write output: {e}")),
        Err(CliError::Usage(m)) => (EXIT_USAGE, m),
        Err(CliError::Client(ClientError::Api { code, detail, .. })) => {
            (EXIT_API, format!("{detail} ({code})"))
        }
        Err(CliError::Client(e @ ClientError::Transport(_))) => (EXIT_CONNECTION, e.to_string()),
        Err(CliError::Client(e @ ClientError::Protocol(_))) => (EXIT_CONNECTION, e.to_string()),
    };
    eprintln!("error: {}", super::table::escape_controls(&message, false));
    ExitCode::from(code)
}

/// Write `text` to stdout, its lines as they are but any other control
/// character escaped (see [`escape_controls`](super::table::escape_controls)):
/// whatever a renderer let through, the terminal never acts on it.
pub fn out(text: &str) -> Result<(), CliError> {
    let text = super::table::escape_controls(text, true);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Print a JSON value as `format` asks: pretty JSON, or YAML.
pub fn print_json(format: Format, v: &Value) -> Result<(), CliError> {
    let text = match format {
        Format::Yaml => serde_norway::to_string(v).unwrap_or_else(|_| v.to_string()),
        _ => serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()) + "\n",
    };
    out(&text)
}

/// Run `call` and print it: the server's JSON (or YAML) when `machine`
/// asks for it, else `render` of the typed answer.
pub async fn show<T: Send + 'static>(
    machine: Option<Format>,
    call: Call<T>,
    render: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    match machine {
        Some(f) => print_json(f, &call.json().await?),
        None => out(&render(&call.await?)),
    }
}

/// Parse a JSON argument (`--details`, `--payload`), naming the flag when
/// it is not JSON or not an object.
pub fn json_object_arg(flag: &str, raw: &str) -> Result<Value, CliError> {
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| CliError::Usage(format!("{flag} is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::Usage(format!("{flag} must be a JSON object")));
    }
    Ok(v)
}

/// Fetch a listing, following cursors with `--all`, and print it: with
/// `json`, the server's page as sent (with `--all`, every page's items in
/// one page whose `nextCursor` is null); else the table `render` makes of the items,
/// and, when there is more, the next cursor on stderr.
pub async fn list<T: Send + 'static>(
    machine: Option<Format>,
    page: &PageOpts,
    fetch: impl Fn(&PageRequest) -> Call<Page<T>>,
    render: impl FnOnce(&[T]) -> String,
) -> Result<(), CliError> {
    let mut req = PageRequest {
        limit: page.limit,
        cursor: page.cursor.clone(),
    };
    if let (Some(f), false) = (machine, page.all) {
        return print_json(f, &fetch(&req).json().await?);
    }
    let mut items = Vec::new();
    let mut raw_items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let next = loop {
        let next = if machine.is_some() {
            let mut v = fetch(&req).json().await?;
            let next = v["nextCursor"].as_str().map(str::to_owned);
            if let Some(Value::Array(a)) = v.get_mut("items").map(Value::take) {
                raw_items.extend(a);
            }
            next
        } else {
            let p = fetch(&req).await?;
            items.extend(p.items);
            p.next_cursor
        };
        match next {
            // A cursor coming back twice would loop forever: stop there.
            Some(c) if page.all && seen.insert(c.clone()) => req.cursor = Some(c),
            next => break next,
        }
    };
    let next = next.filter(|_| !page.all);
    if let Some(f) = machine {
        return print_json(
            f,
            &serde_json::json!({"items": raw_items, "nextCursor": next}),
        );
    }
    out(&render(&items))?;
    if let Some(c) = next {
        eprintln!("(more: --cursor {c}, or --all)");
    }
    Ok(())
}
