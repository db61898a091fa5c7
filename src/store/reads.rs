//! Counts of agent reads by where they were answered (what
//! `opscore_agent_reads` shows, and what tests use to check that steady
//! state reads stay off the database), and of report batches by how they
//! were written (`opscore_report_batches`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::AgentReads;

/// One of the counted reads, its position in [`super::AGENT_READS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum AgentRead {
    /// `GET .../state`.
    State = 0,
    /// `GET .../agent/{id}`.
    Agent = 1,
    /// `GET /v1/opscore/agents`.
    List = 2,
}

/// The counters, shared by every clone of a store.
#[derive(Debug, Default)]
pub(crate) struct ReadCounters {
    memory: [AtomicU64; 3],
    database: [AtomicU64; 3],
}

impl ReadCounters {
    /// A read answered from memory.
    pub(crate) fn answered_from_memory(&self, read: AgentRead) {
        self.memory[read as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A read that queried the database.
    pub(crate) fn answered_from_database(&self, read: AgentRead) {
        self.database[read as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> AgentReads {
        let load = |a: &[AtomicU64; 3]| a.each_ref().map(|c| c.load(Ordering::Relaxed));
        AgentReads {
            memory: load(&self.memory),
            database: load(&self.database),
        }
    }
}

/// Report batches stored, by how ([`super::REPORT_BATCH_PATHS`]).
#[derive(Debug, Default)]
pub(crate) struct BatchCounters([AtomicU64; 2]);

impl BatchCounters {
    /// A batch stored in one statement, committed on its own.
    pub(crate) fn one_statement(&self) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
    }

    /// A batch stored in a transaction of several statements.
    pub(crate) fn transaction(&self) {
        self.0[1].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, in [`super::REPORT_BATCH_PATHS`] order.
    pub(crate) fn snapshot(&self) -> [u64; 2] {
        self.0.each_ref().map(|c| c.load(Ordering::Relaxed))
    }
}
