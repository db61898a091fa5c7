//! W3C trace context end to end: a trigger's `traceparent` reaches every
//! `/run` call of its session (across a retry, a follow-on task and a
//! restart), log lines carry its trace id, and spans reach an OTLP/HTTP
//! collector (a small receiver in the test) when one is configured.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::agentkit::{Call, FakeAgentKit, Reply};
use crate::common::{register_at, Backend, ServerProcess, TestDb, TestServer, KEY};
use opscore::config::DispatchTarget;
use opscore::domain::trace::TraceParent;
use opscore::domain::workflow::Backoff;

/// The caller's trace: sampled, with vendor state.
const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";
const CALLER_STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

async fn start(backend: Backend, kit: &FakeAgentKit, dispatch: bool) -> TestServer {
    let url: url::Url = kit.base.parse().expect("fake url");
    TestServer::start_with(backend, move |c| configure(c, url, dispatch)).await
}

fn configure(c: &mut opscore::config::Config, kit: url::Url, dispatch: bool) {
    c.dispatch.target = DispatchTarget::AgentKit(kit);
    c.dispatch.enabled = dispatch;
    c.dispatch.poll_interval = Duration::from_millis(20);
    c.db.engine.backoff = Backoff {
        base_ms: 40,
        factor: 2.0,
        cap_ms: 200,
    };
    c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
}

/// Trigger the sample workflow on `agent` with these extra headers;
/// returns the session id.
async fn trigger_at(base: &str, agent: &str, headers: &[(&str, &str)]) -> String {
    let mut rb = reqwest::Client::new()
        .post(format!("{base}/v1/opscore/agent/{agent}/workflow"))
        .bearer_auth(KEY)
        .json(&json!({"workflowDefinitionId": "sample_workflow_id"}));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.expect("json");
    body["sessionId"].as_str().expect("sessionId").to_owned()
}

async fn report_at(base: &str, agent: &str, state: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(KEY)
        .json(
            &json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(),
                      "state": state, "details": {}}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// The one valid traceparent a `/run` call carried.
#[track_caller]
fn sent_traceparent(call: &Call) -> TraceParent {
    let values = call.header("traceparent");
    assert_eq!(values.len(), 1, "one traceparent: {:?}", call.headers);
    let p = TraceParent::parse(values[0])
        .unwrap_or_else(|| panic!("not a valid traceparent: {}", values[0]));
    assert_eq!(p.to_string(), values[0], "sent as version 00, lower case");
    p
}

/// The trigger's trace is the trace of every delivery of its session: the
/// retried attempt and the follow-on task, each a span of its own.
async fn traceparent_from_a_trigger_reaches_every_run_call(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(503)]);
    let s = start(backend, &kit, true).await;
    s.register("a1").await;
    let sid = trigger_at(
        &s.base,
        "a1",
        &[("traceparent", CALLER), ("tracestate", CALLER_STATE)],
    )
    .await;

    // The 503 and its retry.
    let calls = kit.wait_calls(2, 10).await;
    for call in &calls {
        assert_eq!(call.body["opscore_session_id"], sid.as_str());
        let p = sent_traceparent(call);
        assert_eq!(p.trace_id_hex(), CALLER_TRACE);
        assert_ne!(p.span_id_hex(), CALLER_SPAN, "a span of our own");
        assert!(p.sampled(), "the caller's sampling decision is kept");
        assert_eq!(call.header("tracestate"), vec![CALLER_STATE]);
    }
    let (first, retry) = (sent_traceparent(&calls[0]), sent_traceparent(&calls[1]));
    assert_ne!(first.span_id, retry.span_id, "each attempt is its own span");

    // The next task of the session, after the agent finished the first.
    report_at(&s.base, "a1", "active").await;
    report_at(&s.base, "a1", "idle").await;
    let calls = kit.wait_calls(3, 10).await;
    assert_eq!(calls[2].body["task_name"], "Second");
    let next = sent_traceparent(&calls[2]);
    assert_eq!(next.trace_id_hex(), CALLER_TRACE);
    assert!(![first.span_id, retry.span_id].contains(&next.span_id));
    s.stop().await;
}

