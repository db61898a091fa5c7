//! `opscore keys create|list|show|revoke`: manage API keys of a running
//! server (`/v1/opscore/keys`, admin key required). A table by default, the
//! server's JSON with `--json`.

use clap::Subcommand;
use serde_json::{json, Value};

use super::output::{out, print_json, CliError, ClientOpts};
use super::table::Table;

/// `opscore keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key and print its plaintext (shown this once only).
    Create {
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// admin, operator, agent or registrar.
        #[arg(long, value_parser = ["admin", "operator", "agent", "registrar"])]
        role: String,
        /// For agent keys: an agent id the key may act for (repeat, or
        /// separate with commas).
        #[arg(long = "agent-id", value_delimiter = ',')]
        agent_ids: Vec<String>,
        /// Expiry as an RFC 3339 time, e.g. 2027-01-01T00:00:00Z.
        #[arg(long, conflicts_with = "ttl")]
        expires_at: Option<String>,
        /// Lifetime from now: seconds, or a number with s, m, h or d (e.g. 90d).
        #[arg(long)]
        ttl: Option<String>,
        /// Requests per second the key may make.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Event streams and blocking reads the key may hold open at once
        /// (default: the server's OPSCORE_MAX_STREAMS_PER_KEY).
        #[arg(long)]
        max_streams: Option<u32>,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List every key (no secrets).
    List {
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show one key.
    Show {
        /// The key id (the part after `opk_`).
        key_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Revoke a key (idempotent).
    Revoke {
        /// The key id (the part after `opk_`).
        key_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Parse a lifetime (`--ttl`) in the one duration grammar
/// ([`parse_duration`](crate::domain::time::parse_duration)) into whole
/// seconds, at least one.
pub fn parse_ttl(raw: &str) -> Result<u64, CliError> {
    let d = crate::domain::time::parse_duration(raw)
        .map_err(|e| CliError::Usage(format!("--ttl {e}")))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(CliError::Usage(format!(
            "--ttl '{}' must be a whole number of seconds, at least 1s",
            raw.trim()
        )));
    }
    Ok(d.as_secs())
}

/// Run `opscore keys …`.
pub async fn run(cmd: KeysCmd) -> Result<(), CliError> {
    const PATH: &str = "/v1/opscore/keys";
    let (opts, answer, created) = match cmd {
        KeysCmd::Create {
            name,
            role,
            agent_ids,
            expires_at,
            ttl,
            rate_limit,
            max_streams,
            opts,
        } => {
            let mut body = json!({"name": name, "role": role});
            if !agent_ids.is_empty() {
                body["agentIds"] = json!(agent_ids);
            }
            if let Some(t) = expires_at {
                body["expiresAt"] = json!(t);
            }
            if let Some(t) = ttl {
                body["ttlSeconds"] = json!(parse_ttl(&t)?);
            }
            if let Some(r) = rate_limit {
                body["rateLimit"] = json!(r);
            }
            if let Some(n) = max_streams {
                body["maxStreams"] = json!(n);
            }
            let answer = opts.client()?.post_json(PATH, &body).await?;
            (opts, answer, true)
        }
        KeysCmd::List { opts } => {
            let answer = opts.client()?.get_json(PATH).await?;
            (opts, answer, false)
        }
        KeysCmd::Show { key_id, opts } => {
            let answer = opts.client()?.get_json(&format!("{PATH}/{key_id}")).await?;
            (opts, answer, false)
        }
        KeysCmd::Revoke { key_id, opts } => {
            let answer = opts
                .client()?
                .delete_json(&format!("{PATH}/{key_id}"))
                .await?;
            (opts, answer, false)
        }
    };
    if let Some(f) = opts.machine() {
        return print_json(f, &answer);
    }
    match answer.get("items").and_then(Value::as_array) {
        Some(items) => out(&table(items)),
        None if created => {
            // The table on stdout, the plaintext after it; the warning on
            // stderr so that `| tail -1` captures just the key.
            eprintln!("Store this key now: it is shown only this once.");
            out(&format!(
                "{}key: {}\n",
                table(std::slice::from_ref(&answer)),
                answer["key"].as_str().unwrap_or("")
            ))
        }
        None => out(&table(std::slice::from_ref(&answer))),
    }
}

const COLUMNS: [(&str, &str); 9] = [
    ("KEY ID", "keyId"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("AGENTS", "agentIds"),
    ("STATUS", "status"),
    ("RATE/S", "rateLimit"),
    ("CREATED", "createdAt"),
    ("EXPIRES", "expiresAt"),
    ("LAST USED", "lastUsedAt"),
];

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Keys as an aligned table, one per line under a header.
fn table(keys: &[Value]) -> String {
    let mut t = Table::new(&COLUMNS.map(|(h, _)| h));
    for k in keys {
        t.row(COLUMNS.iter().map(|(_, f)| cell(&k[*f])).collect());
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("3600").unwrap(), 3600);
        assert_eq!(parse_ttl("90m").unwrap(), 5400);
        assert_eq!(parse_ttl("12h").unwrap(), 43_200);
        assert_eq!(parse_ttl("30d").unwrap(), 2_592_000);
        // One grammar with every other duration: weeks and combinations too.
        assert_eq!(parse_ttl("5w").unwrap(), 3_024_000);
        assert_eq!(parse_ttl("1d12h").unwrap(), 129_600);
        for bad in ["", "0", "d", "-5", "1.5.2h", "500ms"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_show_absent_values_as_dashes() {
        let t = table(&[
            json!({"keyId": "0123456789abcdef", "name": "ci", "role": "agent",
               "agentIds": ["a1", "a2"], "status": "active", "rateLimit": 5,
               "createdAt": "2026-01-01T00:00:00.000000+00:00", "expiresAt": null,
               "lastUsedAt": null}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("KEY ID"), "{t}");
        assert!(lines[1].contains("a1,a2"), "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{t}");
    }
}
