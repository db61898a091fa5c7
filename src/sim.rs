//! `opscore simulate`: a fleet of simulated agents for local runs and
//! benchmarks. It registers N agents through the signed webhook, serves the
//! AgentKit `/v1/agents/{agentId}/run` endpoint for them (and a direct-mode
//! contact endpoint), reports `idle`, and on each task reports `active`,
//! waits, then reports `idle` with a result, or `error` with a set
//! probability (then `idle` again, ready for the retry).

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
            "capabilities": ["summarise", "simulate"],
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
        let every = Duration::from_millis(args.trigger_every_ms.max(10));
        tokio::spawn(trigger_loop(
            sim.clone(),
            ids.clone(),
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

/// Trigger `workflow` on each agent in turn, and follow each session to its
/// end in the log.
async fn trigger_loop(
    sim: Arc<Sim>,
    ids: Vec<String>,
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
        let agent = &ids[n % ids.len()];
        let body = json!({"workflowDefinitionId": workflow, "initialPayload": {"n": n}});
        let session = match sim
            .client
            .post_json(&format!("/v1/opscore/agent/{agent}/workflow"), &body)
            .await
        {
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
                    // Attempts per task, in order, e.g. "1,2".
                    let attempts = v["tasks"].as_array().map_or(String::new(), |t| {
                        t.iter()
                            .map(|t| t["attempts"].to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    tracing::info!(session_id = %session, status, attempts = %attempts, error = v["error"].as_str().unwrap_or(""), "workflow session finished");
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
            c.report_state(&agent_id, "idle", Some(&d)).await
        };
        if let Err(e) = result {
            tracing::warn!(agent_id = %agent_id, error = %e, "report failed");
        }
    });
    StatusCode::ACCEPTED
}
