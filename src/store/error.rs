//! What went wrong in storage, in terms a handler can act on: each
//! backend's errors are mapped here, so handlers never see SQL errors.

use crate::domain::agent::AgentId;

/// What went wrong in storage, in terms a handler can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The addressed row does not exist.
    #[error("{entity} not found: {id}")]
    NotFound {
        /// Kind of thing.
        entity: Entity,
        /// Its id.
        id: String,
    },
    /// The write conflicts with what is stored.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is not accepting writes right now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database ended the connection the request ran on (a restart, a
    /// failover, an operator ending sessions): an outage to the client, as
    /// [`Unavailable`](Self::Unavailable), but one a fresh connection may
    /// not meet. Pooled connections that went idle before it are pinged
    /// before their next use (`health::idle_check`).
    #[error("storage connection lost: {0}")]
    ConnectionLost(String),
    /// Anything else: a bug or corruption. Logged, never shown to clients.
    #[error("storage error: {0}")]
    Internal(String),
}

/// The kinds of thing a [`StoreError::NotFound`] can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// An agent.
    Agent,
    /// A workflow session.
    Session,
    /// An API key.
    Key,
    /// A stored workflow definition.
    WorkflowDefinition,
    /// A row a query expected (sqlx's `RowNotFound`).
    Row,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Agent => "Agent",
            Self::Session => "Session",
            Self::Key => "API key",
            Self::WorkflowDefinition => "Workflow definition",
            Self::Row => "Row",
        })
    }
}

impl StoreError {
    /// Shorthand for a missing agent.
    pub fn agent_not_found(id: &AgentId) -> Self {
        Self::NotFound {
            entity: Entity::Agent,
            id: id.to_string(),
        }
    }

    /// Shorthand for a missing thing of another kind.
    pub fn not_found(entity: Entity, id: &str) -> Self {
        Self::NotFound {
            entity,
            id: id.to_owned(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        if connection_lost(&e) {
            super::health::note_connection_lost();
            return Self::ConnectionLost(e.to_string());
        }
        match e {
            E::RowNotFound => Self::NotFound {
                entity: Entity::Row,
                id: String::new(),
            },
            E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Io(_)
            | E::Tls(_)
            | E::Protocol(_) => Self::Unavailable(e.to_string()),
            E::Database(ref db) => {
                if db.is_unique_violation() {
                    return Self::Conflict(db.message().to_owned());
                }
                let code = db.code().unwrap_or_default();
                let outage = if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    postgres_outage(&code)
                } else {
                    code.parse().is_ok_and(sqlite_outage)
                };
                if outage {
                    Self::Unavailable(e.to_string())
                } else {
                    Self::Internal(e.to_string())
                }
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Whether `e` says the connection it ran on is gone: the socket failed,
/// or PostgreSQL ended the session (a connection exception, class 08, or
/// an administrator or crash shutdown, 57P01 and 57P02).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
                && db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P02")
        }
        _ => false,
    }
}

/// Whether a SQLite result code means the database cannot take the request
/// right now (busy, locked, read-only, I/O error, disk full, cannot open,
/// no permission), rather than a fault in the statement. SQLite reports
/// extended codes; the primary code is the low byte.
fn sqlite_outage(code: u32) -> bool {
    const PERM: u32 = 3;
    const BUSY: u32 = 5;
    const LOCKED: u32 = 6;
    const READONLY: u32 = 8;
    const IOERR: u32 = 10;
    const FULL: u32 = 13;
    const CANTOPEN: u32 = 14;
    const PROTOCOL: u32 = 15;
    matches!(
        code & 0xff,
        PERM | BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN | PROTOCOL
    )
}

/// Whether a PostgreSQL SQLSTATE means the database refuses the service
/// right now, rather than a fault in the statement: connection exceptions
/// (08), invalid authorization such as a role that may not log in (28),
/// insufficient resources such as a full disk (53), operator intervention
/// such as a shutdown (57P), system errors (58), a missing database
/// (3D000), a revoked privilege (42501), a missing table (42P01) and a
/// read-only transaction (25006).
fn postgres_outage(sqlstate: &str) -> bool {
    ["08", "28", "53", "57P", "58"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
        || matches!(sqlstate, "3D000" | "42501" | "42P01" | "25006")
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed socket is a lost connection (applied again by the writer);
    /// a pool that hands out none in time is an outage.
    #[test]
    fn a_failed_socket_is_a_lost_connection() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert!(matches!(
            StoreError::from(io),
            StoreError::ConnectionLost(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
    }

    /// Outages (503) and statement faults (500), by the codes each
    /// database reports.
    #[test]
    fn database_codes_sort_into_outages_and_faults() {
        // SQLite: busy, locked, read-only (extended: cannot lock), I/O
        // (extended: write, fsync), full, cannot open, permission.
        for code in [5, 261, 517, 6, 8, 520, 10, 778, 1034, 13, 14, 3] {
            assert!(sqlite_outage(code), "{code}");
        }
        // SQLite: generic error, constraint (extended: foreign key),
        // corrupt, mismatch.
        for code in [1, 19, 787, 11, 20] {
            assert!(!sqlite_outage(code), "{code}");
        }
        for code in [
            "08006", "08001", "28000", "28P01", "53100", "53300", "57P01", "58030", "3D000",
            "42501", "42P01", "25006",
        ] {
            assert!(postgres_outage(code), "{code}");
        }
        for code in ["23503", "23514", "42601", "22P02", "40001", "P0001"] {
            assert!(!postgres_outage(code), "{code}");
        }
    }
}
