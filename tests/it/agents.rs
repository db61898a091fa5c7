//! End-to-end tests of state reports (docs/api.md §1.2) and the current state
//! they produce (1.3), with the error shape of 1.8, on both backends.

use crate::common;

use crate::common::{
    assert_accepted, assert_error, assert_invalid_field, future_base, parse_time, report, send,
    ts_at, Backend, TestServer, KEY,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn report_is_stored_and_readable(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let (status, body) = s.state("a1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["agentId"], "a1");
    assert_eq!(body["state"], "UNKNOWN");

    let r = s
        .report_json(
            "a1",
            &json!({"agentId": "a1", "timestamp": "2026-04-21T10:00:00.123456+00:00",
                "state": "active", "details": {"k": [1, 2], "s": "x"}, "extra": "ignored"}),
        )
        .await;
    assert_accepted(&r);
    let r = s.get_json("/v1/opscore/agent/a1/state").await;
    assert_eq!(r.status, StatusCode::OK);
    let obj = r.body.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agentId",
            "details",
            "lastSeen",
            "receivedAt",
            "stale",
            "state",
            "timestamp"
        ]
    );
    assert_eq!(r.body["stale"], false);
    assert!(r.headers.contains_key("x-opscore-index"));
    assert_eq!(r.body["agentId"], "a1");
    assert_eq!(r.body["state"], "active");
    assert_eq!(r.body["details"], json!({"k": [1, 2], "s": "x"}));
    assert_eq!(r.body["timestamp"], "2026-04-21T10:00:00.123456+00:00");
    parse_time(&r.body["receivedAt"]);

    // The history holds the report with the server's receive time beside it.
    let history = s.history("a1").await;
    let stored: Vec<&Value> = history.iter().filter(|h| h["state"] == "active").collect();
    assert_eq!(stored.len(), 1, "{history:?}");
    assert_eq!(stored[0]["timestamp"], "2026-04-21T10:00:00.123456+00:00");
    assert_eq!(stored[0]["receivedAt"], r.body["receivedAt"]);
    assert_eq!(stored[0]["details"], json!({"k": [1, 2], "s": "x"}));
    s.stop().await;
}

async fn report_auth_errors(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let before = s.everything().await;
    let body = report("a1", &ts_at(future_base(), 0), "active", json!({}));
    let url = s.url("/v1/opscore/agent/a1/state");
    let cases: [(Option<&str>, &str); 6] = [
        (None, "missing_credentials"),
        (Some("Basic x"), "invalid_authorization"),
        (Some("Bearer"), "invalid_authorization"),
        (Some(KEY), "invalid_authorization"),
        (Some("Bearer wrong-key-0123456789"), "invalid_api_key"),
        (Some("Bearer test-admin-key-012345678"), "invalid_api_key"),
    ];
    for (auth, code) in cases {
        let mut rb = s
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = send(rb).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, code);
        assert!(r.body.get("errors").is_none(), "{}", r.body);
        assert!(!r.body.to_string().contains(KEY), "key leaked: {}", r.body);
        // Auth comes first: a bad key with a bad body is still 401.
        let mut rb = s
            .client
            .post(&url)
            .header("content-type", "text/plain")
            .body("x");
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        assert_error(&send(rb).await, StatusCode::UNAUTHORIZED, code);
    }
    // Every read needs the key too.
    for path in [
        "/v1/opscore/agent/a1/state",
        "/v1/opscore/agent/a1",
        "/v1/opscore/agents",
        "/v1/opscore/agent/a1/state/history",
    ] {
        let r = send(s.client.get(s.url(path))).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "missing_credentials");
        let r = send(
            s.client
                .get(s.url(path))
                .bearer_auth("wrong-key-0123456789"),
        )
        .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_api_key");
    }
    assert_eq!(s.everything().await, before);

    // The scheme word is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let r = send(
            s.client
                .post(&url)
                .header("authorization", format!("{scheme} {KEY}"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        assert_accepted(&r);
    }
    assert_eq!(s.history("a1").await.len(), 3);
    s.stop().await;
}

