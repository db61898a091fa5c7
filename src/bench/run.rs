//! One invocation of the load tool: registering its agents, each
//! scenario, and cleaning up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::args::{BenchArgs, Scenario, MAX_SCHEDULED};
use super::load::{closed_loop, fleet_schedule, open_loop, rate_schedule, Bench, Measured};
use super::progress;
use super::report::{Knee, Mode, Report, ScenarioReport};
use super::sessions::{self, SimFleet};

/// State of one invocation.
pub(super) struct Run {
    pub(super) bench: Arc<Bench>,
    pub(super) args: BenchArgs,
    /// The key the bench runs with (resolved from flags, variables, context).
    pub(super) api_key: String,
    pub(super) prefix: String,
    /// Registered report agents.
    pub(super) agents: Arc<Vec<String>>,
    pub(super) sim: Option<SimFleet>,
    pub(super) stop: CancellationToken,
}

impl Run {
    pub(super) async fn scenarios(
        &mut self,
        plan: &[Scenario],
        report: &mut Report,
    ) -> anyhow::Result<()> {
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
    pub(super) async fn cleanup(&mut self, report: &mut Report) -> anyhow::Result<()> {
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
