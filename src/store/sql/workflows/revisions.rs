//! Definition revisions (docs/api.md §3.1): storing a definition as the next
//! revision of its id, finding the revision a session runs, and reading
//! them. `workflow_definitions` holds each id's newest revision;
//! `workflow_revisions` every revision ever stored, kept when the
//! definition is deleted so that numbers are never reused.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use crate::domain::workflow::WorkflowDefinition;
use crate::store::sql::backend::RowsAffected;
use crate::store::sql::{Backend, SqlStore};
use crate::store::{DefinitionRecord, PutOutcome, StoreError, StoreResult};

/// How many times storing a revision is tried when another transaction
/// took the same number first (PostgreSQL, two writers of one id).
const REVISION_RACE_TRIES: usize = 5;

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> Option<&'q str>: Encode<'q, B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> Option<i64>: Encode<'q, B>,
    for<'q> i32: Decode<'q, B> + Type<B>,
    for<'q> bool: Encode<'q, B> + Type<B>,
{
    /// Store `def` inside the caller's transaction: unchanged when it is
    /// the newest revision of its id, else the next revision (the first
    /// of an id never stored or deleted since: `Created`). Returns the
    /// revision `def` now is.
    pub(in crate::store) async fn put_definition_in(
        conn: &mut B::Connection,
        def: &WorkflowDefinition,
        now: i64,
    ) -> StoreResult<(PutOutcome, i64)> {
        let canonical = def.canonical_json();
        for _ in 0..REVISION_RACE_TRIES {
            let newest: Option<(String, i64)> = sqlx::query_as(
                "SELECT definition, revision FROM workflow_definitions WHERE workflow_id = $1",
            )
            .bind(&def.id)
            .fetch_optional(&mut *conn)
            .await?;
            let outcome = match &newest {
                Some((text, revision)) if *text == canonical => {
                    return Ok((PutOutcome::Unchanged, *revision))
                }
                Some(_) => PutOutcome::Revised,
                None => PutOutcome::Created,
            };
            let next: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(revision), 0) + 1 FROM workflow_revisions WHERE workflow_id = $1",
            )
            .bind(&def.id)
            .fetch_one(&mut *conn)
            .await?;
            // On PostgreSQL a concurrent writer of the same id waits here
            // for the other's commit and then inserts nothing: read again.
            let inserted = sqlx::query(
                "INSERT INTO workflow_revisions (workflow_id, revision, name, definition, created_at_us) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workflow_id, revision) DO NOTHING",
            )
            .bind(&def.id)
            .bind(next)
            .bind(&def.name)
            .bind(&canonical)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let inserted = inserted;
            if inserted.rows_affected() == 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO workflow_definitions \
                 (workflow_id, name, definition, revision, created_at_us, updated_at_us) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (workflow_id) DO UPDATE SET \
                 name = excluded.name, definition = excluded.definition, \
                 revision = excluded.revision, updated_at_us = excluded.updated_at_us",
            )
            .bind(&def.id)
            .bind(&def.name)
            .bind(&canonical)
            .bind(next)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            return Ok((outcome, next));
        }
        Err(StoreError::Conflict(format!(
            "workflow definition '{}' is being changed by another request; try again",
            def.id
        )))
    }

    /// The revision of `def`'s id whose content is `def` (the newest such),
    /// if any: what a session running `def` records.
    pub(in crate::store) async fn revision_of(
        conn: &mut B::Connection,
        def: &WorkflowDefinition,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT revision FROM workflow_revisions WHERE workflow_id = $1 AND definition = $2 \
             ORDER BY revision DESC LIMIT 1",
        )
        .bind(&def.id)
        .bind(def.canonical_json())
        .fetch_optional(&mut *conn)
        .await?)
    }

    pub(in crate::store) fn definition_from_row(
        text: &str,
        revision: i64,
        stored_at: i64,
    ) -> StoreResult<DefinitionRecord> {
        Ok(DefinitionRecord {
            definition: serde_json::from_str(text)
                .map_err(|e| StoreError::Internal(e.to_string()))?,
            revision,
            stored_at,
        })
    }

    /// The newest revision of a stored definition.
    pub(in crate::store) async fn newest_revision(
        &self,
        id: &str,
    ) -> StoreResult<Option<DefinitionRecord>> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT definition, revision, updated_at_us FROM workflow_definitions WHERE workflow_id = $1",
        )
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        row.map(|(t, r, at)| Self::definition_from_row(&t, r, at))
            .transpose()
    }

    /// Every stored definition's newest revision, by id.
    pub(in crate::store) async fn newest_revisions(&self) -> StoreResult<Vec<DefinitionRecord>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT definition, revision, updated_at_us FROM workflow_definitions ORDER BY workflow_id",
        )
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|(t, r, at)| Self::definition_from_row(t, *r, *at))
            .collect()
    }

    /// A page of an id's revisions, newest first, strictly before
    /// `before` when given; empty when the id has none there.
    pub(in crate::store) async fn revisions_page(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<DefinitionRecord>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT definition, revision, created_at_us FROM workflow_revisions \
             WHERE workflow_id = $1 AND revision < $2 ORDER BY revision DESC LIMIT $3",
        )
        .bind(id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|(t, r, at)| Self::definition_from_row(t, *r, *at))
            .collect()
    }

    /// Whether any revision of `id` was ever stored.
    pub(in crate::store) async fn has_revisions(&self, id: &str) -> StoreResult<bool> {
        let one: Option<i64> = sqlx::query_scalar(
            "SELECT revision FROM workflow_revisions WHERE workflow_id = $1 LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        Ok(one.is_some())
    }
}
