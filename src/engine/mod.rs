//! The workflow engine: triggering sessions, loading definitions at startup,
//! and the dispatcher that sends due tasks to agents. How a task moves on
//! after a state report is decided by `domain::run_rules` and applied by the
//! store inside the report's own transaction, with the `EngineRules`
//! (backoff, jitter source, timeouts, leases) the engine hands it.

pub mod dispatcher;
pub mod feed;
pub mod housekeeping;

use std::path::Path;

use serde_json::Value;

use crate::domain::agent::AgentId;
use crate::domain::audit::Actor;
use crate::domain::engine_rules::{EngineRules, NewRun};
use crate::domain::time::now_micros;
use crate::domain::trace::TraceContext;
use crate::domain::workflow::{parse_definition_file, AgentSelector, WorkflowDefinition};
use crate::store::{NewSession, PutOutcome, Store, StoreResult};

/// Which definition a trigger runs.
#[derive(Debug, Clone)]
pub enum DefinitionSource {
    /// A stored definition, by id.
    Stored(String),
    /// A definition sent with the trigger (already validated), run as sent;
    /// stored if its id is new (docs/api.md §1.4).
    Inline(WorkflowDefinition),
}

/// A session that was created.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// The new session's id.
    pub session_id: String,
    /// The definition it runs.
    pub workflow_id: String,
}

/// Where a trigger runs its session: on one agent (docs/api.md §1.4) or
/// on a pool (§3.3).
#[derive(Debug, Clone)]
pub enum Target {
    /// The per-agent trigger: a pool of this one agent, which must be
    /// registered.
    Agent(AgentId),
    /// Any agent the selector matches, at dispatch time.
    Pool(AgentSelector),
}

/// Create a session of `source` on `target` and queue every task of it
/// (start tasks get `initial_payload` if given, else their parameters), or
/// complete it at once when the definition has no tasks (docs/api.md §1.4,
/// §3.3). `trace` is the triggering request's trace context, stored with
/// the session so that every dispatch of it joins that trace.
/// The session is audited as triggered `by`.
pub async fn trigger(
    store: &dyn Store,
    rules: &EngineRules,
    target: Target,
    source: DefinitionSource,
    initial_payload: Option<Value>,
    trace: Option<TraceContext>,
    by: &Actor,
) -> StoreResult<Triggered> {
    let now = now_micros();
    // An inline definition is stored by create_session, in the session's
    // own transaction, so a refused trigger (unknown agent) leaves nothing
    // behind.
    let (definition, store_definition) = match source {
        DefinitionSource::Stored(id) => (store.get_definition(&id).await?, false),
        DefinitionSource::Inline(def) => (def, true),
    };
    let (agent_id, selector) = match target {
        Target::Agent(a) => {
            let selector = AgentSelector::one(a.as_str());
            (Some(a), selector)
        }
        Target::Pool(selector) => (None, selector),
    };
    let runs = NewRun::for_session(
        &definition,
        initial_payload.as_ref(),
        agent_id.is_none(),
        now,
        rules,
    );
    let session = NewSession {
        session_id: uuid::Uuid::now_v7().to_string(),
        agent_id,
        selector,
        runs,
        definition,
        store_definition,
        trace,
    };
    store.create_session(&session, by, now).await?;
    Ok(Triggered {
        session_id: session.session_id,
        workflow_id: session.definition.id,
    })
}

/// Read and validate every `*.json`, `*.yaml` and `*.yml` file in `dir`.
/// Any file that does not parse or validate is an error naming the file.
pub fn read_definitions(dir: &Path) -> anyhow::Result<Vec<(String, WorkflowDefinition)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read workflows directory {}: {e}", dir.display()))?;
    let home = dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("cannot read workflows directory {}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|x| x.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("json" | "yaml" | "yml")
            )
        })
        .collect();
    paths.sort();
    let mut out: Vec<(String, WorkflowDefinition)> = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        // A link is followed only while it stays in the directory: a link
        // to the data directory's key or to /etc/passwd is refused by name.
        let target = path
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("workflow file {name}: {e}"))?;
        if !target.starts_with(&home) {
            anyhow::bail!(
                "workflow file {name}: is a link to a file outside the workflows directory; refused"
            );
        }
        if !target.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&target)
            .map_err(|e| anyhow::anyhow!("workflow file {name}: {e}"))?;
        let yaml = path.extension().is_some_and(|x| x != "json");
        let def = parse_definition_file(&text, yaml)
            .map_err(|e| anyhow::anyhow!("workflow file {name}: {e}"))?;
        if let Err(errors) = def.validate() {
            let why: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            anyhow::bail!("workflow file {name}: {}", why.join("; "));
        }
        if let Some((other, _)) = out.iter().find(|(_, d)| d.id == def.id) {
            anyhow::bail!(
                "workflow file {name}: id '{}' is also defined in {other}",
                def.id
            );
        }
        out.push((name, def));
    }
    Ok(out)
}

/// Store the definitions read from files, by the rule of the API
/// (docs/api.md §3.1): a file that differs from its id's newest revision is
/// stored as the next revision; sessions keep the revision they started
/// with.
pub async fn load_definitions(
    store: &dyn Store,
    defs: &[(String, WorkflowDefinition)],
) -> anyhow::Result<()> {
    let now = now_micros();
    for (file, def) in defs {
        let by = Actor::system(format!("workflow file {file}"));
        let (outcome, revision) = store.put_definition(def, &by, now).await?;
        match outcome {
            PutOutcome::Created => {
                tracing::info!(file = %file, workflow_id = %def.id, "workflow definition loaded")
            }
            PutOutcome::Unchanged => {
                tracing::debug!(file = %file, workflow_id = %def.id, "workflow definition unchanged")
            }
            PutOutcome::Revised => {
                tracing::info!(file = %file, workflow_id = %def.id, revision, "workflow definition file stored as a new revision")
            }
        }
    }
    Ok(())
}
