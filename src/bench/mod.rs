//! `opscore bench`: the load tool. It runs against a server that is already
//! up, registers its own agents (ids under a per-run prefix), runs the
//! scenarios the old service was measured with, deregisters its agents,
//! and reports requests/s and latency percentiles per scenario, each also as
//! a ratio to a closed-loop `GET /health` run made in the same invocation.
//!
//! Scenarios:
//! - `health`: closed loop, `GET /health` (always runs, first).
//! - `s1`: open loop, N agents each reporting every 5-10 s (drawn per agent).
//! - `s1-max`: closed loop, state reports at C connections.
//! - `reads`: closed loop, `GET .../state` at C connections.
//! - `s2`: triggers of the sample workflow at a rate (or closed loop), run to
//!   completion by simulated agents (`crate::sim`) started in this process.
//! - `s3`: closed loop, 80% state reports, 15% state reads, 5% triggers.
//! - `s4`: open-loop state reports at a rate doubling step by step until p99
//!   passes 2 s or errors pass 5%; reports the knee.
//!
//! Every loop is bounded (duration, step count, per-request timeout), and
//! the target must be a loopback address unless `--allow-remote` is given.

mod load;
mod report;
mod sessions;
mod stats;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rand::Rng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use load::{closed_loop, fleet_schedule, open_loop, rate_schedule, Bench, Measured};
pub use report::{Cleanup, Knee, Mode, Report, ScenarioReport, SessionCounts};
use sessions::SimFleet;
pub use stats::ErrorCounts;

/// A scenario of the load tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Closed-loop `GET /health` (always runs).
    Health,
    /// Open-loop state reports of N agents, each every 5-10 s.
    S1,
    /// Closed-loop state reports at C connections.
    S1Max,
    /// Closed-loop state reads at C connections.
    Reads,
    /// Workflow triggers, completed by simulated agents.
    S2,
    /// Closed-loop mix: 80% reports, 15% reads, 5% triggers.
    S3,
    /// Open-loop reports at a doubling rate until p99 or errors pass a limit.
    S4,
    /// Every scenario.
    All,
}

/// A range of durations, `MIN-MAX` (e.g. `5s-10s`), or one duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    /// Shortest.
    pub min: Duration,
    /// Longest.
    pub max: Duration,
}

/// Settings of the load tool.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server and credentials.
    #[command(flatten)]
    pub target: crate::client::TargetArgs,
    /// Scenarios to run, comma-separated; health always runs first.
    #[arg(
        long,
        env = "BENCH_SCENARIO",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub scenario: Vec<Scenario>,
    /// How long each scenario runs (e.g. 10s, 500ms, 2m).
    #[arg(long, env = "BENCH_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connections of the closed-loop scenarios.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 32)]
    pub connections: usize,
    /// Agents the tool registers and reports for.
    #[arg(long, env = "BENCH_AGENTS", default_value_t = 5000)]
    pub agents: usize,
    /// S1: each agent reports every MIN-MAX, drawn once per agent.
    #[arg(long, env = "BENCH_REPORT_EVERY", default_value = "5s-10s", value_parser = parse_every)]
    pub report_every: Every,
    /// Open loop: most requests in flight; later ones wait, and the wait
    /// counts in their latency.
    #[arg(long, env = "BENCH_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// A request without a full response this long after it was due fails (timeout).
    #[arg(long, env = "BENCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Workflow definition that S2 and S3 trigger.
    #[arg(long, env = "BENCH_WORKFLOW", default_value = "sample_workflow_id")]
    pub workflow: String,
    /// S2: triggers per second (open loop); 0 triggers in a closed loop at --connections.
    #[arg(long, env = "BENCH_TRIGGER_RATE", default_value_t = 50.0)]
    pub trigger_rate: f64,
    /// S2, S3: simulated agents that run the triggered workflows.
    #[arg(long, env = "BENCH_SIM_AGENTS", default_value_t = 20)]
    pub sim_agents: usize,
    /// S2, S3: how long a simulated task takes, in milliseconds.
    #[arg(long, env = "BENCH_SIM_TASK_MS", default_value_t = 50)]
    pub sim_task_ms: u64,
    /// S2, S3: how long to wait for sessions to finish once the triggers stop
    /// (those still open are then cancelled).
    #[arg(long, env = "BENCH_DRAIN", default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// S4: report rate of the first step, per second; it doubles every step.
    #[arg(long, env = "BENCH_STRESS_START_RATE", default_value_t = 500.0)]
    pub stress_start_rate: f64,
    /// S4: length of one step.
    #[arg(long, env = "BENCH_STRESS_STEP", default_value = "5s", value_parser = parse_duration)]
    pub stress_step: Duration,
    /// S4: most steps.
    #[arg(long, env = "BENCH_STRESS_MAX_STEPS", default_value_t = 8)]
    pub stress_max_steps: u32,
    /// S4: a step breaks the limit when its p99 latency is above this.
    #[arg(long, env = "BENCH_STRESS_P99_LIMIT", default_value = "2s", value_parser = parse_duration)]
    pub stress_p99_limit: Duration,
    /// S4: ... or when more than this share of its requests failed.
    #[arg(long, env = "BENCH_STRESS_ERROR_LIMIT", default_value_t = 0.05)]
    pub stress_error_limit: f64,
    /// Prefix of the agent ids the run registers. [default: bench-<random>]
    #[arg(long, env = "BENCH_ID_PREFIX")]
    pub id_prefix: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Allow a target that is not a loopback address. This workplace forbids
    /// load against anything but loopback; the flag exists for the
    /// operator's own environments.
    #[arg(long)]
    pub allow_remote: bool,
}

