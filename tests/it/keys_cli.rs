//! `opscore keys create|list|show|revoke`, run as the real binary against a
//! real server.

use crate::common::{send, Backend, TestServer, KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn opscore_keys(base: &str, key: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("OPSCORE_URL", base)
        .env("OPSCORE_CLIENT_KEY", key)
        .output()
        .await
        .expect("run opscore keys");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cli_creates_lists_and_revokes() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.register("a1").await;

    // create: a table, then the plaintext on its own line, the warning on
    // stderr.
    let out = opscore_keys(
        &s.base,
        KEY,
        &[
            "create",
            "--name",
            "agent a1",
            "--role",
            "agent",
            "--agent-id",
            "a1",
            "--ttl",
            "1h",
        ],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("shown only this once"),
        "{}",
        out.stderr
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("KEY ID"), "{}", out.stdout);
    let plaintext = lines
        .last()
        .and_then(|l| l.strip_prefix("key: "))
        .expect("key line")
        .to_owned();
    let id = plaintext["opk_".len()..]
        .split('_')
        .next()
        .expect("id")
        .to_owned();
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("agent a1"),
        "{}",
        out.stdout
    );

    // The key works for its agent, and only there.
    let report = json!({"agentId": "a1", "timestamp": chrono::Utc::now().to_rfc3339(),
        "state": "idle", "details": {}});
    let r = send(
        s.client
            .post(s.url("/v1/opscore/agent/a1/state"))
            .bearer_auth(&plaintext)
            .json(&report),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);

    // list, as a table and as JSON; neither holds the secret.
    let out = opscore_keys(&s.base, KEY, &["list"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains(&id) && out.stdout.contains("active"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&plaintext));
    let out = opscore_keys(&s.base, KEY, &["list", "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["items"][0]["keyId"], id.as_str());
    assert_eq!(v["items"][0]["agentIds"], json!(["a1"]));
    assert!(!out.stdout.contains(&plaintext));

    // A non-admin key is refused with the server's reason.
    let out = opscore_keys(&s.base, &plaintext, &["list"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("(forbidden)"),
        "{}",
        out.stderr
    );

    // revoke, then the key is refused at once; show says so.
    let out = opscore_keys(&s.base, KEY, &["revoke", &id, "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["status"], "revoked");
    let r = send(
        s.client
            .post(s.url("/v1/opscore/agent/a1/state"))
            .bearer_auth(&plaintext)
            .json(&report),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["code"], "key_revoked");
    let out = opscore_keys(&s.base, KEY, &["show", &id]).await;
    assert!(
        out.ok && out.stdout.contains("revoked"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    // Bad input is refused with the reason: locally, and by the server.
    let out = opscore_keys(
        &s.base,
        KEY,
        &["create", "--name", "x", "--role", "operator", "--ttl", "1x"],
    )
    .await;
    assert!(!out.ok && out.stderr.contains("--ttl"), "{}", out.stderr);
    let out = opscore_keys(&s.base, KEY, &["create", "--name", "x", "--role", "agent"]).await;
    assert!(!out.ok && out.stderr.contains("agentIds"), "{}", out.stderr);
    let out = opscore_keys(&s.base, KEY, &["revoke", "0123456789abcdef"]).await;
    assert!(
        !out.ok && out.stderr.contains("key_not_found"),
        "{}",
        out.stderr
    );
    s.stop().await;
}
