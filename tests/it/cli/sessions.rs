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

    // Across the fleet: without --agent, and with the fleet's filters.
    c.register(&registration("a2")).await.expect("register");
    let on_a2 = c.trigger("a2", &sample, None).await.expect("trigger");
    let run = opscore(b, &["sessions", "list"]).await;
    assert_eq!(
        run.column("SESSION"),
        [
            on_a2.session_id.clone(),
            done.session_id.clone(),
            newer.session_id.clone(),
            older.session_id.clone()
        ]
    );
    let first = run.stdout.lines().nth(1).expect("a row");
    assert!(first.contains(" a2 "), "the agent column: {first}");
    let run = opscore(
        b,
        &[
            "sessions",
            "list",
            "--workflow",
            "sample_workflow_id",
            "--status",
            "started",
        ],
    )
    .await;
    assert_eq!(
        run.column("SESSION"),
        [on_a2.session_id.clone(), newer.session_id.clone()]
    );
    let since = chrono::Utc::now().to_rfc3339();
    let run = opscore(b, &["sessions", "list", "--since", &since]).await;
    assert!(run.column("SESSION").is_empty(), "{run:?}");
    let run = opscore(b, &["sessions", "list", "--until", &since, "--agent", "a2"]).await;
    assert_eq!(run.column("SESSION"), vec![on_a2.session_id.clone()]);
    let got = opscore(b, &["sessions", "list", "--workflow", "empty", "--json"])
        .await
        .json();
    let filter = opscore::client::SessionFilter {
        workflow_id: Some("empty".into()),
        ..Default::default()
    };
    assert_eq!(
        got,
        c.list_fleet_sessions(&filter, &Default::default())
            .json()
            .await
            .expect("fleet list")
    );
    let run = opscore(b, &["sessions", "list", "--since", "yesterday"]).await;
    assert!(run.failed(1).ends_with("(validation_failed)\n"), "{run:?}");

    // Run a cancelled session again; a started one cannot be.
    let run = opscore(b, &["sessions", "retry", &older.session_id]).await;
    assert_eq!(run.field("Status"), "running");
    assert_eq!(run.field("Error"), "-");
    let got = opscore(b, &["sessions", "retry", &newer.session_id, "--json"]).await;
    assert_refused(&got, c.retry_session(&newer.session_id).await);
    assert!(got.stderr.ends_with("(conflict)\n"), "{got:?}");
    let run = opscore(b, &["sessions", "retry", "no-such-session"]).await;
    assert_refused(&run, c.retry_session("no-such-session").await);
}

crate::backend_tests!(session_commands);
