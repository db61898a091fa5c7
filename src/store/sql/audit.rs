//! The audit trail's storage. An entry is written by the transaction that
//! makes the change it describes ([`SqlStore::write_audit`], before that
//! transaction's events are flushed), so an entry exists exactly for the
//! changes that committed; its `audit.*` feed event goes out with the
//! transaction's other events, and its log line is written after the
//! commit ([`SqlStore::audit_committed`]).

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::backend::RowsAffected;
use super::{Backend, SqlStore};
use crate::domain::audit::{Actor, AuditEntry, AuditKind, AuditTarget, NewAudit};
use crate::domain::event::NewEvent;
use crate::store::{ActorFilter, AuditQuery, AuditStore, StoreError, StoreResult};

/// Columns of `audit_log`, in `entry_from_row` order.
const AUDIT_COLUMNS: &str = "id, at_us, kind, actor_type, actor_key_id, actor_name, actor_role, \
     agent_id, session_id, workflow_id, key_id, details";

/// The columns a `target` filter matches, any one of them.
const TARGET_COLUMNS: [&str; 4] = ["agent_id", "session_id", "workflow_id", "key_id"];

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
{
    /// Write `audit` inside the caller's transaction and add its `audit.*`
    /// event to `events` (which the caller flushes before it commits).
    /// Returns the stored entry, for [`audit_committed`](Self::audit_committed).
    pub(in crate::store) async fn write_audit(
        conn: &mut B::Connection,
        audit: &NewAudit,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<AuditEntry> {
        let t = &audit.target;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (at_us, kind, actor_type, actor_key_id, actor_name, actor_role, \
             agent_id, session_id, workflow_id, key_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(audit.at)
        .bind(audit.kind.as_str())
        .bind(audit.actor.kind.as_str())
        .bind(audit.actor.key_id.as_deref())
        .bind(audit.actor.name.as_str())
        .bind(audit.actor.role)
        .bind(t.agent_id.as_deref())
        .bind(t.session_id.as_deref())
        .bind(t.workflow_id.as_deref())
        .bind(t.key_id.as_deref())
        .bind(audit.details.to_string())
        .fetch_one(&mut *conn)
        .await?;
        let entry = audit.stored(id);
        events.push(NewEvent::audit(&entry));
        Ok(entry)
    }

    fn entry_from_row(row: &B::Row) -> StoreResult<AuditEntry> {
        let id: i64 = row.try_get(0)?;
        let bad = |what: &str| StoreError::Internal(format!("audit entry {id}: stored {what}"));
        let kind: String = row.try_get(2)?;
        let actor_type: String = row.try_get(3)?;
        let actor_role: Option<String> = row.try_get(6)?;
        let details: String = row.try_get(11)?;
        Ok(AuditEntry {
            id,
            at: row.try_get(1)?,
            kind: AuditKind::parse(&kind).ok_or_else(|| bad("kind is unknown"))?,
            actor: Actor::from_stored(
                &actor_type,
                row.try_get(4)?,
                row.try_get(5)?,
                actor_role.as_deref(),
            )
            .ok_or_else(|| bad("actor is unknown"))?,
            target: AuditTarget {
                agent_id: row.try_get(7)?,
                session_id: row.try_get(8)?,
                workflow_id: row.try_get(9)?,
                key_id: row.try_get(10)?,
            },
            details: serde_json::from_str(&details).map_err(|_| bad("details are not JSON"))?,
        })
    }
}

impl<B: Backend> SqlStore<B> {
    /// After the commit that wrote `entries`: their log lines.
    pub(in crate::store) fn audit_committed(entries: &[AuditEntry]) {
        for e in entries {
            e.log();
        }
    }
}

/// The WHERE clause of `q` (after `WHERE`), with its text binds in order;
/// the numeric bounds follow them as `$n`. Kinds are written as literals:
/// they are this code's own names, never a request's text.
fn filter_sql(q: &AuditQuery) -> (String, Vec<String>, Vec<i64>) {
    let mut conds = vec!["1 = 1".to_owned()];
    let mut texts = Vec::new();
    let next = |texts: &mut Vec<String>, v: &str| {
        texts.push(v.to_owned());
        format!("${}", texts.len())
    };
    match &q.actor {
        None => {}
        Some(ActorFilter::Key(id)) => {
            let p = next(&mut texts, id);
            conds.push(format!("actor_key_id = {p}"));
        }
        Some(ActorFilter::Type(t)) => {
            let p = next(&mut texts, t.as_str());
            conds.push(format!("actor_type = {p}"));
        }
    }
    if let Some(target) = &q.target {
        let p = next(&mut texts, target);
        let any: Vec<String> = TARGET_COLUMNS
            .iter()
            .map(|c| format!("{c} = {p}"))
            .collect();
        conds.push(format!("({})", any.join(" OR ")));
    }
    if let Some(kinds) = &q.kinds {
        let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
        conds.push(format!("kind IN ({})", list.join(", ")));
    }
    let mut nums = Vec::new();
    let num = |nums: &mut Vec<i64>, v: i64, cond: &str| {
        nums.push(v);
        format!("{cond} ${}", texts.len() + nums.len())
    };
    if let Some(since) = q.since {
        conds.push(num(&mut nums, since, "at_us >="));
    }
    if let Some(until) = q.until {
        conds.push(num(&mut nums, until, "at_us <"));
    }
    if let Some(before) = q.before {
        conds.push(num(&mut nums, before, "id <"));
    }
    (conds.join(" AND "), texts, nums)
}

#[async_trait]
impl<B> AuditStore for SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> Option<&'q str>: Encode<'q, B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
{
    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let (cond, texts, nums) = filter_sql(q);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {cond} ORDER BY id DESC LIMIT ${}",
            texts.len() + nums.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for t in &texts {
            query = query.bind(t.as_str());
        }
        for n in &nums {
            query = query.bind(*n);
        }
        let rows = query
            .bind(i64::from(q.limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(Self::entry_from_row).collect()
    }

    async fn prune_audit_before(&self, before: i64, limit: u32) -> StoreResult<u64> {
        // Oldest first by id, which follows time: the scan stops after
        // `limit` matches at the start of the table.
        Ok(sqlx::query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at_us < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(self.writer())
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::ActorType;

    #[test]
    fn filters_render_in_bind_order() {
        let q = AuditQuery {
            actor: Some(ActorFilter::Key("0123456789abcdef".into())),
            kinds: AuditKind::matching("key"),
            target: Some("a1".into()),
            since: Some(5),
            until: Some(9),
            before: Some(100),
            limit: 10,
        };
        let (cond, texts, nums) = filter_sql(&q);
        assert_eq!(
            cond,
            "1 = 1 AND actor_key_id = $1 AND (agent_id = $2 OR session_id = $2 OR \
             workflow_id = $2 OR key_id = $2) AND kind IN ('audit.key.created', \
             'audit.key.revoked') AND at_us >= $3 AND at_us < $4 AND id < $5"
        );
        assert_eq!(texts, ["0123456789abcdef", "a1"]);
        assert_eq!(nums, [5, 9, 100]);
        let q = AuditQuery {
            actor: Some(ActorFilter::Type(ActorType::Webhook)),
            ..AuditQuery::default()
        };
        let (cond, texts, nums) = filter_sql(&q);
        assert_eq!(cond, "1 = 1 AND actor_type = $1");
        assert_eq!(texts, ["webhook"]);
        assert!(nums.is_empty());
    }
}