async fn report_request_errors(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    s.register("a2").await;
    let ts = ts_at(future_base(), 0);
    let before = s.everything().await;

    // Path and body disagree (even though both agents exist): 400.
    let r = s
        .report_json("a1", &report("a2", &ts, "active", json!({})))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "agent_id_mismatch");
    // Unknown agent: 404.
    let r = s
        .report_json("ghost", &report("ghost", &ts, "active", json!({})))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    assert!(
        r.body["detail"].as_str().unwrap().contains("ghost"),
        "{}",
        r.body
    );
    // A path id that cannot be an agent id names no agent: 404.
    let r = s
        .report_json("a%20b", &report("a b", &ts, "active", json!({})))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    // Not JSON: 400.
    for raw in ["{", "not json", "", "{\"agentId\":\"a1\",}"] {
        let r = send(
            s.post("/v1/opscore/agent/a1/state")
                .header("content-type", "application/json")
                .body(raw),
        )
        .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    }
    // One JSON value and nothing after it (trailing data was accepted until
    // the fuzz targets found it): 400, and nothing stored.
    let valid = report("a1", &ts, "active", json!({})).to_string();
    for raw in [
        format!("{valid} x"),
        format!("{valid}{valid}"),
        format!("{valid}]"),
    ] {
        let r = send(
            s.post("/v1/opscore/agent/a1/state")
                .header("content-type", "application/json")
                .body(raw),
        )
        .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    }
    // Not declared as JSON: 415.
    let good = report("a1", &ts, "active", json!({})).to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut rb = s.post("/v1/opscore/agent/a1/state").body(good.clone());
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let r = send(rb).await;
        assert_error(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    assert_eq!(s.everything().await, before);

    // The same report, well formed, is accepted (with a charset parameter).
    let r = send(
        s.post("/v1/opscore/agent/a1/state")
            .header("content-type", "application/json; charset=utf-8")
            .body(good),
    )
    .await;
    assert_accepted(&r);
    s.stop().await;
}

async fn report_validation_names_the_field(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let ts = ts_at(future_base(), 0);
    let before = s.everything().await;
    let cases: Vec<(Value, &str)> = vec![
        (report("a1", "soon", "active", json!({})), "timestamp"),
        (report("a1", "", "active", json!({})), "timestamp"),
        (
            report("a1", "2026-13-01T00:00:00", "active", json!({})),
            "timestamp",
        ),
        (
            report("a1", "1960-01-01T00:00:00Z", "active", json!({})),
            "timestamp",
        ),
        (
            json!({"agentId": "a1", "timestamp": 12345, "state": "active"}),
            "timestamp",
        ),
        (json!({"agentId": "a1", "state": "active"}), "timestamp"),
        (report("a1", &ts, "not ok", json!({})), "state"),
        (report("a1", &ts, "", json!({})), "state"),
        (report("a1", &ts, "é", json!({})), "state"),
        (report("a1", &ts, &"x".repeat(65), json!({})), "state"),
        (
            json!({"agentId": "a1", "timestamp": ts, "state": 3}),
            "state",
        ),
        (json!({"agentId": "a1", "timestamp": ts}), "state"),
        (report("a1", &ts, "active", json!([1, 2])), "details"),
        (report("a1", &ts, "active", json!("text")), "details"),
        (report("a1", &ts, "active", json!(5)), "details"),
        (json!({"timestamp": ts, "state": "active"}), "agentId"),
    ];
    for (body, field) in cases {
        let r = s.report_json("a1", &body).await;
        assert_invalid_field(&r, field);
    }
    // details over 64 KiB serialised. {"x":"…"} is 8 bytes plus the string.
    let max = 64 * 1024;
    let too_big = json!({"x": "y".repeat(max - 8 + 1)});
    assert_eq!(too_big.to_string().len(), max + 1);
    let r = s
        .report_json("a1", &report("a1", &ts, "active", too_big))
        .await;
    assert_invalid_field(&r, "details");
    // Every bad field at once, each named.
    let r = s
        .report_json(
            "a1",
            &json!({"agentId": "a1", "timestamp": "soon", "state": "a b", "details": []}),
        )
        .await;
    for field in ["timestamp", "state", "details"] {
        assert_invalid_field(&r, field);
    }
    assert_eq!(s.everything().await, before);

    // Exactly 64 KiB is accepted and stored whole.
    let at_limit = json!({"x": "y".repeat(max - 8)});
    assert_eq!(at_limit.to_string().len(), max);
    let r = s
        .report_json("a1", &report("a1", &ts, "active", at_limit.clone()))
        .await;
    assert_accepted(&r);
    assert_eq!(s.state("a1").await.1["details"], at_limit);
    s.stop().await;
}