/// A duration in the one grammar of the command line
/// ([`parse_duration`](crate::domain::time::parse_duration)).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::domain::time::parse_duration(s)
}

/// Parse `MIN-MAX` (e.g. `5s-10s`) or a single duration.
pub fn parse_every(s: &str) -> Result<Every, String> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
        None => {
            let d = parse_duration(s)?;
            (d, d)
        }
    };
    if min.is_zero() || min > max {
        return Err(format!("'{s}': need 0 < MIN <= MAX"));
    }
    Ok(Every { min, max })
}

/// Refuse a target that is not on this machine: a host that is not a
/// loopback address literal, or a name that does not resolve to loopback
/// addresses only. `allow_remote` lifts the check.
pub async fn check_target(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("--url '{url}': {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        anyhow::bail!("--url '{url}': must be an http or https URL");
    }
    if allow_remote {
        return Ok(());
    }
    let refuse = || {
        anyhow::anyhow!(
            "--url '{url}' is not a loopback address; load is only sent to this machine \
             (127.0.0.0/8, ::1, localhost) unless --allow-remote is given"
        )
    };
    match u.host() {
        Some(url::Host::Ipv4(a)) if a.is_loopback() => Ok(()),
        Some(url::Host::Ipv6(a)) if a.is_loopback() => Ok(()),
        Some(url::Host::Domain(d)) => {
            let port = u.port_or_known_default().unwrap_or(80);
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| anyhow::anyhow!("--url '{url}': cannot resolve {d}: {e}"))?
                .map(|a| a.ip())
                .collect();
            if !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback) {
                Ok(())
            } else {
                Err(refuse())
            }
        }
        _ => Err(refuse()),
    }
}

/// Most requests one open-loop schedule may hold (bounds the tool's memory).
const MAX_SCHEDULED: f64 = 10_000_000.0;

fn bad(flag: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid --{flag}: {message}")
}

