//! Text that came from agents is never written raw to the operator's
//! terminal: an agent stored with control characters in its name (by a
//! version that did not refuse them) shows escaped in `agents list`,
//! `agents get` and `watch`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{opscore, start};
use crate::common::{registration, Backend, KEY};
use opscore::domain::agent::AgentId;

const EVIL: &str = "Evil\u{1b}[2J\u{1b}]0;PWNED\u{7}\r\nFAKE-ROW  idle";

/// What is wrong with `text` as terminal output, if anything.
fn terminal_unsafe(what: &str, text: &str) -> Option<String> {
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Some(format!("{what} wrote control characters: {text:?}"));
    }
    if text.lines().any(|l| l.starts_with("FAKE-ROW")) {
        return Some(format!("{what} let a forged line through: {text:?}"));
    }
    if !(text.contains(r"\u{1b}[2J") && text.contains("FAKE-ROW")) {
        return Some(format!(
            "{what} hid the text instead of escaping it: {text:?}"
        ));
    }
    None
}

async fn agent_text_is_escaped_in_every_output(backend: Backend) {
    let s = start(backend).await;
    // Stored as an older version would have, past today's validation.
    let store = opscore::store::connect(&s.db.url, &Default::default())
        .await
        .expect("open the store");
    let id = AgentId::parse("evil").expect("id");
    let mut reg = registration(id, None);
    reg.name = EVIL.to_owned();
    reg.version = "1.0\u{1b}[31m".to_owned();
    store
        .register_agent(
            &reg,
            &opscore::domain::audit::Actor::system("test"),
            opscore::domain::time::now_micros(),
        )
        .await
        .expect("register");
    store.close().await;
    // Written by another process: the server's read model has it once its
    // change feed reads the registration (on SQLite, within a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.get_json("/v1/opscore/agent/evil").await.status != reqwest::StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never saw the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let list = opscore(&s.base, &["agents", "list"]).await;
    let get = opscore(&s.base, &["agents", "get", "evil"]).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .args(["watch", "--since", "0", "--agent", "evil"])
        .env_clear()
        .env("OPSCORE_URL", &s.base)
        .env("OPSCORE_CLIENT_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn opscore watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20s")
            .expect("read")
            .expect("watch still running");
        if line.contains("agent.registered") {
            break line;
        }
    };
    child.kill().await.expect("kill");
    let problems: Vec<String> = [
        ("agents list", list.ok()),
        ("agents get", get.ok()),
        ("watch", line.as_str()),
    ]
    .into_iter()
    .filter_map(|(what, text)| terminal_unsafe(what, text))
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    s.stop().await;
}

crate::backend_tests!(agent_text_is_escaped_in_every_output);
