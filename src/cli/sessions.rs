//! `opscore sessions …`.

use clap::Subcommand;

use super::output::{list, show, CliError, ClientOpts, PageOpts};
use super::table::{fields, json, opt, opt_time, time, Table};
use crate::client::{Session, SessionFilter};

/// The session statuses a listing can filter on.
const STATUSES: [&str; 5] = ["started", "running", "completed", "failed", "cancelled"];

/// `opscore sessions`.
#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// Show a session and its tasks.
    Get {
        /// The session's id.
        session_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List sessions across the fleet, newest first (or one agent's with
    /// `--agent`).
    List(Box<ListArgs>),
    /// Run a failed or cancelled session again: its failed and cancelled
    /// tasks are queued afresh, completed ones are not sent again.
    Retry {
        /// The session's id.
        session_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a started or running session (nothing is sent to the agent).
    Cancel {
        /// The session's id.
        session_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// `opscore sessions list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only sessions with a task on this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only sessions in this status.
    #[arg(long, value_parser = STATUSES)]
    status: Option<String>,
    /// Only sessions of this workflow definition id.
    #[arg(long, value_name = "WORKFLOW_ID")]
    workflow: Option<String>,
    /// Only sessions created at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only sessions created before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Paging.
    #[command(flatten)]
    page: PageOpts,
    /// Server, key, output.
    #[command(flatten)]
    opts: ClientOpts,
}

/// Run `opscore sessions …`.
pub async fn run(cmd: SessionsCmd) -> Result<(), CliError> {
    match cmd {
        SessionsCmd::Get { session_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.get_session(&session_id),
                session_text,
            )
            .await
        }
        SessionsCmd::Cancel { session_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.cancel_session(&session_id),
                session_text,
            )
            .await
        }
        SessionsCmd::Retry { session_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.retry_session(&session_id),
                session_text,
            )
            .await
        }
        SessionsCmd::List(args) => {
            let ListArgs {
                agent,
                status,
                workflow,
                since,
                until,
                page,
                opts,
            } = *args;
            let client = opts.client()?;
            // `--agent` alone keeps the agent's own listing (404 for an
            // unknown agent, and older servers have no fleet listing).
            if let (Some(agent), None, None, None) = (&agent, &workflow, &since, &until) {
                return list(
                    opts.machine(),
                    &page,
                    |p| client.list_sessions(agent, status.as_deref(), p),
                    sessions_table,
                )
                .await;
            }
            let filter = SessionFilter {
                status,
                workflow_id: workflow,
                agent_id: agent,
                since,
                until,
            };
            list(
                opts.machine(),
                &page,
                |p| client.list_fleet_sessions(&filter, p),
                sessions_table,
            )
            .await
        }
    }
}

fn session_text(s: &Session) -> String {
    let pool = match (&s.agent_id, &s.agent_selector) {
        (Some(a), _) => a.clone(),
        (None, sel) => serde_json::to_string(sel).unwrap_or_default(),
    };
    let mut text = fields(&[
        ("Session", s.session_id.clone()),
        ("Workflow", s.workflow_id.clone()),
        (
            if s.agent_id.is_some() {
                "Agent"
            } else {
                "Pool"
            },
            pool,
        ),
        (
            "Revision",
            s.revision.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        ),
        ("Status", s.status.clone()),
        ("Created", time(&s.created_at)),
        ("Updated", time(&s.updated_at)),
        ("Finished", opt_time(&s.finished_at)),
        ("Error", opt(s.error.as_deref())),
        ("Result", json(s.result.as_ref())),
    ]);
    let Some(tasks) = s.tasks.as_ref().filter(|t| !t.is_empty()) else {
        return text;
    };
    let mut t = Table::new(&[
        "TASK",
        "NAME",
        "STATUS",
        "AGENT",
        "WAITING FOR",
        "ATTEMPTS",
        "DUE",
        "DISPATCHED",
        "FINISHED",
        "LAST ERROR",
        "OUTPUT",
    ]);
    for r in tasks {
        t.row(vec![
            r.task_id.clone(),
            opt(Some(&r.name)),
            r.status.clone(),
            opt(r.agent_id.as_deref()),
            opt(r.waiting_for.map(|w| w.as_str())),
            format!("{}/{}", r.attempts, r.max_retries + 1),
            opt_time(&r.due_at),
            opt_time(&r.dispatched_at),
            opt_time(&r.finished_at),
            opt(r.last_error.as_deref()),
            json(r.output.as_ref()),
        ]);
    }
    text.push('\n');
    text.push_str(&t.render());
    text
}

fn sessions_table(sessions: &[Session]) -> String {
    let mut t = Table::new(&[
        "SESSION", "WORKFLOW", "AGENT", "STATUS", "CREATED", "FINISHED", "ERROR",
    ]);
    for s in sessions {
        t.row(vec![
            s.session_id.clone(),
            s.workflow_id.clone(),
            s.agent_id.clone().unwrap_or_else(|| "(pool)".to_owned()),
            s.status.clone(),
            time(&s.created_at),
            opt_time(&s.finished_at),
            opt(s.error.as_deref()),
        ]);
    }
    t.render()
}
