//! The bad-input table: requests to every route (and the command line) that
//! are wrong in one way each, with the status and `code` each must get, run
//! against one server holding data; afterwards everything stored is
//! compared with a snapshot taken before, so no refused request changed
//! anything. Runs on both backends.

use crate::common;

use std::process::Command;

use crate::common::{agentkit_sign, register_payload, Backend, Resp, TestServer, KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How a case authenticates.
#[derive(Clone, Copy)]
enum Auth {
    Key,
    None,
    Wrong,
}

/// One bad request.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    auth: Auth,
    status: u16,
    code: &'static str,
    /// The field a 422 must name, when the case checks it.
    field: Option<&'static str>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        content_type: None,
        headers: Vec::new(),
        body: None,
        auth: Auth::Key,
        status,
        code,
        field: None,
    }
}

impl Case {
    fn json(mut self, body: Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.to_string().into_bytes());
        self
    }
    fn raw(self, content_type: Option<&'static str>, body: &str) -> Self {
        self.bytes(content_type, body.as_bytes())
    }
    fn bytes(mut self, content_type: Option<&'static str>, body: &[u8]) -> Self {
        self.content_type = content_type;
        self.body = Some(body.to_vec());
        self
    }
    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    fn naming(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

fn ts() -> String {
    chrono::Utc::now().to_rfc3339()
}

fn report(agent: &str, state: &str) -> Value {
    json!({"agentId": agent, "timestamp": ts(), "state": state, "details": {}})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn register_with(field: &str, value: Value) -> Value {
    let mut body = register_payload("new-agent", "New", &["x"], "http://new.test/task");
    body["agent_details"][field] = value;
    body
}

/// Everything a refused request could have changed, read over the API.
async fn snapshot(s: &TestServer) -> Value {
    let mut agents = Vec::new();
    for agent in common::all_agents_at(&s.client, &s.base).await {
        let id = agent["agentId"].as_str().unwrap().to_owned();
        let history = s.history(&id).await;
        let sessions = s
            .get_json(&format!("/v1/opscore/agent/{id}/sessions"))
            .await
            .body;
        let mut full = Vec::new();
        for session in sessions["items"].as_array().unwrap() {
            let sid = session["sessionId"].as_str().unwrap();
            full.push(
                s.get_json(&format!("/v1/opscore/sessions/{sid}"))
                    .await
                    .body,
            );
        }
        agents.push(json!({"agent": agent, "history": history, "sessions": full}));
    }
    let deregistered = s
        .get_json("/v1/opscore/agents?includeDeregistered=true")
        .await
        .body;
    let definitions = s.get_json("/v1/opscore/workflows").await.body;
    json!({"agents": agents, "all": deregistered, "definitions": definitions})
}

fn cases() -> Vec<Case> {
    let notify = "/v1/opscore/internal/agent/notify";
    let state = "/v1/opscore/agent/a1/state";
    let big = "x".repeat(2 * 1024 * 1024);
    let big_details = json!({"blob": "y".repeat(70 * 1024)});
    let cycle = json!({"id": "cyc", "tasks": [
        {"taskId": "t1", "nextTaskId": "t2"}, {"taskId": "t2", "nextTaskId": "t1"}]});
    vec![
        // The registration webhook.
        case(
            "webhook: body not JSON",
            "POST",
            notify,
            400,
            "invalid_json",
        )
        .raw(Some("application/json"), "{"),
        case(
            "webhook: wrong content type",
            "POST",
            notify,
            415,
            "unsupported_media_type",
        )
        .raw(
            Some("text/plain"),
            &register_payload("n1", "N", &[], "http://n.test/t").to_string(),
        ),
        case(
            "webhook: unknown event_type",
            "POST",
            notify,
            400,
            "unknown_event_type",
        )
        .json(json!({"event_type": "EXPLODE", "agent_details": {"agentId": "a1"}})),
        case(
            "webhook: no event_type",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(json!({"agent_details": {"agentId": "a1"}})),
        case(
            "webhook: no agent_details",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(json!({"event_type": "REGISTER"})),
        case(
            "webhook: empty agentId",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentId", json!(""))),
        case(
            "webhook: agentId with a space",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentId", json!("a b"))),
        case(
            "webhook: agentId too long",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentId", json!("a".repeat(300)))),
        // An id is one path segment of the dispatch URL: "." and ".." would
        // send the task to /v1/run and /v1/agents/run.
        case(
            "webhook: agentId '.'",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentId", json!("."))),
        case(
            "webhook: agentId '..'",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentId", json!(".."))),
        case(
            "webhook: no agentName",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentName", Value::Null)),
        case(
            "webhook: contactEndpoint not a URL",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("contactEndpoint", json!("not a url"))),
        case(
            "webhook: capabilities not a list",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("capabilities", json!("summarise"))),
        case(
            "webhook: metadata a list",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("metadata", json!([1]))),
        case(
            "webhook: ttlSeconds zero",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("metadata", json!({"ttlSeconds": 0}))),
        case(
            "webhook: metadata over 16 KiB serialised",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with(
            "metadata",
            json!({"team": "blue", "blob": "m".repeat(16 * 1024)}),
        ))
        .naming("agent_details.metadata"),
        case(
            "webhook: 65 capabilities",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with(
            "capabilities",
            json!((0..65).map(|i| format!("cap-{i}")).collect::<Vec<_>>()),
        ))
        .naming("agent_details.capabilities"),
        case(
            "webhook: a capability of 129 characters",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("capabilities", json!(["c".repeat(129)])))
        .naming("agent_details.capabilities"),
        case(
            "webhook: NUL in agentName",
            "POST",
            notify,
            422,
            "validation_failed",
        )
        .json(register_with("agentName", json!("a\u{0}b"))),
        case(
            "webhook: deregister unknown agent",
            "POST",
            notify,
            404,
            "agent_not_found",
        )
        .json(json!({"event_type": "DEREGISTER", "agent_details": {"agentId": "nobody"}})),
        case(
            "webhook: no credentials",
            "POST",
            notify,
            401,
            "missing_credentials",
        )
        .json(register_payload("n2", "N", &[], "http://n.test/t"))
        .auth(Auth::None),
        case(
            "webhook: bad signature",
            "POST",
            notify,
            401,
            "invalid_signature",
        )
        .json(register_payload("n3", "N", &[], "http://n.test/t"))
        .auth(Auth::None)
        .header(
            "X-AgentKit-Timestamp",
            &chrono::Utc::now().timestamp().to_string(),
        )
        .header("X-AgentKit-Signature", &"0".repeat(64)),
        case(
            "webhook: body over the limit",
            "POST",
            notify,
            413,
            "payload_too_large",
        )
        .raw(Some("application/json"), &big),
        // State reports.
        case("report: body not JSON", "POST", state, 400, "invalid_json")
            .raw(Some("application/json"), "{\"agentId\":"),
        case(
            "report: no content type",
            "POST",
            state,
            415,
            "unsupported_media_type",
        )
        .raw(None, &report("a1", "idle").to_string()),
        case(
            "report: path and body agentId differ",
            "POST",
            state,
            400,
            "agent_id_mismatch",
        )
        .json(report("a2", "idle")),
        case(
            "report: no timestamp",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(json!({"agentId": "a1", "state": "idle"})),
        case(
            "report: timestamp in words",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(with(report("a1", "idle"), "timestamp", json!("yesterday"))),
        case(
            "report: timestamp year 10000",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(with(
            report("a1", "idle"),
            "timestamp",
            json!("10000-01-01T00:00:00Z"),
        )),
        case(
            "report: empty state",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(report("a1", "")),
        case(
            "report: state too long",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(report("a1", &"s".repeat(65))),
        case(
            "report: state with punctuation",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(report("a1", "idle!")),
        case(
            "report: details a list",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(with(report("a1", "idle"), "details", json!([1, 2]))),
        case(
            "report: details over 64 KiB",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(with(report("a1", "idle"), "details", big_details)),
        case(
            "report: lone surrogate in details",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .raw(
            Some("application/json"),
            &format!(
                r#"{{"agentId":"a1","timestamp":"{}","state":"idle","details":{{"k":"\ud800"}}}}"#,
                ts()
            ),
        ),
        case(
            "report: NUL in state",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(report("a1", "id\u{0}le")),
        case(
            "report: body a JSON list",
            "POST",
            state,
            422,
            "validation_failed",
        )
        .json(json!([report("a1", "idle")])),
        case(
            "report: unknown agent",
            "POST",
            "/v1/opscore/agent/nobody/state",
            404,
            "agent_not_found",
        )
        .json(report("nobody", "idle")),
        case(
            "report: deregistered agent",
            "POST",
            "/v1/opscore/agent/gone/state",
            404,
            "agent_not_found",
        )
        .json(report("gone", "idle")),
        case("report: no key", "POST", state, 401, "missing_credentials")
            .json(report("a1", "idle"))
            .auth(Auth::None),
        case("report: wrong key", "POST", state, 401, "invalid_api_key")
            .json(report("a1", "idle"))
            .auth(Auth::Wrong),
        case(
            "report: malformed Authorization",
            "POST",
            state,
            401,
            "invalid_authorization",
        )
        .json(report("a1", "idle"))
        .auth(Auth::None)
        .header("Authorization", "Basic abc"),
        // State reads.
        case(
            "state: unknown agent",
            "GET",
            "/v1/opscore/agent/nobody/state",
            404,
            "agent_not_found",
        ),
        case(
            "state: malformed agent id",
            "GET",
            "/v1/opscore/agent/a%20b/state",
            404,
            "agent_not_found",
        ),
        case(
            "state: negative index",
            "GET",
            "/v1/opscore/agent/a1/state?index=-1",
            422,
            "validation_failed",
        ),
        case(
            "state: wait in words",
            "GET",
            "/v1/opscore/agent/a1/state?index=1&wait=forever",
            422,
            "validation_failed",
        ),
        case(
            "state: wait over 10m",
            "GET",
            "/v1/opscore/agent/a1/state?index=1&wait=11m",
            422,
            "validation_failed",
        ),
        case(
            "history: limit 0",
            "GET",
            "/v1/opscore/agent/a1/state/history?limit=0",
            422,
            "validation_failed",
        ),
        case(
            "history: limit in words",
            "GET",
            "/v1/opscore/agent/a1/state/history?limit=ten",
            422,
            "validation_failed",
        ),
        case(
            "history: forged cursor",
            "GET",
            "/v1/opscore/agent/a1/state/history?cursor=zzz",
            422,
            "validation_failed",
        ),
        case(
            "history: unknown agent",
            "GET",
            "/v1/opscore/agent/nobody/state/history",
            404,
            "agent_not_found",
        ),
        case(
            "agent: unknown",
            "GET",
            "/v1/opscore/agent/nobody",
            404,
            "agent_not_found",
        ),
        // Listings.
        case(
            "agents: limit 1001",
            "GET",
            "/v1/opscore/agents?limit=1001",
            422,
            "validation_failed",
        ),
        case(
            "agents: includeDeregistered maybe",
            "GET",
            "/v1/opscore/agents?includeDeregistered=maybe",
            422,
            "validation_failed",
        ),
        case(
            "agents: stale maybe",
            "GET",
            "/v1/opscore/agents?stale=maybe",
            422,
            "validation_failed",
        ),
        case(
            "agents: bad state filter",
            "GET",
            "/v1/opscore/agents?state=idle!",
            422,
            "validation_failed",
        ),
        case(
            "agents: forged cursor",
            "GET",
            "/v1/opscore/agents?cursor=%%%",
            422,
            "validation_failed",
        ),
        // Definitions.
        case(
            "definition: not JSON",
            "POST",
            "/v1/opscore/workflows",
            400,
            "invalid_json",
        )
        .raw(Some("application/json"), "[}"),
        case(
            "definition: YAML not UTF-8",
            "POST",
            "/v1/opscore/workflows",
            400,
            "invalid_yaml",
        )
        .bytes(Some("application/yaml"), b"id: \xff\xfe\ntasks: []"),
        case(
            "definition: broken YAML",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .raw(Some("application/yaml"), "id: \"unterminated\ntasks: []"),
        case(
            "definition: cycle",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .json(cycle.clone()),
        case(
            "definition: duplicate task ids",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .json(json!({"id": "dup", "tasks": [{"taskId": "t"}, {"taskId": "t"}]})),
        case(
            "definition: unknown nextTaskId",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .json(json!({"id": "nx", "tasks": [{"taskId": "t", "nextTaskId": "nope"}]})),
        case(
            "definition: no id",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .json(json!({"tasks": [{"taskId": "t"}]})),
        case(
            "definition: negative maxRetries",
            "POST",
            "/v1/opscore/workflows",
            422,
            "validation_failed",
        )
        .json(json!({"id": "neg", "tasks": [{"taskId": "t", "maxRetries": -1}]})),
        case(
            "definition: revisions of an id never stored",
            "GET",
            "/v1/opscore/workflows/nope/revisions",
            404,
            "not_found",
        ),
        case(
            "definition: revisions with a bad cursor",
            "GET",
            "/v1/opscore/workflows/wf1/revisions?cursor=zz",
            422,
            "validation_failed",
        ),
        case(
            "definition: unknown",
            "GET",
            "/v1/opscore/workflows/nope",
            404,
            "not_found",
        ),
        case(
            "definition: delete unknown",
            "DELETE",
            "/v1/opscore/workflows/nope",
            404,
            "not_found",
        ),
        case(
            "definition: delete while in use",
            "DELETE",
            "/v1/opscore/workflows/wf1",
            409,
            "conflict",
        ),
        // Triggers.
        case(
            "trigger: both id and definition",
            "POST",
            "/v1/opscore/agent/a1/workflow",
            422,
            "validation_failed",
        )
        .json(
            json!({"workflowDefinitionId": "wf1", "workflowDefinition": {"id": "x", "tasks": []}}),
        ),
        case(
            "trigger: neither",
            "POST",
            "/v1/opscore/agent/a1/workflow",
            422,
            "validation_failed",
        )
        .json(json!({})),
        case(
            "trigger: unknown definition",
            "POST",
            "/v1/opscore/agent/a1/workflow",
            404,
            "not_found",
        )
        .json(json!({"workflowDefinitionId": "nope"})),
        case(
            "trigger: unknown agent",
            "POST",
            "/v1/opscore/agent/nobody/workflow",
            404,
            "agent_not_found",
        )
        .json(json!({"workflowDefinitionId": "wf1"})),
        case(
            "trigger: initialPayload a list",
            "POST",
            "/v1/opscore/agent/a1/workflow",
            422,
            "validation_failed",
        )
        .json(json!({"workflowDefinitionId": "wf1", "initialPayload": [1]})),
        case(
            "trigger: invalid inline definition",
            "POST",
            "/v1/opscore/agent/a1/workflow",
            422,
            "validation_failed",
        )
        .json(json!({"workflowDefinition": cycle})),
        // Sessions.
        case(
            "session: unknown",
            "GET",
            "/v1/opscore/sessions/nope",
            404,
            "session_not_found",
        ),
        case(
            "session: cancel unknown",
            "POST",
            "/v1/opscore/sessions/nope/cancel",
            404,
            "session_not_found",
        ),
        case(
            "session: retry unknown",
            "POST",
            "/v1/opscore/sessions/nope/retry",
            404,
            "session_not_found",
        ),
        case(
            "fleet sessions: bad status filter",
            "GET",
            "/v1/opscore/sessions?status=exploded",
            422,
            "validation_failed",
        ),
        case(
            "fleet sessions: bad since",
            "GET",
            "/v1/opscore/sessions?since=yesterday",
            422,
            "validation_failed",
        ),
        case(
            "fleet sessions: bad limit",
            "GET",
            "/v1/opscore/sessions?limit=1001",
            422,
            "validation_failed",
        ),
        case(
            "session counts: bad until",
            "GET",
            "/v1/opscore/sessions/counts?until=never",
            422,
            "validation_failed",
        ),
        case(
            "sessions: bad status filter",
            "GET",
            "/v1/opscore/agent/a1/sessions?status=exploded",
            422,
            "validation_failed",
        ),
        case(
            "sessions: unknown agent",
            "GET",
            "/v1/opscore/agent/nobody/sessions",
            404,
            "agent_not_found",
        ),
        // The change feed.
        case(
            "events: unknown kind",
            "GET",
            "/v1/opscore/events?kinds=agent.exploded",
            422,
            "validation_failed",
        ),
        case(
            "events: negative after",
            "GET",
            "/v1/opscore/events?after=-1",
            422,
            "validation_failed",
        ),
        case(
            "events: Last-Event-ID in words",
            "GET",
            "/v1/opscore/events",
            422,
            "validation_failed",
        )
        .header("Last-Event-ID", "latest"),
        // Routing.
        case(
            "unknown route",
            "GET",
            "/v1/opscore/nothing-here",
            404,
            "route_not_found",
        ),
        case(
            "method not allowed",
            "PUT",
            "/v1/opscore/agents",
            405,
            "method_not_allowed",
        ),
    ]
}

async fn run_case(s: &TestServer, c: &Case) -> Resp {
    let method: reqwest::Method = c.method.parse().unwrap();
    let mut rb = s.client.request(method, s.url(&c.path));
    match c.auth {
        Auth::Key => rb = rb.bearer_auth(KEY),
        Auth::Wrong => rb = rb.bearer_auth("not-the-key"),
        Auth::None => {}
    }
    if let Some(ct) = c.content_type {
        rb = rb.header("content-type", ct);
    }
    for (k, v) in &c.headers {
        rb = rb.header(*k, v);
    }
    if let Some(body) = &c.body {
        rb = rb.body(body.clone());
    }
    common::send(rb).await
}

/// Run the `opscore` binary against the server.
fn cli(s: &TestServer, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_opscore"))
        .args(args)
        .env_clear()
        .env("OPSCORE_URL", &s.base)
        .env("OPSCORE_CLIENT_KEY", KEY)
        .output()
        .expect("run opscore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn every_bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.dispatch.enabled = false).await;
    s.register("a1").await;
    s.register("a2").await;
    s.register("gone").await;
    let r = s
        .notify_bearer(&json!({"event_type": "DEREGISTER", "agent_details": {"agentId": "gone"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for st in ["active", "idle"] {
        assert_eq!(s.report("a1", st, &ts()).await.0, StatusCode::ACCEPTED);
    }
    let r = common::send(
        s.post("/v1/opscore/workflows")
            .json(&json!({"id": "wf1", "tasks": [{"taskId": "t1", "parameters": {"m": 1}}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = common::send(
        s.post("/v1/opscore/agent/a1/workflow")
            .json(&json!({"workflowDefinitionId": "wf1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = common::send(
        s.post("/v1/opscore/agent/a2/workflow")
            .json(&json!({"workflowDefinition": {"id": "empty", "tasks": []}})),
    )
    .await;
    let done = r.body["sessionId"].as_str().unwrap().to_owned();
    let before = snapshot(&s).await;

    let mut cases = cases();
    // A signature from a long-stale timestamp, made by AgentKit's own code.
    let stale = agentkit_sign(
        &register_payload("n4", "N", &[], "http://n.test/t"),
        common::SECRET,
        3600,
        false,
    )
    .await;
    let mut c = case(
        "webhook: stale signed timestamp",
        "POST",
        "/v1/opscore/internal/agent/notify",
        401,
        "stale_timestamp",
    )
    .raw(Some("application/json"), &stale.body)
    .auth(Auth::None)
    .header("X-AgentKit-Timestamp", &stale.timestamp);
    c.headers
        .push(("X-AgentKit-Signature", stale.signature.clone()));
    cases.push(c);
    cases.push(case(
        "session: cancel a completed one",
        "POST",
        &format!("/v1/opscore/sessions/{done}/cancel"),
        409,
        "conflict",
    ));
    cases.push(case(
        "session: retry a completed one",
        "POST",
        &format!("/v1/opscore/sessions/{done}/retry"),
        409,
        "conflict",
    ));

    let mut failures = Vec::new();
    for c in &cases {
        let r = run_case(&s, c).await;
        let code = r
            .body
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("<none>");
        let detail = r.body.get("detail").and_then(Value::as_str).unwrap_or("");
        // The unread rest of an oversized body means the connection closes:
        // the answer must say so, or a client reuses a closing connection.
        if c.status == 413
            && r.headers.get("connection").and_then(|v| v.to_str().ok()) != Some("close")
        {
            failures.push(format!("{}: 413 without Connection: close", c.what));
        }
        if r.status.as_u16() != c.status || code != c.code || detail.is_empty() {
            failures.push(format!(
                "{}: want {} {}, got {} {}",
                c.what, c.status, c.code, r.status, r.body
            ));
        } else if let Some(field) = c.field {
            let named = r.body["errors"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e["field"] == field));
            if !named {
                failures.push(format!("{}: {field} not named in {}", c.what, r.body));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The command line refuses bad input with the server's code, or as a
    // usage error before sending anything.
    let dir = tempfile::tempdir().unwrap();
    let cyc = dir.path().join("cycle.json");
    std::fs::write(
        &cyc,
        r#"{"id":"cyc","tasks":[{"taskId":"t1","nextTaskId":"t1"}]}"#,
    )
    .unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "id: \"unterminated\ntasks: []").unwrap();
    let cli_cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["agents", "get", "nobody"], 1, "agent_not_found"),
        (
            vec!["state", "report", "a1", "idle!"],
            1,
            "validation_failed",
        ),
        (
            vec!["state", "report", "a1", "idle", "--details", "{bad"],
            2,
            "--details",
        ),
        (
            vec!["state", "report", "nobody", "idle"],
            1,
            "agent_not_found",
        ),
        (
            vec!["workflows", "create", cyc.to_str().unwrap()],
            1,
            "validation_failed",
        ),
        (
            vec!["workflows", "create", broken.to_str().unwrap()],
            2,
            "broken.yaml",
        ),
        (
            vec!["workflows", "create", "/nonexistent/def.json"],
            2,
            "def.json",
        ),
        (
            vec!["workflows", "trigger", "nope", "--agent", "a1"],
            1,
            "not_found",
        ),
        (vec!["sessions", "cancel", &done], 1, "conflict"),
        (vec!["sessions", "retry", &done], 1, "conflict"),
        (vec!["sessions", "list", "--since", "soon"], 1, "since"),
        (vec!["sessions", "get", "nope"], 1, "session_not_found"),
        (vec!["agents", "list", "--limit", "0"], 2, "limit"),
        (
            vec!["watch", "--kinds", "agent.exploded"],
            2,
            "agent.exploded",
        ),
    ];
    for (args, want, needle) in &cli_cases {
        let (code, stderr) = cli(&s, args);
        assert_eq!(code, *want, "opscore {args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "opscore {args:?}: stderr lacks {needle}: {stderr}"
        );
    }

    let after = snapshot(&s).await;
    assert_eq!(before, after, "a refused request changed what is stored");
    println!(
        "{} HTTP cases and {} command-line cases refused; nothing changed",
        cases.len(),
        cli_cases.len()
    );
    s.stop().await;
}

backend_tests!(every_bad_input_is_refused_and_changes_nothing);