async fn report_over_body_limit_is_413(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.max_body_bytes = 2048).await;
    s.register("a1").await;
    let ts = ts_at(future_base(), 0);
    let before = s.everything().await;
    let big = report("a1", &ts, "active", json!({"x": "y".repeat(3000)}));
    let r = s.report_json("a1", &big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // One byte over the limit.
    let pad = 2049
        - report("a1", &ts, "active", json!({"x": ""}))
            .to_string()
            .len();
    let over = report("a1", &ts, "active", json!({"x": "y".repeat(pad)}));
    assert_eq!(over.to_string().len(), 2049);
    let r = s.report_json("a1", &over).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // The webhook has the same limit.
    let mut reg = json!({"event_type": "REGISTER", "agent_details": {"agentId": "a2",
        "agentName": "S", "version": "1", "contactEndpoint": "http://a:1/"}});
    reg["agent_details"]["metadata"] = json!({"pad": "y".repeat(3000)});
    let r = s.notify_bearer(&reg).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(s.everything().await, before);

    // At the limit: accepted.
    let at = report("a1", &ts, "active", json!({"x": "y".repeat(pad - 1)}));
    assert_eq!(at.to_string().len(), 2048);
    assert_accepted(&s.report_json("a1", &at).await);
    s.stop().await;
}

async fn timestamp_without_offset_is_utc(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let cases = [
        ("2020-04-21T10:00:00.5", "2020-04-21T10:00:00.500000+00:00"),
        ("2020-04-21 10:00:01", "2020-04-21T10:00:01.000000+00:00"),
        (
            "2020-04-21T12:00:02+02:00",
            "2020-04-21T10:00:02.000000+00:00",
        ),
        ("2020-04-21T10:00:03Z", "2020-04-21T10:00:03.000000+00:00"),
        (
            "2020-04-21T05:00:04.25-05:00",
            "2020-04-21T10:00:04.250000+00:00",
        ),
    ];
    for (sent, stored) in cases {
        assert_accepted(
            &s.report_json("a1", &report("a1", sent, "idle", json!({})))
                .await,
        );
        assert_eq!(s.state("a1").await.1["timestamp"], stored, "sent {sent}");
    }
    s.stop().await;
}

async fn latest_timestamp_wins(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let base = future_base();
    assert_accepted(
        &s.report_json(
            "a1",
            &report("a1", &ts_at(base, 10), "active", json!({"n": 1})),
        )
        .await,
    );
    // A late report: kept in the history, not current.
    assert_accepted(
        &s.report_json(
            "a1",
            &report("a1", &ts_at(base, 5), "idle", json!({"n": 2})),
        )
        .await,
    );
    let (_, cur) = s.state("a1").await;
    assert_eq!(
        (&cur["state"], &cur["details"]),
        (&json!("active"), &json!({"n": 1}))
    );
    assert_eq!(cur["timestamp"], ts_at(base, 10));
    let h = s.history("a1").await;
    let got: Vec<(&Value, &Value)> = h.iter().map(|e| (&e["state"], &e["details"])).collect();
    assert_eq!(
        got,
        [
            (&json!("active"), &json!({"n": 1})),
            (&json!("idle"), &json!({"n": 2})),
            (&json!("UNKNOWN"), &Value::Null),
        ]
    );
    // A newer one replaces it; an older one after that still does not.
    assert_accepted(
        &s.report_json(
            "a1",
            &report("a1", &ts_at(base, 20), "finished", json!({"n": 3})),
        )
        .await,
    );
    assert_accepted(
        &s.report_json(
            "a1",
            &report("a1", &ts_at(base, 19), "error", json!({"n": 4})),
        )
        .await,
    );
    let (_, cur) = s.state("a1").await;
    assert_eq!(
        (&cur["state"], &cur["details"]),
        (&json!("finished"), &json!({"n": 3}))
    );
    assert_eq!(s.history("a1").await.len(), 5);

    // The first report replaces UNKNOWN whatever its timestamp (an agent's
    // clock may lag the server's).
    s.register("a2").await;
    assert_accepted(
        &s.report_json(
            "a2",
            &report("a2", "2020-01-01T00:00:00Z", "idle", json!(null)),
        )
        .await,
    );
    let (_, cur) = s.state("a2").await;
    assert_eq!(cur["state"], "idle");
    assert_eq!(cur["timestamp"], "2020-01-01T00:00:00.000000+00:00");
    // History is newest first by timestamp, and the UNKNOWN the service set
    // never sorts above the report that replaced it: it moves to just
    // before that report's time.
    let h = s.history("a2").await;
    assert_eq!(
        (&h[0]["state"], &h[1]["state"]),
        (&json!("idle"), &json!("UNKNOWN"))
    );
    assert_eq!(h[1]["timestamp"], "2019-12-31T23:59:59.999999+00:00");
    s.stop().await;
}

