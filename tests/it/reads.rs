//! End-to-end tests of the operator reads (one agent, the agent listing with
//! its filters and cursor pagination, state history), the operational routes
//! (docs/api.md §1.5), unknown routes and request ids, on both backends.

use crate::common;

use crate::common::{
    assert_accepted, assert_error, assert_invalid_field, future_base, parse_time, report, send,
    ts_at, Backend, Resp, ServerProcess, TestDb, TestServer, KEY,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The ids in a listing page, in order.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|a| a["agentId"].as_str().expect("agentId").to_owned())
        .collect()
}

async fn get_state_and_agent(backend: Backend) {
    let s = TestServer::start(backend).await;
    common::register_at(&s.client, &s.base, "a1", &["summarise", "translate"]).await;
    for path in [
        "/v1/opscore/agent/ghost/state",
        "/v1/opscore/agent/ghost",
        "/v1/opscore/agent/a%20b/state",
        "/v1/opscore/agent/a%20b",
    ] {
        let r = s.get_json(path).await;
        assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    }

    let a = s.get_json("/v1/opscore/agent/a1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["agentId"], "a1");
    assert_eq!(a.body["agentName"], "Agent a1");
    assert_eq!(a.body["version"], "1.0");
    assert_eq!(a.body["capabilities"], json!(["summarise", "translate"]));
    assert_eq!(a.body["contactEndpoint"], "http://agent-a1.test:8080/task");
    assert_eq!(a.body["metadata"], json!({}));
    assert_eq!(a.body["registered"], true);
    assert_eq!(a.body["deregisteredAt"], Value::Null);
    let registered_at = parse_time(&a.body["registeredAt"]);
    assert_eq!(parse_time(&a.body["lastSeen"]), registered_at);
    assert_eq!(a.body["currentState"]["state"], "UNKNOWN");
    assert_eq!(a.body["currentState"]["details"], Value::Null);

    let ts = ts_at(future_base(), 0);
    assert_accepted(
        &s.report_json("a1", &report("a1", &ts, "active", json!({"task": "t1"})))
            .await,
    );
    let a = s.get_json("/v1/opscore/agent/a1").await;
    assert_eq!(parse_time(&a.body["registeredAt"]), registered_at);
    assert_eq!(
        a.body["currentState"],
        json!({"state": "active", "details": {"task": "t1"}, "timestamp": ts,
            "receivedAt": a.body["currentState"]["receivedAt"]})
    );
    // Last seen is when the report arrived.
    assert_eq!(a.body["lastSeen"], a.body["currentState"]["receivedAt"]);
    assert!(parse_time(&a.body["lastSeen"]) >= registered_at);
    // The state route agrees.
    let st = s.get_json("/v1/opscore/agent/a1/state").await;
    assert_eq!(st.body["state"], "active");
    assert_eq!(st.body["receivedAt"], a.body["currentState"]["receivedAt"]);
    s.stop().await;
}

async fn list_agents_filters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let reg = |id: &'static str, caps: &'static [&'static str]| {
        let (client, base) = (s.client.clone(), s.base.clone());
        async move { common::register_at(&client, &base, id, caps).await }
    };
    reg("a1", &["summarise"]).await;
    reg("a2", &["summarise", "translate"]).await;
    reg("a3", &["translate"]).await;
    reg("a4", &["summarise"]).await;
    let ts = ts_at(future_base(), 0);
    for (id, state) in [("a1", "idle"), ("a2", "active"), ("a4", "active")] {
        assert_accepted(&s.report_json(id, &report(id, &ts, state, json!({}))).await);
    }
    let r = s.notify_bearer(&common::deregister_payload("a4")).await;
    assert_eq!(r.status, StatusCode::OK);

    let cases: [(&str, &[&str]); 15] = [
        ("", &["a1", "a2", "a3"]),
        ("?includeDeregistered=false", &["a1", "a2", "a3"]),
        ("?includeDeregistered=0", &["a1", "a2", "a3"]),
        ("?includeDeregistered=true", &["a1", "a2", "a3", "a4"]),
        ("?includeDeregistered=1", &["a1", "a2", "a3", "a4"]),
        ("?state=active", &["a2"]),
        ("?state=active&includeDeregistered=true", &["a2", "a4"]),
        ("?state=UNKNOWN", &["a3"]),
        ("?state=error", &[]),
        ("?capability=summarise", &["a1", "a2"]),
        ("?capability=translate", &["a2", "a3"]),
        (
            "?capability=summarise&includeDeregistered=true",
            &["a1", "a2", "a4"],
        ),
        ("?capability=nothing", &[]),
        ("?state=active&capability=translate", &["a2"]),
        ("?state=idle&capability=translate", &[]),
    ];
    for (query, want) in cases {
        let r = s.get_json(&format!("/v1/opscore/agents{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
        assert_eq!(ids(&r.body), want, "{query}");
        assert_eq!(r.body["nextCursor"], Value::Null, "{query}");
    }
    // Items carry the registration and the current state.
    let r = s.get_json("/v1/opscore/agents?state=active").await;
    let a2 = &r.body["items"][0];
    assert_eq!(a2["capabilities"], json!(["summarise", "translate"]));
    assert_eq!(a2["currentState"]["state"], "active");
    assert_eq!(a2["currentState"]["timestamp"], ts);
    parse_time(&a2["registeredAt"]);
    parse_time(&a2["lastSeen"]);

    for (query, field) in [
        ("?state=not%20ok", "state"),
        ("?includeDeregistered=maybe", "includeDeregistered"),
        ("?capability=%00", "capability"),
        ("?capability=a%00b&state=idle", "capability"),
    ] {
        let r = s.get_json(&format!("/v1/opscore/agents{query}")).await;
        assert_invalid_field(&r, field);
    }
    s.stop().await;
}

async fn list_limit_and_cursor_errors(backend: Backend) {
    let s = TestServer::start(backend).await;
    for id in ["a1", "a2", "a3"] {
        s.register(id).await;
    }
    for limit in ["0", "5000", "1001", "-1", "abc", ""] {
        let r = s
            .get_json(&format!("/v1/opscore/agents?limit={limit}"))
            .await;
        assert_invalid_field(&r, "limit");
        let r = s
            .get_json(&format!("/v1/opscore/agent/a1/state/history?limit={limit}"))
            .await;
        assert_invalid_field(&r, "limit");
    }
    for cursor in ["zz", "not-hex", "612062", "", "%ff"] {
        let r = s
            .get_json(&format!("/v1/opscore/agents?cursor={cursor}"))
            .await;
        assert_invalid_field(&r, "cursor");
        let r = s
            .get_json(&format!(
                "/v1/opscore/agent/a1/state/history?cursor={cursor}"
            ))
            .await;
        assert_invalid_field(&r, "cursor");
    }
    // The edges of the allowed range.
    let r = s.get_json("/v1/opscore/agents?limit=1000").await;
    assert_eq!(ids(&r.body), ["a1", "a2", "a3"]);
    let r = s.get_json("/v1/opscore/agents?limit=1").await;
    assert_eq!(ids(&r.body), ["a1"]);
    let cursor = r.body["nextCursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let r = s
        .get_json(&format!("/v1/opscore/agents?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&r.body), ["a2", "a3"]);
    s.stop().await;
}

async fn list_pagination_while_registering(backend: Backend) {
    let s = TestServer::start(backend).await;
    let originals: Vec<String> = (0..60)
        .step_by(2)
        .map(|i| format!("agent-{i:03}"))
        .collect();
    for id in &originals {
        s.register(id).await;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut added_after_cursor: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "pagination does not end");
        let path = match &cursor {
            Some(c) => format!("/v1/opscore/agents?limit=7&cursor={c}"),
            None => "/v1/opscore/agents?limit=7".to_owned(),
        };
        let r = s.get_json(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let got = ids(&r.body);
        assert!(got.len() <= 7);
        seen.extend(got);
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        // New agents between fetches: one behind the cursor or just ahead of
        // it, one further on, one at the end of the order.
        let last = seen.last().cloned().expect("a full page before a cursor");
        let n = 1 + 2 * page;
        for id in [
            format!("agent-{n:03}"),
            format!("agent-{:03}", 100 + page),
            format!("zz-{page:03}"),
        ] {
            s.register(&id).await;
            if id > last {
                added_after_cursor.push(id);
            }
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages overlap or are out of order");
    for id in &originals {
        assert_eq!(
            seen.iter().filter(|s| *s == id).count(),
            1,
            "{id} in {seen:?}"
        );
    }
    // Agents registered ahead of the cursor are reached by later pages.
    for id in &added_after_cursor {
        assert!(
            seen.contains(id),
            "{id} was added ahead of the cursor but never listed"
        );
    }
    s.stop().await;
}

async fn history_newest_first_paginated(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let base = future_base();
    // Arrival order, with timestamps out of order and two ties.
    let secs = [7, 2, 11, 5, 0, 9, 5, 3, 12, 1, 8, 12, 4];
    for (i, sec) in secs.iter().enumerate() {
        let body = report("a1", &ts_at(base, *sec), &format!("s{i}"), json!({"i": i}));
        assert_accepted(&s.report_json("a1", &body).await);
    }
    let mut want: Vec<(i64, usize)> = secs.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    want.sort_by(|a, b| b.cmp(a)); // timestamp desc, then later arrival first
    let mut want: Vec<Value> = want.iter().map(|(_, i)| json!(format!("s{i}"))).collect();
    want.push(json!("UNKNOWN"));

    for limit in [1usize, 5, 14, 1000] {
        let mut got: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            assert!(page < 100, "history pagination does not end");
            let mut path = format!("/v1/opscore/agent/a1/state/history?limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = s.get_json(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let items = r.body["items"].as_array().expect("items");
            assert!(items.len() <= limit);
            for e in items {
                parse_time(&e["timestamp"]);
                parse_time(&e["receivedAt"]);
                if e["state"] != "UNKNOWN" {
                    let i = e["details"]["i"].as_u64().expect("details.i") as usize;
                    assert_eq!(e["state"], format!("s{i}"));
                    assert_eq!(e["timestamp"], ts_at(base, secs[i]));
                }
                got.push(e["state"].clone());
            }
            match r.body["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(got, want, "limit {limit}");
    }
    for path in [
        "/v1/opscore/agent/ghost/state/history",
        "/v1/opscore/agent/ghost/state/history?cursor=313a31",
    ] {
        assert_error(
            &s.get_json(path).await,
            StatusCode::NOT_FOUND,
            "agent_not_found",
        );
    }
    s.stop().await;
}

async fn health_ready_and_unknown_routes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = send(s.client.get(s.url("/health"))).await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"status": "ok"}))
    );
    let r = send(s.client.get(s.url("/ready"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "ready");

    for path in ["/nope", "/v1/opscore/agent/a1/state/extra", "/v1/opscore"] {
        assert_error(
            &send(s.client.get(s.url(path))).await,
            StatusCode::NOT_FOUND,
            "route_not_found",
        );
        assert_error(
            &s.get_json(path).await,
            StatusCode::NOT_FOUND,
            "route_not_found",
        );
    }
    let r = send(s.client.delete(s.url("/health"))).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let r = send(s.post("/v1/opscore/agents")).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    s.stop().await;
}

async fn request_id_echoed_or_minted(backend: Backend) {
    let s = TestServer::start(backend).await;
    let id_of = |r: &Resp| {
        r.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no x-request-id: {:?}", r.headers))
            .to_owned()
    };
    for (path, auth) in [
        ("/health", false),
        ("/nope", false),
        ("/v1/opscore/agents", true),
        ("/v1/opscore/agents", false),
    ] {
        let mut rb = s
            .client
            .get(s.url(path))
            .header("x-request-id", "req-abc.123");
        if auth {
            rb = rb.bearer_auth(KEY);
        }
        assert_eq!(id_of(&send(rb).await), "req-abc.123", "{path}");
        let mut rb = s.client.get(s.url(path));
        if auth {
            rb = rb.bearer_auth(KEY);
        }
        let minted = id_of(&send(rb).await);
        assert!(!minted.is_empty());
        let again = id_of(&send(s.client.get(s.url(path))).await);
        assert_ne!(minted, again, "request ids must differ");
    }
    // An unusable id (spaces, too long) is replaced.
    for bad in ["x".repeat(200), "a b".to_owned()] {
        let r = send(s.client.get(s.url("/health")).header("x-request-id", &bad)).await;
        let minted = id_of(&r);
        assert!(!minted.is_empty() && minted != bad, "{minted}");
    }
    s.stop().await;
}

/// Each request logs one JSON line when it ends, inside a span naming its
/// method, matched route template (never the raw path) and request id;
/// probes log theirs at debug, so not at the default level.
async fn request_log_lines_name_the_route_template(backend: Backend) {
    let db = TestDb::new(backend).await;
    let p = ServerProcess::spawn(&db.url, db.dir.path()).await;
    let client = reqwest::Client::new();
    common::register_at(&client, &p.base, "log-agent-1", &[]).await;
    let get = |path: &str, id: &str| {
        client
            .get(format!("{}{path}", p.base))
            .bearer_auth(KEY)
            .header("x-request-id", id)
    };
    assert_eq!(
        send(get("/health", "log-probe")).await.status,
        StatusCode::OK
    );
    let r = send(get("/v1/opscore/agent/log-agent-1/state", "log-state")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(get("/v1/opscore/agent/nobody-here/state", "log-missing")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(get("/no/such/route", "log-unrouted")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The line of request `id`, once the writer thread has written it.
    let line_of = |id: &str| {
        let logs = p.logs.lock().expect("logs");
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "request finished" && v["span"]["request_id"] == id)
    };
    let mut waited = 0;
    while line_of("log-unrouted").is_none() {
        assert!(waited < 100, "no request line for log-unrouted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    let state_route = "/v1/opscore/agent/{agentId}/state";
    for (id, route, status) in [
        ("log-state", state_route, 200),
        ("log-missing", state_route, 404),
        ("log-unrouted", "unmatched", 404),
    ] {
        let v = line_of(id).unwrap_or_else(|| panic!("no request line for {id}"));
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert!(v["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{v}");
        assert_eq!(v["span"]["method"], "GET", "{v}");
        assert_eq!(v["span"]["route"], route, "{v}");
    }
    // The probe logged at debug, and no line carries a raw agent path.
    assert!(line_of("log-probe").is_none());
    assert!(!p.logged("log-agent-1/state"));
    assert!(!p.logged("nobody-here/state"));
    p.kill().await;
}

/// Largest response body one listing page may have, plus one agent.
const PAGE_BOUND: usize = 1024 * 1024 + 20 * 1024;

/// A page of the agent listing stays within a bounded size whatever the
/// agents carry (metadata itself is capped at 16 KiB, see the bad-input
/// table): a page asked for 1000 agents with large metadata is cut short,
/// with a cursor to the rest, and paging still visits every agent once.
/// AgentKit's own REGISTER, signed as it signs it, is accepted with and
/// without `metadata`.
async fn list_pages_are_bounded_in_size(backend: Backend) {
    let s = TestServer::start(backend).await;
    let with = common::register_payload("ak-with", "With", &["summarise"], "http://ak.test/task");
    let mut without = with.clone();
    without["agent_details"]["agentId"] = json!("ak-without");
    without["agent_details"]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    for payload in [&with, &without] {
        let signed = common::agentkit_sign(payload, common::SECRET, 0, false).await;
        let r = s.notify_signed(&signed).await;
        assert_eq!(r.status, StatusCode::OK, "{payload}: {}", r.body);
    }
    let blob = "m".repeat(15 * 1024);
    for i in 0..120 {
        let mut body = common::register_payload(
            &format!("big-{i:03}"),
            "Big",
            &["summarise"],
            "http://big.test/task",
        );
        body["agent_details"]["metadata"] = json!({"blob": blob});
        let r = s.notify_bearer(&body).await;
        assert_eq!(r.status, StatusCode::OK, "big-{i}: {}", r.body);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/opscore/agents?limit=1000".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = s.get(&path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        assert!(
            text.len() <= PAGE_BOUND,
            "page {pages} is {} bytes (bound {PAGE_BOUND})",
            text.len()
        );
        let page: Value = serde_json::from_str(&text).unwrap();
        seen.extend(ids(&page));
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(pages > 1, "everything came in one page");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an agent was listed twice");
    assert_eq!(seen.len(), 122, "{seen:?}");
    s.stop().await;
}

backend_tests!(
    get_state_and_agent,
    list_agents_filters,
    list_limit_and_cursor_errors,
    list_pagination_while_registering,
    history_newest_first_paginated,
    health_ready_and_unknown_routes,
    request_id_echoed_or_minted,
    request_log_lines_name_the_route_template,
    list_pages_are_bounded_in_size,
);
