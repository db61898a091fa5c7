//! `opscore audit`: the server's audit trail (who changed what), newest
//! first, admin key required. A table by default, the server's JSON or
//! YAML with `-o json|yaml`.

use clap::Args;

use super::output::{list, CliError, ClientOpts, PageOpts};
use super::table::{time, Table};
use crate::client::{AuditEntry, AuditFilter};

/// `opscore audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes made by this key (its id), or by every actor of a
    /// type: bootstrap, webhook, unsigned, system.
    #[arg(long)]
    actor: Option<String>,
    /// Only this kind (audit.key.created), or every kind under a prefix
    /// (key, agent, session, workflow).
    #[arg(long)]
    kind: Option<String>,
    /// Only changes to this agent, session, workflow or key id.
    #[arg(long)]
    target: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only changes before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Paging.
    #[command(flatten)]
    page: PageOpts,
    /// Server, key, output.
    #[command(flatten)]
    opts: ClientOpts,
}

/// Run `opscore audit`.
pub async fn run(a: AuditArgs) -> Result<(), CliError> {
    let client = a.opts.client()?;
    let filter = AuditFilter {
        actor: a.actor,
        kind: a.kind,
        target: a.target,
        since: a.since,
        until: a.until,
    };
    list(
        a.opts.machine(),
        &a.page,
        |p| client.list_audit(&filter, p),
        audit_table,
    )
    .await
}

/// The actor as a table shows it: the key's name and id, or what it is.
fn actor(e: &AuditEntry) -> String {
    match &e.actor.key_id {
        Some(id) => format!("{} ({id})", e.actor.name),
        None => e.actor.name.clone(),
    }
}

/// The target as a table shows it: each id it names, by what it is.
fn target(e: &AuditEntry) -> String {
    let t = &e.target;
    let parts: Vec<String> = [
        ("agent", &t.agent_id),
        ("session", &t.session_id),
        ("workflow", &t.workflow_id),
        ("key", &t.key_id),
    ]
    .into_iter()
    .filter_map(|(what, id)| id.as_ref().map(|id| format!("{what} {id}")))
    .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

fn audit_table(entries: &[AuditEntry]) -> String {
    let mut t = Table::new(&["AT", "KIND", "ACTOR", "TARGET"]);
    for e in entries {
        t.row(vec![
            time(&e.at),
            e.kind.trim_start_matches("audit.").to_owned(),
            actor(e),
            target(e),
        ]);
    }
    t.render()
}
