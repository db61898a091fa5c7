//! `GET /openapi.json` and `GET /docs`.
//!
//! The coverage test compares the real router with the document in both
//! directions. axum has no public API to list a router's routes, so the
//! route *paths* are read from the router's `Debug` output (its path table),
//! and which *methods* each path answers is found by asking the running
//! server: a method a path does not serve answers 405 `method_not_allowed`.
//! A path the document lacks, a method it lacks, or a documented operation
//! the server does not answer all fail the test; so does a change in axum's
//! `Debug` output that hides the path table (no paths found).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use crate::common::{send, test_config, Backend, TestDb, TestServer};
use opscore::http::auth::KeyRing;
use opscore::http::state::{AppState, Shared};
use opscore::store::writer::{StateWriter, WriterOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn spec(s: &TestServer) -> Value {
    let r = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    serde_json::from_str(&r.text().await.unwrap()).expect("openapi.json is JSON")
}

/// The paths of the application router, as the server builds it.
async fn router_paths(db: &TestDb) -> BTreeSet<String> {
    let config = test_config(db);
    let store = opscore::store::connect(&db.url, &config.db).await.unwrap();
    let stop = CancellationToken::new();
    let (writer, _workers) = StateWriter::spawn(
        store.clone(),
        WriterOptions {
            workers: 1,
            max_batch: 1,
            queue: 1,
        },
        Arc::new(tokio::sync::Notify::new()),
        stop.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let feed = opscore::engine::feed::Feed::start(store.clone(), 8, stop.clone(), &mut tasks)
        .await
        .unwrap();
    let state = AppState::new(Shared {
        keys: Arc::new(KeyRing::new(config.api_key.expose(), store.clone(), None)),
        config: Arc::new(config),
        store: store.clone(),
        writer,
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: Arc::new(opscore::metrics::Metrics::new()),
        feed,
        readiness: Arc::default(),
    });
    let debug = format!("{:?}", opscore::http::router(state));
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    store.close().await;
    // The path table prints as `RouteId(3): "/v1/opscore/agents"`.
    let mut paths = BTreeSet::new();
    let mut rest = debug.as_str();
    while let Some(i) = rest.find("RouteId(") {
        rest = &rest[i + "RouteId(".len()..];
        let Some(close) = rest.find("): \"") else {
            continue;
        };
        if !rest[..close].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let value = &rest[close + 4..];
        if let Some(end) = value.find('"') {
            paths.insert(value[..end].to_owned());
        }
    }
    assert!(
        paths.len() >= 10,
        "could not read the router's path table from its Debug output (found {paths:?})"
    );
    paths
}

/// `{agentId}` -> a value for probing.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "probe-id"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the server routes `method path` (anything but 405 / route_not_found).
async fn routed(s: &TestServer, method: &str, path: &str) -> bool {
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    // No key and no body: nothing is changed by probing.
    let r = send(s.client.request(m, s.url(&concrete(path)))).await;
    let unrouted = r.status == StatusCode::METHOD_NOT_ALLOWED
        || (r.status == StatusCode::NOT_FOUND && r.body["code"] == "route_not_found");
    !unrouted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_operation_is_served() {
    let s = TestServer::start(Backend::Sqlite).await;
    let doc = spec(&s).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(m).is_some() {
                documented.insert((m.to_owned(), path.clone()));
            }
        }
    }

    let router = router_paths(&s.db).await;
    let mut served = BTreeSet::new();
    for path in &router {
        for m in METHODS {
            if routed(&s, m, path).await {
                served.insert((m.to_owned(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes served but missing from /openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "operations in /openapi.json the router does not serve: {unserved:?}"
    );
    for required in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/v1/opscore/agent/{agentId}/state",
        "/v1/opscore/events",
    ] {
        assert!(
            documented.contains(&("get".to_owned(), required.to_owned())),
            "{required}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_complete_and_consistent() {
    let s = TestServer::start(Backend::Sqlite).await;
    let doc = spec(&s).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Ops-Core");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["agentkitSignature"]["name"], "X-AgentKit-Signature");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let error = &schemas["ErrorBody"];
    let required: HashSet<&str> = error["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, HashSet::from(["detail", "code"]));

    let mut operations = 0;
    // Generated clients name their methods after operationIds: each one is
    // unique and a lowerCamelCase verb phrase (`getSession`, not `fetch`).
    let mut operation_ids: HashSet<String> = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(
                id.len() > 4
                    && id.starts_with(|c: char| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric())
                    && id.chars().any(|c| c.is_ascii_uppercase()),
                "{m} {path}: operationId {id:?} is not a lowerCamelCase phrase"
            );
            assert!(
                operation_ids.insert(id.clone()),
                "{m} {path}: operationId {id} used twice"
            );
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        let declared_params: BTreeSet<String> = path
            .split('/')
            .filter(|seg| seg.starts_with('{'))
            .map(|seg| seg.trim_matches(|c| c == '{' || c == '}').to_owned())
            .collect();
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            operations += 1;
            let here = format!("{} {path}", m.to_uppercase());
            assert!(
                op["summary"].as_str().is_some_and(|t| !t.is_empty()),
                "{here}: summary"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{here}: tag"
            );
            let in_path: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(in_path, declared_params, "{here}: path parameters");
            for (name, _) in op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_object().unwrap().iter())
            {
                assert!(schemes.contains_key(name), "{here}: unknown scheme {name}");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|c| c.starts_with('2')),
                "{here}: no success response"
            );
            for (code, r) in responses {
                assert!(
                    r["headers"].get("X-Request-Id").is_some(),
                    "{here} {code}: X-Request-Id"
                );
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{here} {code}"
                    );
                }
                if code == "503" {
                    assert!(r["headers"].get("Retry-After").is_some(), "{here}");
                }
                if code == "401" {
                    assert!(r["headers"].get("WWW-Authenticate").is_some(), "{here}");
                }
            }
            // Routes behind the key say so, and document the 401.
            let secured = op["security"]
                .as_array()
                .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearerAuth").is_some()));
            if path.starts_with("/v1/") {
                assert!(secured, "{here}: no bearerAuth");
                assert!(responses.contains_key("401"), "{here}: no 401");
            } else {
                assert!(!secured, "{here}: operational route marked secured");
            }
        }
    }
    assert!(operations >= 20, "only {operations} operations");

    // The webhook documents AgentKit's signature headers.
    let notify = &doc["paths"]["/v1/opscore/internal/agent/notify"]["post"];
    let headers: BTreeSet<&str> = notify["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        headers,
        BTreeSet::from(["X-AgentKit-Timestamp", "X-AgentKit-Signature"])
    );

    // A real error body has the documented shape.
    let r = send(
        s.post("/v1/opscore/agent/a1/state")
            .json(&serde_json::json!({"agentId": "a1", "state": "idle"})),
    )
    .await;
    let props = error["properties"].as_object().unwrap();
    for key in r.body.as_object().unwrap().keys() {
        assert!(props.contains_key(key), "error key {key} not in ErrorBody");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_uses_only_embedded_assets() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = s.client.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text().await.unwrap();

    // Every src/href: relative to this server, and served by it.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html.as_str();
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            refs.push(rest[..end].to_owned());
        }
    }
    assert!(refs.iter().any(|r| r.ends_with(".js")), "{refs:?}");
    assert!(refs.iter().any(|r| r.ends_with(".css")), "{refs:?}");
    let mut bodies = vec![html.clone()];
    for href in &refs {
        if href.starts_with('#') {
            continue;
        }
        assert!(
            !href.contains("//") && !href.contains(':'),
            "{href} is not a same-origin relative reference"
        );
        // The page is /docs: a relative reference resolves against /.
        let r = s
            .client
            .get(s.url(&format!("/{href}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{href}");
        // The page's own assets; the API document it links to holds example
        // URLs, which are data, not something the page loads.
        if !href.ends_with(".json") {
            bodies.push(r.text().await.unwrap());
        }
    }
    for body in &bodies {
        for scheme in ["http://", "https://", "url(//", "src=\"//"] {
            assert!(
                !body.contains(scheme),
                "an asset refers to another host ({scheme})"
            );
        }
    }
    // The script loads the document from this server.
    assert!(bodies.iter().any(|b| b.contains("fetch(\"openapi.json\"")));
    s.stop().await;
}