async fn equal_timestamps_later_arrival_wins(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let base = future_base();
    let same = ts_at(base, 0);
    // The same instant written with another offset.
    let same_shifted = base
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    for (i, ts) in [&same, &same, &same_shifted, &same].into_iter().enumerate() {
        assert_accepted(
            &s.report_json("a1", &report("a1", ts, &format!("s{i}"), json!({"i": i})))
                .await,
        );
        let (_, cur) = s.state("a1").await;
        assert_eq!(cur["state"], format!("s{i}"), "report {i} ({ts})");
        assert_eq!(cur["timestamp"], same);
    }
    // Ties in the history: later arrival first.
    let h = s.history("a1").await;
    let states: Vec<&str> = h.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["s3", "s2", "s1", "s0", "UNKNOWN"]);
    s.stop().await;
}

async fn null_details_allowed(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let base = future_base();
    assert_accepted(
        &s.report_json(
            "a1",
            &report("a1", &ts_at(base, 0), "idle", json!({"x": 1})),
        )
        .await,
    );
    assert_accepted(
        &s.report_json("a1", &report("a1", &ts_at(base, 1), "active", Value::Null))
            .await,
    );
    let (_, cur) = s.state("a1").await;
    assert_eq!(cur["state"], "active");
    assert_eq!(cur["details"], Value::Null);
    let body = json!({"agentId": "a1", "timestamp": ts_at(base, 2), "state": "idle"});
    assert_accepted(&s.report_json("a1", &body).await);
    let (_, cur) = s.state("a1").await;
    assert_eq!(
        (&cur["state"], &cur["details"]),
        (&json!("idle"), &Value::Null)
    );
    let h = s.history("a1").await;
    let details: Vec<&Value> = h.iter().map(|e| &e["details"]).collect();
    assert_eq!(
        details,
        [&Value::Null, &Value::Null, &json!({"x": 1}), &Value::Null]
    );
    s.stop().await;
}

async fn details_must_be_strict_json(backend: Backend) {
    // JSON's grammar lets a string escape half a surrogate pair; strict
    // parsers (serde_json among them) refuse such text. Stored verbatim it
    // would make this agent's state, its history and every listing page
    // that shows it unreadable to them, so it is refused up front.
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let ts = ts_at(future_base(), 0);
    let before = s.everything().await;
    for details in [
        r#"{"x":"\ud800"}"#,
        r#"{"x":"a\udc00b"}"#,
        r#"{"\ud83d":1}"#,
    ] {
        let raw = format!(
            r#"{{"agentId":"a1","timestamp":"{ts}","state":"active","details":{details}}}"#
        );
        let r = send(
            s.post("/v1/opscore/agent/a1/state")
                .header("content-type", "application/json")
                .body(raw),
        )
        .await;
        assert_invalid_field(&r, "details");
    }
    assert_eq!(s.everything().await, before);

    // A whole pair is fine and reads back as the character it encodes.
    let raw = format!(
        r#"{{"agentId":"a1","timestamp":"{ts}","state":"active","details":{{"x":"\ud83d\ude00"}}}}"#
    );
    let r = send(
        s.post("/v1/opscore/agent/a1/state")
            .header("content-type", "application/json")
            .body(raw),
    )
    .await;
    assert_accepted(&r);
    assert_eq!(s.state("a1").await.1["details"], json!({"x": "\u{1F600}"}));
    let listing = s.get_json("/v1/opscore/agents").await;
    assert_eq!(
        listing.body["items"][0]["currentState"]["details"]["x"],
        "\u{1F600}"
    );
    s.stop().await;
}

