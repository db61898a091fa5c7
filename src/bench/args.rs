//! The load tool's settings, and the scenarios they plan.

use std::time::Duration;

use clap::{Args, ValueEnum};

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
    /// More replicas of the same service (same database): state reports
    /// and reads go round robin over `--url` and these (comma-separated
    /// base URLs); everything else goes to `--url`.
    #[arg(long, env = "BENCH_REPLICA_URLS", value_delimiter = ',')]
    pub replica_urls: Vec<String>,
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

/// Most requests one open-loop schedule may hold (bounds the tool's memory).
pub(super) const MAX_SCHEDULED: f64 = 10_000_000.0;

fn bad(flag: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid --{flag}: {message}")
}

/// The scenarios to run, in order, after checking every setting.
pub(super) fn plan(args: &BenchArgs) -> anyhow::Result<Vec<Scenario>> {
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
}
