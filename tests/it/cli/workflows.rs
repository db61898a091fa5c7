//! `opscore workflows …` against a real server.

use serde_json::json;

use super::{assert_refused, client, opscore, registration, start};
use crate::common::Backend;
use opscore::client::TriggerSource;

const REVIEW_YAML: &str = "\
id: review
name: Review
tasks:
  - taskId: draft
    name: Draft
    parameters: {topic: billing}
    nextTaskId: check
    timeoutSeconds: 120
  - taskId: check
    name: Check
    maxRetries: 1
    delaySeconds: 5
";

async fn workflow_commands(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    let b = s.base.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };

    // Create from YAML (converted client side), then again: unchanged.
    let review = file("review.yaml", REVIEW_YAML);
    let run = opscore(b, &["workflows", "create", &review]).await;
    assert_eq!(run.ok(), "Workflow review stored as revision 1 (2 tasks)\n");
    let stored = c.get_definition("review").await.expect("stored");
    assert_eq!(stored.tasks[0].parameters, json!({"topic": "billing"}));
    assert_eq!(stored.tasks[1].delay_seconds, 5);
    let run = opscore(b, &["workflows", "create", &review]).await;
    assert_eq!(
        run.ok(),
        "Workflow review already stored, unchanged (2 tasks)\n"
    );

    // From JSON, --json: the stored definition with defaults filled in.
    let quick = file(
        "quick.json",
        r#"{"id":"quick","name":"Quick","tasks":[{"taskId":"only"}]}"#,
    );
    let got = opscore(b, &["workflows", "create", &quick, "--json"])
        .await
        .json();
    assert_eq!(got["id"], "quick");
    assert_eq!(got["tasks"][0]["maxRetries"], 3);

    // List and get.
    let run = opscore(b, &["workflows", "list"]).await;
    let mut ids = run.column("WORKFLOW");
    ids.sort();
    assert_eq!(ids, ["quick", "review", "sample_workflow_id"]);
    let listed = opscore(b, &["workflows", "list", "--json"]).await.json();
    assert_eq!(listed, c.list_definitions().json().await.expect("list"));
    let run = opscore(b, &["workflows", "get", "review"]).await;
    assert_eq!(run.field("Workflow"), "review");
    assert_eq!(run.field("Tasks"), "2");
    let tasks: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("TASK"))
        .skip(1)
        .collect();
    assert_eq!(tasks.len(), 2, "{}", run.stdout);
    assert!(
        tasks[0].starts_with("draft") && tasks[0].contains("check") && tasks[0].contains("120s")
    );
    let got = opscore(b, &["workflows", "get", "review", "--json"])
        .await
        .json();
    assert_eq!(got, c.get_definition("review").json().await.expect("get"));

    // Trigger a stored definition with a payload.
    let run = opscore(
        b,
        &[
            "workflows",
            "trigger",
            "review",
            "--agent",
            "a1",
            "--payload",
            r#"{"text":"hi"}"#,
        ],
    )
    .await;
    assert_eq!(run.field("Workflow"), "review");
    assert_eq!(run.field("Agent"), "a1");
    let session = c.get_session(&run.field("Session")).await.expect("session");
    assert_eq!(
        (
            session.workflow_id.as_str(),
            session.agent_id.as_deref().unwrap_or_default()
        ),
        ("review", "a1")
    );
    let tasks = session.tasks.expect("tasks");
    assert_eq!(
        tasks[0].payload.as_ref().map(|p| p.value()),
        Some(json!({"text": "hi"}))
    );
    let got = opscore(
        b,
        &["workflows", "trigger", "quick", "--agent", "a1", "--json"],
    )
    .await
    .json();
    assert_eq!(got["workflowId"], "quick");
    assert_eq!(got["message"], "Workflow triggered successfully");
    let session = c
        .get_session(got["sessionId"].as_str().expect("sessionId"))
        .await
        .expect("session");
    assert_eq!(session.workflow_id, "quick");

    // Trigger an inline definition from a file: stored on the way.
    let inline = file("inline.yml", "id: inline\ntasks:\n  - taskId: one\n");
    let got = opscore(
        b,
        &[
            "workflows",
            "trigger",
            "--definition",
            &inline,
            "--agent",
            "a1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(got["workflowId"], "inline");
    assert_eq!(
        c.get_definition("inline")
            .await
            .expect("stored")
            .tasks
            .len(),
        1
    );

    // Delete: refused while a session uses the definition, done otherwise.
    let run = opscore(b, &["workflows", "delete", "quick"]).await;
    assert!(run.failed(1).ends_with("(conflict)\n"), "{run:?}");
    let spare = file("spare.json", r#"{"id":"spare","tasks":[]}"#);
    opscore(b, &["workflows", "create", &spare]).await.ok();
    let run = opscore(b, &["workflows", "delete", "spare"]).await;
    assert_eq!(run.ok(), "Workflow spare deleted\n");
    let run = opscore(b, &["workflows", "get", "spare"]).await;
    assert_refused(&run, c.get_definition("spare").await);
    let run = opscore(b, &["workflows", "delete", "spare", "--json"]).await;
    assert_refused(&run, c.delete_definition("spare").await);

    // Refusals by the server: exit 1 with its detail.
    let run = opscore(b, &["workflows", "trigger", "nope", "--agent", "a1"]).await;
    assert_refused(
        &run,
        c.trigger("a1", &TriggerSource::Stored("nope".into()), None)
            .await,
    );
    let run = opscore(b, &["workflows", "trigger", "review", "--agent", "ghost"]).await;
    assert_refused(
        &run,
        c.trigger("ghost", &TriggerSource::Stored("review".into()), None)
            .await,
    );
    let cycle = file(
        "cycle.json",
        r#"{"id":"cycle","tasks":[{"taskId":"a","nextTaskId":"b"},{"taskId":"b","nextTaskId":"a"}]}"#,
    );
    let run = opscore(b, &["workflows", "create", &cycle]).await;
    assert!(run.failed(1).ends_with("(validation_failed)\n"), "{run:?}");

    // A changed definition under a stored id: its next revision; both
    // listed, newest first.
    let other = file("other.yaml", "id: review\ntasks: []\n");
    let got = opscore(b, &["workflows", "create", &other, "--json"])
        .await
        .json();
    assert_eq!(got["revision"], 2);
    let run = opscore(b, &["workflows", "create", &review]).await;
    assert_eq!(run.ok(), "Workflow review stored as revision 3 (2 tasks)\n");
    let run = opscore(b, &["workflows", "revisions", "review"]).await;
    assert_eq!(run.column("REVISION"), ["3", "2", "1"]);
    let run = opscore(b, &["workflows", "revisions", "review", "--limit", "1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    assert!(run.stderr.contains("--cursor"), "{run:?}");
    let got = opscore(b, &["workflows", "revisions", "review", "--json"])
        .await
        .json();
    assert_eq!(
        got,
        c.list_revisions("review", &Default::default())
            .json()
            .await
            .expect("revisions")
    );
    let run = opscore(b, &["workflows", "revisions", "nope"]).await;
    assert_refused(&run, c.list_revisions("nope", &Default::default()).await);

    // Bad input on the command line: exit 2, nothing sent.
    let missing = dir.path().join("missing.yaml").display().to_string();
    let run = opscore(b, &["workflows", "create", &missing]).await;
    assert!(run.failed(2).contains("cannot read"), "{run:?}");
    let broken = file("broken.yaml", "id: [unclosed\n");
    let run = opscore(b, &["workflows", "create", &broken]).await;
    assert!(run.failed(2).contains("not valid YAML"), "{run:?}");
    let broken = file("broken.json", "{\"id\": ");
    let run = opscore(b, &["workflows", "create", &broken]).await;
    assert!(run.failed(2).contains("not valid JSON"), "{run:?}");
    let run = opscore(
        b,
        &[
            "workflows",
            "trigger",
            "review",
            "--agent",
            "a1",
            "--payload",
            "5",
        ],
    )
    .await;
    assert!(run.failed(2).contains("--payload"), "{run:?}");
    let run = opscore(b, &["workflows", "trigger", "--agent", "a1"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let sessions = c
        .list_sessions("a1", None, &Default::default())
        .await
        .expect("sessions");
    assert_eq!(
        sessions.items.len(),
        3,
        "only the three good triggers made sessions"
    );
}

/// A pool trigger (docs/api.md §3.3) and what `sessions get` shows of its
/// tasks: agent, why each waits, output.
async fn pool_trigger_and_waiting_tasks(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    let b = s.base.as_str();
    let got = opscore(
        b,
        &[
            "workflows",
            "trigger",
            "sample_workflow_id",
            "--capability",
            "summarise",
            "--agent",
            "a1",
            "--agent",
            "a2",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(got["message"], "Workflow triggered successfully");
    let sid = got["sessionId"].as_str().expect("sessionId").to_owned();
    let session = c.get_session(&sid).await.expect("session");
    assert_eq!(session.agent_id, None);
    assert_eq!(
        session.agent_selector.capability.as_deref(),
        Some("summarise")
    );
    assert_eq!(
        session.agent_selector.agent_ids,
        Some(vec!["a1".to_owned(), "a2".to_owned()])
    );
    let run = opscore(b, &["sessions", "get", &sid]).await;
    assert_eq!(
        run.field("Pool"),
        r#"{"capability":"summarise","agentIds":["a1","a2"]}"#
    );
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("TASK"))
        .collect();
    assert!(
        rows[0].contains("WAITING FOR") && rows[0].contains("OUTPUT"),
        "{}",
        rows[0]
    );
    // No dispatcher here: a1 is free but nothing sends; step_2 waits for
    // step_1.
    assert!(
        rows[1].starts_with("step_1") && rows[1].contains("agent_busy"),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].starts_with("step_2") && rows[2].contains("dependencies"),
        "{}",
        rows[2]
    );
    let run = opscore(
        b,
        &[
            "workflows",
            "trigger",
            "sample_workflow_id",
            "--capability",
            "x",
        ],
    )
    .await;
    assert_eq!(run.field("Agent"), "pool of capability x");
}

crate::backend_tests!(workflow_commands, pool_trigger_and_waiting_tasks);
