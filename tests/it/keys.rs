//! API key management end to end: the plaintext is shown once and only a
//! digest is stored, validation names the field, revocation is immediate in
//! the revoking process and reaches other replicas within a second,
//! last use is recorded, agent keys see only their agents' events, and
//! per-key rate limits answer 429 with Retry-After and hold across replicas.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::keys::{key_with_role, make_key, revoke, MadeKey};
use crate::common::sse::Stream;
use crate::common::{
    assert_error, assert_invalid_field, send, test_config, Backend, TestDb, TestServer, KEY,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

async fn get_with(s: &TestServer, key: &str, path: &str) -> common::Resp {
    send(s.client.get(s.url(path)).bearer_auth(key)).await
}

/// Every text column of every `api_keys` row, read straight from the
/// database.
async fn stored_rows(db: &TestDb) -> Vec<Vec<String>> {
    let sql = "SELECT key_id, name, role, agent_ids, secret_sha256 FROM api_keys";
    let text = |row: &dyn Fn(usize) -> String| (0..5).map(row).collect::<Vec<_>>();
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url)
                .await
                .expect("open sqlite");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("select");
            let out = rows
                .iter()
                .map(|r| text(&|i| r.get::<String, _>(i)))
                .collect();
            pool.close().await;
            out
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("open pg");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("select");
            let out = rows
                .iter()
                .map(|r| text(&|i| r.get::<String, _>(i)))
                .collect();
            pool.close().await;
            out
        }
    }
}

