//! Storage of managed API keys. Keys are few and read through the in-memory cache of
//! `http::keyring`, so these statements are simple lookups by primary key.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::backend::RowsAffected;
use super::{Backend, SqlStore};
use crate::domain::apikey::{ApiKey, Role};
use crate::domain::audit::{Actor, NewAudit};
use crate::domain::ratelimit::{Grant, TokenBucket};
use crate::store::{Entity, KeyStore, StoreError, StoreResult};

/// Columns of `api_keys`, in `key_from_row` order.
const KEY_COLUMNS: &str = "key_id, name, role, agent_ids, secret_sha256, rate_limit, \
     created_at_us, expires_at_us, revoked_at_us, last_used_at_us, max_streams";

/// Turn a stored row's text columns into an [`ApiKey`].
/// A row this code did not write (an unknown role, a bad digest) is an
/// internal error, never a usable key.
#[allow(clippy::too_many_arguments)]
fn build_key(
    key_id: String,
    name: String,
    role: &str,
    agent_ids: &str,
    secret_sha256: &str,
    rate_limit: Option<i64>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    max_streams: Option<i64>,
) -> StoreResult<ApiKey> {
    let bad =
        |what: &str| StoreError::Internal(format!("api key {key_id}: stored {what} is invalid"));
    let role = Role::parse(role).ok_or_else(|| bad("role"))?;
    let agent_ids: Vec<String> = serde_json::from_str(agent_ids).map_err(|_| bad("agent_ids"))?;
    let digest: [u8; 32] = hex::decode(secret_sha256)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| bad("secret digest"))?;
    let rate_limit = match rate_limit {
        None => None,
        Some(r) => Some(u32::try_from(r).map_err(|_| bad("rate_limit"))?),
    };
    let max_streams = match max_streams {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| bad("max_streams"))?),
    };
    Ok(ApiKey {
        key_id,
        name,
        role,
        agent_ids,
        secret_sha256: digest,
        rate_limit,
        max_streams,
        created_at,
        expires_at,
        revoked_at,
        last_used_at,
    })
}

#[async_trait]
impl<B> KeyStore for SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> Option<&'q str>: Encode<'q, B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> Option<i64>: Encode<'q, B>,
    for<'q> i32: Decode<'q, B> + Type<B>,
    for<'q> bool: Encode<'q, B> + Type<B>,
{
    async fn create_key(&self, key: &ApiKey, by: &Actor) -> StoreResult<()> {
        let scope = serde_json::to_string(&key.agent_ids)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.writer().begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, role, agent_ids, secret_sha256, rate_limit, \
             created_at_us, expires_at_us, revoked_at_us, last_used_at_us, max_streams) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9)",
        )
        .bind(&key.key_id)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(scope)
        .bind(hex::encode(key.secret_sha256))
        .bind(key.rate_limit.map(i64::from))
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.max_streams.map(i64::from))
        .execute(&mut *tx)
        .await?;
        let mut events = Vec::new();
        let audit = NewAudit::key_created(by, key, key.created_at);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        Self::key_changed(&mut tx, &key.key_id).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(())
    }

    async fn get_key(&self, key_id: &str) -> StoreResult<ApiKey> {
        let sql = format!("SELECT {} FROM api_keys WHERE key_id = $1", KEY_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(key_id)
            .fetch_optional(self.reader())
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Key, key_id))?;
        key_from_row::<B>(&row)
    }

    async fn list_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {} FROM api_keys ORDER BY created_at_us, key_id",
            KEY_COLUMNS
        );
        let rows = sqlx::query(&sql).fetch_all(self.reader()).await?;
        rows.iter().map(key_from_row::<B>).collect()
    }

    async fn revoke_key(&self, key_id: &str, by: &Actor, now: i64) -> StoreResult<ApiKey> {
        let mut tx = self.writer().begin().await?;
        let revoked = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at_us = $2 \
             WHERE key_id = $1 AND revoked_at_us IS NULL RETURNING {KEY_COLUMNS}"
        ))
        .bind(key_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            // Revoked already (a second revocation keeps the first time,
            // and changes nothing to audit), or no such key.
            drop(tx);
            return self.get_key(key_id).await;
        };
        let key = key_from_row::<B>(&row)?;
        let mut events = Vec::new();
        let audit = NewAudit::key_revoked(by, &key, now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        Self::key_changed(&mut tx, &key.key_id).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(key)
    }

    async fn record_key_use(&self, uses: &[(String, i64)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer().begin().await?;
        for (key_id, at) in uses {
            sqlx::query(
                "UPDATE api_keys SET last_used_at_us = $2 WHERE key_id = $1 \
                 AND (last_used_at_us IS NULL OR last_used_at_us < $2)",
            )
            .bind(key_id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn first_sighting(&self, signature: &str, expires: i64, now: i64) -> StoreResult<bool> {
        let mut tx = self.writer().begin().await?;
        sqlx::query("DELETE FROM webhook_signatures WHERE expires_at_us < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let first = sqlx::query(
            "INSERT INTO webhook_signatures (signature, expires_at_us) VALUES ($1, $2) \
             ON CONFLICT (signature) DO NOTHING",
        )
        .bind(signature)
        .bind(expires)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(first)
    }

    async fn forget_signature(&self, signature: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_signatures WHERE signature = $1")
            .bind(signature)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn take_rate_tokens(
        &self,
        bucket: &str,
        rate: u32,
        want: u32,
        now: i64,
    ) -> StoreResult<Grant> {
        let full = TokenBucket::full(rate, now);
        let mut tx = self.writer().begin().await?;
        // Insert a full bucket, or lock and read the stored one (the
        // no-op update takes the row lock and returns the stored values).
        let (micro_tokens, at): (i64, i64) = sqlx::query_as(
            "INSERT INTO rate_buckets (bucket, micro_tokens, at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (bucket) DO UPDATE SET bucket = excluded.bucket \
             RETURNING micro_tokens, at_us",
        )
        .bind(bucket)
        .bind(full.micro_tokens)
        .bind(full.at)
        .fetch_one(&mut *tx)
        .await?;
        let (after, grant) = TokenBucket { micro_tokens, at }.take(rate, want, now);
        sqlx::query("UPDATE rate_buckets SET micro_tokens = $2, at_us = $3 WHERE bucket = $1")
            .bind(bucket)
            .bind(after.micro_tokens)
            .bind(after.at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(grant)
    }

    fn key_changes(&self) -> tokio::sync::broadcast::Receiver<crate::store::KeyChange> {
        SqlStore::key_changes(self)
    }
}

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
{
    /// Tell the other processes, at commit, that `key_id` changed
    /// (`Backend::KEY_NOTIFY`).
    async fn key_changed(conn: &mut B::Connection, key_id: &str) -> StoreResult<()> {
        if !B::KEY_NOTIFY.is_empty() {
            sqlx::query(B::KEY_NOTIFY)
                .bind(key_id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// A key from a row of [`KEY_COLUMNS`].
fn key_from_row<B>(row: &B::Row) -> StoreResult<ApiKey>
where
    B: Backend,
    usize: ColumnIndex<B::Row>,
    for<'r> String: Decode<'r, B> + Type<B>,
    for<'r> i64: Decode<'r, B> + Type<B>,
{
    let role: String = row.try_get(2)?;
    let scope: String = row.try_get(3)?;
    let digest: String = row.try_get(4)?;
    build_key(
        row.try_get(0)?,
        row.try_get(1)?,
        &role,
        &scope,
        &digest,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
        row.try_get(9)?,
        row.try_get(10)?,
    )
}
