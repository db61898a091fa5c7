//! The `opscore` command line.

use clap::{Parser, Subcommand};

use crate::config::{DbArgs, RawSettings};

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
    Serve(Box<RawSettings>),
    /// Run a fleet of simulated agents (and a simulated AgentKit) against a server.
    Simulate(Box<crate::sim::SimArgs>),
    /// Load-test a running server (loopback only) and print a table of
    /// requests/s and latency percentiles per scenario.
    Bench(Box<crate::bench::BenchArgs>),
    /// Manage API keys of a running server (create, list, show, revoke).
    Keys(Box<crate::keys_cli::KeysArgs>),
    /// Apply database migrations and exit.
    Migrate {
        /// Where the database is.
        #[command(flatten)]
        db: DbArgs,
    },
}