/// Without a traceparent, or with one that is not valid (ignored, never
/// refused), the trigger starts a trace of its own, and that is sent.
async fn without_a_valid_traceparent_a_new_trace_is_sent(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, true).await;
    s.register("a1").await;
    s.register("a2").await;
    s.register("a3").await;
    trigger_at(&s.base, "a1", &[]).await;
    // Upper case is invalid; a tracestate alone means nothing.
    trigger_at(
        &s.base,
        "a2",
        &[
            ("traceparent", &CALLER.to_uppercase()),
            ("tracestate", CALLER_STATE),
        ],
    )
    .await;
    // Two traceparent headers are as good as none.
    trigger_at(
        &s.base,
        "a3",
        &[("traceparent", CALLER), ("traceparent", CALLER)],
    )
    .await;
    let calls = kit.wait_calls(3, 10).await;
    let mut traces = Vec::new();
    for call in &calls {
        let p = sent_traceparent(call);
        assert_ne!(p.trace_id_hex(), CALLER_TRACE, "{}", call.agent_id);
        assert!(p.sampled());
        assert!(call.header("tracestate").is_empty(), "{:?}", call.headers);
        traces.push(p.trace_id);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 3, "a new trace per trigger");
    s.stop().await;
}

/// The trace is stored with the session: a process that did not take the
/// trigger (here: the same database after a restart) sends it.
async fn the_trace_outlives_a_restart(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, false).await;
    s.register("a1").await;
    trigger_at(
        &s.base,
        "a1",
        &[("traceparent", CALLER), ("tracestate", CALLER_STATE)],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(kit.calls().is_empty(), "this one does not dispatch");
    let db = s.stop().await;
    let url: url::Url = kit.base.parse().expect("fake url");
    let mut config = crate::common::test_config(&db);
    configure(&mut config, url, true);
    let s = TestServer::start_on(db, config).await;
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(sent_traceparent(&calls[0]).trace_id_hex(), CALLER_TRACE);
    assert_eq!(calls[0].header("tracestate"), vec![CALLER_STATE]);
    s.stop().await;
}

/// `opscore serve` as a child process with JSON logs, dispatching to `kit`.
async fn spawn(db: &TestDb, kit: &FakeAgentKit, env: &[(&str, &str)]) -> ServerProcess {
    let workflows = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    let mut all = vec![
        ("AGENTKIT_API_URL", kit.base.as_str()),
        ("OPSCORE_WORKFLOWS_DIR", workflows),
        ("OPSCORE_DISPATCH_POLL_MS", "20"),
        ("OPSCORE_LOG_FORMAT", "json"),
    ];
    all.extend_from_slice(env);
    ServerProcess::spawn_with(&db.url, db.dir.path(), &all).await
}