async fn plaintext_is_shown_once_and_only_a_digest_is_stored(backend: Backend) {
    let s = TestServer::start(backend).await;
    let k = make_key(
        &s,
        json!({"name": "ci runner", "role": "agent", "agentIds": ["a2", "a1"],
               "ttlSeconds": 3600, "rateLimit": 50}),
    )
    .await;
    let (id, secret) = k.plaintext["opk_".len()..]
        .split_once('_')
        .expect("opk_<id>_<secret>");
    assert_eq!(id, k.id);
    assert_eq!(secret.len(), 64, "256 bits of hex");
    assert_eq!(k.body["role"], "agent");
    assert_eq!(k.body["agentIds"], json!(["a1", "a2"]));
    assert_eq!(k.body["rateLimit"], 50);
    assert_eq!(k.body["status"], "active");
    assert!(k.body["expiresAt"].is_string() && k.body["revokedAt"].is_null());

    // Never again: not in the listing, not in the key's own page.
    for path in [
        "/v1/opscore/keys".to_owned(),
        format!("/v1/opscore/keys/{id}"),
    ] {
        let r = s.get_json(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let text = r.body.to_string();
        assert!(!text.contains(secret), "{path} shows the secret: {text}");
        assert!(!text.contains("\"key\""), "{path}: {text}");
    }
    let listed = s.get_json("/v1/opscore/keys").await.body;
    assert_eq!(listed["items"][0]["keyId"], id);
    assert_eq!(listed["nextCursor"], Value::Null);

    // The table holds the SHA-256 of the secret and nothing that reveals it.
    let rows = stored_rows(&s.db).await;
    assert_eq!(rows.len(), 1);
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    assert_eq!(rows[0][0], id);
    assert_eq!(rows[0][4], digest);
    for col in &rows[0] {
        assert!(
            !col.contains(secret),
            "stored column holds the secret: {col}"
        );
        assert!(!col.contains(&k.plaintext));
    }
    s.stop().await;
}

async fn creation_is_validated_field_by_field(backend: Backend) {
    let s = TestServer::start(backend).await;
    let cases = [
        (json!({"role": "operator"}), "name"),
        (json!({"name": "x"}), "role"),
        (json!({"name": "x", "role": "superuser"}), "role"),
        (json!({"name": "x", "role": "agent"}), "agentIds"),
        (
            json!({"name": "x", "role": "agent", "agentIds": ["a b"]}),
            "agentIds[0]",
        ),
        (
            json!({"name": "x", "role": "operator", "agentIds": ["a1"]}),
            "agentIds",
        ),
        (
            json!({"name": "x", "role": "operator", "expiresAt": "2001-01-01T00:00:00Z"}),
            "expiresAt",
        ),
        (
            json!({"name": "x", "role": "operator", "expiresAt": "soon"}),
            "expiresAt",
        ),
        (
            json!({"name": "x", "role": "operator", "ttlSeconds": 0}),
            "ttlSeconds",
        ),
        (
            json!({"name": "x", "role": "operator", "ttlSeconds": "1h"}),
            "ttlSeconds",
        ),
        (
            json!({"name": "x", "role": "operator", "ttlSeconds": 60,
                   "expiresAt": "2999-01-01T00:00:00Z"}),
            "ttlSeconds",
        ),
        (
            json!({"name": "x", "role": "operator", "rateLimit": 0}),
            "rateLimit",
        ),
        (json!({"name": "", "role": "operator"}), "name"),
    ];
    for (body, field) in cases {
        let r = send(s.post("/v1/opscore/keys").json(&body)).await;
        assert_invalid_field(&r, field);
    }
    assert_eq!(
        s.get_json("/v1/opscore/keys").await.body["items"],
        json!([])
    );
    // Unknown and malformed ids are 404.
    for id in ["0123456789abcdef", "nope"] {
        let r = s.get_json(&format!("/v1/opscore/keys/{id}")).await;
        assert_error(&r, StatusCode::NOT_FOUND, "key_not_found");
        let r = send(
            s.client
                .delete(s.url(&format!("/v1/opscore/keys/{id}")))
                .bearer_auth(KEY),
        )
        .await;
        assert_error(&r, StatusCode::NOT_FOUND, "key_not_found");
    }
    s.stop().await;
}

async fn revocation_is_immediate_and_idempotent(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let k = key_with_role(&s, "operator", &[]).await;
    // Used (and so cached) before it is revoked.
    assert_eq!(
        get_with(&s, &k.plaintext, "/v1/opscore/agents")
            .await
            .status,
        200
    );
    let first = revoke(&s, &k.id).await;
    assert_eq!(first.body["status"], "revoked");
    let r = get_with(&s, &k.plaintext, "/v1/opscore/agents").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_revoked");
    // Revoking again changes nothing.
    let second = revoke(&s, &k.id).await;
    assert_eq!(second.body["revokedAt"], first.body["revokedAt"]);
    // A revoked admin key cannot manage keys either.
    let admin = key_with_role(&s, "admin", &[]).await;
    assert_eq!(
        get_with(&s, &admin.plaintext, "/v1/opscore/keys")
            .await
            .status,
        200
    );
    revoke(&s, &admin.id).await;
    let r = get_with(&s, &admin.plaintext, "/v1/opscore/keys").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_revoked");
    s.stop().await;
}

/// An event stream and a blocking read outlive the request that
/// authenticated them: revoking their key ends both at once, and other
/// keys' streams go on.
async fn revocation_ends_open_streams_and_waits(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let k = key_with_role(&s, "operator", &[]).await;
    let mut revoked_feed = Stream::open_as(&s.base, "?after=0", &k.plaintext).await;
    let mut other_feed = Stream::open(&s.base, "", None).await;
    // Live: it replays a1's registration.
    revoked_feed
        .until(Duration::from_secs(5), |m| m.kind == "agent.registered")
        .await;
    // A blocking read past the current index: it would wait a minute.
    let r = get_with(&s, &k.plaintext, "/v1/opscore/agent/a1/state").await;
    let index = r.headers["x-opscore-index"].to_str().expect("index");
    let waiting = tokio::spawn(send(
        s.client
            .get(s.url(&format!(
                "/v1/opscore/agent/a1/state?index={index}&wait=60s"
            )))
            .bearer_auth(&k.plaintext),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the blocking read did not wait");

    revoke(&s, &k.id).await;
    assert!(
        revoked_feed.ended(Duration::from_secs(5)).await,
        "the revoked key's event stream is still open"
    );
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the revoked key's blocking read is still waiting")
        .expect("read task");
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_revoked");
    // Reconnecting says why.
    let again = get_with(&s, &k.plaintext, "/v1/opscore/events").await;
    assert_error(&again, StatusCode::UNAUTHORIZED, "key_revoked");
    // Another key's stream was not touched.
    let (status, body) = s
        .report("a1", "active", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    other_feed
        .until(Duration::from_secs(5), |m| m.kind == "agent.state")
        .await;
    s.stop().await;
}

/// A key that expires while its stream is open: the stream ends within the
/// key cache's time of the expiry.
async fn expiry_ends_open_streams(backend: Backend) {
    let s = TestServer::start(backend).await;
    let k = make_key(
        &s,
        json!({"name": "short", "role": "operator", "ttlSeconds": 2}),
    )
    .await;
    let mut feed = Stream::open_as(&s.base, "", &k.plaintext).await;
    assert!(
        !feed.ended(Duration::from_secs(1)).await,
        "the stream ended before its key expired"
    );
    assert!(
        feed.ended(Duration::from_secs(15)).await,
        "the expired key's event stream is still open"
    );
    let r = get_with(&s, &k.plaintext, "/v1/opscore/agents").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_expired");
    s.stop().await;
}

async fn last_use_is_recorded(backend: Backend) {
    let s = TestServer::start(backend).await;
    let k = key_with_role(&s, "operator", &[]).await;
    assert_eq!(k.body["lastUsedAt"], Value::Null);
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for _ in 0..20 {
        assert_eq!(
            get_with(&s, &k.plaintext, "/v1/opscore/agents")
                .await
                .status,
            200
        );
    }
    // Written off the request path within a few seconds; the listing shows
    // it at once in this process either way.
    let r = s.get_json(&format!("/v1/opscore/keys/{}", k.id)).await;
    let used = common::parse_time(&r.body["lastUsedAt"]);
    assert!(used >= before, "{used}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stored = match s.db.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&s.db.url).await.expect("open");
                let v: Option<i64> = sqlx::query_scalar("SELECT last_used_at_us FROM api_keys")
                    .fetch_one(&pool)
                    .await
                    .expect("select");
                pool.close().await;
                v
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&s.db.url).await.expect("open");
                let v: Option<i64> = sqlx::query_scalar("SELECT last_used_at_us FROM api_keys")
                    .fetch_one(&pool)
                    .await
                    .expect("select");
                pool.close().await;
                v
            }
        };
        if let Some(us) = stored {
            assert!(us >= before.timestamp_micros());
            break;
        }
        assert!(Instant::now() < deadline, "last use never written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

async fn agent_keys_see_only_their_agents_events(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    s.register("a2").await;
    let k = key_with_role(&s, "agent", &["a1"]).await;
    let mut feed = Stream::open_as(&s.base, "?after=0", &k.plaintext).await;
    let now = chrono::Utc::now().to_rfc3339();
    for agent in ["a2", "a1", "a2"] {
        let (status, body) = s.report(agent, "active", &now).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // Everything about a1 (its registration, then its state), nothing about a2.
    let seen = feed
        .until(Duration::from_secs(5), |m| m.kind == "agent.state")
        .await;
    assert!(seen.iter().all(|m| m.data["agentId"] == "a1"), "{seen:?}");
    assert_eq!(seen[0].kind, "agent.registered");
    while let Some(m) = feed.next(Duration::from_millis(500)).await {
        assert_eq!(m.data["agentId"], "a1", "{m:?}");
    }
    s.stop().await;
}

async fn rate_limited_keys_get_429_with_retry_after(backend: Backend) {
    let s = TestServer::start(backend).await;
    let limited = make_key(
        &s,
        json!({"name": "slow", "role": "operator", "rateLimit": 2}),
    )
    .await;
    let free = key_with_role(&s, "operator", &[]).await;
    let mut refused = None;
    let mut accepted = 0;
    for _ in 0..30 {
        let r = get_with(&s, &limited.plaintext, "/v1/opscore/agents").await;
        match r.status.as_u16() {
            200 => accepted += 1,
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    let r = refused.expect("a burst of 30 requests at 2/s was never limited");
    assert!(accepted >= 2, "the burst allowance is the rate: {accepted}");
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After in seconds");
    assert!(wait >= 1, "{wait}");
    // Other keys are not affected.
    for _ in 0..10 {
        assert_eq!(
            get_with(&s, &free.plaintext, "/v1/opscore/agents")
                .await
                .status,
            200
        );
    }
    // After waiting as told, it is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        get_with(&s, &limited.plaintext, "/v1/opscore/agents")
            .await
            .status,
        200
    );
    s.stop().await;

    // A global default limits keys without their own, the bootstrap key too.
    let s = TestServer::start_with(backend, |c| c.rate_limit_per_key = Some(1)).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(s.get_json("/v1/opscore/agents").await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    s.stop().await;
}

/// A second replica, in this test process, on `a`'s PostgreSQL database
/// (its dispatcher off); answers once it serves requests.
struct Replica {
    base: String,
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(a: &TestServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = tokio_util::sync::CancellationToken::new();
        let mut config = test_config(&a.db);
        config.dispatch.enabled = false;
        let handle = tokio::spawn(opscore::serve(config, listener, stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = a.client.get(format!("{base}/health")).send().await;
            if matches!(r, Ok(ref r) if r.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "second replica never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { base, stop, handle }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("join").expect("second replica");
    }
}

/// Two processes on one PostgreSQL database: a key revoked through one is
/// refused by the other within a second (the revocation is signalled to
/// every replica; the 5 s cache is only the fallback).
async fn other_replicas_refuse_a_revoked_key_within_a_second(_: Backend) {
    let a = TestServer::start(Backend::Postgres).await;
    let k: MadeKey = key_with_role(&a, "operator", &[]).await;
    let b = Replica::start(&a).await;
    let get_b = || {
        send(
            a.client
                .get(format!("{}/v1/opscore/agents", b.base))
                .bearer_auth(&k.plaintext),
        )
    };
    // The other replica holds the key in its cache.
    assert_eq!(get_b().await.status, StatusCode::OK);
    revoke(&a, &k.id).await;
    let r = get_with(&a, &k.plaintext, "/v1/opscore/agents").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_revoked");
    let revoked_at = Instant::now();
    loop {
        let r = get_b().await;
        if r.status == StatusCode::UNAUTHORIZED {
            assert_error(&r, StatusCode::UNAUTHORIZED, "key_revoked");
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the other replica still accepts the revoked key after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
    a.stop().await;
}

/// Two processes on one PostgreSQL database, a key limited to 20 requests a
/// second hammered through both for 3 s: together they let through what
/// one process would (its burst, 20, plus 20 a second), within 1.5x either
/// way.
async fn a_keys_rate_limit_holds_across_replicas(_: Backend) {
    const RATE: u64 = 20;
    const SECS: u64 = 3;
    let a = TestServer::start(Backend::Postgres).await;
    let k = make_key(
        &a,
        json!({"name": "limited", "role": "operator", "rateLimit": RATE}),
    )
    .await;
    let b = Replica::start(&a).await;
    let bases = [a.url(""), b.base.clone()];
    let until = Instant::now() + Duration::from_secs(SECS);
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (client, key) = (a.client.clone(), k.plaintext.clone());
        let url = format!("{}/v1/opscore/agents", bases[i % 2]);
        loops.spawn(async move {
            let (mut ok, mut limited) = (0u64, 0u64);
            while Instant::now() < until {
                let r = send(client.get(&url).bearer_auth(&key)).await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
            (ok, limited)
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = loops.join_next().await {
        let (o, l) = r.expect("join");
        ok += o;
        limited += l;
    }
    let allowance = (RATE + RATE * SECS) as f64;
    println!("{ok} accepted, {limited} refused; one process allows {allowance}");
    assert!(limited > 0, "the key was never limited");
    assert!(
        (ok as f64) <= allowance * 1.5,
        "{ok} requests got through two replicas; one process allows {allowance}"
    );
    assert!(
        (ok as f64) >= allowance / 1.5,
        "only {ok} requests got through two replicas; one process allows {allowance}"
    );
    b.stop().await;
    a.stop().await;
}

backend_tests!(
    plaintext_is_shown_once_and_only_a_digest_is_stored,
    creation_is_validated_field_by_field,
    revocation_is_immediate_and_idempotent,
    revocation_ends_open_streams_and_waits,
    expiry_ends_open_streams,
    last_use_is_recorded,
    agent_keys_see_only_their_agents_events,
    rate_limited_keys_get_429_with_retry_after,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_other_replicas_refuse_a_revoked_key_within_a_second() {
    other_replicas_refuse_a_revoked_key_within_a_second(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_keys_rate_limit_holds_across_replicas() {
    a_keys_rate_limit_holds_across_replicas(Backend::Postgres).await
}
