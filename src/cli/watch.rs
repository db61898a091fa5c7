//! `opscore watch`: follow the change feed, one line per event.

use serde_json::Value;

use super::output::{out, CliError, ClientOpts, Format};
use super::table::time;
use crate::client::{EventFilter, FeedEvent};

/// The event kinds the feed sends (others are printed too, as JSON).
const KINDS: [&str; 7] = [
    "agent.registered",
    "agent.deregistered",
    "agent.state",
    "agent.stale",
    "agent.fresh",
    "session.status",
    "task.status",
];

/// `opscore watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only events of this agent (repeat, or separate with commas).
    #[arg(long = "agent", value_name = "ID", value_delimiter = ',')]
    agents: Vec<String>,
    /// Only these kinds, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = KINDS)]
    kinds: Vec<String>,
    /// Start after this feed index (0: everything still retained)
    /// [default: only events from now on].
    #[arg(long, value_name = "INDEX")]
    since: Option<u64>,
    /// Server, key, output (-o json: each event's JSON on one line; -o yaml: a document each).
    #[command(flatten)]
    opts: ClientOpts,
}

/// Run `opscore watch` until interrupted, the feed refuses, or it cannot be
/// reconnected.
pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let client = args.opts.client()?;
    let mut stream = client.events(EventFilter {
        agents: args.agents,
        kinds: args.kinds,
        after: args.since,
    });
    loop {
        let ev = stream.next().await?;
        let text = match args.opts.machine() {
            // One event per line, as the feed sent it.
            Some(Format::Json) => format!("{}\n", ev.raw),
            // One YAML document per event.
            Some(_) => {
                let v: serde_json::Value = serde_json::from_str(&ev.raw).unwrap_or_default();
                format!("---\n{}", serde_norway::to_string(&v).unwrap_or_default())
            }
            None => format!("{}\n", event_line(&ev)),
        };
        out(&text)?;
    }
}

/// `<index> <time> <kind> <agent> <summary>`, on one line whatever the
/// event's text holds (control characters are shown escaped).
pub fn event_line(ev: &FeedEvent) -> String {
    let line = format!(
        "{} {} {} {} {}",
        ev.index,
        time(&ev.at),
        ev.kind,
        ev.agent_id.as_deref().unwrap_or("-"),
        summary(ev)
    );
    super::table::escape_controls(&line, false)
}

/// What happened, in a few words, per kind.
fn summary(ev: &FeedEvent) -> String {
    let d = &ev.data;
    let s = |k: &str| match d.get(k) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => "-".to_owned(),
        Some(v) => v.to_string(),
    };
    let with_error = |text: String| match d.get("error").and_then(Value::as_str) {
        Some(e) => format!("{text} error={e}"),
        None => text,
    };
    let session = ev.session_id.as_deref().unwrap_or("-");
    match ev.kind.as_str() {
        "agent.registered" => format!(
            "name={} version={} capabilities={} endpoint={}",
            s("agentName"),
            s("version"),
            d.get("capabilities")
                .and_then(Value::as_array)
                .map(|c| c
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            s("contactEndpoint"),
        ),
        "agent.deregistered" => "deregistered".to_owned(),
        "agent.state" => {
            let details = match d.get("details") {
                None | Some(Value::Null) => String::new(),
                Some(v) => format!(" details={v}"),
            };
            format!("state={} timestamp={}{details}", s("state"), s("timestamp"))
        }
        "agent.stale" => format!("lastSeen={} ttl={}s", s("lastSeen"), s("ttlSeconds")),
        "agent.fresh" => format!("lastSeen={}", s("lastSeen")),
        "session.status" => with_error(format!(
            "session={session} workflow={} status={}",
            s("workflowId"),
            s("status")
        )),
        "task.status" => with_error(format!(
            "session={session} task={} run={} status={} attempt={}",
            s("taskId"),
            s("runId"),
            s("status"),
            s("attempt")
        )),
        _ => d.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> FeedEvent {
        serde_json::from_str(json).expect("event")
    }

    #[test]
    fn lines_per_kind() {
        let ev = event(
            r#"{"index":42,"kind":"agent.state","at":"2026-11-28T10:00:00.000000Z","agentId":"a1",
                "sessionId":null,"data":{"state":"idle","timestamp":"2026-11-28T09:59:59Z","details":{"n":1}}}"#,
        );
        assert_eq!(
            event_line(&ev),
            r#"42 2026-11-28 10:00:00.000Z agent.state a1 state=idle timestamp=2026-11-28T09:59:59Z details={"n":1}"#
        );
        let ev = event(
            r#"{"index":43,"kind":"task.status","at":"2026-11-28T10:00:01Z","agentId":"a1","sessionId":"s1",
                "data":{"runId":"r1","taskId":"step_1","status":"failed","attempt":2,"error":"boom"}}"#,
        );
        assert_eq!(
            event_line(&ev),
            "43 2026-11-28 10:00:01.000Z task.status a1 session=s1 task=step_1 run=r1 status=failed attempt=2 error=boom"
        );
        let ev = event(
            r#"{"index":44,"kind":"agent.deregistered","at":"2026-11-28T10:00:02Z","agentId":"a1","data":{}}"#,
        );
        assert!(event_line(&ev).ends_with("agent.deregistered a1 deregistered"));
        let ev =
            event(r#"{"index":45,"kind":"new.kind","at":"2026-11-28T10:00:02Z","data":{"x":1}}"#);
        assert!(event_line(&ev).ends_with(r#"new.kind - {"x":1}"#));
    }
}
