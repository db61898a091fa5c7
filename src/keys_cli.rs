//! `opscore keys create|list|show|revoke`: manage API keys of a running
//! server over HTTP (`/v1/opscore/keys`, admin key required). A table by
//! default, the server's JSON with `--json`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::ClientError;

/// `opscore keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Ops-Core base URL.
    #[arg(
        long,
        env = "OPSCORE_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub url: String,
    /// An admin API key (the bootstrap OPSCORE_API_KEY or a managed admin key).
    #[arg(long, env = "OPSCORE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// Key management actions.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print its plaintext (shown this once only).
    Create {
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// admin, operator, agent or registrar.
        #[arg(long)]
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
    },
    /// List every key (no secrets).
    List,
    /// Show one key.
    Show {
        /// The key id (the part after `opk_`).
        key_id: String,
    },
    /// Revoke a key (idempotent).
    Revoke {
        /// The key id (the part after `opk_`).
        key_id: String,
    },
}

/// Parse a lifetime such as `3600`, `90m`, `12h` or `30d` into seconds.
pub fn parse_ttl(raw: &str) -> anyhow::Result<u64> {
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, 's')) => (&raw[..i], 1),
        Some((i, 'm')) => (&raw[..i], 60),
        Some((i, 'h')) => (&raw[..i], 3600),
        Some((i, 'd')) => (&raw[..i], 86_400),
        _ => (raw, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .with_context(|| format!("--ttl '{raw}' is not a lifetime such as 3600, 90m, 12h or 30d"))
}

/// Run `opscore keys`; output goes to stdout.
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let out = execute(&args).await?;
    print!("{out}");
    Ok(())
}

/// Run `opscore keys` and return what it prints.
pub async fn execute(args: &KeysArgs) -> anyhow::Result<String> {
    let key = args
        .api_key
        .as_deref()
        .context("no API key: set OPSCORE_API_KEY or pass --api-key (an admin key)")?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("{}/v1/opscore/keys", args.url.trim_end_matches('/'));
    let (rb, shape) = match &args.action {
        KeysAction::Create {
            name,
            role,
            agent_ids,
            expires_at,
            ttl,
            rate_limit,
        } => {
            let mut body = json!({"name": name, "role": role});
            if !agent_ids.is_empty() {
                body["agentIds"] = json!(agent_ids);
            }
            if let Some(t) = expires_at {
                body["expiresAt"] = json!(t);
            }
            if let Some(t) = ttl {
                body["ttlSeconds"] = json!(parse_ttl(t)?);
            }
            if let Some(r) = rate_limit {
                body["rateLimit"] = json!(r);
            }
            (http.post(&base).json(&body), Shape::Created)
        }
        KeysAction::List => (http.get(&base), Shape::List),
        KeysAction::Show { key_id } => (http.get(format!("{base}/{key_id}")), Shape::One),
        KeysAction::Revoke { key_id } => (http.delete(format!("{base}/{key_id}")), Shape::One),
    };
    let resp = rb
        .bearer_auth(key)
        .send()
        .await
        .map_err(ClientError::Transport)?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(ClientError::Api {
            status: status.as_u16(),
            code: body["code"].as_str().unwrap_or("unknown").to_owned(),
            detail: body["detail"].as_str().unwrap_or("no detail").to_owned(),
        }
        .into());
    }
    if args.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&body)?));
    }
    Ok(match shape {
        Shape::List => table(body["items"].as_array().map(Vec::as_slice).unwrap_or(&[])),
        Shape::One => table(std::slice::from_ref(&body)),
        Shape::Created => {
            // The table on stdout, the plaintext after it; the warning on
            // stderr so that `| tail -1` captures just the key.
            eprintln!("Store this key now: it is shown only this once.");
            format!(
                "{}key: {}\n",
                table(std::slice::from_ref(&body)),
                body["key"].as_str().unwrap_or("")
            )
        }
    })
}

enum Shape {
    Created,
    List,
    One,
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

/// Keys as an aligned text table, one per line under a header.
fn table(keys: &[Value]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| COLUMNS.iter().map(|(_, f)| cell(&k[*f])).collect())
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(COLUMNS.iter().map(|(h, _)| *h).collect());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
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
        for bad in ["", "0", "d", "1w", "-5", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_align_and_show_absent_values_as_dashes() {
        let t = table(&[
            json!({"keyId": "0123456789abcdef", "name": "ci", "role": "agent",
                   "agentIds": ["a1", "a2"], "status": "active", "rateLimit": 5,
                   "createdAt": "2026-01-01T00:00:00.000000+00:00", "expiresAt": null,
                   "lastUsedAt": null}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("KEY ID            NAME"), "{t}");
        assert!(
            lines[1].contains("a1,a2") && lines[1].contains("  5  "),
            "{t}"
        );
        // Expiry and last use are absent: shown as dashes.
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{t}");
    }
}
