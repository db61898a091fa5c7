//! Delivery and after: the dispatcher's answers, retries, deadlines, who
//! may be sent a task, and what follows a completed one.

use super::*;
use crate::domain::workflow::parse_definition;

#[test]
fn delivery_decisions() {
    use Delivery::{Accepted, Failed};
    use DeliveryDecision as D;
    use RunStatus as R;
    let now = SENT + 500;
    let deadline = now + 4_000_000;
    let table = [
        (R::Dispatching, Accepted, D::Sent { deadline }),
        (R::Running, Accepted, D::StillRunning { deadline }),
        (R::Completed, Accepted, D::Nothing),
        (R::Queued, Accepted, D::Nothing),
        (R::Dispatching, Failed, D::FailAttempt),
        // Finding 4: the agent started (or finished) it: note the error,
        // the run goes on.
        (R::Running, Failed, D::NoteError),
        (R::Completed, Failed, D::NoteError),
        (R::Queued, Failed, D::NoteError),
    ];
    for (status, delivery, want) in table {
        assert_eq!(
            delivery_decision(&run(status, 1, Some(SENT)), delivery, now),
            want,
            "{status:?} {delivery:?}"
        );
    }
}

#[test]
fn failures_retry_then_fail() {
    let backoff = Backoff {
        base_ms: 100,
        factor: 2.0,
        cap_ms: 1000,
    };
    let f = |attempts, retryable, not_before| FailedAttempt {
        task_id: "a",
        attempts,
        max_retries: 2,
        retryable,
        reason: "boom",
        not_before,
    };
    assert_eq!(
        after_failure(&f(1, true, None), &backoff, 0, 1.0),
        AfterFailure::Retry { due: 100_000 }
    );
    assert_eq!(
        after_failure(&f(2, true, None), &backoff, 0, 0.0),
        AfterFailure::Retry { due: 100_000 }
    );
    assert_eq!(
        after_failure(&f(1, true, Some(5_000_000)), &backoff, 0, 0.0),
        AfterFailure::Retry { due: 5_000_000 }
    );
    assert_eq!(
        after_failure(&f(3, true, None), &backoff, 0, 0.0),
        AfterFailure::Fail {
            session_error: "task a failed after 3 attempts: boom".into()
        }
    );
    assert_eq!(
        after_failure(&f(1, false, None), &backoff, 0, 0.0),
        AfterFailure::Fail {
            session_error: "task a failed after 1 attempt: boom".into()
        }
    );
}

#[test]
fn deadlines_and_waits_name_their_reason() {
    assert_eq!(
        timeout_reason(&run(RunStatus::Running, 1, Some(SENT))),
        "timed out after 4s without finishing"
    );
    assert!(timeout_reason(&run(RunStatus::Dispatched, 1, Some(SENT)))
        .contains("without the agent reporting that it started"));
    let waiting = run(RunStatus::Queued, 1, Some(SENT));
    assert!(!retry_wait_over(&waiting, SENT, SENT + 3_999_999));
    assert!(retry_wait_over(&waiting, SENT, SENT + 4_000_000));
    assert!(!retry_wait_over(
        &run(RunStatus::Queued, 0, None),
        SENT,
        i64::MAX
    ));
    assert!(!retry_wait_over(
        &run(RunStatus::Running, 1, Some(SENT)),
        SENT,
        i64::MAX
    ));
}

#[test]
fn who_may_be_sent_a_task() {
    let table = [
        ("idle", 0, false, true),
        ("idle", 2, false, true),
        (UNKNOWN, 0, true, true),
        (UNKNOWN, 0, false, false),
        // Finding 3: an agent left in `error` still gets the retry.
        ("error", 1, false, true),
        ("error", 0, false, false),
        ("active", 1, true, false),
        ("finished", 0, true, false),
    ];
    for (state, attempts, unknown, want) in table {
        assert_eq!(
            may_send(state, attempts, unknown),
            want,
            "{state} {attempts} {unknown}"
        );
    }
    let sql = may_send_sql("a.state", "r.attempts", "$2");
    for piece in [
        "a.state = 'idle'",
        "$2 AND a.state = 'UNKNOWN'",
        "r.attempts > 0 AND a.state = 'error'",
    ] {
        assert!(sql.contains(piece), "{sql}");
    }
}

#[test]
fn completion_releases_dependents_or_ends_the_session() {
    let def = parse_definition(
        r#"{"id":"w","tasks":[{"taskId":"a","nextTaskId":"b"},{"taskId":"b"}]}"#,
        false,
    )
    .unwrap();
    let ids = |a: &AfterCompletion<'_>| -> Vec<String> {
        a.dependents.iter().map(|t| t.task_id.clone()).collect()
    };
    let a = after_completion(&def, "a", 1);
    assert_eq!(
        (ids(&a), a.session_completed),
        (vec!["b".to_owned()], false)
    );
    let b = after_completion(&def, "b", 0);
    assert_eq!((ids(&b), b.session_completed), (vec![], true));
    let diamond = parse_definition(
        r#"{"id":"w","tasks":[{"taskId":"a","dependsOn":[]},{"taskId":"b","dependsOn":["a"]},
            {"taskId":"c","dependsOn":["a"]},{"taskId":"d","dependsOn":["b","c"]}]}"#,
        false,
    )
    .unwrap();
    for (task, unfinished, want, done) in [
        ("a", 3, vec!["b", "c"], false),
        ("b", 2, vec!["d"], false),
        ("c", 1, vec!["d"], false),
        ("d", 0, vec![], true),
    ] {
        let r = after_completion(&diamond, task, unfinished);
        assert_eq!(ids(&r), want, "{task}");
        assert_eq!(r.session_completed, done, "{task}");
    }
}
