//! `opscore simulate`: a fleet of simulated agents for local runs and
//! benchmarks. It registers N agents through the signed webhook, serves the
//! AgentKit `/v1/agents/{agentId}/run` endpoint for them (and a direct-mode
//! contact endpoint), reports `idle`, and on each task reports `active`,
//! waits, then reports `idle` with a result and an `output` (the task's
//! name, the agent, the keys of its `inputs`), or `error` with a set
//! probability (then `idle` again, ready for the retry). It can trigger a
//! workflow on each agent in turn, or on a pool of its agents; the built-in
//! [`PARALLEL_DEMO`] workflow (a fan-out and a join) is stored when it is
//! the one to trigger.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use clap::Args;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// Settings of the simulator.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// The server and credentials.
    #[command(flatten)]
    pub target: crate::client::TargetArgs,
    /// How many agents to simulate.
    #[arg(long, env = "SIM_AGENTS", default_value_t = 10)]
    pub agents: usize,
    /// Agent id prefix; ids are PREFIX-0, PREFIX-1, …
    #[arg(long, env = "SIM_ID_PREFIX", default_value = "sim")]
    pub id_prefix: String,
    /// Address the simulated AgentKit listens on.
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// URL Ops-Core reaches this simulator at (for contact endpoints).
    /// [default: http://<listen>]
    #[arg(long, env = "SIM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long a task takes, in milliseconds.
    #[arg(long, env = "SIM_TASK_MS", default_value_t = 200)]
    pub task_ms: u64,
    /// Probability that a task ends in `error` (0 to 1).
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Also trigger this workflow on the agents in turn, and log how each
    /// session ends.
    #[arg(long, env = "SIM_TRIGGER_WORKFLOW")]
    pub trigger_workflow: Option<String>,
    /// How often to trigger it, in milliseconds.
    #[arg(long, env = "SIM_TRIGGER_EVERY_MS", default_value_t = 2000)]
    pub trigger_every_ms: u64,
    /// Trigger it on a pool: any free agent with this capability
    /// (`POST /v1/opscore/workflows/{id}/trigger`), not each agent in turn.
    #[arg(long, env = "SIM_TRIGGER_CAPABILITY")]
    pub trigger_capability: Option<String>,
    /// The capabilities every simulated agent registers, comma-separated.
    #[arg(
        long,
        env = "SIM_CAPABILITIES",
        default_value = "summarise,simulate",
        value_delimiter = ','
    )]
    pub capabilities: Vec<String>,
}

/// The id of the simulator's built-in parallel workflow: stored by the
/// simulator when it is the workflow to trigger.
pub const PARALLEL_DEMO: &str = "sim_parallel";

/// [`PARALLEL_DEMO`]: one task fans out to three that run at the same time
/// on different agents of a pool, and a join that gets their outputs.
pub fn parallel_demo() -> Value {
    json!({"id": PARALLEL_DEMO, "name": "Simulated fan-out and join",
        "description": "Stored by opscore simulate: split, three parallel parts, merge.",
        "tasks": [
            {"taskId": "split", "name": "Split", "agentCapability": "summarise", "dependsOn": []},
            {"taskId": "part_a", "name": "Part A", "agentCapability": "summarise", "dependsOn": ["split"]},
            {"taskId": "part_b", "name": "Part B", "agentCapability": "summarise", "dependsOn": ["split"]},
            {"taskId": "part_c", "name": "Part C", "agentCapability": "summarise", "dependsOn": ["split"]},
            {"taskId": "merge", "name": "Merge", "agentCapability": "summarise",
             "dependsOn": ["part_a", "part_b", "part_c"]}]})
}

struct Sim {
    client: Client,
    task_ms: u64,
    error_rate: f64,
}

/// Run the simulator until `stop` is cancelled; deregisters its agents on
/// the way out.
pub async fn run(args: SimArgs, stop: CancellationToken) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!("invalid setting SIM_ERROR_RATE (--error-rate): must be between 0 and 1");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on SIM_LISTEN={}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let advertise = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let target = args.target.server.resolve().map_err(anyhow::Error::msg)?;
    let sim = Arc::new(Sim {
        client: Client::for_target(&target).map_err(anyhow::Error::msg)?,
        task_ms: args.task_ms,
        error_rate: args.error_rate,
    });
    let app = Router::new()
        .route("/v1/agents/{agent_id}/run", post(on_task))
        .route("/agents/{agent_id}/task", post(on_task))
        .with_state(sim.clone());
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });
    tracing::info!(listen = %local, agentkit_api_url = %format!("{advertise}/v1"), "simulated AgentKit listening");

    let ids: Vec<String> = (0..args.agents)
        .map(|i| format!("{}-{i}", args.id_prefix))
        .collect();
    for id in &ids {
        let details = json!({
            "agentId": id, "agentName": format!("Simulated {id}"), "version": "sim-1",
            "capabilities": args.capabilities,
            "contactEndpoint": format!("{advertise}/agents/{id}/task"), "metadata": {"simulated": true},
        });
        retry("register", || {
            sim.client
                .notify("REGISTER", &details, args.target.webhook_secret.as_deref())
        })
        .await?;
        retry("report idle", || {
            sim.client.report_state(id, "idle", None).into_future()
        })
        .await?;
    }
    tracing::info!(agents = ids.len(), "simulated agents registered and idle");

    if let (Some(workflow), false) = (&args.trigger_workflow, ids.is_empty()) {
        if workflow == PARALLEL_DEMO {
            // 201 stored, 200 already there; a 409 (another one under this
            // id) leaves that one, which then runs.
            match sim
                .client
                .post_json("/v1/opscore/workflows", &parallel_demo())
                .await
            {
                Ok(_) => {
                    tracing::info!(workflow_id = PARALLEL_DEMO, "parallel demo workflow stored")
                }
                Err(e) => tracing::warn!(error = %e, "could not store the parallel demo workflow"),
            }
        }
        let every = Duration::from_millis(args.trigger_every_ms.max(10));
        let on = match &args.trigger_capability {
            Some(c) => On::Pool(c.clone()),
            None => On::Each(ids.clone()),
        };
        tokio::spawn(trigger_loop(
            sim.clone(),
            on,
            workflow.clone(),
            every,
            stop.clone(),
        ));
    }
    stop.cancelled().await;
    for id in &ids {
        let details = json!({"agentId": id});
        if let Err(e) = sim
            .client
            .notify(
                "DEREGISTER",
                &details,
                args.target.webhook_secret.as_deref(),
            )
            .await
        {
            tracing::warn!(agent_id = %id, error = %e, "could not deregister");
        }
    }
    server.await??;
    Ok(())
}

