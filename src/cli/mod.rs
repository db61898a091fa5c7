//! The `opscore` command line: the service's own commands (serve, migrate,
//! simulate, bench) and the operator's client commands, which talk to a
//! running server through [`crate::client`].

mod agents;
mod audit;
mod context;
pub mod healthcheck;
mod keys;
mod output;
mod sessions;
mod table;
mod watch;
mod workflows;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use self::output::{EXIT_API, EXIT_CONNECTION, EXIT_USAGE};
use crate::config::{DbArgs, ServeArgs};

/// Ops-Core: the control plane for fleets of AI agents.
#[derive(Debug, Parser)]
#[command(name = "opscore", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Run a fleet of simulated agents (and a simulated AgentKit) against a server.
    Simulate(Box<crate::sim::SimArgs>),
    /// Load-test a running server (loopback only) and print a table of
    /// requests/s and latency percentiles per scenario.
    Bench(Box<crate::bench::BenchArgs>),
    /// A TCP proxy adding a set delay each way (e.g. between the service
    /// and PostgreSQL), for the load tool's latency scenario.
    DelayProxy(crate::bench::DelayProxyArgs),
    /// Apply database migrations and exit.
    Migrate {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Probe a server running on this host (`/health` by default): exit 0
    /// when it answers 200. For container health checks.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Client commands, talking to a running server.
    #[command(flatten)]
    Client(ClientCommand),
}

/// The operator's commands: each talks HTTP to a running server
/// (`--url`/`OPSCORE_URL`, `--api-key`/`OPSCORE_CLIENT_KEY`, or a context).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Registered agents: list, show one, state history.
    #[command(subcommand)]
    Agents(agents::AgentsCmd),
    /// An agent's current state: read it, or report one.
    #[command(subcommand)]
    State(agents::StateCmd),
    /// Workflow definitions: list, show, store, revisions, trigger.
    #[command(subcommand)]
    Workflows(workflows::WorkflowsCmd),
    /// Workflow sessions: show, list (fleet-wide or an agent's), cancel,
    /// run again.
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// API keys: create (the plaintext is shown once), list, show, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Follow the change feed: one line per event, until interrupted.
    Watch(watch::WatchArgs),
    /// The audit trail: who changed what, newest first (admin key).
    Audit(Box<audit::AuditArgs>),
    /// Named servers (URL, key file or key command, CA) in the client's
    /// config file: add, use, list, remove.
    #[command(subcommand)]
    Context(context::ContextCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Run a client command; the exit code says how it went (see the README's
/// "Command line" section): 0 done, 1 the server refused, 2 bad usage,
/// 3 the server could not be reached.
pub async fn run(cmd: ClientCommand) -> ExitCode {
    let result = match cmd {
        ClientCommand::Agents(c) => agents::run_agents(c).await,
        ClientCommand::State(c) => agents::run_state(c).await,
        ClientCommand::Workflows(c) => workflows::run(c).await,
        ClientCommand::Sessions(c) => sessions::run(c).await,
        ClientCommand::Keys(c) => keys::run(c).await,
        ClientCommand::Watch(a) => watch::run(a).await,
        ClientCommand::Audit(a) => audit::run(*a).await,
        ClientCommand::Context(c) => context::run(c),
        ClientCommand::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error, and
            // `opscore completions bash | head` closes the pipe early.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "opscore", &mut script);
            output::out(&String::from_utf8_lossy(&script))
        }
    };
    output::finish(result)
}
