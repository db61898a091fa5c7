//! `opscore sessions …` against a real server (no dispatcher: sessions
//! stay where the test puts them).

use super::{assert_refused, client, opscore, registration, start};
use crate::common::Backend;
use opscore::client::{TriggerSource, WorkflowDefinition};

async fn session_commands(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    let sample = TriggerSource::Stored("sample_workflow_id".into());
    let older = c.trigger("a1", &sample, None).await.expect("trigger");
    let newer = c.trigger("a1", &sample, None).await.expect("trigger");
    let b = s.base.as_str();

    // One session with its tasks.
    let run = opscore(b, &["sessions", "get", &older.session_id]).await;
    assert_eq!(run.field("Session"), older.session_id);
    assert_eq!(run.field("Workflow"), "sample_workflow_id");
    assert_eq!(run.field("Status"), "started");
    let task_row = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("TASK"))
        .nth(1)
        .expect("a task row");
    assert!(
        task_row.starts_with("step_1") && task_row.contains("queued"),
        "{task_row}"
    );
    let got = opscore(b, &["sessions", "get", &older.session_id, "--json"])
        .await
        .json();
    assert_eq!(
        got,
        c.get_session(&older.session_id).json().await.expect("get")
    );

    // The agent's sessions, newest first; filters and paging.
    let run = opscore(b, &["sessions", "list", "--agent", "a1"]).await;
    assert_eq!(
        run.column("SESSION"),
        [newer.session_id.clone(), older.session_id.clone()]
    );
    let run = opscore(
        b,
        &["sessions", "list", "--agent", "a1", "--status", "completed"],
    )
    .await;
    assert!(run.column("SESSION").is_empty());
    let run = opscore(b, &["sessions", "list", "--agent", "a1", "--limit", "1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("--cursor"), "{run:?}");
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    let all = opscore(
        b,
        &[
            "sessions", "list", "--agent", "a1", "--limit", "1", "--all", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["items"][1]["sessionId"], older.session_id.as_str());
    let page = opscore(b, &["sessions", "list", "--agent", "a1", "--json"])
        .await
        .json();
    assert_eq!(
        page,
        c.list_sessions("a1", None, &Default::default())
            .json()
            .await
            .expect("list")
    );

    // Cancel, and cancel again (the same answer).
    let run = opscore(b, &["sessions", "cancel", &older.session_id]).await;
    assert_eq!(run.field("Status"), "cancelled");
    assert_eq!(run.field("Error"), "cancelled by operator");
    let again = opscore(b, &["sessions", "cancel", &older.session_id, "--json"])
        .await
        .json();
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["tasks"][0]["status"], "cancelled");
    let run = opscore(
        b,
        &["sessions", "list", "--agent", "a1", "--status", "cancelled"],
    )
    .await;
    assert_eq!(run.column("SESSION"), vec![older.session_id.clone()]);

    // A completed session cannot be cancelled: the server's 409.
    let empty: WorkflowDefinition =
        serde_json::from_value(serde_json::json!({"id": "empty", "tasks": []})).expect("def");
    let done = c
        .trigger("a1", &TriggerSource::Inline(empty), None)
        .await
        .expect("trigger");
    let run = opscore(b, &["sessions", "cancel", &done.session_id]).await;
    assert_refused(&run, c.cancel_session(&done.session_id).await);
    assert!(run.stderr.ends_with("(conflict)\n"), "{run:?}");

    // Unknown ids and bad filters.
    let run = opscore(b, &["sessions", "get", "no-such-session"]).await;
    assert_refused(&run, c.get_session("no-such-session").await);
    let run = opscore(b, &["sessions", "list", "--agent", "ghost", "--json"]).await;
    assert_refused(
        &run,
        c.list_sessions("ghost", None, &Default::default()).await,
    );
    let run = opscore(
        b,
        &["sessions", "list", "--agent", "a1", "--status", "bogus"],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = opscore(b, &["sessions", "list"]).await;
    assert_eq!(run.code, 2, "--agent is required: {run:?}");
}

crate::backend_tests!(session_commands);