/// Where the trigger loop starts its sessions.
enum On {
    /// On each of these agents in turn.
    Each(Vec<String>),
    /// On a pool of the agents with this capability.
    Pool(String),
}

/// Trigger `workflow` on each agent in turn, or on a pool, and follow each
/// session to its end in the log.
async fn trigger_loop(
    sim: Arc<Sim>,
    on: On,
    workflow: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    for n in 0usize.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let (agent, path, body) = match &on {
            On::Each(ids) => {
                let agent = ids[n % ids.len()].clone();
                let path = format!("/v1/opscore/agent/{agent}/workflow");
                let body = json!({"workflowDefinitionId": workflow, "initialPayload": {"n": n}});
                (agent, path, body)
            }
            On::Pool(capability) => {
                let path = format!(
                    "/v1/opscore/workflows/{}/trigger",
                    crate::domain::path_segment(&workflow)
                );
                let body = json!({"agentSelector": {"capability": capability},
                                  "initialPayload": {"n": n}});
                (format!("pool of {capability}"), path, body)
            }
        };
        let session = match sim.client.post_json(&path, &body).await {
            Ok(v) => v["sessionId"].as_str().unwrap_or_default().to_owned(),
            Err(e) => {
                tracing::warn!(agent_id = %agent, error = %e, "trigger failed");
                continue;
            }
        };
        tracing::info!(agent_id = %agent, session_id = %session, "workflow triggered");
        let sim = sim.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(v) = sim
                    .client
                    .get_json(&format!("/v1/opscore/sessions/{session}"))
                    .await
                else {
                    continue;
                };
                let status = v["status"].as_str().unwrap_or_default();
                if matches!(status, "completed" | "failed" | "cancelled") {
                    // Attempts per task, in order, e.g. "1,2", and the
                    // agent each task ended on.
                    let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
                    let column = |f: &dyn Fn(&Value) -> String| {
                        tasks.iter().map(f).collect::<Vec<_>>().join(",")
                    };
                    let attempts = column(&|t| t["attempts"].to_string());
                    let agents = column(&|t| t["agentId"].as_str().unwrap_or("-").to_owned());
                    tracing::info!(session_id = %session, status, attempts = %attempts, agents = %agents, error = v["error"].as_str().unwrap_or(""), "workflow session finished");
                    return;
                }
            }
        });
    }
}

/// Ops-Core may still be starting (docker compose): retry for a while.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::client::ClientError>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 1.. {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::anyhow!("{what} failed: {e}")),
        }
    }
    unreachable!()
}

/// Accept the task at once (as AgentKit does), then play it out.
async fn on_task(
    State(sim): State<Arc<Sim>>,
    Path(agent_id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    let refs = json!({
        "taskId": body["opscore_task_id"],
        "sessionId": body["opscore_session_id"],
    });
    tokio::spawn(async move {
        let c = &sim.client;
        if let Err(e) = c.report_state(&agent_id, "active", Some(&refs)).await {
            tracing::warn!(agent_id = %agent_id, error = %e, "report active failed");
        }
        tokio::time::sleep(Duration::from_millis(sim.task_ms)).await;
        let failed = sim.error_rate > 0.0 && rand::random::<f64>() < sim.error_rate;
        let result = if failed {
            let mut d = refs.clone();
            d["error"] = json!("simulated failure");
            c.report_state(&agent_id, "error", Some(&d)).await.and(
                // Recover, so the retry can be dispatched.
                c.report_state(&agent_id, "idle", None).await,
            )
        } else {
            let mut d = refs.clone();
            d["result"] = json!({"echo": body["payload"], "by": agent_id});
            let inputs: Vec<&String> = body["inputs"]
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            d["output"] = json!({"task": body["task_name"], "by": agent_id, "inputs": inputs});
            c.report_state(&agent_id, "idle", Some(&d)).await
        };
        if let Err(e) = result {
            tracing::warn!(agent_id = %agent_id, error = %e, "report failed");
        }
    });
    StatusCode::ACCEPTED
}