/// The scenarios to run, in order, after checking every setting.
fn plan(args: &BenchArgs) -> anyhow::Result<Vec<Scenario>> {
    let hour = Duration::from_secs(3600);
    let within = |d: Duration, flag: &str, max: Duration| {
        if d.is_zero() || d > max {
            Err(bad(
                flag,
                format!("must be more than 0 and at most {max:?}"),
            ))
        } else {
            Ok(())
        }
    };
    within(args.duration, "duration", hour)?;
    within(args.timeout, "timeout", Duration::from_secs(600))?;
    within(args.stress_step, "stress-step", Duration::from_secs(600))?;
    within(
        args.stress_p99_limit,
        "stress-p99-limit",
        Duration::from_secs(600),
    )?;
    within(args.report_every.max, "report-every", hour)?;
    if args.drain > Duration::from_secs(600) {
        return Err(bad("drain", "must be at most 600s"));
    }
    if !(1..=10_000).contains(&args.connections) {
        return Err(bad("connections", "must be from 1 to 10000"));
    }
    if !(1..=10_000).contains(&args.max_in_flight) {
        return Err(bad("max-in-flight", "must be from 1 to 10000"));
    }
    if !(1..=1_000_000).contains(&args.agents) {
        return Err(bad("agents", "must be from 1 to 1000000"));
    }
    if !(args.trigger_rate.is_finite() && args.trigger_rate >= 0.0) {
        return Err(bad("trigger-rate", "must be 0 or more"));
    }
    if !(args.stress_start_rate.is_finite() && args.stress_start_rate > 0.0) {
        return Err(bad("stress-start-rate", "must be more than 0"));
    }
    if !(1..=20).contains(&args.stress_max_steps) {
        return Err(bad("stress-max-steps", "must be from 1 to 20"));
    }
    if !(args.stress_error_limit > 0.0 && args.stress_error_limit <= 1.0) {
        return Err(bad(
            "stress-error-limit",
            "must be more than 0 and at most 1",
        ));
    }
    if args.sim_task_ms > 60_000 {
        return Err(bad("sim-task-ms", "must be at most 60000"));
    }
    if let Some(p) = &args.id_prefix {
        let ok = !p.is_empty()
            && p.len() <= 64
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if !ok {
            return Err(bad("id-prefix", "1 to 64 of [A-Za-z0-9._:-]"));
        }
    }
    let all = args.scenario.contains(&Scenario::All);
    let mut out = vec![Scenario::Health];
    for s in [
        Scenario::S1,
        Scenario::S1Max,
        Scenario::Reads,
        Scenario::S2,
        Scenario::S3,
        Scenario::S4,
    ] {
        if all || args.scenario.contains(&s) {
            out.push(s);
        }
    }
    let secs = args.duration.as_secs_f64();
    if out.contains(&Scenario::S1)
        && args.agents as f64 * (secs / args.report_every.min.as_secs_f64() + 1.0) > MAX_SCHEDULED
    {
        return Err(bad("duration", "S1 would schedule more than 10M reports"));
    }
    if out.contains(&Scenario::S2) && args.trigger_rate * secs > MAX_SCHEDULED {
        return Err(bad(
            "trigger-rate",
            "S2 would schedule more than 10M triggers",
        ));
    }
    if (out.contains(&Scenario::S2) || out.contains(&Scenario::S3))
        && !(1..=10_000).contains(&args.sim_agents)
    {
        return Err(bad("sim-agents", "must be from 1 to 10000"));
    }
    Ok(out)
}

/// Run the bench; see the module docs.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    run_until(args, CancellationToken::new()).await
}

/// Run the bench until done or `stop` is cancelled (the scenario running
/// then ends early, and cleanup still runs).
pub async fn run_until(args: BenchArgs, stop: CancellationToken) -> anyhow::Result<Report> {
    let plan = plan(&args)?;
    let target = args.target.server.resolve().map_err(anyhow::Error::msg)?;
    let api_key = target.api_key.clone();
    check_target(&target.url, args.allow_remote).await?;
    let bench = Arc::new(Bench::new(
        &target.url,
        &api_key,
        args.target.webhook_secret.clone(),
        args.connections.max(args.max_in_flight),
        args.timeout,
    )?);
    preflight(&bench, &args, &plan).await?;
    let prefix = args.id_prefix.clone().unwrap_or_else(|| {
        let r = uuid::Uuid::new_v4().simple().to_string();
        format!("bench-{}", &r[..8])
    });
    let mut report = Report {
        target: bench.base.clone(),
        id_prefix: prefix.clone(),
        agents: 0,
        connections: args.connections,
        health_rps: 0.0,
        scenarios: Vec::new(),
        knee: None,
        cleanup: Cleanup::default(),
    };
    let mut run = Run {
        bench,
        args,
        api_key,
        prefix,
        agents: Arc::new(Vec::new()),
        sim: None,
        stop,
    };
    let outcome = run.scenarios(&plan, &mut report).await;
    let cleaned = run.cleanup(&mut report).await;
    outcome?;
    cleaned?;
    report.relate_to_health();
    Ok(report)
}

