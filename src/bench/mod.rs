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

mod args;
pub mod delay_proxy;
mod load;
mod report;
mod run;
mod sessions;
mod stats;

use std::net::IpAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use args::plan;
pub use args::{parse_duration, parse_every, BenchArgs, Every, Scenario};
pub use delay_proxy::{DelayProxy, DelayProxyArgs};
use load::Bench;
pub use report::{Cleanup, Knee, Mode, Report, ScenarioReport, SessionCounts};
use run::Run;
pub use stats::ErrorCounts;

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
    for url in &args.replica_urls {
        check_target(url, args.allow_remote).await?;
    }
    let bench = Arc::new(
        Bench::new(
            &target.url,
            &api_key,
            args.target.webhook_secret.clone(),
            args.connections.max(args.max_in_flight),
            args.timeout,
        )?
        .with_replicas(&args.replica_urls),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

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
