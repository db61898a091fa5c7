//! The integration tests, one binary: each module talks to a real Ops-Core
//! listening on a real port (see `common`). One binary links the harness
//! once instead of once per file (CONTRIBUTING.md, "Tests").

#[macro_use]
mod common;

mod agents;
mod audit;
mod auth_matrix;
mod bad_input;
mod bench_tool;
mod cli;
mod clock_steps;
mod config_reference;
mod dashboard;
mod deploy;
mod durability;
mod engine_truth;
mod feed;
mod feed_order;
mod fleet_sessions;
mod keys;
mod keys_cli;
mod leases;
mod legacy_clients;
mod limits;
mod metrics;
mod openapi;
mod outage;
mod pools;
mod properties;
mod quiet_agents;
mod read_model;
mod reads;
mod replicas;
mod report_batches;
mod retention;
mod revisions;
mod session_lock_order;
mod slow_bodies;
mod staleness;
mod state_index;
mod storage_faults;
mod tls;
mod tracing;
mod webhook;
mod webhook_secrets;
mod workflows;