/// Fail early, with a reason, when the server is not there, refuses the
/// key, or lacks the workflow.
async fn preflight(bench: &Bench, args: &BenchArgs, plan: &[Scenario]) -> anyhow::Result<()> {
    let health = bench
        .client
        .get(bench.url("/health"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("no Ops-Core answering at {}: {e}", bench.base))?;
    if !health.status().is_success() {
        anyhow::bail!("{}/health answered {}", bench.base, health.status());
    }
    bench
        .get_json("/v1/opscore/agents?limit=1")
        .await
        .map_err(|e| anyhow::anyhow!("the server refused the API key: {e:#}"))?;
    if plan.contains(&Scenario::S2) || plan.contains(&Scenario::S3) {
        bench
            .get_json(&format!("/v1/opscore/workflows/{}", args.workflow))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "workflow '{}' is not available on the server (S2 and S3 trigger it; \
                     start the server with it in OPSCORE_WORKFLOWS_DIR): {e:#}",
                    args.workflow
                )
            })?;
    }
    Ok(())
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("bench: {msg}");
}

/// State of one invocation.
struct Run {
    bench: Arc<Bench>,
    args: BenchArgs,
    /// The key the bench runs with (resolved from flags, variables, context).
    api_key: String,
    prefix: String,
    /// Registered report agents.
    agents: Arc<Vec<String>>,
    sim: Option<SimFleet>,
    stop: CancellationToken,
}