/// The JSON lines the process logged whose `message` is `message`.
fn lines(p: &ServerProcess, message: &str) -> Vec<Value> {
    p.logs
        .lock()
        .expect("logs")
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Wait until the process logged a line with `message` (10 s at most).
async fn wait_line(p: &ServerProcess, message: &str) -> Vec<Value> {
    for _ in 0..500 {
        let found = lines(p, message);
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no '{message}' line in {:#?}", p.logs.lock().expect("logs"));
}

/// Every line logged while serving the trigger, and the dispatch's line,
/// carry the caller's trace id at the top level, and their own span's id.
async fn log_lines_carry_the_trace_id(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(backend).await;
    let p = spawn(&db, &kit, &[]).await;
    register_at(&reqwest::Client::new(), &p.base, "a1", &["summarise"]).await;
    let sid = trigger_at(&p.base, "a1", &[("traceparent", CALLER)]).await;
    let calls = kit.wait_calls(1, 10).await;
    let sent = sent_traceparent(&calls[0]);

    let dispatched = wait_line(&p, "task dispatched").await;
    assert_eq!(dispatched[0]["trace_id"], CALLER_TRACE, "{}", dispatched[0]);
    assert_eq!(
        dispatched[0]["span_id"],
        sent.span_id_hex(),
        "the dispatch's span is the parent the agent framework was sent"
    );
    let triggered = wait_line(&p, "workflow triggered").await;
    assert_eq!(triggered[0]["session_id"], sid.as_str());
    assert_eq!(triggered[0]["trace_id"], CALLER_TRACE, "{}", triggered[0]);
    let request_span = triggered[0]["span_id"]
        .as_str()
        .expect("span_id")
        .to_owned();
    assert_eq!(request_span.len(), 16);
    assert_ne!(request_span, CALLER_SPAN);
    // The request's own line, in the same span.
    let finished: Vec<Value> = wait_line(&p, "request finished")
        .await
        .into_iter()
        .filter(|l| l["span_id"] == request_span.as_str())
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["trace_id"], CALLER_TRACE);
    assert_eq!(finished[0]["status"], 202);
    // Another request is another trace.
    let others: Vec<Value> = lines(&p, "request finished")
        .into_iter()
        .filter(|l| l["span"]["route"] == "/v1/opscore/internal/agent/notify")
        .collect();
    assert_eq!(others.len(), 1, "{others:?}");
    let other = others[0]["trace_id"].as_str().expect("trace_id");
    assert!(other.len() == 32 && other != CALLER_TRACE, "{other}");
    p.kill().await;
}

/// What an in-test OTLP/HTTP collector received.
#[derive(Default, Clone)]
struct Received {
    posts: Arc<Mutex<Vec<(String, String, Bytes)>>>,
}

/// A span as the collector saw it, decoded from either encoding.
#[derive(Debug, Clone, PartialEq)]
struct SeenSpan {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

impl Received {
    /// Serve `POST /v1/traces` on a free port; returns the endpoint base.
    async fn start(&self) -> String {
        let posts = self.posts.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let posts = posts.clone();
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    posts
                        .lock()
                        .expect("posts")
                        .push(("/v1/traces".into(), ct, body));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<SeenSpan> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        let mut out = Vec::new();
        for (_, ct, body) in self.posts.lock().expect("posts").iter() {
            if ct.starts_with("application/json") {
                out.extend(json_spans(
                    &serde_json::from_slice(body).expect("OTLP JSON"),
                ));
                continue;
            }
            assert_eq!(ct, "application/x-protobuf");
            let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(SeenSpan {
                            service: service.clone(),
                            name: s.name,
                            kind: s.kind,
                            trace_id: hex::encode(s.trace_id),
                            span_id: hex::encode(s.span_id),
                            parent_span_id: hex::encode(s.parent_span_id),
                        });
                    }
                }
            }
        }
        out
    }

    /// Wait until a span satisfies `pred` (10 s at most).
    async fn wait_span(&self, pred: impl Fn(&SeenSpan) -> bool) -> SeenSpan {
        for _ in 0..500 {
            if let Some(s) = self.spans().into_iter().find(&pred) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no such span among {:#?}", self.spans());
    }
}

/// The spans of an OTLP/JSON export (ids are hex there).
fn json_spans(v: &Value) -> Vec<SeenSpan> {
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let id = |k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
                out.push(SeenSpan {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    kind: s["kind"].as_i64().unwrap_or(0) as i32,
                    trace_id: id("traceId"),
                    span_id: id("spanId"),
                    parent_span_id: id("parentSpanId"),
                });
            }
        }
    }
    out
}

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// With a collector set, the trigger's request span and the dispatch's
/// span reach it in the caller's trace: the request a child of the
/// caller's span, the dispatch a child of the request, and the `/run`
/// call's traceparent naming the dispatch span.
async fn spans_reach_the_collector(backend: Backend, protocol: &str) {
    let collector = Received::default();
    let endpoint = collector.start().await;
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(backend).await;
    let p = spawn(
        &db,
        &kit,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", "opscore-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    register_at(&reqwest::Client::new(), &p.base, "a1", &["summarise"]).await;
    trigger_at(&p.base, "a1", &[("traceparent", CALLER)]).await;
    let sent = sent_traceparent(&kit.wait_calls(1, 10).await[0]);

    let request = collector
        .wait_span(|s| s.name == "POST /v1/opscore/agent/{agentId}/workflow")
        .await;
    assert_eq!(request.trace_id, CALLER_TRACE);
    assert_eq!(request.parent_span_id, CALLER_SPAN);
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.service, "opscore-test");
    let triggered = wait_line(&p, "workflow triggered").await;
    assert_eq!(triggered[0]["span_id"], request.span_id.as_str());

    let dispatch = collector.wait_span(|s| s.name == "dispatch").await;
    assert_eq!(dispatch.trace_id, CALLER_TRACE);
    assert_eq!(dispatch.parent_span_id, request.span_id);
    assert_eq!(dispatch.kind, CLIENT);
    assert_eq!(dispatch.span_id, sent.span_id_hex());
    p.kill().await;
}