/// A report stamped far ahead of the server's clock is refused with 422
/// `timestamp_in_future` and stores nothing; one within the allowed skew is
/// accepted. Without the check a single report stamped 2099 pinned the
/// agent's current state for good.
async fn a_report_from_the_future_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let now = chrono::Utc::now();
    let (status, _) = s.report("a1", "idle", &now.to_rfc3339()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let before = s.history("a1").await;
    for ts in [
        "2099-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        &(now + chrono::Duration::seconds(400)).to_rfc3339(),
    ] {
        let r = s
            .report_json("a1", &common::report("a1", ts, "active", json!({})))
            .await;
        common::assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "timestamp_in_future");
        assert_eq!(r.body["errors"][0]["field"], "timestamp", "{}", r.body);
    }
    assert_eq!(s.history("a1").await, before, "a refused report was stored");
    assert_eq!(s.state("a1").await.1["state"], "idle");
    // Within the skew (300 s by default): accepted, and current.
    let near = (now + chrono::Duration::seconds(60)).to_rfc3339();
    let (status, _) = s.report("a1", "active", &near).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.state("a1").await.1["state"], "active");
}

/// An admin can reset a state pinned by a clock that ran ahead (stored
/// here by a server that allowed a year of skew): the state is UNKNOWN
/// again, recorded in the history with the acting key, and the agent's next
/// real report becomes current. Operators may not reset.
async fn admin_resets_a_pinned_state(backend: Backend) {
    let db = common::TestDb::new(backend).await;
    let mut config = common::test_config(&db);
    config.max_clock_skew = std::time::Duration::from_secs(365 * 86_400);
    let s = TestServer::start_on(db, config).await;
    s.register("a1").await;
    let ahead = (chrono::Utc::now() + chrono::Duration::days(200)).to_rfc3339();
    let (status, _) = s.report("a1", "idle", &ahead).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = s
        .report("a1", "active", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.state("a1").await.1["state"], "idle", "pinned");

    let operator = common::keys::key_with_role(&s, "operator", &[]).await;
    let r = common::send(
        s.client
            .post(s.url("/v1/opscore/agent/a1/state/reset"))
            .bearer_auth(&operator.plaintext),
    )
    .await;
    common::assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let admin = common::keys::key_with_role(&s, "admin", &[]).await;
    let r = common::send(
        s.client
            .post(s.url("/v1/opscore/agent/a1/state/reset"))
            .bearer_auth(&admin.plaintext),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "UNKNOWN", "{}", r.body);
    assert_eq!(s.state("a1").await.1["state"], "UNKNOWN");
    let history = s.history("a1").await;
    assert!(
        history
            .iter()
            .any(|h| h["state"] == "UNKNOWN" && h["details"]["resetBy"] == json!(admin.id)),
        "the reset is not in the history: {history:#?}"
    );
    let (status, _) = s
        .report("a1", "active", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        s.state("a1").await.1["state"],
        "active",
        "still pinned after the reset"
    );
    let r = common::send(s.post("/v1/opscore/agent/nobody/state/reset")).await;
    common::assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
}

/// The UNKNOWN the service sets at registration never sorts above the
/// report that took its place, even when that report's timestamp is a
/// little behind the server's clock (agent clock or network lag).
async fn registration_unknown_sorts_below_the_report_that_replaced_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let behind = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let (status, _) = s.report("a1", "active", &behind).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.state("a1").await.1["state"], "active");
    let history = s.history("a1").await;
    let states: Vec<&str> = history
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "UNKNOWN"], "{history:#?}");
}

backend_tests!(
    a_report_from_the_future_is_refused,
    admin_resets_a_pinned_state,
    registration_unknown_sorts_below_the_report_that_replaced_it,
    report_is_stored_and_readable,
    report_auth_errors,
    report_request_errors,
    report_validation_names_the_field,
    report_over_body_limit_is_413,
    timestamp_without_offset_is_utc,
    latest_timestamp_wins,
    equal_timestamps_later_arrival_wins,
    null_details_allowed,
    details_must_be_strict_json,
);