impl Run {
    async fn scenarios(&mut self, plan: &[Scenario], report: &mut Report) -> anyhow::Result<()> {
        let needs_agents = plan.iter().any(|s| {
            matches!(
                s,
                Scenario::S1 | Scenario::S1Max | Scenario::Reads | Scenario::S3 | Scenario::S4
            )
        });
        let needs_sim = plan.contains(&Scenario::S2) || plan.contains(&Scenario::S3);
        for &s in plan {
            if self.stop.is_cancelled() {
                break;
            }
            if s == Scenario::Health {
                self.health(report).await;
                if needs_agents {
                    self.register(report).await?;
                }
                if needs_sim {
                    progress(format!(
                        "starting {} simulated agents",
                        self.args.sim_agents
                    ));
                    let sim = SimFleet::start(
                        &self.bench,
                        &self.api_key,
                        self.args.target.webhook_secret.clone(),
                        &self.prefix,
                        self.args.sim_agents,
                        self.args.sim_task_ms,
                    )
                    .await?;
                    report.cleanup.sim_agents = sim.ids.len() as u64;
                    self.sim = Some(sim);
                }
                continue;
            }
            match s {
                Scenario::S1 => self.s1(report).await,
                Scenario::S1Max => self.s1_max(report).await,
                Scenario::Reads => self.reads(report).await,
                Scenario::S2 => self.s2(report).await?,
                Scenario::S3 => self.s3(report).await?,
                Scenario::S4 => self.s4(report).await,
                Scenario::Health | Scenario::All => {}
            }
        }
        Ok(())
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    async fn health(&self, report: &mut Report) {
        let c = self.args.connections;
        progress(format!(
            "health: closed loop, {c} connections, {:?}",
            self.args.duration
        ));
        let m = closed_loop(&self.bench, c, 1, self.args.duration, &self.stop, |b, _| {
            b.health(0)
        })
        .await;
        report.scenarios.push(
            ScenarioReport::new("health", Mode::Closed, Self::secs(m.elapsed), &m.total())
                .closed(c),
        );
    }

    /// Register the report agents, `workers` at a time.
    async fn register(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let ids: Vec<String> = (0..self.args.agents)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect();
        progress(format!(
            "registering {} agents as {}-0..{}",
            ids.len(),
            self.prefix,
            ids.len() - 1
        ));
        let results = notify_all(&self.bench, &ids, "REGISTER", &self.prefix, 32).await;
        let mut ok = Vec::with_capacity(ids.len());
        let mut first_error = None;
        for (id, r) in results {
            match r {
                Ok(()) => ok.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Keep the schedule's order: agent i is ids[i].
        ok.sort_by_key(|id| {
            id.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        });
        report.cleanup.registered = ok.len() as u64;
        report.agents = ok.len();
        self.agents = Arc::new(ok);
        if let Some(e) = first_error {
            return Err(e.context("registering the bench agents"));
        }
        Ok(())
    }

    async fn s1(&self, report: &mut Report) {
        let every = self.args.report_every;
        let d = self.args.duration;
        let schedule = fleet_schedule(self.agents.len(), every.min, every.max, d);
        let offered = schedule.len() as f64 / d.as_secs_f64();
        progress(format!(
            "s1: open loop, {} agents each every {:?}-{:?} ({offered:.1}/s), {d:?}",
            self.agents.len(),
            every.min,
            every.max
        ));
        let agents = self.agents.clone();
        let m = open_loop(
            &self.bench,
            d,
            schedule,
            self.args.max_in_flight,
            1,
            &self.stop,
            move |b, i, seq| b.report(0, &agents[i], seq),
        )
        .await;
        report.scenarios.push(
            ScenarioReport::new("s1", Mode::Open, Self::secs(m.elapsed), &m.total())
                .offered(offered),
        );
    }

    async fn closed(&self, name: &str, report: &mut Report, read: bool) {
        let c = self.args.connections;
        progress(format!(
            "{name}: closed loop, {c} connections, {:?}",
            self.args.duration
        ));
        let agents = self.agents.clone();
        let m = closed_loop(
            &self.bench,
            c,
            1,
            self.args.duration,
            &self.stop,
            move |b, seq| {
                let agent = &agents[seq as usize % agents.len()];
                if read {
                    b.read(0, agent)
                } else {
                    b.report(0, agent, seq)
                }
            },
        )
        .await;
        report.scenarios.push(
            ScenarioReport::new(name, Mode::Closed, Self::secs(m.elapsed), &m.total()).closed(c),
        );
    }

    async fn s1_max(&self, report: &mut Report) {
        self.closed("s1-max", report, false).await;
    }

    async fn reads(&self, report: &mut Report) {
        self.closed("reads", report, true).await;
    }

    fn sim_ids(&self) -> Arc<Vec<String>> {
        Arc::new(self.sim.as_ref().map(|s| s.ids.clone()).unwrap_or_default())
    }

    async fn s2(&self, report: &mut Report) -> anyhow::Result<()> {
        let sim = self.sim_ids();
        let before = sessions::seen(&self.bench, &sim).await?;
        let wf = Arc::new(self.args.workflow.clone());
        let d = self.args.duration;
        let rate = self.args.trigger_rate;
        let ids = sim.clone();
        let (m, row): (Measured, ScenarioReport);
        if rate > 0.0 {
            progress(format!(
                "s2: open loop, {rate}/s triggers of {wf} on {} simulated agents, {d:?}",
                sim.len()
            ));
            m = open_loop(
                &self.bench,
                d,
                rate_schedule(rate, d),
                self.args.max_in_flight,
                1,
                &self.stop,
                move |b, k, seq| b.trigger(0, &ids[k % ids.len()], &wf, seq),
            )
            .await;
            row = ScenarioReport::new("s2", Mode::Open, Self::secs(m.elapsed), &m.total())
                .offered(rate);
        } else {
            let c = self.args.connections;
            progress(format!(
                "s2: closed loop, triggers of {wf} at {c} connections on {} simulated agents, {d:?}",
                sim.len()
            ));
            m = closed_loop(&self.bench, c, 1, d, &self.stop, move |b, seq| {
                b.trigger(0, &ids[seq as usize % ids.len()], &wf, seq)
            })
            .await;
            row = ScenarioReport::new("s2", Mode::Closed, Self::secs(m.elapsed), &m.total())
                .closed(c);
        }
        let (row, derived) = self
            .settle("s2", row, m.elapsed, &sim, &before, report)
            .await?;
        report.scenarios.extend([row, derived]);
        Ok(())
    }

    /// Wait for the sessions a scenario started; its row with the session
    /// counts, and the `NAME-sessions` row.
    async fn settle(
        &self,
        name: &str,
        mut row: ScenarioReport,
        window: Duration,
        sim: &[String],
        before: &HashSet<String>,
        report: &mut Report,
    ) -> anyhow::Result<(ScenarioReport, ScenarioReport)> {
        let window_end = chrono::Utc::now();
        progress(format!(
            "{name}: waiting up to {:?} for the sessions to finish",
            self.args.drain
        ));
        let (counts, stats) = sessions::settle(
            &self.bench,
            sim,
            before,
            window,
            window_end,
            self.args.drain,
            &self.stop,
        )
        .await?;
        report.cleanup.sessions_cancelled += counts.cancelled;
        let mut derived = ScenarioReport::new(
            format!("{name}-sessions"),
            Mode::Derived,
            window.as_secs_f64(),
            &stats,
        );
        derived.rps = counts.completed_per_sec;
        derived.sessions = Some(counts.clone());
        row.sessions = Some(counts);
        Ok((row, derived))
    }

    async fn s3(&self, report: &mut Report) -> anyhow::Result<()> {
        let sim = self.sim_ids();
        let before = sessions::seen(&self.bench, &sim).await?;
        let c = self.args.connections;
        let d = self.args.duration;
        progress(format!(
            "s3: closed loop, {c} connections, 80% reports / 15% reads / 5% triggers, {d:?}"
        ));
        let agents = self.agents.clone();
        let ids = sim.clone();
        let wf = Arc::new(self.args.workflow.clone());
        // 16 reports, 3 reads and 1 trigger in every 20 requests.
        let m = closed_loop(&self.bench, c, 3, d, &self.stop, move |b, seq| {
            let agent = &agents[rand::thread_rng().gen_range(0..agents.len())];
            match seq % 20 {
                0..=15 => b.report(0, agent, seq),
                16..=18 => b.read(1, agent),
                _ => b.trigger(2, &ids[(seq / 20) as usize % ids.len()], &wf, seq),
            }
        })
        .await;
        let secs = Self::secs(m.elapsed);
        let total = ScenarioReport::new("s3", Mode::Closed, secs, &m.total()).closed(c);
        let (total, derived) = self
            .settle("s3", total, m.elapsed, &sim, &before, report)
            .await?;
        report.scenarios.push(total);
        for (i, kind) in ["s3:report", "s3:read", "s3:trigger"].iter().enumerate() {
            report
                .scenarios
                .push(ScenarioReport::new(*kind, Mode::Closed, secs, &m.kinds[i]).closed(c));
        }
        report.scenarios.push(derived);
        Ok(())
    }

    async fn s4(&self, report: &mut Report) {
        let a = &self.args;
        let mut rate = a.stress_start_rate;
        let limit_ms = a.stress_p99_limit.as_secs_f64() * 1000.0;
        let mut last_good: Option<(f64, f64)> = None;
        let mut knee = None;
        for step in 1..=a.stress_max_steps {
            if self.stop.is_cancelled() {
                knee = Some((None, "interrupted".to_owned()));
                break;
            }
            if rate * a.stress_step.as_secs_f64() > MAX_SCHEDULED {
                knee = Some((
                    None,
                    format!("stopped before {rate}/s: a step would schedule more than 10M reports"),
                ));
                break;
            }
            progress(format!(
                "s4 step {step}: open loop, {rate}/s reports, {:?}",
                a.stress_step
            ));
            let agents = self.agents.clone();
            let m = open_loop(
                &self.bench,
                a.stress_step,
                rate_schedule(rate, a.stress_step),
                a.max_in_flight,
                1,
                &self.stop,
                move |b, k, seq| b.report(0, &agents[k % agents.len()], seq),
            )
            .await;
            let row = ScenarioReport::new(
                format!("s4#{step}"),
                Mode::Open,
                Self::secs(m.elapsed),
                &m.total(),
            )
            .offered(rate);
            let broke = if row.p99_ms > limit_ms {
                Some(format!(
                    "p99 {:.1} ms is above {:.0} ms",
                    row.p99_ms, limit_ms
                ))
            } else if row.error_rate() > a.stress_error_limit {
                Some(format!(
                    "{:.1}% of requests failed (limit {:.1}%): {} 503 ({} with Retry-After), {} connection errors, {} timeouts",
                    row.error_rate() * 100.0,
                    a.stress_error_limit * 100.0,
                    row.error_kinds.unavailable,
                    row.error_kinds.retry_after,
                    row.error_kinds.connection(),
                    row.error_kinds.timeout
                ))
            } else {
                None
            };
            let rps = row.rps;
            report.scenarios.push(row);
            if let Some(reason) = broke {
                knee = Some((
                    Some(rate),
                    format!("step {step} at {rate}/s broke: {reason}"),
                ));
                break;
            }
            last_good = Some((rate, rps));
            rate *= 2.0;
        }
        let (broken_rate, reason) = knee.unwrap_or_else(|| {
            (
                None,
                format!(
                    "no step broke the limits within {} steps (raise --stress-max-steps)",
                    a.stress_max_steps
                ),
            )
        });
        report.knee = Some(Knee {
            last_good_rate: last_good.map(|(r, _)| r),
            last_good_rps: last_good.map(|(_, t)| t),
            broken_rate,
            reason,
        });
    }

    /// Cancel sessions left open, stop the simulated agents (they deregister
    /// themselves) and deregister the report agents.
    async fn cleanup(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Some(sim) = self.sim.take() {
            match sessions::census(&self.bench, &sim.ids, &HashSet::new()).await {
                Ok(all) => {
                    for s in all
                        .iter()
                        .filter(|s| matches!(s.status.as_str(), "started" | "running"))
                    {
                        if self
                            .bench
                            .post_empty(&format!("/v1/opscore/sessions/{}/cancel", s.id))
                            .await
                        {
                            report.cleanup.sessions_cancelled += 1;
                        }
                    }
                }
                Err(e) => problems.push(format!("listing open sessions: {e:#}")),
            }
            progress(format!("stopping {} simulated agents", sim.ids.len()));
            if let Err(e) = sim.stop().await {
                problems.push(format!("stopping the simulated agents: {e:#}"));
            }
        }
        if !self.agents.is_empty() {
            progress(format!("deregistering {} agents", self.agents.len()));
            let results =
                notify_all(&self.bench, &self.agents, "DEREGISTER", &self.prefix, 32).await;
            for (id, r) in results {
                match r {
                    Ok(()) => report.cleanup.deregistered += 1,
                    Err(e) => {
                        report.cleanup.failed += 1;
                        if report.cleanup.failed == 1 {
                            problems.push(format!("deregistering {id}: {e:#}"));
                        }
                    }
                }
            }
            self.agents = Arc::new(Vec::new());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("cleanup incomplete: {}", problems.join("; "))
        }
    }
}

/// Send `event` for every id, `workers` at a time, retrying each a few
/// times; one result per id.
async fn notify_all(
    bench: &Arc<Bench>,
    ids: &[String],
    event: &'static str,
    prefix: &str,
    workers: usize,
) -> Vec<(String, anyhow::Result<()>)> {
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.min(ids.len()).max(1) {
        let (bench, ids, next, prefix) =
            (bench.clone(), ids.clone(), next.clone(), prefix.to_owned());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let details = if event == "REGISTER" {
                    json!({
                        "agentId": id, "agentName": format!("Bench {id}"), "version": "bench-1",
                        "capabilities": ["bench"],
                        // Never dispatched to: nothing triggers workflows on these agents.
                        "contactEndpoint": format!("http://127.0.0.1:9/bench/{id}"),
                        "metadata": {"bench": prefix},
                    })
                } else {
                    json!({"agentId": id})
                };
                out.push((id.clone(), notify_retrying(&bench, event, &details).await));
            }
            out
        });
    }
    let mut all = Vec::with_capacity(ids.len());
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            all.extend(v);
        }
    }
    all
}

