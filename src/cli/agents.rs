//! `opscore agents …` and `opscore state …`.

use clap::Subcommand;

use super::output::{json_object_arg, list, out, print_json, show, CliError, ClientOpts, PageOpts};
use super::table::{fields, json, opt_time, time, Table};
use crate::client::{Agent, AgentFilter, CurrentState, StateEntry};

/// `opscore agents`.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// List agents, by id.
    List {
        /// Only agents whose current state is this.
        #[arg(long)]
        state: Option<String>,
        /// Only agents with this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Deregistered agents too.
        #[arg(long)]
        include_deregistered: bool,
        /// Only agents whose lease ran out (true) or did not (false).
        #[arg(long, value_name = "true|false")]
        stale: Option<bool>,
        /// Paging.
        #[command(flatten)]
        page: PageOpts,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show an agent: registration, lease and current state.
    Get {
        /// The agent's id.
        agent_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Turn an agent's lease on (`--ttl`) or off (`--clear`). With a lease,
    /// an agent not heard from for that long (plus the grace) is stale: it
    /// is sent no task, and the task it holds fails with `agent stale`.
    Lease {
        /// The agent's id.
        agent_id: String,
        /// The lease, e.g. 90, 90s, 5m or 1h (at most a day).
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        ttl: Option<String>,
        /// Clear the agent's own lease (the server-wide one applies, if set).
        #[arg(long)]
        clear: bool,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// An agent's state history, latest timestamp first.
    History {
        /// The agent's id.
        agent_id: String,
        /// Paging.
        #[command(flatten)]
        page: PageOpts,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// `opscore state`.
#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Show an agent's current state.
    Get {
        /// The agent's id.
        agent_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Put an agent's state back to UNKNOWN, as right after registration
    /// (admin keys only), e.g. when a clock that ran ahead pinned it: the
    /// agent's next report becomes current whatever its timestamp.
    Reset {
        /// The agent's id.
        agent_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Report a state for an agent, as the agent itself would.
    Report {
        /// The agent's id.
        agent_id: String,
        /// The state (1-64 characters of letters, digits, `_` and `-`).
        state: String,
        /// Details, a JSON object, e.g. '{"task":"summarise"}'.
        #[arg(long)]
        details: Option<String>,
        /// The report's timestamp (RFC 3339) [default: now].
        #[arg(long)]
        timestamp: Option<String>,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Run `opscore agents …`.
pub async fn run_agents(cmd: AgentsCmd) -> Result<(), CliError> {
    match cmd {
        AgentsCmd::List {
            state,
            capability,
            include_deregistered,
            stale,
            page,
            opts,
        } => {
            let client = opts.client()?;
            let filter = AgentFilter {
                state,
                capability,
                include_deregistered,
                stale,
            };
            list(
                opts.machine(),
                &page,
                |p| client.list_agents(&filter, p),
                agents_table,
            )
            .await
        }
        AgentsCmd::Get { agent_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.get_agent(&agent_id),
                agent_fields,
            )
            .await
        }
        AgentsCmd::Lease {
            agent_id,
            ttl,
            clear: _,
            opts,
        } => {
            let ttl = ttl.as_deref().map(super::keys::parse_ttl).transpose()?;
            let client = opts.client()?;
            show(
                opts.machine(),
                client.set_lease(&agent_id, ttl),
                agent_fields,
            )
            .await
        }
        AgentsCmd::History {
            agent_id,
            page,
            opts,
        } => {
            let client = opts.client()?;
            list(
                opts.machine(),
                &page,
                |p| client.history(&agent_id, p),
                history_table,
            )
            .await
        }
    }
}

/// Run `opscore state …`.
pub async fn run_state(cmd: StateCmd) -> Result<(), CliError> {
    match cmd {
        StateCmd::Get { agent_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.get_state(&agent_id),
                state_fields,
            )
            .await
        }
        StateCmd::Reset { agent_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.reset_state(&agent_id),
                state_fields,
            )
            .await
        }
        StateCmd::Report {
            agent_id,
            state,
            details,
            timestamp,
            opts,
        } => {
            let details = details
                .map(|d| json_object_arg("--details", &d))
                .transpose()?;
            let client = opts.client()?;
            let call = match &timestamp {
                Some(ts) => client.report_state_at(&agent_id, &state, details.as_ref(), ts),
                None => client.report_state(&agent_id, &state, details.as_ref()),
            };
            if let Some(f) = opts.machine() {
                return print_json(f, &call.json().await?);
            }
            let answer = call.await?;
            out(&format!("{} ({agent_id}: {state})\n", answer.message))
        }
    }
}

/// `registered`, `deregistered` or, on servers with leases, `stale`.
fn status(a: &Agent) -> &'static str {
    match (a.registered, a.stale) {
        (false, _) => "deregistered",
        (true, Some(true)) => "stale",
        (true, _) => "registered",
    }
}

fn agents_table(agents: &[Agent]) -> String {
    let mut t = Table::new(&[
        "AGENT",
        "STATE",
        "STATUS",
        "LAST SEEN",
        "NAME",
        "VERSION",
        "CAPABILITIES",
    ]);
    for a in agents {
        t.row(vec![
            a.agent_id.clone(),
            a.current_state.state.clone(),
            status(a).to_owned(),
            time(&a.last_seen),
            a.agent_name.clone(),
            a.version.clone(),
            a.capabilities.join(","),
        ]);
    }
    t.render()
}

fn agent_fields(a: &Agent) -> String {
    let mut f = vec![
        ("Agent", a.agent_id.clone()),
        ("Name", a.agent_name.clone()),
        ("Version", a.version.clone()),
        ("Status", status(a).to_owned()),
        ("Capabilities", a.capabilities.join(", ")),
        ("Contact endpoint", a.contact_endpoint.clone()),
        ("State", a.current_state.state.clone()),
        ("State timestamp", time(&a.current_state.timestamp)),
        ("State details", json(a.current_state.details.as_ref())),
        ("Last seen", time(&a.last_seen)),
    ];
    f.push((
        "Lease",
        a.ttl_seconds
            .map_or_else(|| "none (never stale)".to_owned(), |ttl| format!("{ttl}s")),
    ));
    f.extend([
        ("Registered", time(&a.registered_at)),
        ("Updated", time(&a.updated_at)),
        ("Deregistered", opt_time(&a.deregistered_at)),
        (
            "Metadata",
            json(Some(&serde_json::Value::Object(a.metadata.clone()))),
        ),
    ]);
    fields(&f)
}

fn history_table(entries: &[StateEntry]) -> String {
    let mut t = Table::new(&["TIMESTAMP", "RECEIVED", "STATE", "DETAILS"]);
    for e in entries {
        t.row(vec![
            time(&e.timestamp),
            time(&e.received_at),
            e.state.clone(),
            json(e.details.as_ref()),
        ]);
    }
    t.render()
}

fn state_fields(s: &CurrentState) -> String {
    fields(&[
        ("Agent", s.agent_id.clone()),
        ("State", s.state.state.clone()),
        ("Timestamp", time(&s.state.timestamp)),
        ("Received", time(&s.state.received_at)),
        ("Details", json(s.state.details.as_ref())),
    ])
}