async fn spans_reach_the_collector_as_protobuf(backend: Backend) {
    spans_reach_the_collector(backend, "http/protobuf").await
}

async fn spans_reach_the_collector_as_json(backend: Backend) {
    spans_reach_the_collector(backend, "http/json").await
}

/// A collector that cannot be reached costs requests nothing: triggers
/// and dispatches go on, and the failure is logged once, not per batch.
async fn an_unreachable_collector_changes_nothing(backend: Backend) {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(backend).await;
    let p = spawn(
        &db,
        &kit,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", closed.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for i in 0..4 {
        let agent = format!("a{i}");
        register_at(&client, &p.base, &agent, &["summarise"]).await;
        trigger_at(&p.base, &agent, &[("traceparent", CALLER)]).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let calls = kit.wait_calls(4, 10).await;
    for call in &calls {
        assert_eq!(sent_traceparent(call).trace_id_hex(), CALLER_TRACE);
    }
    let failed = wait_line(
        &p,
        "span export failed (spans dropped; logged at most once a minute)",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_now = lines(
        &p,
        "span export failed (spans dropped; logged at most once a minute)",
    );
    assert_eq!(failed_now.len(), 1, "rate limited: {failed_now:#?}");
    assert_eq!(failed[0]["level"], "WARN");
    p.kill().await;
}

/// Spans still queued at shutdown are exported before the process exits.
async fn queued_spans_are_exported_at_shutdown(backend: Backend) {
    let collector = Received::default();
    let endpoint = collector.start().await;
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(backend).await;
    let mut p = spawn(
        &db,
        &kit,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Nothing is exported on a timer during the test.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    register_at(&reqwest::Client::new(), &p.base, "a1", &["summarise"]).await;
    trigger_at(&p.base, "a1", &[("traceparent", CALLER)]).await;
    kit.wait_calls(1, 10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(collector.spans().is_empty(), "nothing exported yet");
    let pid = p.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "POST /v1/opscore/agent/{agentId}/workflow"
                && s.trace_id == CALLER_TRACE),
        "{spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "dispatch" && s.trace_id == CALLER_TRACE),
        "{spans:#?}"
    );
}

crate::backend_tests!(
    traceparent_from_a_trigger_reaches_every_run_call,
    without_a_valid_traceparent_a_new_trace_is_sent,
    the_trace_outlives_a_restart,
    log_lines_carry_the_trace_id,
    spans_reach_the_collector_as_protobuf,
    spans_reach_the_collector_as_json,
    an_unreachable_collector_changes_nothing,
    queued_spans_are_exported_at_shutdown,
);
