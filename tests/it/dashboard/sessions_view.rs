//! The dashboard's Sessions view in headless Chromium: the fleet-wide list
//! with its counts and filters, a session's page reached by a link and by
//! a deep link that survives a reload, running a failed session again from
//! its page and watching it complete live, the agent deep link, the phone
//! layout, and the view hidden from a key whose role may not use it.

use std::time::Duration;

use super::browser::{target_dir, Browser};
use super::submit_key;
use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::keys::key_with_role;
use crate::common::{Backend, TestServer, KEY};
use opscore::config::DispatchTarget;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

/// Trigger an inline definition on `agent`; returns the session id.
async fn trigger(s: &TestServer, agent: &str, def: Value) -> String {
    s.trigger(agent, json!({"workflowDefinition": def})).await
}

async fn click(b: &Browser, css: &str) {
    b.client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_view_in_headless_chromium() {
    let kit = FakeAgentKit::start().await;
    let kit_url: url::Url = kit.base.parse().unwrap();
    let s = TestServer::start_with(Backend::Sqlite, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(kit_url);
        c.dispatch.poll_interval = Duration::from_millis(20);
    })
    .await;
    s.register("a1").await;
    s.register("a2").await;
    // a2 is busy: its session waits, started.
    s.report_now("a2", "busy", Value::Null).await;
    let waiting = trigger(
        &s,
        "a2",
        json!({"id": "wait-wf", "tasks": [{"taskId": "later"}]}),
    )
    .await;
    // a1's session fails on its second task (a 500, no retries).
    let failing = trigger(
        &s,
        "a1",
        json!({"id": "fan", "tasks": [
            {"taskId": "fetch", "name": "Fetch", "nextTaskId": "summarise", "maxRetries": 0},
            {"taskId": "summarise", "name": "Summarise", "maxRetries": 0}]}),
    )
    .await;
    let calls = kit.wait_calls(1, 10).await;
    kit.script(&[Reply::Status(500)]);
    let ids = json!({"taskId": calls[0].body["opscore_task_id"], "sessionId": failing});
    s.report_now("a1", "active", ids.clone()).await;
    let mut done = ids;
    done["output"] = json!({"pages": 3});
    s.report_now("a1", "idle", done).await;
    s.wait_session(&failing, |v| v["status"] == "failed").await;

    let b = Browser::start().await;
    b.set_viewport(1280, 800).await;
    b.client.goto(&s.url("/")).await.expect("open dashboard");
    b.wait_js(
        "return !document.getElementById('login').hidden",
        SECOND * 5,
        "key form",
    )
    .await;
    submit_key(&b, KEY).await;

    // The Sessions view: every session, newest first, counts by status.
    b.wait_js(
        "return !document.getElementById('nav-sessions').hidden",
        SECOND * 5,
        "the Sessions link for an admin key",
    )
    .await;
    click(&b, "#nav-sessions").await;
    let (rows, _) = b
        .wait_js(
            "const r = [...document.querySelectorAll('#fleet-table tbody tr')].map(r => r.dataset.sessionId);
             return r.length === 2 && r;",
            SECOND * 5,
            "both sessions listed",
        )
        .await;
    assert_eq!(rows, json!([failing, waiting]));
    b.wait_js(
        "const c = (s) => document.querySelector('#counts li[data-status=\"' + s + '\"] .n')?.textContent;
         return c('failed') === '1' && c('started') === '1' && c('') === '2';",
        SECOND * 5,
        "the counts by status",
    )
    .await;
    assert_eq!(b.js("return location.hash").await, "#/sessions");
    // Filtered by status (the select), then by agent.
    b.js(
        "const f = document.getElementById('f-status'); f.value = 'failed';
          f.dispatchEvent(new Event('change')); return true;",
    )
    .await;
    b.wait_js(
        "const r = [...document.querySelectorAll('#fleet-table tbody tr')];
         return r.length === 1 && r[0].querySelector('.st').textContent === 'failed';",
        SECOND * 5,
        "only the failed session",
    )
    .await;
    b.js(
        "const f = document.getElementById('f-status'); f.value = '';
          f.dispatchEvent(new Event('change'));
          const a = document.getElementById('f-agent'); a.value = 'a2';
          a.dispatchEvent(new Event('input')); return true;",
    )
    .await;
    b.wait_js(
        &format!(
            "const r = [...document.querySelectorAll('#fleet-table tbody tr')];
             return r.length === 1 && r[0].dataset.sessionId === '{waiting}';"
        ),
        SECOND * 5,
        "only a2's session",
    )
    .await;
    b.js("const a = document.getElementById('f-agent'); a.value = '';
          a.dispatchEvent(new Event('input')); return true;")
        .await;

    // A session's page, from its link: the timeline and the graph.
    b.wait_js(
        &format!(
            "return !!document.querySelector('#fleet-table a[href=\"#/sessions/{failing}\"]')"
        ),
        SECOND * 5,
        "the failed session's link",
    )
    .await;
    click(
        &b,
        &format!("#fleet-table a[href=\"#/sessions/{failing}\"]"),
    )
    .await;
    b.wait_js(
        "return document.getElementById('sp-facts').dataset.status === 'failed'
             && document.querySelectorAll('#sp-timeline li.task').length === 2",
        SECOND * 5,
        "the failed session's page",
    )
    .await;
    assert_eq!(
        b.js("return location.hash").await,
        format!("#/sessions/{failing}")
    );
    let task = b
        .js("const t = document.querySelector('#sp-timeline li[data-task-id=\"summarise\"]');
             return {attempts: t.querySelector('.attempts').textContent,
                     error: t.querySelector('.last-error')?.textContent,
                     agent: t.querySelector('a[href=\"#/agents/a1\"]') !== null,
                     first: document.querySelector('#sp-timeline li[data-task-id=\"fetch\"] code.output')?.textContent};")
        .await;
    assert_eq!(task["attempts"], "attempt 1/1", "{task}");
    assert!(
        task["error"].as_str().unwrap_or_default().contains("500"),
        "{task}"
    );
    assert_eq!(task["agent"], true, "{task}");
    assert!(
        task["first"].as_str().unwrap_or_default().contains("pages"),
        "{task}"
    );
    let graph = b
        .js("return {nodes: [...document.querySelectorAll('#sp-graph g.node')].map(g => g.dataset.taskId),
                     edges: [...document.querySelectorAll('#sp-graph line.edge')].map(l => l.dataset.from + '>' + l.dataset.to)};")
        .await;
    assert_eq!(
        graph,
        json!({"nodes": ["fetch", "summarise"], "edges": ["fetch>summarise"]})
    );
    assert_eq!(
        b.js("return [!document.getElementById('sp-retry').hidden, !document.getElementById('sp-cancel').hidden]")
            .await,
        json!([true, false]),
        "a failed session offers Run again, not Cancel"
    );

    // The deep link survives a reload.
    b.client.refresh().await.expect("reload");
    b.wait_js(
        "return document.getElementById('sp-facts')?.dataset.status === 'failed'
             && !document.getElementById('session-page').hidden
             && document.getElementById('fleet').hidden",
        SECOND * 5,
        "the session page again after a reload",
    )
    .await;

    // Run again from the page: running at once, then completed live.
    b.wait_js(
        "return !document.getElementById('sp-retry').hidden",
        SECOND * 5,
        "the Run again button after the reload",
    )
    .await;
    click(&b, "#sp-retry").await;
    let calls = kit.wait_calls(3, 10).await;
    assert_eq!(calls[2].body["task_name"], "Summarise");
    b.wait_js(
        "const st = document.getElementById('sp-facts').dataset.status;
         return (st === 'running') && document.getElementById('sp-retry').hidden
             && !document.getElementById('sp-cancel').hidden;",
        SECOND * 5,
        "running again, with Cancel offered",
    )
    .await;
    let ids = json!({"taskId": calls[2].body["opscore_task_id"], "sessionId": failing});
    s.report_now("a1", "active", ids.clone()).await;
    s.report_now("a1", "idle", ids).await;
    b.wait_js(
        "return document.getElementById('sp-facts').dataset.status === 'completed'
             && [...document.querySelectorAll('#sp-graph g.node')].every(g => g.classList.contains('st-bg-completed'))",
        SECOND * 5,
        "completed live on the page",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#sp-timeline li[data-task-id=\"summarise\"] .attempts').textContent")
            .await,
        "attempt 2/2"
    );
    b.screenshot(&target_dir().join("dashboard-sessions-1280x800.png"))
        .await;

    // Phone width: the list as cards, nothing wider than the screen.
    b.set_viewport(390, 844).await;
    b.js("location.hash = '#/sessions'; return true;").await;
    b.wait_js(
        "return document.querySelectorAll('#fleet-table tbody tr').length === 2",
        SECOND * 5,
        "the list at phone width",
    )
    .await;
    let layout = b
        .js("return {page: document.documentElement.scrollWidth, view: window.innerWidth,
                     thead: getComputedStyle(document.querySelector('#fleet-table thead')).display}")
        .await;
    assert!(
        layout["page"].as_i64() <= layout["view"].as_i64(),
        "{layout}"
    );
    assert_eq!(layout["thead"], "none", "{layout}");
    b.js("window.scrollTo(0, 0)").await;
    b.screenshot(&target_dir().join("dashboard-sessions-phone.png"))
        .await;
    b.set_viewport(1280, 800).await;

    // The agent deep link opens its panel, also after a reload.
    b.js("location.hash = '#/agents/a1'; return true;").await;
    b.client.refresh().await.expect("reload");
    b.wait_js(
        "return !document.getElementById('detail').hidden
             && document.getElementById('detail-title').textContent === 'a1'
             && document.getElementById('fleet').hidden",
        SECOND * 5,
        "a1's panel from its deep link",
    )
    .await;

    // A key whose role may not use sessions sees no Sessions view.
    let agent_key = key_with_role(&s, "agent", &["a1"]).await;
    click(&b, "#forget").await;
    b.wait_js(
        "return !document.getElementById('login').hidden",
        SECOND * 5,
        "key form",
    )
    .await;
    submit_key(&b, &agent_key.plaintext).await;
    b.wait_js(
        "return document.getElementById('login').hidden && !document.getElementById('views').hidden",
        SECOND * 5,
        "the page with an agent key",
    )
    .await;
    // The probe answers 403; give it time, then the link must still be hidden.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.js("return document.getElementById('nav-sessions').hidden")
            .await,
        true
    );
    b.close().await;
    s.stop().await;
}
