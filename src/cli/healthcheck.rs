//! `opscore healthcheck`: probe a running server's `/health` on this host,
//! for container health checks (the image carries no curl).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Where and how long to probe.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The server's listening address, as it was given to `serve`; an
    /// unspecified host (0.0.0.0, [::]) is probed on loopback.
    #[arg(long, env = "OPSCORE_BIND", default_value = crate::config::DEFAULT_BIND)]
    pub bind: String,
    /// The path probed: `/health` (the process answers) or `/ready` (it can
    /// also read and write its database).
    #[arg(long, default_value = "/health", value_parser = ["/health", "/ready"])]
    pub path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout_secs: u64,
}

/// The address to connect to for a server listening on `bind`.
fn probe_addr(bind: &str) -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = bind
        .parse()
        .map_err(|e| format!("OPSCORE_BIND '{bind}' is not a socket address: {e}"))?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Ok(addr)
}

/// Exit 0 when the server answers 200, 1 otherwise (saying why on stderr).
pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let addr = match probe_addr(&args.bind) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("opscore healthcheck: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let url = format!("http://{addr}{}", args.path);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opscore healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("opscore healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("opscore healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::probe_addr;

    #[test]
    fn unspecified_hosts_are_probed_on_loopback() {
        let p = |b: &str| probe_addr(b).map(|a| a.to_string());
        assert_eq!(p("0.0.0.0:8000").as_deref(), Ok("127.0.0.1:8000"));
        assert_eq!(p("[::]:9000").as_deref(), Ok("[::1]:9000"));
        assert_eq!(p("10.1.2.3:80").as_deref(), Ok("10.1.2.3:80"));
        assert!(p("localhost").is_err());
    }
}
