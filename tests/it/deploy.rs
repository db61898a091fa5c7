//! The Kubernetes manifests in deploy/kubernetes hold together and match
//! the binary: every setting they name is one `opscore serve` knows, their
//! probes ask paths a running server answers, and selectors, ports and
//! names line up between the Deployment, Service, PodDisruptionBudget and
//! HorizontalPodAutoscaler.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{Backend, TestServer};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// Every document of every manifest, by kind.
fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            docs.push(v);
        }
    }
    docs
}

fn of_kind(docs: &[Value], kind: &str) -> Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0].clone()
}

/// The environment variables `opscore serve` reads, from its own help.
fn known_settings() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .expect("run opscore serve --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    assert!(
        known.contains("OPSCORE_BIND") && known.contains("DATABASE_URL"),
        "help lists its settings: {known:?}"
    );
    known
}

#[test]
fn manifests_name_only_settings_the_binary_knows() {
    let docs = manifests();
    let known = known_settings();
    let deployment = of_kind(&docs, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .clone();
    let mut named = 0;
    for c in &containers {
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("env name");
            assert!(
                known.contains(name),
                "deploy/kubernetes sets {name}, which `opscore serve` does not know"
            );
            named += 1;
        }
        let args: Vec<_> = c["args"].as_array().expect("args").clone();
        assert_eq!(args, vec![Value::from("serve")]);
    }
    assert!(named >= 4, "the Deployment configures the service");
    // Secrets come from a Secret, never inline.
    for c in &containers {
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default();
            if ["DATABASE_URL", "OPSCORE_API_KEY", "OPSCORE_WEBHOOK_SECRET"].contains(&name) {
                assert!(e["value"].is_null(), "{name} is inline");
                assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{name}");
            }
        }
    }
}

#[test]
fn selectors_ports_and_names_agree() {
    let docs = manifests();
    let deployment = of_kind(&docs, "Deployment");
    let service = of_kind(&docs, "Service");
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    let hpa = of_kind(&docs, "HorizontalPodAutoscaler");
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    let selects = |selector: &Value| {
        selector
            .as_object()
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(&service["spec"]["selector"]));
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));

    // The container listens where its port says, and the Service and the
    // probes use that port by name.
    let c = &pod["spec"]["containers"][0];
    let port = &c["ports"][0];
    let bind = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "OPSCORE_BIND")
        .and_then(|e| e["value"].as_str())
        .expect("OPSCORE_BIND is set");
    let bind: std::net::SocketAddr = bind.parse().expect("OPSCORE_BIND is an address");
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(bind.port())));
    assert!(bind.ip().is_unspecified(), "reachable from outside the pod");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], port["name"], "{probe}");
    }
    // The image runs as the uid the Dockerfile creates.
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 10001);
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    assert!(dockerfile.contains("USER 10001:10001"));
}

/// Each probe's path answers 200 on a running server.
#[tokio::test]
async fn probes_ask_paths_the_server_answers() {
    let docs = manifests();
    let c = of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone();
    let s = TestServer::start(Backend::Sqlite).await;
    let client = reqwest::Client::new();
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().expect("probe path");
        let r = client.get(s.url(path)).send().await.expect("probe");
        assert_eq!(r.status(), StatusCode::OK, "{probe} {path}");
    }
    s.stop().await;
}

/// `opscore healthcheck` (the image's HEALTHCHECK) exits 0 while the server
/// answers and 1 once nothing listens there.
#[tokio::test]
async fn healthcheck_command_follows_the_server() {
    let s = TestServer::start(Backend::Sqlite).await;
    let bind = s.base.trim_start_matches("http://").to_owned();
    let check = |path: &'static str| {
        let bind = bind.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
                .args(["healthcheck", "--path", path])
                .env_clear()
                .env("OPSCORE_BIND", &bind)
                .output()
                .await
                .expect("run opscore healthcheck")
        }
    };
    for path in ["/health", "/ready"] {
        let out = check(path).await;
        assert!(out.status.success(), "{path}: {out:?}");
    }
    s.stop().await;
    let out = check("/health").await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bind), "names where it looked: {err}");
}
