//! `opscore workflows …`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::Value;

use super::output::{json_object_arg, list, out, print_json, show, CliError, ClientOpts, PageOpts};
use super::table::{fields, json, opt, opt_time, Table};
use crate::client::{
    AgentSelector, Page, Stored, StoredWorkflow, TriggerSource, Triggered, WorkflowDefinition,
};

/// `opscore workflows`.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCmd {
    /// List the stored workflow definitions.
    List {
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a workflow definition and its tasks.
    Get {
        /// The definition's id.
        workflow_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List the revisions stored under a definition id, newest first.
    Revisions {
        /// The definition's id.
        workflow_id: String,
        /// Paging.
        #[command(flatten)]
        page: PageOpts,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Store a workflow definition from a JSON or YAML file (a changed
    /// definition under a stored id is its next revision).
    Create {
        /// The file (`.json` is read as JSON, anything else as YAML, of
        /// which JSON is a part).
        file: PathBuf,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Delete a stored workflow definition (started sessions keep theirs).
    Delete {
        /// The definition's id.
        workflow_id: String,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Start a session of a workflow: on one agent (`--agent A`), or on a
    /// pool (`--capability X`, several `--agent`, or neither: any agent).
    Trigger {
        /// The stored definition to run.
        #[arg(required_unless_present = "definition", conflicts_with = "definition")]
        workflow_id: Option<String>,
        /// The agent to run it on; given more than once (or with
        /// --capability), the agents of the pool.
        #[arg(long)]
        agent: Vec<String>,
        /// Run it on a pool: any free agent with this capability (and among
        /// the --agent ones, if given).
        #[arg(long)]
        capability: Option<String>,
        /// The first task's payload, a JSON object [default: its parameters].
        #[arg(long)]
        payload: Option<String>,
        /// Run the definition in this JSON or YAML file instead of a stored
        /// one (it is stored if its id is new).
        #[arg(long, value_name = "FILE")]
        definition: Option<PathBuf>,
        /// Server, key, output.
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Run `opscore workflows …`.
pub async fn run(cmd: WorkflowsCmd) -> Result<(), CliError> {
    match cmd {
        WorkflowsCmd::List { opts } => {
            show(opts.machine(), opts.client()?.list_definitions(), |p| {
                list_table(p)
            })
            .await
        }
        WorkflowsCmd::Get { workflow_id, opts } => {
            show(
                opts.machine(),
                opts.client()?.get_definition(&workflow_id),
                definition_text,
            )
            .await
        }
        WorkflowsCmd::Revisions {
            workflow_id,
            page,
            opts,
        } => {
            let client = opts.client()?;
            list(
                opts.machine(),
                &page,
                |p| client.list_revisions(&workflow_id, p),
                revisions_table,
            )
            .await
        }
        WorkflowsCmd::Create { file, opts } => {
            let definition = read_definition(&file)?;
            let call = opts.client()?.create_definition(&definition);
            show(opts.machine(), call, stored_text).await
        }
        WorkflowsCmd::Delete { workflow_id, opts } => {
            let answer = opts
                .client()?
                .delete_definition(&workflow_id)
                .json()
                .await?;
            if let Some(f) = opts.machine() {
                // 204 has no body: print something a script can parse.
                return print_json(
                    f,
                    &match answer {
                        Value::Null => serde_json::json!({"deleted": workflow_id}),
                        other => other,
                    },
                );
            }
            out(&format!("Workflow {workflow_id} deleted\n"))
        }
        WorkflowsCmd::Trigger {
            workflow_id,
            agent,
            capability,
            payload,
            definition,
            opts,
        } => {
            let payload = payload
                .map(|p| json_object_arg("--payload", &p))
                .transpose()?;
            let source = match (workflow_id, definition) {
                (_, Some(file)) => {
                    let v = read_definition(&file)?;
                    let def: WorkflowDefinition = serde_json::from_value(v).map_err(|e| {
                        CliError::Usage(format!(
                            "{} is not a workflow definition: {e}",
                            file.display()
                        ))
                    })?;
                    TriggerSource::Inline(def)
                }
                (Some(id), None) => TriggerSource::Stored(id),
                // clap requires one of the two.
                (None, None) => {
                    return Err(CliError::Usage(
                        "give a WORKFLOW_ID or --definition FILE".into(),
                    ))
                }
            };
            // One agent and no capability: the per-agent trigger
            // (docs/api.md §1.4); anything else a pool (§3.3).
            if let ([one], None) = (agent.as_slice(), &capability) {
                let call = opts.client()?.trigger(one, &source, payload.as_ref());
                return show(opts.machine(), call, |t| triggered_text(t, one)).await;
            }
            let selector = AgentSelector {
                capability,
                agent_ids: (!agent.is_empty()).then_some(agent),
            };
            let (id, def) = match &source {
                TriggerSource::Stored(id) => (id.clone(), None),
                TriggerSource::Inline(def) => (def.id.clone(), Some(def)),
            };
            let call = opts
                .client()?
                .trigger_pool(&id, &selector, def, payload.as_ref());
            let pool = pool_text(&selector);
            show(opts.machine(), call, |t| triggered_text(t, &pool)).await
        }
    }
}

/// How a pool's selector reads in a trigger's answer.
fn pool_text(s: &AgentSelector) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &s.capability {
        parts.push(format!("capability {c}"));
    }
    if let Some(ids) = &s.agent_ids {
        parts.push(ids.join(", "));
    }
    if parts.is_empty() {
        "any agent".to_owned()
    } else {
        format!("pool of {}", parts.join("; "))
    }
}

/// A definition file as JSON: `.json` files are parsed as JSON, others as
/// YAML (the server takes JSON; YAML is converted here).
fn read_definition(file: &Path) -> Result<Value, CliError> {
    let name = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {name}: {e}")))?;
    let is_json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let v: Value = if is_json {
        serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{name} is not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{name} is not valid YAML: {e}")))?
    };
    if !v.is_object() {
        return Err(CliError::Usage(format!(
            "{name} must hold one workflow definition (a mapping with id, name, tasks)"
        )));
    }
    Ok(v)
}

fn list_table(page: &Page<WorkflowDefinition>) -> String {
    let mut t = Table::new(&["WORKFLOW", "NAME", "VERSION", "TASKS", "DESCRIPTION"]);
    for d in &page.items {
        t.row(vec![
            d.id.clone(),
            opt(Some(&d.name)),
            opt(d.version.as_deref()),
            d.tasks.len().to_string(),
            opt(d.description.as_deref()),
        ]);
    }
    t.render()
}

fn definition_text(d: &WorkflowDefinition) -> String {
    let mut text = fields(&[
        ("Workflow", d.id.clone()),
        ("Name", opt(Some(&d.name))),
        ("Version", opt(d.version.as_deref())),
        ("Description", opt(d.description.as_deref())),
        ("Tasks", d.tasks.len().to_string()),
    ]);
    if d.tasks.is_empty() {
        return text;
    }
    let mut t = Table::new(&[
        "TASK",
        "NAME",
        "NEXT",
        "RETRIES",
        "TIMEOUT",
        "DELAY",
        "PARAMETERS",
    ]);
    for task in &d.tasks {
        t.row(vec![
            task.task_id.clone(),
            opt(Some(&task.name)),
            opt(task.next_task_id.as_deref()),
            task.max_retries.to_string(),
            task.timeout_seconds
                .map_or_else(|| "default".to_owned(), |s| format!("{s}s")),
            format!("{}s", task.delay_seconds),
            json(Some(&task.parameters)),
        ]);
    }
    text.push('\n');
    text.push_str(&t.render());
    text
}

fn stored_text(s: &Stored) -> String {
    let d = &s.definition;
    let what = if s.created {
        "stored"
    } else {
        "already stored, unchanged"
    };
    let revision = s.revision.map(|r| format!(" as revision {r}"));
    let revision = if s.created {
        revision.unwrap_or_default()
    } else {
        String::new()
    };
    format!(
        "Workflow {} {what}{revision} ({} tasks)\n",
        d.id,
        d.tasks.len()
    )
}

fn revisions_table(revisions: &[StoredWorkflow]) -> String {
    let mut t = Table::new(&["REVISION", "STORED", "NAME", "VERSION", "TASKS"]);
    for r in revisions {
        t.row(vec![
            r.revision.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            opt_time(&r.stored_at),
            opt(Some(&r.definition.name)),
            opt(r.definition.version.as_deref()),
            r.definition.tasks.len().to_string(),
        ]);
    }
    t.render()
}

fn triggered_text(t: &Triggered, agent: &str) -> String {
    fields(&[
        ("Session", t.session_id.clone()),
        ("Workflow", t.workflow_id.clone()),
        ("Agent", agent.to_owned()),
        ("Message", t.message.clone()),
    ])
}