async fn notify_retrying(bench: &Bench, event: &str, details: &Value) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=4 {
        match bench.notify(event, details).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 4 => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        let e = parse_every("5s-10s").unwrap();
        assert_eq!(
            (e.min, e.max),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        assert_eq!(
            parse_every("200ms").unwrap().max,
            Duration::from_millis(200)
        );
        assert!(parse_every("10s-5s").is_err());
        assert!(parse_every("0s-5s").is_err());
    }

    #[tokio::test]
    async fn only_loopback_targets_unless_allowed() {
        for ok in [
            "http://127.0.0.1:8000",
            "http://127.1.2.3",
            "http://[::1]:8000/",
            "http://localhost:8000",
        ] {
            check_target(ok, false)
                .await
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // Only the check runs here: nothing is ever sent to these.
        for refused in [
            "http://10.0.0.1:8000",
            "http://192.168.1.10",
            "http://203.0.113.7",
            "http://[2001:db8::1]:8000",
            "http://0.0.0.0:8000",
        ] {
            let e = check_target(refused, false).await.unwrap_err().to_string();
            assert!(e.contains("--allow-remote"), "{refused}: {e}");
        }
        check_target("http://203.0.113.7", true).await.unwrap();
        assert!(check_target("ftp://127.0.0.1", false).await.is_err());
        assert!(check_target("not a url", false).await.is_err());
    }
}
